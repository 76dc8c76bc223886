/*
 * bench_soak: does the station stay flat over a long run? The real binary
 * (`build/station run --simulate`) flashes SESSIONS units on the simulated
 * rack, with the simulated operator pulling each unit REPLUG ms after its
 * result and plugging a fresh one, and FAULT % of the units (picked from
 * the seed) given a fault (`--fault-rate`: a refused write, a pull during
 * the first download, a garbage reply, an oversized reply, a device that
 * stops answering).
 *
 *   build/bench/bench_soak [--sessions N] [--devices D] [--pace MBPS]
 *       [--system-mib M] [--replug-ms MS] [--fault-rate PCT] [--seed S]
 *       [--timeout-ms MS] [--sample-ms MS] [--limit-s S] [--keep]
 *   defaults: 10000 sessions, 32 devices, 4 MB/s, 1 MiB system image
 *   (plus the demo's 1 MiB boot), 100 ms replug, 5 % faults, seed 1,
 *   1000 ms reply limit, a sample every 1000 ms, stopped after 1800 s.
 *
 * While it runs, every sample: the station's RSS (VmRSS in
 * /proc/PID/status), its open file descriptors (entries of /proc/PID/fd)
 * and the sessions recorded so far (the database, read-only: WAL lets a
 * reader in beside the writer). At the end, from the database: sessions
 * recorded (must equal SESSIONS), PASS / FAIL, and the median duration of
 * the PASS sessions in each tenth of the run (by session id), with the
 * drift ratio last tenth / first tenth. RSS and descriptors: first, min,
 * max, last over the samples taken while sessions ran (not start-up or
 * shutdown), and the least-squares slope against sessions recorded over
 * the samples of the second half of the run (before it: warm-up, the
 * rack filling and SQLite's page cache growing to its 2 MiB limit, about
 * the first 3,000 sessions of 10,000), per 1,000 sessions; and the
 * anonymous memory and descriptors at the end of each tenth. The station's loop lateness
 * comes from STATION_LOOP_STATS. Prints markdown tables; never fails (the
 * station's exit code is shown: 1 is expected, faulted units FAIL).
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

struct config {
    unsigned sessions, devices, system_mib, replug_ms, timeout_ms, sample_ms, limit_s;
    double pace, fault_rate;
    unsigned long seed;
    bool keep;
};

struct sample {
    double t;          /* seconds since start */
    long rss_kb;       /* -1: not read */
    long anon_kb;      /* -1: not read */
    long fds;          /* -1: not read */
    long long settled; /* sessions recorded so far; -1: not read */
};

struct samples {
    struct sample *v;
    size_t n, cap;
};

/* VmRSS and RssAnon of /proc/PID/status, in KiB (-1: not read). */
static long rss_kb(pid_t pid, long *anon_kb)
{
    char path[64], line[256];
    long kb = -1;
    *anon_kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "VmRSS:", 6))
            kb = strtol(line + 6, NULL, 10);
        else if (!strncmp(line, "RssAnon:", 8))
            *anon_kb = strtol(line + 8, NULL, 10);
    }
    fclose(f);
    return kb;
}

