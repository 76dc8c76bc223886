/*
 * bench_usb: the station flashing many virtual fastboot devices through
 * libusb, under the usbdevfs harness (tests/usbsim).
 *
 *   build/bench/bench_usb [DEVICES [SYSTEM_MIB [PLUGGED]]]
 *       defaults: 32 devices, a 16 MiB system image, 16 of them plugged
 *       while the station runs (second run)
 *
 * Two runs of `usbsim --stats FILE --fastboot ... -- station run --usb
 * --system-mib N --exit-after DEVICES --headless --pace 0 --db DB` (the
 * demo recipe: getvar product and serialno, flash boot 1 MiB, flash system
 * N MiB, reboot), devices on hub paths B-H.P (4 buses, 2 hubs each):
 *   1. every device present at start: throughput and CPU;
 *   2. DEVICES-PLUGGED present at start, PLUGGED plugged (absent=1 +
 *      --plug) one every 100 ms from 500 ms on, while the others flash:
 *      arrival-to-first-command latency under load.
 * Measured: the station process's wall time and CPU (user + system, from
 * wait4 in a tiny wrapper: this program re-executed as `bench_usb --wrap`
 * between usbsim and the station), split at its "session 1 started" line
 * (before: generating and hashing the demo images); the sessions window
 * (first start to last end, from the database) and bytes the devices
 * received (harness stats) for the aggregate rate; the harness's own CPU
 * (its stats line `harness cpu_user= cpu_sys=`); first_cmd_ms per device
 * (from the device's "add" uevent to its first command; for devices
 * present at start it includes the station's start-up). Prints markdown
 * tables; never fails (exit codes are shown). The harness's absolute
 * speed is not USB's: every usbfs call is a round trip to it
 * (shared/notes/usb-sim.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define MAX_DEVICES 64
#define LIMIT_S 300

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)(n > 0 ? n : 0) + 1);
    if (!buf) {
        fclose(f);
        return calloc(1, 1);
    }
    size_t got = fread(buf, 1, (size_t)(n > 0 ? n : 0), f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

/*
 * `bench_usb --wrap RESULT OUT -- COMMAND...`: run COMMAND, write
 * "wall cpu_user cpu_sys load_cpu" to RESULT (load_cpu: its CPU when OUT
 * first shows "session 1 started"), exit with its status.
 */
