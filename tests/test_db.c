/*
 * test_db: the SQLite record. Each test gets its own directory under /tmp
 * and its own uv loop; teardown fails the test if a handle is left open.
 * What the writer committed is read back through a second, independent
 * sqlite3 connection, as QA tooling would.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "db/db.h"
#include "helpers.h"
#include "st_error.h"

#define TIME_LIMIT_MS 60000

struct fx {
    char dir[256];
    char path[300];
    uv_loop_t loop;
    struct db *db;
    bool writer_running;
    bool stopped;
    int n_errors;
    char error[512];
    int events; /* order of callbacks: bumped by each */
};

/* One commit callback's record. */
struct commit {
    struct fx *fx;
    int calls;
    int status;
    int order;
    int64_t check_id; /* if > 0, look the row up from inside the callback */
    bool visible;
};

/* ---- fixture ------------------------------------------------------------ */

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof *fx);

    assert_non_null(fx);
    th_tmpdir("db", fx->dir, sizeof fx->dir);
    th_path(fx->path, sizeof fx->path, fx->dir, "station.db");
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    *state = fx;
    return 0;
}

static void on_stopped(struct db *db, void *user_data)
{
    struct fx *fx = user_data;

    (void)db;
    fx->stopped = true;
    fx->events++;
}

static void on_time_limit(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Run the loop until done(arg); fail after TIME_LIMIT_MS. */
static void run_until_done(struct fx *fx, bool (*done)(const void *arg), const void *arg)
{
    uv_timer_t timer;
    bool expired = false;

    assert_int_equal(uv_timer_init(&fx->loop, &timer), 0);
    timer.data = &expired;
    assert_int_equal(uv_timer_start(&timer, on_time_limit, TIME_LIMIT_MS, 0), 0);
    while (!done(arg) && !expired)
        uv_run(&fx->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_false(expired);
}

static bool flag_set(const void *flag)
{
    return *(const bool *)flag;
}

/* A callback counter (calls) that has counted one. */
static bool called(const void *calls)
{
    return *(const int *)calls > 0;
}

/* Run the loop until *flag is set; fail after TIME_LIMIT_MS. */
static void run_until(struct fx *fx, const bool *flag)
{
    run_until_done(fx, flag_set, flag);
}

static void stop_writer(struct fx *fx)
{
    fx->stopped = false;
    db_writer_stop(fx->db, on_stopped, fx);
    run_until(fx, &fx->stopped);
    fx->writer_running = false;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    if (fx->writer_running)
        stop_writer(fx);
    db_close(fx->db);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

static void on_error(const char *message, void *user_data)
{
    struct fx *fx = user_data;

    fx->n_errors++;
    fx->events++;
    snprintf(fx->error, sizeof fx->error, "%s", message);
}

static void open_and_start(struct fx *fx)
{
    char err[256];

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_writer_start(fx->db, &fx->loop, on_error, fx), 0);
    fx->writer_running = true;
}

/* ---- helpers reading the file directly ---------------------------------- */

static sqlite3 *peek_open(const char *path)
{
    return th_db_open(path, true);
}

/* The first column of the first row as text ("(null)" for NULL), or ""
 * when there is no row. */
static void peek_text(sqlite3 *c, const char *sql, char *out, size_t len)
{
    sqlite3_stmt *st;
    const unsigned char *t;

    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    out[0] = '\0';
    if (sqlite3_step(st) == SQLITE_ROW) {
        t = sqlite3_column_text(st, 0);
        snprintf(out, len, "%s", t ? (const char *)t : "(null)");
    }
    sqlite3_finalize(st);
}

static void assert_text(sqlite3 *c, const char *sql, const char *want)
{
    char got[512];

    peek_text(c, sql, got, sizeof got);
    assert_string_equal(got, want);
}

/* Through a second connection, a trigger that makes every session end
 * fail, as a full disk would. */
static void fail_session_ends(struct fx *fx)
{
    sqlite3 *c = peek_open(fx->path);

    assert_int_equal(sqlite3_exec(c,
                                  "CREATE TRIGGER no_end BEFORE UPDATE OF result ON sessions"
                                  " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(c);
}

/* ---- requests ----------------------------------------------------------- */

static const struct db_image_ref images[] = {
    {"boot", "aa11", "/img/boot.img", 4096},
    {"system", "bb22", "/img/system.img", 1u << 20},
};

static int begin(struct fx *fx, int64_t id)
{
    struct db_session_begin b = {
        .id = id,
        .station = "st-1",
        .slot = "A3",
        .port = "1-4.2.3",
        .usb_serial = NULL,
        .recipe = "phone",
        .recipe_version = "7",
        .started_ms = 1700000000000 + id,
        .n_images = 2,
        .images = images,
    };
    return db_session_begin(fx->db, &b);
}

static int step(struct fx *fx, int64_t id, unsigned seq, const char *name)
{
    struct db_step s = {
        .session_id = id,
        .seq = seq,
        .name = name,
        .started_ms = 1700000000100,
        .ended_ms = 1700000000200,
        .result = "PASS",
        .detail = NULL,
        .bytes = 1u << 20,
        .info = "line one\nline two",
    };
    return db_step(fx->db, &s);
}

static void on_commit(int status, void *user_data)
{
    struct commit *c = user_data;
    char sql[128];
    sqlite3 *peek;

    c->calls++;
    c->status = status;
    c->order = ++c->fx->events;
    if (c->check_id > 0) {
        peek = peek_open(c->fx->path);
        snprintf(sql, sizeof sql,
                 "SELECT COUNT(*) FROM sessions WHERE id = %lld AND result = 'PASS'",
                 (long long)c->check_id);
        c->visible = th_q_int(peek, sql) == 1;
        sqlite3_close(peek);
    }
}

static int end(struct fx *fx, int64_t id, const char *result, struct commit *c)
{
    struct db_session_end e = {
        .id = id,
        .serial = "SN0001",
        .product = "falcon",
        .ended_ms = 1700000009000,
        .result = result,
        .failed_step = strcmp(result, "PASS") ? "flash:system" : NULL,
        .reason = strcmp(result, "PASS") ? "device replied FAIL" : NULL,
        .bytes = 12345,
    };
    return db_session_end(fx->db, &e, on_commit, c);
}

/* Run the loop until c has been called. */
static void wait_commit(struct fx *fx, struct commit *c)
{
    run_until_done(fx, called, &c->calls);
}

/* ---- tests -------------------------------------------------------------- */

static void test_open_creates_schema(void **state)
{
    struct fx *fx = *state;
    char err[256];
    sqlite3 *c;

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_recovered_count(fx->db), 0);
    assert_int_equal(db_next_session_id(fx->db), 1);
    assert_int_equal(db_next_session_id(fx->db), 2);
    db_close(fx->db);
    fx->db = NULL;

    c = peek_open(fx->path);
    assert_int_equal(th_q_int(c, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    assert_text(c, "PRAGMA journal_mode", "wal");
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND"
                                 " name IN ('sessions','steps','images','session_images')"),
                     4);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND"
                                 " sql IS NOT NULL AND tbl_name = 'sessions'"),
                     4);
    sqlite3_close(c);

    /* Reopening an up-to-date file migrates nothing and still works. */
    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
}

static void test_round_trip(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx};
    int64_t id;
    sqlite3 *c;

    open_and_start(fx);
    id = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, id), 0);
    assert_int_equal(step(fx, id, 0, "flash:boot"), 0);
    assert_int_equal(step(fx, id, 1, "flash:system"), 0);
    assert_int_equal(end(fx, id, "FAIL", &cm), 0);
    wait_commit(fx, &cm);
    assert_int_equal(cm.status, 0);

    c = peek_open(fx->path);
    assert_text(
        c,
        "SELECT printf('%d|%s|%s|%s|%s|%s|%s|%s|%s|%d|%d|%s|%s|%s|%d|%s', id, station, slot,"
        " port, quote(usb_serial), serial, product, recipe, recipe_version, started_ms,"
        " ended_ms, result, failed_step, reason, bytes, last_step) FROM sessions",
        "1|st-1|A3|1-4.2.3|NULL|SN0001|falcon|phone|7|1700000000001|1700000009000|FAIL|"
        "flash:system|device replied FAIL|12345|flash:system");
    assert_text(
        c,
        "SELECT group_concat(printf('%d|%d|%s|%d|%d|%s|%s|%d|%s', session_id, seq, name,"
        " started_ms, ended_ms, result, quote(detail), bytes, info), ';') FROM"
        " (SELECT * FROM steps ORDER BY seq)",
        "1|0|flash:boot|1700000000100|1700000000200|PASS|NULL|1048576|line one\nline two;"
        "1|1|flash:system|1700000000100|1700000000200|PASS|NULL|1048576|line one\nline two");
    assert_text(c,
                "SELECT group_concat(session_id || '|' || name || '|' || sha256, ';') FROM"
                " (SELECT * FROM session_images ORDER BY name)",
                "1|boot|aa11;1|system|bb22");
    assert_text(c,
                "SELECT group_concat(sha256 || '|' || name || '|' || path || '|' || size, ';') FROM"
                " (SELECT * FROM images ORDER BY name)",
                "aa11|boot|/img/boot.img|4096;bb22|system|/img/system.img|1048576");
    sqlite3_close(c);
}