static long open_fds(pid_t pid)
{
    char path[64];
    long n = 0;
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* One integer from a read-only query, or -1. */
static long long db_count(const char *path, const char *sql)
{
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return -1;
    if (sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(c);
        return -1;
    }
    sqlite3_busy_timeout(c, 200);
    if (sqlite3_prepare_v2(c, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    return v;
}

static void add_sample(struct samples *s, const struct sample *x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        struct sample *v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = *x;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Least-squares slope of y against x over the samples with x >= from. */
enum what { W_RSS, W_ANON, W_FDS };

static long value(const struct sample *p, enum what w)
{
    return w == W_FDS ? p->fds : w == W_ANON ? p->anon_kb : p->rss_kb;
}

static double slope(const struct samples *s, long long from, long long total, enum what w)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct sample *p = &s->v[i];
        long y = value(p, w);
        if (p->settled < from || p->settled >= total || y < 0)
            continue;
        double x = (double)p->settled;
        sx += x;
        sy += (double)y;
        sxx += x * x;
        sxy += x * (double)y;
        n++;
    }
    double den = (double)n * sxx - sx * sx;
    if (n < 3 || den <= 0)
        return 0;
    return ((double)n * sxy - sx * sy) / den;
}

/* Over the samples taken while sessions ran (not the start-up before the
 * first record, not the shutdown after the last). */
static void extremes(const struct samples *s, enum what w, long long total, long *first, long *min,
                     long *max, long *last)
{
    *first = *min = *max = *last = -1;
    for (size_t i = 0; i < s->n; i++) {
        long y = value(&s->v[i], w);
        if (y < 0 || s->v[i].settled < 1 || s->v[i].settled >= total)
            continue;
        if (*first < 0)
            *first = y;
        if (*min < 0 || y < *min)
            *min = y;
        if (y > *max)
            *max = y;
        *last = y;
    }
}

struct tenth {
    unsigned sessions, passed;
    double median_s, span_s;
};

/* The PASS durations of each tenth of the run, in session-id order. */
static void tenths_from_db(const char *path, struct tenth t[10], long long total)
{
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    memset(t, 0, 10 * sizeof(*t));
    if (total <= 0 || sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return;
    double *dur = calloc((size_t)total, sizeof(*dur));
    long long *start = calloc((size_t)total, sizeof(*start)), *end = NULL;
    end = calloc((size_t)total, sizeof(*end));
    int *pass = calloc((size_t)total, sizeof(*pass));
    long long n = 0;
    if (dur && start && end && pass &&
        sqlite3_prepare_v2(c,
                           "SELECT started_ms, ended_ms, result = 'PASS' FROM sessions "
                           "WHERE ended_ms IS NOT NULL ORDER BY id",
                           -1, &st, NULL) == SQLITE_OK) {
        while (n < total && sqlite3_step(st) == SQLITE_ROW) {
            start[n] = sqlite3_column_int64(st, 0);
            end[n] = sqlite3_column_int64(st, 1);
            pass[n] = sqlite3_column_int(st, 2);
            n++;
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
    for (unsigned k = 0; k < 10 && n > 0; k++) {
        long long a = n * k / 10, b = n * (k + 1) / 10;
        size_t m = 0;
        long long lo = 0, hi = 0;
        for (long long i = a; i < b; i++) {
            if (i == a || start[i] < lo)
                lo = start[i];
            if (i == a || end[i] > hi)
                hi = end[i];
            if (pass[i])
                dur[m++] = (double)(end[i] - start[i]) / 1000.0;
        }
        t[k].sessions = (unsigned)(b - a);
        t[k].passed = (unsigned)m;
        t[k].median_s = median(dur, m);
        t[k].span_s = (double)(hi - lo) / 1000.0;
    }
    free(dur);
    free(start);
    free(end);
    free(pass);
}

static int usage(void)
{
    fputs("usage: bench_soak [--sessions N] [--devices D] [--pace MBPS] [--system-mib M]\n"
          "                  [--replug-ms MS] [--fault-rate PCT] [--seed S] [--timeout-ms MS]\n"
          "                  [--sample-ms MS] [--limit-s S] [--keep]\n",
          stderr);
    return 2;
}

static int parse(int argc, char **argv, struct config *c)
{
    static const struct option opts[] = {
        {"sessions", required_argument, NULL, 'n'},
        {"devices", required_argument, NULL, 'd'},
        {"pace", required_argument, NULL, 'p'},
        {"system-mib", required_argument, NULL, 'm'},
        {"replug-ms", required_argument, NULL, 'r'},
        {"fault-rate", required_argument, NULL, 'f'},
        {"seed", required_argument, NULL, 's'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"sample-ms", required_argument, NULL, 'S'},
        {"limit-s", required_argument, NULL, 'L'},
        {"keep", no_argument, NULL, 'k'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'n':
            c->sessions = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'd':
            c->devices = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'p':
            c->pace = strtod(optarg, NULL);
            break;
        case 'm':
            c->system_mib = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            c->replug_ms = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'f':
            c->fault_rate = strtod(optarg, NULL);
            break;
        case 's':
            c->seed = strtoul(optarg, NULL, 10);
            break;
        case 't':
            c->timeout_ms = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'S':
            c->sample_ms = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'L':
            c->limit_s = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'k':
            c->keep = true;
            break;
        default:
            return -1;
        }
    }
    if (optind < argc || !c->sessions || !c->devices || c->devices > 999 || !c->system_mib ||
        !c->replug_ms || !c->sample_ms || !c->timeout_ms || c->fault_rate < 0 ||
        c->fault_rate > 100 || c->pace < 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    struct config c = {
        .sessions = 10000,
        .devices = 32,
        .pace = 4,
        .system_mib = 1,
        .replug_ms = 100,
        .fault_rate = 5,
        .seed = 1,
        .timeout_ms = 1000,
        .sample_ms = 1000,
        .limit_s = 1800,
    };
    if (parse(argc, argv, &c) != 0)
        return usage();
    char station[1100];
    if (!bench_build_path(station, sizeof(station), "station"))
        return 1;
    char dir[] = "/tmp/bench_soak.XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench_soak: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    char db[128], out[128], loop[128];
    snprintf(db, sizeof(db), "%s/soak.db", dir);
    snprintf(out, sizeof(out), "%s/out.txt", dir);
    snprintf(loop, sizeof(loop), "%s/loop.txt", dir);

    char a_sim[16], a_exit[16], a_pace[32], a_mib[16], a_replug[16], a_fault[32], a_seed[24],
        a_timeout[16];
    snprintf(a_sim, sizeof(a_sim), "%u", c.devices);
    snprintf(a_exit, sizeof(a_exit), "%u", c.sessions);
    snprintf(a_pace, sizeof(a_pace), "%g", c.pace);
    snprintf(a_mib, sizeof(a_mib), "%u", c.system_mib);
    snprintf(a_replug, sizeof(a_replug), "%u", c.replug_ms);
    snprintf(a_fault, sizeof(a_fault), "%g", c.fault_rate);
    snprintf(a_seed, sizeof(a_seed), "%lu", c.seed);
    snprintf(a_timeout, sizeof(a_timeout), "%u", c.timeout_ms);
    char *args[] = {station,      "run",
                    "--simulate", a_sim,
                    "--headless", "--exit-after",
                    a_exit,       "--db",
                    db,           "--pace",
                    a_pace,       "--system-mib",
                    a_mib,        "--replug-ms",
                    a_replug,     "--fault-rate",
                    a_fault,      "--seed",
                    a_seed,       "--timeout-ms",
                    a_timeout,    NULL};
    printf("`station run --simulate %s --headless --exit-after %s --db soak.db --pace %s "
           "--system-mib %s --replug-ms %s --fault-rate %s --seed %s --timeout-ms %s`\n\n",
           a_sim, a_exit, a_pace, a_mib, a_replug, a_fault, a_seed, a_timeout);
    fflush(stdout);

    double t0 = bench_now_s();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bench_soak: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        FILE *o = freopen(out, "w", stdout);
        (void)o;
        setenv("STATION_LOOP_STATS", loop, 1);
        execv(station, args);
        _exit(127);
    }
    struct samples s = {0};
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof(ru));
    bool killed = false;
    double next = t0 + c.sample_ms / 1000.0; /* the first sample after exec */
    for (;;) {
        pid_t w = wait4(pid, &status, WNOHANG, &ru);
        if (w == pid)
            break;
        double t = bench_now_s();
        if (!killed && t - t0 > c.limit_s) {
            fprintf(stderr, "bench_soak: stopping the station after %u s\n", c.limit_s);
            kill(pid, SIGTERM);
            killed = true;
        }
        if (t >= next) {
            struct sample x;
            x.t = t - t0;
            x.rss_kb = rss_kb(pid, &x.anon_kb);
            x.fds = open_fds(pid);
            x.settled = db_count(db, "SELECT count(*) FROM sessions WHERE ended_ms IS NOT NULL");
            add_sample(&s, &x);
            next += c.sample_ms / 1000.0;
        }
        bench_sleep_ms(20);
    }
    double wall = bench_now_s() - t0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

    long long total = db_count(db, "SELECT count(*) FROM sessions");
    long long passed = db_count(db, "SELECT count(*) FROM sessions WHERE result = 'PASS'");
    long long failed = db_count(db, "SELECT count(*) FROM sessions WHERE result = 'FAIL'");
    long long steps = db_count(db, "SELECT count(*) FROM steps");
    struct tenth t[10];
    tenths_from_db(db, t, total);
    long rf, rmin, rmax, rl, af, amin, amax, al, ff, fmin, fmax, fl;
    extremes(&s, W_RSS, total, &rf, &rmin, &rmax, &rl);
    extremes(&s, W_ANON, total, &af, &amin, &amax, &al);
    extremes(&s, W_FDS, total, &ff, &fmin, &fmax, &fl);
    long long warm = (long long)c.sessions / 2;
    double rss_slope = slope(&s, warm, total, W_RSS) * 1000.0; /* KiB per 1,000 sessions */
    double anon_slope = slope(&s, warm, total, W_ANON) * 1000.0;
    double fd_slope = slope(&s, warm, total, W_FDS) * 1000.0;
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    char loopline[512] = "";
    FILE *lf = fopen(loop, "r");
    if (lf) {
        if (!fgets(loopline, sizeof(loopline), lf))
            loopline[0] = '\0';
        loopline[strcspn(loopline, "\n")] = '\0';
        fclose(lf);
    }
    double drift = t[0].median_s > 0 ? t[9].median_s / t[0].median_s : 0;

    printf("| measure | value |\n|---|---|\n");
    printf("| sessions recorded | %lld of %u (%s) |\n", total, c.sessions,
           total == (long long)c.sessions ? "all" : "MISSING");
    printf("| PASS / FAIL / other | %lld / %lld (%.2f %%) / %lld |\n", passed, failed,
           total > 0 ? 100.0 * (double)failed / (double)total : 0.0,
           total - (passed > 0 ? passed : 0) - (failed > 0 ? failed : 0));
    printf("| steps recorded | %lld |\n", steps);
    printf("| station exit code | %d%s |\n", code, killed ? " (stopped at the time limit)" : "");
    printf("| wall s / CPU s | %.1f / %.1f (%.1f sessions/s) |\n", wall, cpu,
           wall > 0 ? (double)(total > 0 ? total : 0) / wall : 0.0);
    printf("| samples | %zu, every %u ms |\n", s.n, c.sample_ms);
    printf("| RSS KiB first / min / max / last | %ld / %ld / %ld / %ld |\n", rf, rmin, rmax, rl);
    printf("| RSS slope over the second half | %+.1f KiB per 1,000 sessions |\n", rss_slope);
    printf("| RssAnon KiB first / min / max / last | %ld / %ld / %ld / %ld |\n", af, amin, amax,
           al);
    printf("| RssAnon slope over the second half | %+.1f KiB per 1,000 sessions |\n", anon_slope);
    printf("| peak RSS (wait4) | %ld KiB |\n", ru.ru_maxrss);
    printf("| open fds first / min / max / last | %ld / %ld / %ld / %ld |\n", ff, fmin, fmax, fl);
    printf("| fd slope over the second half | %+.3f per 1,000 sessions |\n", fd_slope);
    printf("| PASS median s, first tenth / last tenth | %.3f / %.3f (drift x%.3f) |\n",
           t[0].median_s, t[9].median_s, drift);
    if (loopline[0])
        printf("| loop lateness | %s |\n", loopline);
    printf("\n| tenth | sessions | PASS | PASS median s | span s | RssAnon KiB at its end | fds |\n"
           "|---|---|---|---|---|---|---|\n");
    for (unsigned k = 0; k < 10; k++) {
        /* the last sample taken before this tenth's sessions were all recorded */
        long long upto = total * (k + 1) / 10;
        const struct sample *at = NULL;
        for (size_t i = 0; i < s.n; i++)
            if (s.v[i].settled >= 1 && s.v[i].settled <= upto && s.v[i].anon_kb >= 0)
                at = &s.v[i];
        printf("| %u | %u | %u | %.3f | %.1f | %ld | %ld |\n", k + 1, t[k].sessions, t[k].passed,
               t[k].median_s, t[k].span_s, at ? at->anon_kb : -1L, at ? at->fds : -1L);
    }
    if (c.keep) {
        printf("\nkept: %s (soak.db, out.txt, loop.txt)\n", dir);
    } else {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_soak: could not remove %s\n", dir);
    }
    free(s.v);
    return 0;
}
