#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bench_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

double bench_rusage_cpu_s(const struct rusage *ru)
{
    return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 +
           (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
}

double bench_proc_cpu_s(pid_t pid)
{
    char path[64];
    unsigned long ut = 0, st = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    /* fields 14 and 15: utime, stime (the command name has no spaces here) */
    if (fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        ut = st = 0;
    fclose(f);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

bool bench_file_has(const char *path, const char *needle)
{
    enum { CAP = 64 * 1024 };
    char *buf = malloc(CAP);
    FILE *f = buf ? fopen(path, "r") : NULL;
    bool found = false;
    if (f) {
        size_t n = fread(buf, 1, CAP - 1, f);
        buf[n] = '\0';
        fclose(f);
        found = strstr(buf, needle) != NULL;
    }
    free(buf);
    return found;
}

bool bench_build_path(char *buf, size_t len, const char *rel)
{
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "cannot find this program: %s\n", strerror(errno));
        return false;
    }
    self[n] = '\0';
    *strrchr(self, '/') = '\0'; /* build/bench */
    if ((size_t)snprintf(buf, len, "%s/../%s", self, rel) >= len || access(buf, X_OK) != 0) {
        fprintf(stderr, "needs %s/../%s (build it first)\n", self, rel);
        return false;
    }
    return true;
}