static void test_commit_cb_after_visible(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx};
    double mean_ms, max_ms;
    uint64_t commits;
    int64_t id;

    open_and_start(fx);
    id = db_next_session_id(fx->db);
    cm.check_id = id;
    assert_int_equal(begin(fx, id), 0);
    assert_int_equal(end(fx, id, "PASS", &cm), 0);
    wait_commit(fx, &cm);
    assert_int_equal(cm.status, 0);
    assert_true(cm.visible);
    db_commit_stats(fx->db, &commits, &mean_ms, &max_ms);
    print_message("one session: %llu transactions, commit mean %.3f ms, max %.3f ms\n",
                  (unsigned long long)commits, mean_ms, max_ms);
    assert_in_range(commits, 1, 2);
    stop_writer(fx);
    assert_int_equal(cm.calls, 1);
    assert_true(cm.order < fx->events); /* the stop callback came after */
}

static void test_group_commit(void **state)
{
    enum { N = 1000 };
    struct fx *fx = *state;
    struct commit *cm = calloc(N, sizeof *cm);
    double mean_ms, max_ms;
    uint64_t commits;
    int64_t id;
    sqlite3 *c;

    assert_non_null(cm);
    open_and_start(fx);
    for (int i = 0; i < N; i++) {
        cm[i].fx = fx;
        id = db_next_session_id(fx->db);
        assert_int_equal(begin(fx, id), 0);
        assert_int_equal(step(fx, id, 0, "flash:system"), 0);
        assert_int_equal(end(fx, id, "PASS", &cm[i]), 0);
    }
    wait_commit(fx, &cm[N - 1]);
    for (int i = 0; i < N; i++) {
        assert_int_equal(cm[i].calls, 1);
        assert_int_equal(cm[i].status, 0);
        if (i > 0)
            assert_true(cm[i].order > cm[i - 1].order);
    }
    db_commit_stats(fx->db, &commits, &mean_ms, &max_ms);
    print_message("%d sessions in %llu transactions, commit mean %.3f ms, max %.3f ms\n", N,
                  (unsigned long long)commits, mean_ms, max_ms);
    assert_in_range(commits, 1, N / 10);
    assert_true(max_ms >= mean_ms && mean_ms > 0.0);

    c = peek_open(fx->path);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS'"), N);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM steps"), N);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM session_images"), 2 * N);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM images"), 2);
    sqlite3_close(c);
    free(cm);
}

