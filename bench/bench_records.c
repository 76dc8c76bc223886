/*
 * bench_records: are the QA queries fast on a year's worth of records?
 *
 * Builds a database of N sessions (default 1,000,000) with the station's
 * own schema (db_open creates it, then a bulk insert into the same file):
 * 90 days ending 2026-11-22, 64 slots, about 1 % of units seen twice, 96 %
 * PASS, 3 % FAIL, 1 % ABORTED, two images and five steps per session. Then
 * it times, through the same db/report.c functions the CLI uses:
 *   - history of one serial            (target < 50 ms)
 *   - stats by slot for one day        (target < 500 ms)
 * and, for scale, a one-day report and stats by slot over all 90 days.
 * Prints a markdown table of medians. Never part of the tests.
 *
 *   bench_records [--sessions N] [--db PATH] [--reuse] [--no-steps]
 */
#include <inttypes.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db/db.h"
#include "db/report.h"

#define END_MS 1795305600000LL /* 2026-11-22T00:00:00Z */
#define DAY_MS 86400000LL
#define DAYS 90
#define SLOTS 64
#define RUNS 21

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* xorshift64*: reproducible, no libc rand state */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static void check(int rc, sqlite3 *c, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "bench_records: %s: %s\n", what, sqlite3_errmsg(c));
        exit(3);
    }
}

static void serial_of(uint64_t unit, char *buf, size_t len)
{
    snprintf(buf, len, "R%010" PRIu64, (uint64_t)(unit * 7919 % 10000000000ull));
}

