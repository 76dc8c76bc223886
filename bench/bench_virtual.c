/*
 * bench_virtual (B1): the engine's own cost. N in-process virtual fastboot
 * devices, unpaced, plugged 1 ms apart (so that all N sessions run at
 * once), each flashed with the demo recipe whose system image is SIZE MiB,
 * records written to a real SQLite file.
 *
 *   build/bench/bench_virtual [--repeat K] [DEVICES [SIZE_MIB]]
 *       default: 1, 8, 32, 64 and 128 devices x 256 MiB, K = 1
 *
 * Each configuration runs in a child process (st_run) so that its CPU time
 * and memory are its own. Measured:
 *   - flash window: first session start to last session end, from the
 *     records; aggregate GB/s = bytes flashed (1e9 bytes) / window;
 *   - CPU: user + system of the child (wait4); "load" is the CPU spent
 *     before the first session started (generating the demo image and its
 *     SHA-256, once per run), CPU s/GB counts only what came after;
 *   - memory, sampled every 5 ms from /proc/PID/smaps_rollup: peak Rss and
 *     peak Pss_Anon (anonymous memory: what the sessions allocate; the demo
 *     image is a memfd and counts as Shmem, not here). Per session:
 *     peak anon / N (an upper bound: it includes the process's fixed
 *     anonymous memory), and the marginal (anon(N) - anon(1)) / (N - 1)
 *     when the sweep includes N = 1.
 * The in-process virtual devices (their model, reply queues and the XXH3
 * hash of every byte they receive) run on the same loop and count here too.
 * With K > 1 each configuration runs K times and the median of each column
 * is printed. Prints a markdown table; never fails.
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

#define MAX_REPEAT 9

struct result {
    int passed;
    double wall, window, bytes, cpu, load_cpu;
    double rss_kb, anon_kb;
};

/* Flashing window and bytes from the records: first start to last end. */
static void window_from_db(const char *path, struct result *r)
{
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return;
    if (sqlite3_prepare_v2(c,
                           "SELECT (MAX(ended_ms)-MIN(started_ms))/1000.0, SUM(bytes), "
                           "SUM(result='PASS') FROM sessions",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        r->window = sqlite3_column_double(st, 0);
        r->bytes = sqlite3_column_double(st, 1);
        r->passed = sqlite3_column_int(st, 2);
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
}

static void sample_mem(pid_t pid, struct result *r)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    double v;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "Rss: %lf kB", &v) == 1 && v > r->rss_kb)
            r->rss_kb = v;
        else if (sscanf(line, "Pss_Anon: %lf kB", &v) == 1 && v > r->anon_kb)
            r->anon_kb = v;
    }
    fclose(f);
}