static void test_recovery(void **state)
{
    struct fx *fx = *state;
    char err[256];
    int64_t id, id2;
    sqlite3 *c;

    open_and_start(fx);
    id = db_next_session_id(fx->db);
    id2 = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, id), 0);
    assert_int_equal(step(fx, id, 0, "flash:boot"), 0);
    assert_int_equal(step(fx, id, 1, "flash:system"), 0);
    assert_int_equal(begin(fx, id2), 0); /* never reached a step */
    stop_writer(fx);
    db_close(fx->db);
    fx->db = NULL;

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_recovered_count(fx->db), 2);
    assert_int_equal(db_next_session_id(fx->db), id2 + 1);
    db_close(fx->db);
    fx->db = NULL;

    c = peek_open(fx->path);
    assert_text(c, "SELECT result || '|' || reason FROM sessions WHERE id = 1",
                "ABORTED|station stopped during flash:system");
    assert_text(c, "SELECT result || '|' || reason FROM sessions WHERE id = 2",
                "ABORTED|station stopped during start");
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE ended_ms > 1700000000000"),
                     2);
    sqlite3_close(c);

    /* Nothing left to recover the second time. */
    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_recovered_count(fx->db), 0);
}

static void test_recovery_counts_one(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx};
    char err[256];
    int64_t done, open_id;

    open_and_start(fx);
    done = db_next_session_id(fx->db);
    open_id = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, done), 0);
    assert_int_equal(end(fx, done, "PASS", &cm), 0);
    assert_int_equal(begin(fx, open_id), 0);
    assert_int_equal(step(fx, open_id, 0, "flash:system"), 0);
    stop_writer(fx);
    db_close(fx->db);
    fx->db = NULL;

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_recovered_count(fx->db), 1);
}

