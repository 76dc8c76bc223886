/*
 * bench_tcp: the station against the AOSP fastboot client, both flashing
 * the same `station sim` devices over TCP (loopback).
 *
 *   build/bench/bench_tcp [DEVICES [IMAGE_MIB [MAX_DOWNLOAD]]]
 *       defaults: 16 devices, a 512 MiB image, max-download-size 16 MiB
 *
 * A raw image of pseudo-random bytes (no zero blocks, so every piece is
 * RAW data) is written to /tmp and deleted at the end. Three runs, each
 * against its own fresh `station sim --count DEVICES --no-hash`:
 *   station, first start: `station run --tcp 127.0.0.1:P-Q --image
 *              system=FILE --exit-after DEVICES` (the demo recipe: getvar
 *              product and serialno, flash boot BOOT, flash system FILE,
 *              reboot); it reads the whole image for its SHA-256 and
 *              remembers the hash in DB.hashes/;
 *   station, restarted: the same on a new database that shares those
 *              remembered hashes: what every later start of a station
 *              costs while the image file stays the same;
 *   fastboot: DEVICES parallel `fastboot -s tcp:127.0.0.1:P+i flash boot BOOT
 *              flash system FILE`.
 * Both flash the same two files: a 1 MiB boot image and the system image.
 * Measured: wall time (spawn to last exit); CPU time of the flashing
 * processes (wait4 rusage: user + system; the station's includes hashing
 * the image once, the fastboot processes' is summed) and the sim's CPU
 * separately; memory sampled every 10 ms from /proc/PID/smaps_rollup:
 * the peak of Private_Clean + Private_Dirty and of Private_Dirty alone
 * (anonymous memory; a file page mapped by one process only counts as
 * Private_Clean), summed over processes. Prints a markdown table; never
 * fails (the flashing processes' exit codes are shown).
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

#define MAX_PROCS 64

struct proc {
    pid_t pid;
    bool done;
    int status;
    struct rusage ru;
    long peak_private_kb, peak_dirty_kb, peak_rss_kb;
};

static pid_t spawn(char *const argv[], const char *out)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void sample(struct proc *p)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)p->pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    long clean = 0, dirty = 0, rss = 0, v;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "Private_Clean: %ld kB", &v) == 1)
            clean = v;
        else if (sscanf(line, "Private_Dirty: %ld kB", &v) == 1)
            dirty = v;
        else if (sscanf(line, "Rss: %ld kB", &v) == 1)
            rss = v;
    }
    fclose(f);
    if (clean + dirty > p->peak_private_kb)
        p->peak_private_kb = clean + dirty;
    if (dirty > p->peak_dirty_kb)
        p->peak_dirty_kb = dirty;
    if (rss > p->peak_rss_kb)
        p->peak_rss_kb = rss;
}

/* Sample and reap until every process exited. */
static void watch(struct proc *ps, int n)
{
    int left = n;
    while (left > 0) {
        for (int i = 0; i < n; i++) {
            if (ps[i].done)
                continue;
            sample(&ps[i]);
            if (wait4(ps[i].pid, &ps[i].status, WNOHANG, &ps[i].ru) == ps[i].pid) {
                ps[i].done = true;
                left--;
            }
        }
        bench_sleep_ms(10);
    }
}

