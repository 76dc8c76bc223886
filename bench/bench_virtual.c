/*
 * bench_virtual: the engine's own cost. N in-process virtual fastboot
 * devices, unpaced, each flashed with the demo recipe whose system image
 * is SIZE MiB, records written to a real SQLite file.
 *
 *   build/bench/bench_virtual [DEVICES [SIZE_MIB]]      (default: 1, 8, 64 devices x 64 MiB)
 *
 * Each configuration runs in a child process so that its peak RSS and CPU
 * time are its own (wait4). Prints a markdown table; never fails.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "station/station.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Flashing window and bytes from the records: first start to last end. */
static void window_from_db(const char *path, double *secs, double *bytes, int *passed)
{
    sqlite3 *c;
    sqlite3_stmt *st;
    *secs = *bytes = 0;
    *passed = 0;
    if (sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return;
    if (sqlite3_prepare_v2(c,
                           "SELECT (MAX(ended_ms)-MIN(started_ms))/1000.0, SUM(bytes), "
                           "SUM(result='PASS') FROM sessions",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        *secs = sqlite3_column_double(st, 0);
        *bytes = sqlite3_column_double(st, 1);
        *passed = sqlite3_column_int(st, 2);
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
}

static void one(unsigned devices, unsigned mib)
{
    char dir[] = "/tmp/bench_virtualXXXXXX";
    char db[64];
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return;
    }
    snprintf(db, sizeof(db), "%s/bench.db", dir);
    double t0 = now_s();
    pid_t pid = fork();
    if (pid == 0) {
        FILE *devnull = fopen("/dev/null", "w");
        struct st_run_options o;
        memset(&o, 0, sizeof(o));
        o.db_path = db;
        o.simulate = devices;
        o.exit_after = devices;
        o.pace_mbps = 0;
        o.system_bytes = (uint64_t)mib << 20;
        o.out = devnull;
        _exit(st_run(&o));
    }
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    double wall = now_s() - t0;
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double win, bytes;
    int passed;
    window_from_db(db, &win, &bytes, &passed);
    double image_mib = mib + 1.0; /* system + the 1 MiB boot image */
    double rss_mib = (double)ru.ru_maxrss / 1024.0;
    printf("| %7u | %8u | %6d/%-4u | %8.2f | %8.2f | %8.2f | %9.0f | %10.0f | %8.1f | %9.1f |\n",
           devices, mib, passed, devices, wall, win, cpu, bytes / 1e6 / wall,
           win > 0 ? bytes / 1e6 / win : 0.0, rss_mib, rss_mib - image_mib);
    fflush(stdout);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

int main(int argc, char **argv)
{
    printf("| devices | size MiB | passed    | wall s   | flash s  | CPU s    | MB/s wall | MB/s flash | RSS MiB  | RSS-image |\n");
    printf("|---------|----------|-----------|----------|----------|----------|-----------|------------|----------|-----------|\n");
    if (argc > 1) {
        unsigned n = (unsigned)strtoul(argv[1], NULL, 10);
        unsigned mib = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 64;
        one(n ? n : 1, mib ? mib : 64);
        return 0;
    }
    one(1, 64);
    one(8, 64);
    one(64, 64);
    return 0;
}