static void test_open_missing_dir(void **state)
{
    struct fx *fx = *state;
    char path[400], err[512];
    struct db *db = NULL;

    snprintf(path, sizeof path, "%s/nope/t.db", fx->dir);
    assert_int_equal(db_open(path, &db, err, sizeof err), ST_ENOENT);
    assert_null(db);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "unable to open database file"));
}

static void test_open_not_a_database(void **state)
{
    struct fx *fx = *state;
    struct db *db = NULL;
    char err[512];
    FILE *f;

    f = fopen(fx->path, "w");
    assert_non_null(f);
    fputs("hello world\n", f);
    fclose(f);
    assert_int_equal(db_open(fx->path, &db, err, sizeof err), ST_EDB);
    assert_null(db);
    assert_non_null(strstr(err, fx->path));
    assert_non_null(strstr(err, "not a database"));
}

static void test_open_read_only_file(void **state)
{
    struct fx *fx = *state;
    struct db *db = NULL;
    char err[512];
    bool immutable = false;

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    db_close(fx->db);
    fx->db = NULL;
    assert_int_equal(chmod(fx->path, 0444), 0);
    if (geteuid() == 0) {
        /* root writes through file permissions, not through the
         * immutable flag (ext4, xfs, btrfs; not every file system) */
        if (th_sh("chattr +i '%s' 2>/dev/null", fx->path) != 0)
            skip();
        immutable = true;
    }
    assert_int_equal(db_open(fx->path, &db, err, sizeof err), ST_EACCES);
    if (immutable) {
        assert_int_equal(th_sh("chattr -i '%s'", fx->path), 0);
    }
    assert_null(db);
    assert_non_null(strstr(err, fx->path));
    assert_non_null(strstr(err, "read-only"));
}

/* The first schema, exactly as version 1 of the station created it. */
static const char v1_schema[] =
    "CREATE TABLE sessions ("
    "  id INTEGER PRIMARY KEY, station TEXT, slot TEXT NOT NULL, port TEXT, usb_serial TEXT,"
    "  serial TEXT, product TEXT, recipe TEXT, recipe_version TEXT,"
    "  started_ms INTEGER NOT NULL, ended_ms INTEGER,"
    "  result TEXT CHECK(result IN ('PASS','FAIL','ABORTED')),"
    "  failed_step TEXT, reason TEXT, bytes INTEGER NOT NULL DEFAULT 0, last_step TEXT);"
    "CREATE TABLE steps ("
    "  session_id INTEGER NOT NULL REFERENCES sessions(id), seq INTEGER NOT NULL,"
    "  name TEXT NOT NULL, started_ms INTEGER, ended_ms INTEGER, result TEXT, detail TEXT,"
    "  bytes INTEGER, info TEXT, PRIMARY KEY(session_id, seq));"
    "CREATE TABLE images (sha256 TEXT, name TEXT, path TEXT, size INTEGER,"
    "  PRIMARY KEY(sha256, path));"
    "CREATE TABLE session_images ("
    "  session_id INTEGER NOT NULL REFERENCES sessions(id), name TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL, PRIMARY KEY(session_id, name));"
    "CREATE INDEX sessions_serial ON sessions(serial);"
    "CREATE INDEX sessions_slot_started ON sessions(slot, started_ms);"
    "CREATE INDEX sessions_started ON sessions(started_ms);"
    "PRAGMA user_version = 1;";