static void one(unsigned devices, unsigned mib, struct result *r)
{
    char dir[] = "/tmp/bench_virtualXXXXXX";
    char db[64], out[64];
    memset(r, 0, sizeof(*r));
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return;
    }
    snprintf(db, sizeof(db), "%s/bench.db", dir);
    snprintf(out, sizeof(out), "%s/out.txt", dir);
    double t0 = bench_now_s();
    pid_t pid = fork();
    if (pid == 0) {
        FILE *lines = fopen(out, "w");
        if (!lines)
            _exit(3);
        setvbuf(lines, NULL, _IOLBF, 0); /* the parent watches for the first session */
        struct st_run_options o;
        memset(&o, 0, sizeof(o));
        o.db_path = db;
        o.simulate = devices;
        o.exit_after = devices;
        o.pace_mbps = 0;
        o.plug_interval_ms = 1;
        o.system_bytes = (uint64_t)mib << 20;
        o.headless = true;
        o.out = lines;
        _exit(st_run(&o));
    }
    int status = 0;
    struct rusage ru;
    bool started = false;
    for (;;) {
        sample_mem(pid, r);
        if (!started) {
            double c = bench_proc_cpu_s(pid);
            if (bench_file_has(out, "session 1 started"))
                started = true;
            else
                r->load_cpu = c;
        }
        if (wait4(pid, &status, WNOHANG, &ru) == pid)
            break;
        bench_sleep_ms(started ? 5 : 2);
    }
    r->wall = bench_now_s() - t0;
    r->cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
             (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    window_from_db(db, r);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define MEDIAN(field)                                                                              \
    do {                                                                                           \
        double v[MAX_REPEAT];                                                                      \
        for (unsigned i = 0; i < k; i++)                                                           \
            v[i] = rs[i].field;                                                                    \
        qsort(v, k, sizeof(double), cmp_double);                                                   \
        m->field = k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;                               \
    } while (0)

static void run_config(unsigned devices, unsigned mib, unsigned k, struct result *m)
{
    struct result rs[MAX_REPEAT];
    for (unsigned i = 0; i < k; i++)
        one(devices, mib, &rs[i]);
    *m = rs[0];
    for (unsigned i = 1; i < k; i++)
        if (rs[i].passed < m->passed)
            m->passed = rs[i].passed;
    MEDIAN(wall);
    MEDIAN(window);
    MEDIAN(bytes);
    MEDIAN(cpu);
    MEDIAN(load_cpu);
    MEDIAN(rss_kb);
    MEDIAN(anon_kb);
}

static void print_row(unsigned devices, unsigned mib, const struct result *r, double anon1_kb)
{
    double gb = r->bytes / 1e9, flash_cpu = r->cpu - r->load_cpu;
    char marginal[32] = "-";
    if (anon1_kb > 0 && devices > 1)
        snprintf(marginal, sizeof(marginal), "%.0f", (r->anon_kb - anon1_kb) / (devices - 1));
    printf("| %7u | %4u | %4d/%-4u | %6.2f | %6.2f | %7.2f | %5.2f | %6.2f | %7.3f | %7.1f | "
           "%8.1f | %9.0f | %9s |\n",
           devices, mib, r->passed, devices, r->wall, r->window,
           r->window > 0 ? gb / r->window : 0.0, r->cpu, r->load_cpu, gb > 0 ? flash_cpu / gb : 0.0,
           r->rss_kb / 1024.0, r->anon_kb / 1024.0, r->anon_kb / devices, marginal);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned k = 1;
    int a = 1;
    if (a + 1 < argc && !strcmp(argv[a], "--repeat")) {
        k = (unsigned)strtoul(argv[a + 1], NULL, 10);
        a += 2;
    }
    if (k < 1)
        k = 1;
    if (k > MAX_REPEAT)
        k = MAX_REPEAT;
    printf("| devices | MiB  | passed    | wall s | flash s | GB/s    | CPU s | load s | CPU s/GB "
           "| RSS MiB | anon MiB | anon/session KiB | marginal KiB |\n");
    printf("|---------|------|-----------|--------|---------|---------|-------|--------|---------"
           "-|---------|----------|-----------|-----------|\n");
    fflush(stdout);
    struct result r;
    if (a < argc) {
        unsigned n = (unsigned)strtoul(argv[a], NULL, 10);
        unsigned mib = a + 1 < argc ? (unsigned)strtoul(argv[a + 1], NULL, 10) : 256;
        run_config(n ? n : 1, mib ? mib : 256, k, &r);
        print_row(n ? n : 1, mib ? mib : 256, &r, 0);
        return 0;
    }
    static const unsigned sweep[] = {1, 8, 32, 64, 128};
    double anon1 = 0;
    for (unsigned i = 0; i < sizeof(sweep) / sizeof(sweep[0]); i++) {
        run_config(sweep[i], 256, k, &r);
        if (sweep[i] == 1)
            anon1 = r.anon_kb;
        print_row(sweep[i], 256, &r, anon1);
    }
    printf("\nGB = 1e9 bytes flashed (boot 1 MiB + system, per session); GB/s over the flash "
           "window (first start to last end, from the records); load: CPU before the first "
           "session (demo image generation and SHA-256); CPU s/GB excludes it. anon: peak "
           "Pss_Anon of the process; marginal: (anon(N) - anon(1)) / (N - 1). Targets: >= 2 "
           "GB/s at N = 64; <= 256 KiB private memory per session.\n");
    return 0;
}
