/*
 * bench_paced (B5): does every device keep its pace? N in-process virtual
 * fastboot devices whose simulated link carries at most PACE MB/s each
 * (engine/virt/vtransport.c: a 1 MiB transfer completes len/pace after the
 * wire is free), all flashed at once with the demo recipe (system image of
 * MIB MiB), records in SQLite.
 *
 *   build/bench/bench_paced [--devices N] [--pace MBPS] [--mib M] [--repeat K]
 *       defaults: 32 devices, 40 MB/s (a USB 2.0 bus's practical rate), 128 MiB, K = 1
 *
 * Each device's achieved rate comes from its session's step records: the
 * bytes of its data steps (flash:boot, flash:system: download command, data
 * and flash command) over the sum of those steps' durations (ended_ms -
 * started_ms), in MB/s (1e6 bytes), as a share of the pace. Printed: the
 * lowest, median and highest share, and how many devices kept at least
 * 95 % (the target: all of them). With K > 1, one row per run and the
 * median row. Each run is a child process (st_run). Never fails.
 */
#include <errno.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#include "station/station.h"

#define MAX_DEVICES 256
#define MAX_REPEAT 9

struct result {
    int sessions, passed, kept;
    double min_pct, median_pct, max_pct, wall, cpu, aggregate_mbps;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(double *v, int n)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void rates_from_db(const char *path, double pace, struct result *r)
{
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    double pct[MAX_DEVICES];
    int n = 0;
    if (sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return;
    if (sqlite3_prepare_v2(c,
                           "SELECT s.result, SUM(t.bytes), SUM(t.ended_ms - t.started_ms) "
                           "FROM sessions s JOIN steps t ON t.session_id = s.id "
                           "WHERE t.bytes > 0 GROUP BY s.id",
                           -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW && n < MAX_DEVICES) {
            double bytes = sqlite3_column_double(st, 1), ms = sqlite3_column_double(st, 2);
            r->sessions++;
            r->passed += !strcmp((const char *)sqlite3_column_text(st, 0), "PASS");
            double p = ms > 0 ? 100.0 * (bytes / 1e3 / ms) / pace : 0;
            pct[n++] = p;
            r->kept += p >= 95.0;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(c,
                           "SELECT SUM(bytes) / (MAX(ended_ms) - MIN(started_ms)) / 1e3 "
                           "FROM sessions",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        r->aggregate_mbps = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    if (n) {
        r->median_pct = median_of(pct, n); /* sorts */
        r->min_pct = pct[0];
        r->max_pct = pct[n - 1];
    }
}

static void one(unsigned devices, double pace, unsigned mib, struct result *r)
{
    char dir[] = "/tmp/bench_pacedXXXXXX";
    char db[64];
    memset(r, 0, sizeof(*r));
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return;
    }
    snprintf(db, sizeof(db), "%s/bench.db", dir);
    double t0 = bench_now_s();
    pid_t pid = fork();
    if (pid == 0) {
        FILE *devnull = fopen("/dev/null", "w");
        struct st_run_options o;
        memset(&o, 0, sizeof(o));
        o.db_path = db;
        o.simulate = devices;
        o.exit_after = devices;
        o.pace_mbps = pace;
        o.system_bytes = (uint64_t)mib << 20;
        o.headless = true;
        o.out = devnull;
        _exit(st_run(&o));
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
        ;
    r->wall = bench_now_s() - t0;
    r->cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
             (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    rates_from_db(db, pace, r);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static void print_row(const char *label, unsigned devices, double pace, unsigned mib,
                      const struct result *r)
{
    printf("| %-6s | %7u | %5g | %4u | %4d/%-4u | %6.1f | %5.2f | %8.0f | %6.1f | %6.1f | %6.1f "
           "| %4d/%-4d |\n",
           label, devices, pace, mib, r->passed, devices, r->wall, r->cpu, r->aggregate_mbps,
           r->min_pct, r->median_pct, r->max_pct, r->kept, r->sessions);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned devices = 32, mib = 128, k = 1;
    double pace = 40;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--devices"))
            devices = (unsigned)atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--pace"))
            pace = atof(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--mib"))
            mib = (unsigned)atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--repeat"))
            k = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_paced [--devices N] [--pace MBPS] [--mib M] "
                            "[--repeat K]\n");
            return 2;
        }
    }
    if (devices == 0 || devices > MAX_DEVICES || pace <= 0 || mib == 0)
        return 2;
    if (k < 1)
        k = 1;
    if (k > MAX_REPEAT)
        k = MAX_REPEAT;
    printf("| run    | devices | MB/s  | MiB  | passed    | wall s | CPU s | total MB/s | min %%  "
           "| med %%  | max %%  | kept >=95%% |\n");
    printf("|--------|---------|-------|------|-----------|--------|-------|------------|--------"
           "|--------|--------|-----------|\n");
    struct result rs[MAX_REPEAT];
    for (unsigned i = 0; i < k; i++) {
        char label[16];
        one(devices, pace, mib, &rs[i]);
        snprintf(label, sizeof(label), "#%u", i + 1);
        print_row(label, devices, pace, mib, &rs[i]);
    }
    if (k > 1) {
        struct result m = rs[0];
        double v[MAX_REPEAT];
#define MED(f)                                                                                     \
    do {                                                                                           \
        for (unsigned i = 0; i < k; i++)                                                           \
            v[i] = (double)rs[i].f;                                                                \
        m.f = median_of(v, (int)k);                                                                \
    } while (0)
        MED(wall);
        MED(cpu);
        MED(aggregate_mbps);
        MED(min_pct);
        MED(median_pct);
        MED(max_pct);
        for (unsigned i = 0; i < k; i++)
            v[i] = rs[i].kept;
        m.kept = (int)median_of(v, (int)k);
        print_row("median", devices, pace, mib, &m);
    }
    printf("\nper device: bytes of its data steps / their summed duration, as a share of its "
           "pace (MB = 1e6 bytes). Target: every device >= 95 %%.\n");
    return 0;
}