static const char v1_rows[] =
    "INSERT INTO sessions VALUES(1, 'st', 'A1', '1-1', 'U1', 'SN1', 'falcon', 'phone', '7',"
    "  1000, 2000, 'PASS', NULL, NULL, 42, 'reboot');"
    "INSERT INTO sessions VALUES(2, 'st', 'A2', '1-2', NULL, 'SN2', NULL, 'phone', '7',"
    "  1100, 2100, 'FAIL', 'flash:system', 'a, \"quoted\"' || char(10) || 'reason', 7, "
    "'flash:system');"
    "INSERT INTO sessions VALUES(3, 'st', 'A3', '1-3', NULL, NULL, NULL, 'phone', '7',"
    "  1200, NULL, NULL, NULL, NULL, 0, 'flash:boot');"
    "INSERT INTO steps VALUES(1, 0, 'flash:boot', 1000, 1500, 'PASS', 'OKAY', 21, 'i1');"
    "INSERT INTO steps VALUES(1, 1, 'reboot', 1500, 2000, 'PASS', NULL, 0, NULL);"
    "INSERT INTO steps VALUES(3, 0, 'flash:boot', 1200, 1300, 'PASS', NULL, 5, NULL);"
    "INSERT INTO images VALUES('aa', 'boot', '/b.img', 21);"
    "INSERT INTO session_images VALUES(1, 'boot', 'aa');"
    "INSERT INTO session_images VALUES(2, 'boot', 'aa');";

static void test_migrate_v1_to_latest(void **state)
{
    struct fx *fx = *state;
    char err[256], before[4096], after[4096];
    sqlite3 *c;

    assert_int_equal(sqlite3_open(fx->path, &c), SQLITE_OK);
    assert_int_equal(sqlite3_exec(c, v1_schema, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(c, v1_rows, NULL, NULL, NULL), SQLITE_OK);
    peek_text(c,
              "SELECT group_concat(quote(id) || quote(station) || quote(slot) || quote(port) ||"
              " quote(usb_serial) || quote(serial) || quote(product) || quote(recipe) ||"
              " quote(recipe_version) || quote(started_ms) || quote(failed_step) ||"
              " quote(bytes) || quote(last_step), ';') FROM sessions",
              before, sizeof before);
    sqlite3_close(c);

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_recovered_count(fx->db), 1); /* session 3 had no end */
    assert_int_equal(db_next_session_id(fx->db), 4);
    db_close(fx->db);
    fx->db = NULL;

    c = peek_open(fx->path);
    assert_int_equal(th_q_int(c, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    peek_text(c,
              "SELECT group_concat(quote(id) || quote(station) || quote(slot) || quote(port) ||"
              " quote(usb_serial) || quote(serial) || quote(product) || quote(recipe) ||"
              " quote(recipe_version) || quote(started_ms) || quote(failed_step) ||"
              " quote(bytes) || quote(last_step), ';') FROM sessions",
              after, sizeof after);
    assert_string_equal(before, after);
    assert_text(c, "SELECT result || '|' || reason FROM sessions WHERE id = 2",
                "FAIL|a, \"quoted\"\nreason");
    assert_text(c, "SELECT result || '|' || reason FROM sessions WHERE id = 3",
                "ABORTED|station stopped during flash:boot");
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM steps"), 3);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM session_images"), 2);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM images"), 1);
    /* the rebuilt table: new CHECK, every index back, references intact */
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sessions_v2'"),
                     0);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND"
                                 " sql IS NOT NULL AND tbl_name = 'sessions'"),
                     4);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM pragma_foreign_key_list('steps') WHERE"
                                 " \"table\" = 'sessions'"),
                     1);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM pragma_foreign_key_check"), 0);
    assert_text(c, "PRAGMA integrity_check", "ok");
    assert_int_equal(
        sqlite3_exec(c, "UPDATE sessions SET result = 'SKIPPED' WHERE id = 1", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(c, "UPDATE sessions SET result = 'MAYBE' WHERE id = 1", NULL, NULL, NULL),
        SQLITE_CONSTRAINT);
    sqlite3_close(c);

    /* Up to date now: opening again changes nothing. */
    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_recovered_count(fx->db), 0);
}