/* Start a sim on a free port range; returns its pid and sets *port. */
static pid_t start_sim(const char *station, const char *dir, unsigned devices, const char *maxdl,
                       unsigned *port)
{
    for (int tries = 0; tries < 10; tries++) {
        char tcp[64], count[16], out[512];
        *port =
            20000 +
            (unsigned)((getpid() * 131u + (unsigned)time(NULL) * 7u + tries * 977u) % 2000) * 16;
        snprintf(tcp, sizeof(tcp), "127.0.0.1:%u", *port);
        snprintf(count, sizeof(count), "%u", devices);
        snprintf(out, sizeof(out), "%s/sim-%u.out", dir, *port);
        /* --no-hash: the devices' own bookkeeping (an XXH3 pass over every
         * byte, 44 % of the sim's CPU) stays off the 2 CPUs both tools
         * share with it */
        char *argv[] = {(char *)station,
                        "sim",
                        "--tcp",
                        tcp,
                        "--count",
                        count,
                        "--max-download",
                        (char *)maxdl,
                        "--quiet",
                        "--no-hash",
                        "--offline-ms",
                        "600000",
                        NULL};
        pid_t pid = spawn(argv, out);
        for (int i = 0; i < 500; i++) {
            if (bench_file_has(out, "; ready"))
                return pid;
            int status;
            if (waitpid(pid, &status, WNOHANG) == pid)
                break;
            bench_sleep_ms(10);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    fprintf(stderr, "bench_tcp: cannot start station sim\n");
    exit(1);
}

static double stop_sim(pid_t pid)
{
    struct rusage ru;
    int status;
    kill(pid, SIGTERM);
    wait4(pid, &status, 0, &ru);
    return bench_rusage_cpu_s(&ru);
}

/* The station's flashing window from its records: first start to last end. */
static double window_s(const char *db)
{
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    double w = 0;
    if (sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return 0;
    if (sqlite3_prepare_v2(c, "SELECT (MAX(ended_ms) - MIN(started_ms)) / 1000.0 FROM sessions", -1,
                           &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        w = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    return w;
}

struct result {
    const char *name;
    double load_cpu; /* station: CPU spent before the first session (hashing, mapping) */
    bool remembered; /* station: the image's hash came from DB.hashes/ */
    double wall, cpu, sim_cpu;
    long private_kb, dirty_kb, rss_kb;
    int failures;
};

static void print_row(const struct result *r)
{
    printf("| %-26s | %7.2f | %7.2f | %7.2f | %9.1f | %9.1f | %9.1f | %d |\n", r->name, r->wall,
           r->cpu, r->sim_cpu, r->private_kb / 1024.0, r->dirty_kb / 1024.0, r->rss_kb / 1024.0,
           r->failures);
}

static void collect(struct result *r, struct proc *ps, int n)
{
    for (int i = 0; i < n; i++) {
        r->cpu += bench_rusage_cpu_s(&ps[i].ru);
        r->private_kb += ps[i].peak_private_kb;
        r->dirty_kb += ps[i].peak_dirty_kb;
        r->rss_kb += ps[i].peak_rss_kb;
        if (!WIFEXITED(ps[i].status) || WEXITSTATUS(ps[i].status) != 0)
            r->failures++;
    }
}

/* `mib` MiB of the xorshift sequence at *x into path, on disk before it
 * returns: pages of a file not yet written back count as Private_Dirty. */
static void write_random(const char *path, unsigned mib, uint64_t *x)
{
    FILE *f = fopen(path, "wb");
    uint64_t *chunk = malloc(1u << 20);
    if (!f || !chunk) {
        fprintf(stderr, "bench_tcp: cannot write %s\n", path);
        exit(1);
    }
    for (unsigned m = 0; m < mib; m++) {
        for (size_t i = 0; i < (1u << 20) / 8; i++) {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            chunk[i] = *x;
        }
        fwrite(chunk, 1, 1u << 20, f);
    }
    free(chunk);
    fflush(f);
    fsync(fileno(f));
    fclose(f);
}

int main(int argc, char **argv)
{
    unsigned devices = argc > 1 ? (unsigned)atoi(argv[1]) : 16;
    unsigned mib = argc > 2 ? (unsigned)atoi(argv[2]) : 512;
    const char *maxdl = argc > 3 ? argv[3] : "16777216";
    char station[1100], dir[] = "/tmp/bench_tcpXXXXXX", image[256], boot[256], db[256], out[256];
    if (devices == 0 || devices > MAX_PROCS || mib == 0) {
        fprintf(stderr, "usage: bench_tcp [DEVICES (1-%d) [IMAGE_MIB [MAX_DOWNLOAD]]]\n",
                MAX_PROCS);
        return 2;
    }
    if (!bench_build_path(station, sizeof(station), "station"))
        return 1;
    if (system("command -v fastboot >/dev/null") != 0) {
        fprintf(stderr, "bench_tcp: needs fastboot (scripts/setup.sh installs it)\n");
        return 1;
    }
    if (!mkdtemp(dir))
        return 1;
    signal(SIGPIPE, SIG_IGN);
    snprintf(image, sizeof(image), "%s/system.img", dir);
    snprintf(boot, sizeof(boot), "%s/boot.img", dir);
    snprintf(db, sizeof(db), "%s/bench.db", dir);
    snprintf(out, sizeof(out), "%s/out.txt", dir);

    /* the images: xorshift bytes, no zero or fill blocks */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    write_random(image, mib, &x);
    write_random(boot, 1, &x);
    /* both runs read it from the page cache */
    char warm[700];
    snprintf(warm, sizeof(warm), "cat '%s' '%s' > /dev/null", image, boot);
    if (system(warm) != 0)
        fprintf(stderr, "bench_tcp: could not pre-read the image\n");

    /* The station remembers an image's hash (DB.hashes/) only when the
     * file is at least 2 s older than the hashing: wait that out, so that
     * the first start remembers and the restart can use it. */
    bench_sleep_ms(2500);

    struct result rs[3];
    memset(rs, 0, sizeof(rs));
    unsigned port;

    /* 1. the station: one process, one loop, every device; first with the
     * image new to it (it reads every byte for the SHA-256), then restarted
     * on a new database sharing the first one's remembered hashes. */
    char db2[300], cache1[320], cache2[320];
    snprintf(db2, sizeof(db2), "%s/bench2.db", dir);
    snprintf(cache1, sizeof(cache1), "%s.hashes", db);
    snprintf(cache2, sizeof(cache2), "%s.hashes", db2);
    for (int r = 0; r < 2; r++) {
        pid_t sim = start_sim(station, dir, devices, maxdl, &port);
        if (r == 1 && symlink(cache1, cache2) != 0)
            fprintf(stderr, "bench_tcp: cannot link %s: %s\n", cache2, strerror(errno));
        char tcp[64], img[300], bimg[300], exit_after[16];
        snprintf(tcp, sizeof(tcp), "127.0.0.1:%u-%u", port, port + devices - 1);
        snprintf(img, sizeof(img), "system=%s", image);
        snprintf(bimg, sizeof(bimg), "boot=%s", boot);
        snprintf(exit_after, sizeof(exit_after), "%u", devices);
        char *av[] = {station,        "run",          "--tcp",   tcp,
                      "--image",      bimg,           "--image", img,
                      "--exit-after", exit_after,     "--db",    r ? db2 : db,
                      "--headless",   "--timeout-ms", "30000",   NULL};
        struct proc p = {0};
        truncate(out, 0);
        double t0 = bench_now_s();
        p.pid = spawn(av, out);
        /* the images are loaded (hashed) when their "image ... sha256" lines appear */
        while (!bench_file_has(out, "session 1 started")) {
            sample(&p);
            siginfo_t si = {0};
            if (waitid(P_PID, (id_t)p.pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid)
                break; /* exited (not reaped: watch() collects its rusage) */
            rs[r].load_cpu = bench_proc_cpu_s(p.pid);
            bench_sleep_ms(5);
        }
        watch(&p, 1);
        rs[r].wall = bench_now_s() - t0;
        rs[r].name = r ? "station run, restarted" : "station run, first start";
        rs[r].remembered = bench_file_has(out, "(remembered");
        collect(&rs[r], &p, 1);
        rs[r].sim_cpu = stop_sim(sim);
    }

    /* 2. the AOSP client: one process per device */
    pid_t sim = start_sim(station, dir, devices, maxdl, &port);
    {
        struct proc ps[MAX_PROCS];
        char serial[MAX_PROCS][64];
        memset(ps, 0, sizeof(ps));
        double t0 = bench_now_s();
        for (unsigned i = 0; i < devices; i++) {
            snprintf(serial[i], sizeof(serial[i]), "tcp:127.0.0.1:%u", port + i);
            char *av[] = {"fastboot", "-s",    serial[i], "flash", "boot",
                          boot,       "flash", "system",  image,   NULL};
            ps[i].pid = spawn(av, out);
        }
        watch(ps, (int)devices);
        rs[2].wall = bench_now_s() - t0;
        rs[2].name = "fastboot flash (N procs)";
        collect(&rs[2], ps, (int)devices);
    }
    rs[2].sim_cpu = stop_sim(sim);

    printf("\n%u devices, %u MiB raw image, max-download-size %s, TCP loopback, %ld CPUs\n\n",
           devices, mib, maxdl, sysconf(_SC_NPROCESSORS_ONLN));
    printf("| %-26s | %7s | %7s | %7s | %9s | %9s | %9s | %s |\n", "run", "wall s", "CPU s",
           "sim CPU", "priv MiB", "dirty MiB", "RSS MiB", "failed");
    printf("|%s|---------|---------|---------|-----------|-----------|-----------|---|\n",
           "----------------------------");
    print_row(&rs[0]);
    print_row(&rs[1]);
    print_row(&rs[2]);
    printf("\n");
    for (int r = 0; r < 2; r++) {
        printf("%s / fastboot: CPU %.2fx (target <= 0.7), wall %.2fx (target <= 1.0), "
               "private %.2fx (target <= 0.5)\n",
               rs[r].name, rs[2].cpu > 0 ? rs[r].cpu / rs[2].cpu : 0,
               rs[2].wall > 0 ? rs[r].wall / rs[2].wall : 0,
               rs[2].dirty_kb > 0 ? (double)rs[r].dirty_kb / (double)rs[2].dirty_kb : 0);
        printf("%s: CPU before the first session (image %s, mapping): %.2f s; after: %.2f s "
               "(%.2fx the fastboot processes)\n",
               rs[r].name, rs[r].remembered ? "hash remembered" : "SHA-256", rs[r].load_cpu,
               rs[r].cpu - rs[r].load_cpu,
               rs[2].cpu > 0 ? (rs[r].cpu - rs[r].load_cpu) / rs[2].cpu : 0);
    }
    printf("station sessions window (first start to last end, from its records): %.2f s\n",
           window_s(db2));
    printf("CPU: user+system of the flashing processes (the station's includes its sparse\n"
           "plan, and on its first start the image's SHA-256); sim CPU: the device side (station\n"
           "sim --no-hash), reported apart. Memory: peak\n"
           "per process from /proc/PID/smaps_rollup, summed; priv = Private_Clean+Private_Dirty\n"
           "(file pages mapped by one process only count here), dirty = Private_Dirty.\n");

    unlink(image);
    unlink(boot);
    char rm[300];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "bench_tcp: could not remove %s\n", dir);
    return 0;
}