static void build(const char *path, long n, bool with_steps)
{
    static const char *const step_names[] = {"getvar:product", "getvar:serialno", "flash:boot",
                                             "flash:system", "reboot"};
    struct db *db;
    char err[600];
    sqlite3 *c;
    sqlite3_stmt *ins_s, *ins_i, *ins_t;
    double t0 = now_ms();

    unlink(path);
    if (db_open(path, &db, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_records: %s\n", err);
        exit(2);
    }
    db_close(db);

    check(sqlite3_open(path, &c), c, "open");
    check(sqlite3_exec(c,
                       "PRAGMA synchronous=OFF; PRAGMA cache_size=-1000000;"
                       " PRAGMA foreign_keys=OFF; BEGIN",
                       NULL, NULL, NULL),
          c, "pragmas");
    check(sqlite3_exec(c,
                       "INSERT INTO images VALUES('b0075ha256', 'boot', '/img/boot.img', 8388608),"
                       " ('5157e4a256', 'system', '/img/system.img', 1073741824)",
                       NULL, NULL, NULL),
          c, "images");
    check(sqlite3_prepare_v2(c,
                             "INSERT INTO sessions(id, station, slot, port, usb_serial, serial,"
                             " product, recipe, recipe_version, started_ms, ended_ms, result,"
                             " failed_step, reason, bytes, last_step)"
                             " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             -1, &ins_s, NULL),
          c, "prepare sessions");
    check(sqlite3_prepare_v2(c, "INSERT INTO session_images VALUES(?,?,?)", -1, &ins_i, NULL), c,
          "prepare session_images");
    check(sqlite3_prepare_v2(c, "INSERT INTO steps VALUES(?,?,?,?,?,?,?,?,?)", -1, &ins_t, NULL), c,
          "prepare steps");

    /* start times in order over 90 days: mean gap 90 d / n */
    int64_t t = END_MS - DAYS * DAY_MS;
    uint64_t gap2 = (uint64_t)(2 * DAYS * DAY_MS / n);
    uint64_t units = 0;
    for (long id = 1; id <= n; id++) {
        char slot[16], serial[24], station[16];
        uint64_t r = rnd();
        uint64_t unit = (r % 100 == 0 && units > 0) ? rnd() % units : units++;
        unsigned s = (unsigned)(rnd() % SLOTS);
        unsigned outcome = (unsigned)(rnd() % 100);
        const char *result = outcome < 96 ? "PASS" : outcome < 99 ? "FAIL" : "ABORTED";
        int64_t dur = 40000 + (int64_t)(rnd() % 80000);
        unsigned nsteps = outcome < 96 ? 5 : 1 + (unsigned)(rnd() % 4);

        t += (int64_t)(rnd() % (gap2 + 1));
        snprintf(slot, sizeof(slot), "hub%u-p%02u", s / 16 + 1, s % 16 + 1);
        snprintf(station, sizeof(station), "line%u", s / 16 + 1);
        serial_of(unit, serial, sizeof(serial));
        sqlite3_bind_int64(ins_s, 1, id);
        sqlite3_bind_text(ins_s, 2, station, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins_s, 3, slot, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins_s, 4, slot, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins_s, 5, serial, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins_s, 6, serial, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins_s, 7, "falcon", -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_s, 8, "demo-phone", -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_s, 9, id < n / 2 ? "1.0" : "1.1", -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins_s, 10, t);
        sqlite3_bind_int64(ins_s, 11, t + dur);
        sqlite3_bind_text(ins_s, 12, result, -1, SQLITE_STATIC);
        if (outcome < 96) {
            sqlite3_bind_null(ins_s, 13);
            sqlite3_bind_null(ins_s, 14);
        } else {
            sqlite3_bind_text(ins_s, 13, step_names[nsteps - 1], -1, SQLITE_STATIC);
            sqlite3_bind_text(ins_s, 14,
                              outcome < 99 ? "flash:system: flash: device replied FAIL: write error"
                                           : "station stopped during flash:boot",
                              -1, SQLITE_STATIC);
        }
        sqlite3_bind_int64(ins_s, 15, outcome < 96 ? 1082130432 : 0);
        sqlite3_bind_text(ins_s, 16, step_names[nsteps - 1], -1, SQLITE_STATIC);
        check(sqlite3_step(ins_s), c, "insert session");
        sqlite3_reset(ins_s);

        for (int i = 0; i < 2; i++) {
            sqlite3_bind_int64(ins_i, 1, id);
            sqlite3_bind_text(ins_i, 2, i ? "system" : "boot", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins_i, 3, i ? "5157e4a256" : "b0075ha256", -1, SQLITE_STATIC);
            check(sqlite3_step(ins_i), c, "insert session_images");
            sqlite3_reset(ins_i);
        }
        for (unsigned k = 0; with_steps && k < nsteps; k++) {
            bool last_bad = outcome >= 96 && k + 1 == nsteps;
            sqlite3_bind_int64(ins_t, 1, id);
            sqlite3_bind_int(ins_t, 2, (int)k);
            sqlite3_bind_text(ins_t, 3, step_names[k], -1, SQLITE_STATIC);
            sqlite3_bind_int64(ins_t, 4, t + dur * k / 5);
            sqlite3_bind_int64(ins_t, 5, t + dur * (k + 1) / 5);
            sqlite3_bind_text(ins_t, 6, last_bad ? "FAIL" : "PASS", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins_t, 7,
                              k == 1     ? serial
                              : last_bad ? "write error"
                                         : "OKAY",
                              -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(ins_t, 8, k == 2 ? 8388608 : k == 3 ? 1073741824 : 0);
            sqlite3_bind_null(ins_t, 9);
            check(sqlite3_step(ins_t), c, "insert steps");
            sqlite3_reset(ins_t);
        }
        if (id % 100000 == 0) {
            fprintf(stderr, "\r%ld sessions", id);
            fflush(stderr);
        }
    }
    sqlite3_finalize(ins_s);
    sqlite3_finalize(ins_i);
    sqlite3_finalize(ins_t);
    check(sqlite3_exec(c, "COMMIT; PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL), c,
          "commit");
    sqlite3_close(c);
    fprintf(stderr, "\rbuilt %ld sessions (%" PRIu64 " units) in %.1f s\n", n, units,
            (now_ms() - t0) / 1000.0);
}

/* A sink that only counts, so the figures are the query's, not printing's. */
static int count_row(void *user, unsigned n, const char *const *values)
{
    (void)n, (void)values;
    (*(long *)user)++;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct result {
    const char *what;
    double median, max;
    long rows;
    const char *target;
};

static void print_row(const struct result *r)
{
    printf("| %-38s | %4d | %9.2f | %9.2f | %9ld | %-8s |\n", r->what, RUNS, r->median, r->max,
           r->rows, r->target);
}

static void summarize(struct result *r, double *ms)
{
    qsort(ms, RUNS, sizeof(*ms), cmp_double);
    r->median = ms[RUNS / 2];
    r->max = ms[RUNS - 1];
}

int main(int argc, char **argv)
{
    const char *path = "bench_records.db";
    long n = 1000000;
    bool reuse = false, with_steps = true;
    char err[600];
    struct stat sb;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sessions") && i + 1 < argc)
            n = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--db") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--reuse"))
            reuse = true;
        else if (!strcmp(argv[i], "--no-steps"))
            with_steps = false;
        else {
            fprintf(stderr, "usage: bench_records [--sessions N] [--db PATH] [--reuse] "
                            "[--no-steps]\n");
            return 2;
        }
    }
    if (n < 1000) {
        fprintf(stderr, "bench_records: --sessions must be at least 1000\n");
        return 2;
    }
    if (!reuse || stat(path, &sb) != 0)
        build(path, n, with_steps);
    if (stat(path, &sb) == 0)
        fprintf(stderr, "%s: %.0f MiB\n", path, (double)sb.st_size / 1048576.0);

    /* what the CLI does: open read-only through db/report.c */
    const char *paths[] = {path};
    struct db_reader *r;
    double t0 = now_ms();
    if (db_reader_open(paths, 1, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_records: %s\n", err);
        return 2;
    }
    double open_ms = now_ms() - t0;

    long rows = 0;
    struct db_sink sink = {NULL, count_row, &rows};
    struct result res[5];
    double ms[RUNS];
    memset(res, 0, sizeof(res));

    /* history: units spread over the range, a repeated one among them */
    res[0] = (struct result){"history SERIAL (rows: steps)", 0, 0, 0, "< 50 ms"};
    rows = 0;
    for (int i = 0; i < RUNS; i++) {
        char serial[24];
        serial_of((uint64_t)(n / RUNS) * (uint64_t)i * 97 / 100 + 13, serial, sizeof(serial));
        t0 = now_ms();
        if (db_history(r, serial, DB_SHAPE_ROWS, &sink, err, sizeof(err)) != 0)
            goto out_err;
        ms[i] = now_ms() - t0;
    }
    res[0].rows = rows / RUNS;
    summarize(&res[0], ms);

    res[1] = (struct result){"history SERIAL --format json", 0, 0, 0, "< 50 ms"};
    rows = 0;
    for (int i = 0; i < RUNS; i++) {
        char serial[24];
        serial_of((uint64_t)(n / RUNS) * (uint64_t)i * 97 / 100 + 29, serial, sizeof(serial));
        t0 = now_ms();
        if (db_history(r, serial, DB_SHAPE_JSON, &sink, err, sizeof(err)) != 0)
            goto out_err;
        ms[i] = now_ms() - t0;
    }
    res[1].rows = rows / RUNS;
    summarize(&res[1], ms);

    /* stats by slot for one day: a different day each run */
    res[2] = (struct result){"stats --by slot, one day", 0, 0, 0, "< 500 ms"};
    rows = 0;
    for (int i = 0; i < RUNS; i++) {
        struct db_filter f = {.has_since = true, .has_until = true};
        f.since_ms = END_MS - (int64_t)(1 + i * 4) * DAY_MS;
        f.until_ms = f.since_ms + DAY_MS;
        t0 = now_ms();
        if (db_stats(r, DB_BY_SLOT, &f, DB_SHAPE_ROWS, &sink, err, sizeof(err)) != 0)
            goto out_err;
        ms[i] = now_ms() - t0;
    }
    res[2].rows = rows / RUNS;
    summarize(&res[2], ms);

    res[3] = (struct result){"report, one day (rows: sessions)", 0, 0, 0, "-"};
    rows = 0;
    for (int i = 0; i < RUNS; i++) {
        struct db_filter f = {.has_since = true, .has_until = true};
        f.since_ms = END_MS - (int64_t)(1 + i * 4) * DAY_MS;
        f.until_ms = f.since_ms + DAY_MS;
        t0 = now_ms();
        if (db_report(r, &f, DB_SHAPE_ROWS, &sink, err, sizeof(err)) != 0)
            goto out_err;
        ms[i] = now_ms() - t0;
    }
    res[3].rows = rows / RUNS;
    summarize(&res[3], ms);

    res[4] = (struct result){"stats --by slot, all 90 days", 0, 0, 0, "-"};
    rows = 0;
    for (int i = 0; i < RUNS; i++) {
        t0 = now_ms();
        if (db_stats(r, DB_BY_SLOT, NULL, DB_SHAPE_ROWS, &sink, err, sizeof(err)) != 0)
            goto out_err;
        ms[i] = now_ms() - t0;
    }
    res[4].rows = rows / RUNS;
    summarize(&res[4], ms);

    printf("\n%ld sessions%s, SQLite %s, reader open %.2f ms\n\n", n,
           with_steps ? " with steps" : "", sqlite3_libversion(), open_ms);
    printf("| %-38s | %4s | %9s | %9s | %9s | %-8s |\n", "query (db/report.c)", "runs", "median ms",
           "max ms", "rows/run", "target");
    printf("|%s|------|-----------|-----------|-----------|----------|\n",
           "----------------------------------------");
    for (int i = 0; i < 5; i++)
        print_row(&res[i]);
    db_reader_close(r);
    return 0;

out_err:
    fprintf(stderr, "bench_records: %s\n", err);
    db_reader_close(r);
    return 3;
}