static void test_migration_refuses_orphans(void **state)
{
    struct fx *fx = *state;
    struct db *db = NULL;
    char err[512];
    sqlite3 *c;

    /* A v1 file with a step whose session is gone (written with foreign
     * keys off, as any tool may): the rebuild must not hide it. */
    assert_int_equal(sqlite3_open(fx->path, &c), SQLITE_OK);
    assert_int_equal(sqlite3_exec(c, v1_schema, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(c,
                                  "INSERT INTO steps VALUES(99, 0, 'x', 0, 0, 'PASS', NULL, 0,"
                                  " NULL)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(c);
    assert_int_equal(db_open(fx->path, &db, err, sizeof err), ST_EDB);
    assert_null(db);
    assert_non_null(strstr(err, fx->path));
    assert_non_null(strstr(err, "steps"));
    c = peek_open(fx->path); /* rolled back: still version 1 */
    assert_int_equal(th_q_int(c, "PRAGMA user_version"), 1);
    sqlite3_close(c);
}

struct found {
    int calls, status;
    int64_t passed_ms;
};

static void on_found(int status, int64_t passed_ms, void *user_data)
{
    struct found *f = user_data;

    f->calls++;
    f->status = status;
    f->passed_ms = passed_ms;
}

static void wait_found(struct fx *fx, struct found *f)
{
    run_until_done(fx, called, &f->calls);
}

static void test_find_pass(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx}, cm2 = {.fx = fx};
    struct found f1 = {0}, f2 = {0}, f3 = {0}, f4 = {0}, f5 = {0};
    int64_t a, b;

    open_and_start(fx);
    a = db_next_session_id(fx->db);
    b = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, a), 0);
    assert_int_equal(end(fx, a, "PASS", &cm), 0); /* SN0001, phone 7, ended 1700000009000 */
    /* queued behind the write: it sees it */
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "7", on_found, &f1), 0);
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "8", on_found, &f2), 0);
    assert_int_equal(db_find_pass(fx->db, "SN0002", "phone", "7", on_found, &f3), 0);
    assert_int_equal(db_find_pass(fx->db, "x' OR 1=1 --", "phone", "7", on_found, &f4), 0);
    wait_found(fx, &f4);
    assert_int_equal(f1.calls, 1);
    assert_int_equal(f1.status, 0);
    assert_int_equal(f1.passed_ms, 1700000009000);
    assert_int_equal(f2.passed_ms, 0);
    assert_int_equal(f3.passed_ms, 0);
    assert_int_equal(f4.passed_ms, 0);
    /* a FAIL or SKIPPED end is not a pass */
    assert_int_equal(begin(fx, b), 0);
    assert_int_equal(end(fx, b, "SKIPPED", &cm2), 0);
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "7", on_found, &f5), 0);
    wait_found(fx, &f5);
    assert_int_equal(f5.passed_ms, 1700000009000);
    assert_int_equal(cm2.status, 0);
    assert_int_equal(db_find_pass(fx->db, NULL, "phone", "7", on_found, &f5), ST_EINVAL);
    assert_int_equal(fx->n_errors, 0);
    stop_writer(fx);
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "7", on_found, &f5), ST_ECLOSED);
    assert_int_equal(f5.calls, 1);
}

static void test_find_pass_answered_by_drain_and_after_failure(void **state)
{
    struct fx *fx = *state;
    struct commit bad = {.fx = fx};
    struct found f1 = {0}, f2 = {0}, f3 = {0};
    int64_t a;

    open_and_start(fx);
    /* a lookup still queued when the writer stops is answered, once */
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "7", on_found, &f1), 0);
    stop_writer(fx);
    assert_int_equal(f1.calls, 1);
    assert_int_equal(f1.status, 0);
    assert_int_equal(fx->n_errors, 0);
    db_close(fx->db);
    fx->db = NULL;

    /* a lookup in a batch that fails gets ST_EDB; after that, none is taken */
    open_and_start(fx);
    fail_session_ends(fx);
    a = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, a), 0);
    assert_int_equal(end(fx, a, "PASS", &bad), 0);
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "7", on_found, &f2), 0);
    wait_found(fx, &f2);
    assert_int_equal(f2.calls, 1);
    assert_int_equal(f2.status, ST_EDB);
    assert_int_equal(fx->n_errors, 1);
    assert_int_equal(db_find_pass(fx->db, "SN0001", "phone", "7", on_found, &f3), ST_EDB);
    stop_writer(fx);
    assert_int_equal(f3.calls, 0);
}