static int wrap(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[4], "--") != 0)
        return 125;
    const char *result = argv[2], *out = argv[3];
    double t0 = bench_now_s(), load_cpu = -1;
    pid_t pid = fork();
    if (pid < 0)
        return 125;
    if (pid == 0) {
        execv(argv[5], argv + 5);
        _exit(127);
    }
    signal(SIGTERM, SIG_IGN); /* usbsim passes it on; the child decides */
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof(ru));
    for (;;) {
        pid_t w = wait4(pid, &status, WNOHANG, &ru);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            break;
        if (load_cpu < 0) {
            double c = bench_proc_cpu_s(pid);
            if (bench_file_has(out, "session 1 started"))
                load_cpu = c;
        }
        bench_sleep_ms(load_cpu < 0 ? 2 : 20);
    }
    double wall = bench_now_s() - t0;
    FILE *f = fopen(result, "w");
    if (f) {
        fprintf(f, "%.6f %.6f %.6f %.6f\n", wall,
                (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
                (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, load_cpu);
        fclose(f);
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 125;
}

struct run {
    const char *name;
    unsigned devices, plugged;
    int exit_code;          /* usbsim's (the station's) */
    double usbsim_wall;     /* spawn to exit, harness set-up included */
    double wall, user, sys; /* the station process */
    double load_cpu;        /* station CPU before its first session */
    double window;          /* sessions: first start to last end, s */
    long long passed;
    double bytes; /* received by the devices (harness stats) */
    double harness_user, harness_sys;
    unsigned n_start, n_plug; /* first_cmd_ms samples */
    double lat_start[MAX_DEVICES], lat_plug[MAX_DEVICES];
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* nearest-rank percentile of sorted v[0..n) */
static double pct(const double *v, unsigned n, double p)
{
    if (n == 0)
        return 0;
    unsigned rank = (unsigned)(p / 100.0 * n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

static void read_db(struct run *r, const char *db)
{
    sqlite3 *c;
    sqlite3_stmt *st;
    if (sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(c);
        return;
    }
    if (sqlite3_prepare_v2(c,
                           "SELECT sum(result = 'PASS'), min(started_ms), max(ended_ms) "
                           "FROM sessions",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        r->passed = sqlite3_column_int64(st, 0);
        r->window = (double)(sqlite3_column_int64(st, 2) - sqlite3_column_int64(st, 1)) / 1000.0;
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
}

/* Bytes and first_cmd_ms per device, the harness's CPU. A device is
 * "plugged" if its path is in plugged[]. */
static void read_stats(struct run *r, const char *stats, char paths[][32], bool *plugged)
{
    char *text = slurp(stats);
    for (char *line = text; *line;) {
        size_t n = strcspn(line, "\n");
        char save = line[n];
        line[n] = '\0';
        const char *p;
        if (!strncmp(line, "harness ", 8)) {
            if ((p = strstr(line, "cpu_user=")))
                r->harness_user = strtod(p + 9, NULL);
            if ((p = strstr(line, "cpu_sys=")))
                r->harness_sys = strtod(p + 8, NULL);
        } else {
            char path[32] = "";
            if (sscanf(line, "%31s", path) == 1) {
                if ((p = strstr(line, " bytes=")))
                    r->bytes += strtod(p + 7, NULL);
                bool late = false;
                for (unsigned i = 0; i < r->devices; i++)
                    if (!strcmp(paths[i], path))
                        late = plugged[i];
                if ((p = strstr(line, " first_cmd_ms=")) && strncmp(p + 14, "-", 1) != 0) {
                    double v = strtod(p + 14, NULL);
                    if (late && r->n_plug < MAX_DEVICES)
                        r->lat_plug[r->n_plug++] = v;
                    else if (!late && r->n_start < MAX_DEVICES)
                        r->lat_start[r->n_start++] = v;
                }
            }
        }
        line[n] = save;
        line += n + (save ? 1 : 0);
    }
    free(text);
    qsort(r->lat_start, r->n_start, sizeof(double), cmp_double);
    qsort(r->lat_plug, r->n_plug, sizeof(double), cmp_double);
}

static void one_run(struct run *r, const char *self, const char *usbsim, const char *station,
                    const char *dir, unsigned mib)
{
    char stats[300], db[300], out[300], res[300], mibs[16], exit_after[16];
    snprintf(stats, sizeof(stats), "%s/stats-%u.txt", dir, r->plugged);
    snprintf(db, sizeof(db), "%s/bench-%u.db", dir, r->plugged);
    snprintf(out, sizeof(out), "%s/out-%u.txt", dir, r->plugged);
    snprintf(res, sizeof(res), "%s/rusage-%u.txt", dir, r->plugged);
    snprintf(mibs, sizeof(mibs), "%u", mib);
    snprintf(exit_after, sizeof(exit_after), "%u", r->devices);

    /* paths B-H.P: buses 1-4, hubs 1-2 on each, ports 1-8 on each hub */
    static char paths[MAX_DEVICES][32], specs[MAX_DEVICES][64], plugs[MAX_DEVICES][48];
    bool plugged[MAX_DEVICES];
    const char *argv[4 * MAX_DEVICES + 32];
    int n = 0;
    argv[n++] = usbsim;
    argv[n++] = "--stats";
    argv[n++] = stats;
    /* the late ones: first those whose bus+hub+port is odd (every other
     * port of every hub), then others in order if more are asked for */
    unsigned late = 0;
    for (int pass = 0; pass < 2; pass++)
        for (unsigned i = 0; i < r->devices; i++) {
            if (pass == 0)
                plugged[i] = false;
            bool odd = ((i % 4) + (i / 4) % 2 + i / 8) % 2 == 1;
            if (!plugged[i] && late < r->plugged && (pass == 1 || odd)) {
                plugged[i] = true;
                late++;
            }
        }
    late = 0;
    for (unsigned i = 0; i < r->devices; i++) {
        unsigned bus = 1 + i % 4, hub = 1 + (i / 4) % 2, port = 1 + i / 8;
        snprintf(paths[i], sizeof(paths[i]), "%u-%u.%u", bus, hub, port);
        if (plugged[i]) {
            snprintf(specs[i], sizeof(specs[i]), "%s:absent=1", paths[i]);
            snprintf(plugs[i], sizeof(plugs[i]), "%s@%u", paths[i], 500 + 100 * late);
            late++;
        } else {
            snprintf(specs[i], sizeof(specs[i]), "%s", paths[i]);
        }
        argv[n++] = "--fastboot";
        argv[n++] = specs[i];
    }
    for (unsigned i = 0; i < r->devices; i++)
        if (plugged[i]) {
            argv[n++] = "--plug";
            argv[n++] = plugs[i];
        }
    const char *tail[] = {"--", self,           "--wrap",   res,          out,
                          "--", station,        "run",      "--usb",      "--system-mib",
                          mibs, "--exit-after", exit_after, "--headless", "--pace",
                          "0",  "--db",         db,         NULL};
    for (int i = 0; tail[i]; i++)
        argv[n++] = tail[i];
    argv[n] = NULL;

    double t0 = bench_now_s();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    int status = 0;
    r->exit_code = -1;
    while (pid > 0) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            r->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (bench_now_s() - t0 > LIMIT_S) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "bench_usb: %s: no exit within %d s, killed\n", r->name, LIMIT_S);
            break;
        }
        bench_sleep_ms(10);
    }
    r->usbsim_wall = bench_now_s() - t0;
    FILE *f = fopen(res, "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf %lf", &r->wall, &r->user, &r->sys, &r->load_cpu) != 4)
            fprintf(stderr, "bench_usb: %s: no station rusage\n", r->name);
        fclose(f);
    }
    read_db(r, db);
    read_stats(r, stats, paths, plugged);
    if (r->exit_code != 0) {
        char *text = slurp(out);
        size_t len = strlen(text);
        fprintf(stderr, "bench_usb: %s: exit %d; last output:\n%s\n", r->name, r->exit_code,
                text + (len > 2000 ? len - 2000 : 0));
        free(text);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--wrap"))
        return wrap(argc, argv);
    unsigned devices = argc > 1 ? (unsigned)atoi(argv[1]) : 32;
    unsigned mib = argc > 2 ? (unsigned)atoi(argv[2]) : 16;
    unsigned plugged = argc > 3 ? (unsigned)atoi(argv[3]) : devices / 2;
    if (devices == 0 || devices > MAX_DEVICES || mib == 0 || mib > 4095 || plugged > devices) {
        fprintf(stderr, "usage: bench_usb [DEVICES (1-%d) [SYSTEM_MIB [PLUGGED]]]\n", MAX_DEVICES);
        return 2;
    }
    char self[1100], station[1100], usbsim[1100], dir[] = "/tmp/bench_usbXXXXXX";
    if (!bench_build_path(self, sizeof(self), "bench/bench_usb") ||
        !bench_build_path(station, sizeof(station), "station") ||
        !bench_build_path(usbsim, sizeof(usbsim), "tests/usbsim/usbsim"))
        return 1;
    if (!mkdtemp(dir))
        return 1;

    struct run *rs = calloc(2, sizeof(*rs));
    if (!rs)
        return 1;
    rs[0].name = "all present at start";
    rs[0].devices = devices;
    rs[1].name = "plugged while running";
    rs[1].devices = devices;
    rs[1].plugged = plugged;
    one_run(&rs[0], self, usbsim, station, dir, mib);
    if (plugged)
        one_run(&rs[1], self, usbsim, station, dir, mib);

    printf("\n%u virtual fastboot devices on hub paths (B-H.P), demo recipe: boot 1 MiB + "
           "system %u MiB each; %ld CPUs\n\n",
           devices, mib, sysconf(_SC_NPROCESSORS_ONLN));
    printf("| run | exit | PASS | station wall s | sessions window s | MB received | "
           "aggregate MB/s | station CPU s (user+sys) | of which start-up | station CPU %% "
           "| harness CPU s (user+sys) |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < (plugged ? 2 : 1); i++) {
        const struct run *r = &rs[i];
        double cpu = r->user + r->sys;
        printf("| %s (%u late) | %d | %lld/%u | %.2f | %.2f | %.1f | %.1f | %.2f (%.2f+%.2f) | "
               "%.2f | %.0f%% | %.2f (%.2f+%.2f) |\n",
               r->name, r->plugged, r->exit_code, r->passed, r->devices, r->wall, r->window,
               r->bytes / 1e6, r->window > 0 ? r->bytes / 1e6 / r->window : 0.0, cpu, r->user,
               r->sys, r->load_cpu > 0 ? r->load_cpu : 0.0, r->wall > 0 ? 100 * cpu / r->wall : 0,
               r->harness_user + r->harness_sys, r->harness_user, r->harness_sys);
    }
    printf("\nArrival to first command (first_cmd_ms: the device's \"add\" uevent to its first "
           "command, harness clock):\n\n");
    printf("| devices | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n");
    if (plugged) {
        const struct run *r = &rs[1];
        printf("| plugged while %u others flash | %u | %.1f | %.1f | %.1f |\n",
               r->devices - r->plugged, r->n_plug, pct(r->lat_plug, r->n_plug, 50),
               pct(r->lat_plug, r->n_plug, 99), r->n_plug ? r->lat_plug[r->n_plug - 1] : 0.0);
    }
    {
        const struct run *r = &rs[0];
        printf("| present at start (includes station start-up) | %u | %.1f | %.1f | %.1f |\n",
               r->n_start, pct(r->lat_start, r->n_start, 50), pct(r->lat_start, r->n_start, 99),
               r->n_start ? r->lat_start[r->n_start - 1] : 0.0);
    }
    printf("\naggregate = bytes the devices received / sessions window (first session start to "
           "last end, from the database). Station CPU: wait4 of the station process; start-up = "
           "its CPU before \"session 1 started\" (generating and hashing the demo images). "
           "Harness CPU: usbsim's own (serving every usbfs call), reported apart. Target "
           "(issue 10, B4): the first command within 20 ms of arrival, p50 and p99.\n");

    free(rs);
    char rm[300];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "bench_usb: could not remove %s\n", dir);
    return 0;
}
