/*
 * bench_loop (B3): how late the station's one loop runs while it flashes
 * many devices with the dashboard drawing and every step written to SQLite.
 *
 *   build/bench/bench_loop [options]
 *     --devices N      concurrent devices (default 64)
 *     --pace MBPS      each device's link rate, MB/s (default 40; 0 = unpaced)
 *     --mib M          demo system image size, MiB (default 64)
 *     --sessions S     stop after S recorded sessions (default 3 x devices)
 *     --replug-ms MS   simulated operator's delay before the next unit (default 300)
 *     --repeat K       runs; prints each and the median of each column (default 1)
 *     --headless       lines to /dev/null instead of the dashboard on a pty
 *     --tcp            devices are `station sim --tcp` processes' (one process,
 *                      N ports) instead of the in-process virtual rack
 *
 * Each run is `build/station run` (the real binary) started on a fresh
 * pseudo-terminal (forkpty, 200x70, TERM=xterm-256color unless set), so
 * that it draws its dashboard there at its usual 10 redraws a second; this
 * program drains the terminal. The station measures its own loop with
 * STATION_LOOP_STATS (station/station.c: a 1 ms timer's lateness, p50/p99
 * from 10 µs buckets, exact max; the share of time outside the poll wait;
 * the longest single iteration). The in-process virtual devices run on the
 * station's loop too (their pacing timers and model), so that mode is the
 * harder one for the loop; with --tcp the devices live in another process.
 * Prints a markdown table; never fails (the station's exit code is shown).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define MAX_RUNS 15

struct run {
    double wall, cpu;
    int exit_code;
    int passed, recorded;
    double p50_ms, p99_ms, max_ms, busy_pct, iter_max_ms, max_at_s;
    long samples, over_2ms, over_20ms;
    bool have_stats;
};

static void count_sessions(const char *db, int *passed, int *recorded)
{
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    *passed = *recorded = 0;
    if (sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return;
    if (sqlite3_prepare_v2(c, "SELECT SUM(result='PASS'), COUNT(*) FROM sessions", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        *passed = sqlite3_column_int(st, 0);
        *recorded = sqlite3_column_int(st, 1);
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
}

static void read_stats(const char *path, struct run *r)
{
    char line[512];
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        long p50, p99, mx, iter, at = 0;
        double busy;
        if (sscanf(line,
                   "loop samples=%ld p50_us=%ld p99_us=%ld max_us=%ld over_2ms=%ld "
                   "over_20ms=%ld busy_pct=%lf iter_max_us=%ld max_at_ms=%ld",
                   &r->samples, &p50, &p99, &mx, &r->over_2ms, &r->over_20ms, &busy, &iter,
                   &at) >= 8) {
            r->max_at_s = at / 1e3;
            r->p50_ms = p50 / 1e3;
            r->p99_ms = p99 / 1e3;
            r->max_ms = mx / 1e3;
            r->busy_pct = busy;
            r->iter_max_ms = iter / 1e3;
            r->have_stats = true;
        }
    }
    fclose(f);
}

/* `station sim` on a free port range; returns its pid, sets *port. */
static pid_t start_sim(const char *station, const char *dir, unsigned devices, double pace,
                       unsigned *port)
{
    for (int tries = 0; tries < 10; tries++) {
        char tcp[64], count[16], pc[32], out[512];
        *port =
            24000 +
            (unsigned)((getpid() * 131u + (unsigned)time(NULL) * 7u + tries * 977u) % 1500) * 16;
        snprintf(tcp, sizeof(tcp), "127.0.0.1:%u", *port);
        snprintf(count, sizeof(count), "%u", devices);
        snprintf(pc, sizeof(pc), "%g", pace);
        snprintf(out, sizeof(out), "%s/sim-%u.out", dir, *port);
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            /* --no-hash as the in-process rack (its model skips hashing too) */
            if (pace > 0)
                execl(station, station, "sim", "--tcp", tcp, "--count", count, "--pace", pc,
                      "--quiet", "--no-hash", "--offline-ms", "300", (char *)NULL);
            else
                execl(station, station, "sim", "--tcp", tcp, "--count", count, "--quiet",
                      "--no-hash", "--offline-ms", "300", (char *)NULL);
            _exit(127);
        }
        for (int i = 0; i < 500; i++) {
            if (bench_file_has(out, "; ready"))
                return pid;
            if (waitpid(pid, NULL, WNOHANG) == pid)
                break;
            bench_sleep_ms(10);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return -1;
}

struct config {
    unsigned devices, mib, sessions, replug_ms, repeat;
    double pace;
    bool headless, tcp;
};

static void one(const char *station, const struct config *cfg, struct run *r)
{
    char dir[] = "/tmp/bench_loopXXXXXX", db[256], stats[256], n[16], pace[32], mib[16],
         sessions[16], replug[16], tcp[64];
    memset(r, 0, sizeof(*r));
    r->exit_code = -1;
    if (!mkdtemp(dir))
        return;
    snprintf(db, sizeof(db), "%s/loop.db", dir);
    snprintf(stats, sizeof(stats), "%s/loop.txt", dir);
    snprintf(n, sizeof(n), "%u", cfg->devices);
    snprintf(pace, sizeof(pace), "%g", cfg->pace);
    snprintf(mib, sizeof(mib), "%u", cfg->mib);
    snprintf(sessions, sizeof(sessions), "%u", cfg->sessions);
    snprintf(replug, sizeof(replug), "%u", cfg->replug_ms);
    pid_t sim = -1;
    unsigned port = 0;
    if (cfg->tcp) {
        sim = start_sim(station, dir, cfg->devices, cfg->pace, &port);
        if (sim < 0) {
            fprintf(stderr, "bench_loop: cannot start station sim\n");
            return;
        }
        snprintf(tcp, sizeof(tcp), "127.0.0.1:%u-%u", port, port + cfg->devices - 1);
    }
    char *argv[32];
    int a = 0;
    argv[a++] = (char *)station;
    argv[a++] = "run";
    if (cfg->tcp) {
        argv[a++] = "--tcp";
        argv[a++] = tcp;
    } else {
        argv[a++] = "--simulate";
        argv[a++] = n;
        argv[a++] = "--pace";
        argv[a++] = pace;
        argv[a++] = "--replug-ms";
        argv[a++] = replug;
    }
    argv[a++] = "--system-mib";
    argv[a++] = mib;
    argv[a++] = "--exit-after";
    argv[a++] = sessions;
    argv[a++] = "--db";
    argv[a++] = db;
    argv[a++] = "--serial-policy";
    argv[a++] = "reflash"; /* a TCP device comes back with the same serial */
    if (cfg->headless)
        argv[a++] = "--headless";
    argv[a] = NULL;

    struct winsize ws = {.ws_row = 70, .ws_col = 200};
    int master = -1;
    double t0 = bench_now_s();
    pid_t pid;
    if (cfg->headless) {
        pid = fork();
        if (pid == 0) {
            int fd = open("/dev/null", O_WRONLY);
            dup2(fd, 1);
            dup2(fd, 2);
        }
    } else {
        pid = forkpty(&master, NULL, NULL, &ws);
    }
    if (pid == 0) {
        setenv("STATION_LOOP_STATS", stats, 1);
        if (!getenv("TERM") || !strcmp(getenv("TERM"), "dumb"))
            setenv("TERM", "xterm-256color", 1);
        execv(station, argv);
        _exit(127);
    }
    if (pid < 0) {
        perror("bench_loop: fork");
        return;
    }
    /* drain the terminal until the station exits; stop it after 300 s */
    int status = 0;
    struct rusage ru;
    bool done = false, termed = false;
    char buf[65536];
    while (!done) {
        if (master >= 0) {
            struct pollfd pfd = {.fd = master, .events = POLLIN};
            if (poll(&pfd, 1, 20) > 0) {
                ssize_t got = read(master, buf, sizeof(buf));
                if (got <= 0) {
                    close(master);
                    master = -1;
                }
            }
        } else {
            bench_sleep_ms(20);
        }
        if (wait4(pid, &status, WNOHANG, &ru) == pid)
            done = true;
        else if (!termed && bench_now_s() - t0 > 300) {
            kill(pid, SIGTERM);
            termed = true;
        }
    }
    r->wall = bench_now_s() - t0;
    if (master >= 0)
        close(master);
    r->cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
             (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    r->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (sim > 0) {
        kill(sim, SIGTERM);
        waitpid(sim, NULL, 0);
    }
    read_stats(stats, r);
    count_sessions(db, &r->passed, &r->recorded);
    char rm[300];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "bench_loop: could not remove %s\n", dir);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const struct run *rs, int n, size_t off)
{
    double v[MAX_RUNS];
    for (int i = 0; i < n; i++)
        v[i] = *(const double *)((const char *)&rs[i] + off);
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void print_row(const char *label, const struct config *c, const struct run *r)
{
    printf("| %-8s | %-9s | %s | %7u | %5g | %4u | %5d/%-5u | %6.1f | %6.2f | %7.2f | %7.2f | "
           "%7.2f | %8.2f | %5.1f | %8.2f | %d |\n",
           label, c->headless ? "headless" : "dashboard", c->tcp ? "tcp " : "virt", c->devices,
           c->pace, c->mib, r->passed, c->sessions, r->wall, r->cpu, r->p50_ms, r->p99_ms,
           r->max_ms, r->max_at_s, r->busy_pct, r->iter_max_ms, r->exit_code);
}

int main(int argc, char **argv)
{
    struct config c = {.devices = 64, .mib = 64, .replug_ms = 300, .repeat = 1, .pace = 40};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--headless"))
            c.headless = true;
        else if (!strcmp(o, "--tcp"))
            c.tcp = true;
        else if (v && !strcmp(o, "--devices"))
            c.devices = (unsigned)atoi(argv[++i]);
        else if (v && !strcmp(o, "--pace"))
            c.pace = atof(argv[++i]);
        else if (v && !strcmp(o, "--mib"))
            c.mib = (unsigned)atoi(argv[++i]);
        else if (v && !strcmp(o, "--sessions"))
            c.sessions = (unsigned)atoi(argv[++i]);
        else if (v && !strcmp(o, "--replug-ms"))
            c.replug_ms = (unsigned)atoi(argv[++i]);
        else if (v && !strcmp(o, "--repeat"))
            c.repeat = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: bench_loop [--devices N] [--pace MBPS] [--mib M] [--sessions S] "
                    "[--replug-ms MS] [--repeat K] [--headless] [--tcp]\n");
            return 2;
        }
    }
    if (c.devices == 0 || c.devices > 256 || c.mib == 0)
        return 2;
    if (!c.sessions)
        c.sessions = 3 * c.devices;
    if (c.repeat < 1)
        c.repeat = 1;
    if (c.repeat > MAX_RUNS)
        c.repeat = MAX_RUNS;
    char station[1100];
    if (!bench_build_path(station, sizeof(station), "station"))
        return 1;
    signal(SIGPIPE, SIG_IGN);

    printf("| run      | output    | src  | devices | MB/s  | MiB  | passed      | wall s | CPU s  "
           "| p50 ms  | p99 ms  | max ms  | max at s | busy%% | iter max | exit |\n");
    printf("|----------|-----------|------|---------|-------|------|-------------|--------|--------"
           "|---------|---------|---------|----------|-------|----------|------|\n");
    struct run rs[MAX_RUNS];
    for (unsigned k = 0; k < c.repeat; k++) {
        char label[16];
        one(station, &c, &rs[k]);
        snprintf(label, sizeof(label), "#%u", k + 1);
        print_row(label, &c, &rs[k]);
        fflush(stdout);
    }
    if (c.repeat > 1) {
        struct run m = rs[0];
        m.wall = median(rs, (int)c.repeat, offsetof(struct run, wall));
        m.cpu = median(rs, (int)c.repeat, offsetof(struct run, cpu));
        m.p50_ms = median(rs, (int)c.repeat, offsetof(struct run, p50_ms));
        m.p99_ms = median(rs, (int)c.repeat, offsetof(struct run, p99_ms));
        m.max_ms = median(rs, (int)c.repeat, offsetof(struct run, max_ms));
        m.busy_pct = median(rs, (int)c.repeat, offsetof(struct run, busy_pct));
        m.max_at_s = median(rs, (int)c.repeat, offsetof(struct run, max_at_s));
        m.iter_max_ms = median(rs, (int)c.repeat, offsetof(struct run, iter_max_ms));
        print_row("median", &c, &m);
    }
    printf("\nloop stall: lateness of a 1 ms timer inside the station (STATION_LOOP_STATS); "
           "busy%%: time outside the poll wait; iter max: longest loop iteration outside it. "
           "Targets: p99 <= 2 ms, max <= 20 ms.\n");
    return 0;
}