static void test_busy_timeout_gives_locked_error(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx};
    char err[256];
    uint64_t t0;
    int64_t id;
    sqlite3 *c;

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    assert_int_equal(db_set_busy_timeout(fx->db, 100), 0);
    assert_int_equal(db_writer_start(fx->db, &fx->loop, on_error, fx), 0);
    fx->writer_running = true;
    assert_int_equal(db_set_busy_timeout(fx->db, 100), ST_EINVAL); /* too late */

    c = peek_open(fx->path);
    assert_int_equal(sqlite3_exec(c, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    t0 = uv_hrtime();
    id = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, id), 0);
    assert_int_equal(end(fx, id, "PASS", &cm), 0);
    wait_commit(fx, &cm);
    assert_int_equal(cm.status, ST_EDB);
    assert_true(uv_hrtime() - t0 < 3000000000ull);
    assert_int_equal(fx->n_errors, 1);
    assert_string_equal(fx->error, "DB ERROR: BEGIN: database is locked");
    assert_int_equal(sqlite3_exec(c, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(c);
}

static void test_newer_schema_refused(void **state)
{
    struct fx *fx = *state;
    struct db *db = NULL;
    char err[512];
    sqlite3 *c = NULL;

    assert_int_equal(sqlite3_open(fx->path, &c), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(c, "CREATE TABLE t(x); PRAGMA user_version = 99", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(c);
    assert_int_equal(db_open(fx->path, &db, err, sizeof err), ST_EDB);
    assert_null(db);
    assert_non_null(strstr(err, fx->path));
    assert_non_null(strstr(err, "99"));

    c = peek_open(fx->path); /* left as it was */
    assert_int_equal(th_q_int(c, "PRAGMA user_version"), 99);
    assert_text(c, "PRAGMA journal_mode", "delete");
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sessions'"), 0);
    sqlite3_close(c);
}

static void test_writer_failure(void **state)
{
    struct fx *fx = *state;
    struct commit ok = {.fx = fx}, bad = {.fx = fx}, never = {.fx = fx};
    int64_t a, b, d;
    sqlite3 *c;

    open_and_start(fx);
    a = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, a), 0);
    assert_int_equal(end(fx, a, "PASS", &ok), 0);
    wait_commit(fx, &ok);
    assert_int_equal(ok.status, 0);

    /* Another connection makes every session end fail, as a full disk
     * would; the begin may go in an earlier batch, the end never does. */
    fail_session_ends(fx);

    b = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, b), 0);
    assert_int_equal(end(fx, b, "PASS", &bad), 0);
    wait_commit(fx, &bad);
    assert_int_equal(bad.status, ST_EDB);
    assert_int_equal(fx->n_errors, 1);
    assert_true(strncmp(fx->error, "DB ERROR", 8) == 0);
    assert_string_equal(fx->error, "DB ERROR: UPDATE sessions (end): disk on fire");
    assert_true(bad.order > 0 && bad.order == fx->events); /* error reported first */

    d = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, d), ST_EDB);
    assert_int_equal(step(fx, b, 0, "flash:boot"), ST_EDB);
    assert_int_equal(end(fx, b, "FAIL", &never), ST_EDB);
    stop_writer(fx);
    assert_int_equal(never.calls, 0);
    assert_int_equal(bad.calls, 1);
    assert_int_equal(fx->n_errors, 1);

    c = peek_open(fx->path); /* the failed batch was rolled back */
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result IS NOT NULL"), 1);
    sqlite3_close(c);
}

