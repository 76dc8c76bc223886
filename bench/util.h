/*
 * Small helpers shared by the benchmark programs (bench_*.c): clocks,
 * CPU time of children and of live processes, and a look into a child's
 * output file. Benchmarks print figures; none of this fails a run.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/types.h>

/* Seconds on the monotonic clock. */
double bench_now_s(void);

/* Sleep, resumed after signals. */
void bench_sleep_ms(long ms);

/* User + system seconds of a finished child (from wait4). */
double bench_rusage_cpu_s(const struct rusage *ru);

/* User + system seconds of a live process so far (/proc/PID/stat); 0 when
 * it cannot be read. */
double bench_proc_cpu_s(pid_t pid);

/* `rel` in the build tree this program runs from (build/bench/NAME ->
 * build/REL, for instance "station" or "tests/usbsim/usbsim") into buf;
 * false, with a message naming the path, unless it is executable. */
bool bench_build_path(char *buf, size_t len, const char *rel);

/* True when `needle` is in the first 64 KiB of the file at `path` (the
 * station's start-up lines, which the benchmarks wait for). */
bool bench_file_has(const char *path, const char *needle);

#endif