static void test_enqueue_outside_running(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx};
    char err[256];
    int64_t id;

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    id = db_next_session_id(fx->db);
    assert_int_equal(begin(fx, id), ST_EINVAL); /* not started yet */
    assert_int_equal(db_writer_start(fx->db, &fx->loop, on_error, fx), 0);
    fx->writer_running = true;
    assert_int_equal(db_writer_start(fx->db, &fx->loop, on_error, fx), ST_EINVAL);
    stop_writer(fx);
    assert_int_equal(begin(fx, id), ST_ECLOSED);
    assert_int_equal(step(fx, id, 0, "flash:boot"), ST_ECLOSED);
    assert_int_equal(end(fx, id, "PASS", &cm), ST_ECLOSED);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(cm.calls, 0);
    assert_int_equal(fx->n_errors, 0);
}

static void test_stop_drains_queue(void **state)
{
    enum { N = 50 };
    struct fx *fx = *state;
    struct commit cm[N];
    int64_t id;
    sqlite3 *c;

    memset(cm, 0, sizeof cm);
    open_and_start(fx);
    for (int i = 0; i < N; i++) {
        cm[i].fx = fx;
        id = db_next_session_id(fx->db);
        assert_int_equal(begin(fx, id), 0);
        assert_int_equal(end(fx, id, "PASS", &cm[i]), 0);
    }
    stop_writer(fx); /* callbacks not yet run must run before the stop cb */
    for (int i = 0; i < N; i++) {
        assert_int_equal(cm[i].calls, 1);
        assert_int_equal(cm[i].status, 0);
        assert_true(cm[i].order < fx->events);
    }
    c = peek_open(fx->path);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS'"), N);
    sqlite3_close(c);
}

static void test_bad_requests_refused(void **state)
{
    struct fx *fx = *state;
    struct commit cm = {.fx = fx};
    struct db_image_ref bad_img = {"boot", NULL, "/img/boot.img", 1};
    struct db_session_begin b = {.slot = "A1", .started_ms = 1};
    int64_t id;

    open_and_start(fx);
    id = db_next_session_id(fx->db);
    /* ids below the first free one belong to earlier runs */
    assert_int_equal(begin(fx, id - 1), ST_EINVAL);
    assert_int_equal(begin(fx, 0), ST_EINVAL);
    b.id = id;
    b.slot = NULL;
    assert_int_equal(db_session_begin(fx->db, &b), ST_EINVAL);
    b.slot = "A1";
    b.n_images = 1;
    b.images = &bad_img;
    assert_int_equal(db_session_begin(fx->db, &b), ST_EINVAL);
    b.n_images = 0;
    assert_int_equal(db_session_begin(fx->db, &b), 0);
    assert_int_equal(step(fx, id, 0, NULL), ST_EINVAL);
    assert_int_equal(end(fx, id, "MAYBE", &cm), ST_EINVAL);
    assert_int_equal(db_session_end(fx->db, NULL, on_commit, &cm), ST_EINVAL);
    assert_int_equal(end(fx, id, "ABORTED", &cm), 0);
    wait_commit(fx, &cm);
    assert_int_equal(cm.status, 0);
    assert_int_equal(fx->n_errors, 0);
}

static void test_stop_without_start(void **state)
{
    struct fx *fx = *state;
    char err[256];

    assert_int_equal(db_open(fx->path, &fx->db, err, sizeof err), 0);
    db_writer_stop(fx->db, on_stopped, fx);
    assert_true(fx->stopped);
    assert_int_equal(begin(fx, db_next_session_id(fx->db)), ST_ECLOSED);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_open_creates_schema),
        T(test_round_trip),
        T(test_commit_cb_after_visible),
        T(test_group_commit),
        T(test_recovery),
        T(test_recovery_counts_one),
        T(test_open_missing_dir),
        T(test_open_not_a_database),
        T(test_open_read_only_file),
        T(test_migrate_v1_to_latest),
        T(test_migration_refuses_orphans),
        T(test_find_pass),
        T(test_find_pass_answered_by_drain_and_after_failure),
        T(test_busy_timeout_gives_locked_error),
        T(test_newer_schema_refused),
        T(test_writer_failure),
        T(test_enqueue_outside_running),
        T(test_stop_drains_queue),
        T(test_bad_requests_refused),
        T(test_stop_without_start),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
