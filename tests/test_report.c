/*
 * test_report: the QA queries (`station report`, `stats`, `history`) and
 * the serial policy, against the real station binary and its database.
 *
 * What the commands print is checked independently of our code: Python's
 * csv and json modules parse it and Python's sqlite3 module recomputes the
 * expected values from the file (scripts written into the test's own
 * directory). Two serial-policy cases need two devices with one serial at
 * once, which the simulated rack cannot make; they run the engine, the
 * database writer and station/serials.c in-process on virtual devices.
 *
 * Each test has its own directory and a SIGALRM time limit.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "common/st_error.h"
#include "config/recipe.h"
#include "db/db.h"
#include "engine/engine.h"
#include "engine/virt/vfb.h"
#include "engine/virt/vtransport.h"
#include "station/serials.h"
#include "helpers.h"

#define ALARM_S 150

struct fx {
    char dir[256];
    char db[300];
    char out[300];
    char err[300];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    th_tmpdir("report", fx->dir, sizeof(fx->dir));
    th_path(fx->db, sizeof(fx->db), fx->dir, "t.db");
    th_path(fx->out, sizeof(fx->out), fx->dir, "out.txt");
    th_path(fx->err, sizeof(fx->err), fx->dir, "err.txt");
    *state = fx;
    alarm(ALARM_S); /* a hung test dies instead of hanging ctest */
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    alarm(0);
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

/* ---- running the binary ------------------------------------------------- */

/* Start the station with args (NULL-terminated, without argv[0]); stdout
 * to `out`, stderr to fx->err. */
static pid_t spawn_to(struct fx *fx, const char *out, char *const args[])
{
    const char *argv[64];
    th_argv(argv, 64, STATION_BIN, (const char *const *)args);
    return th_spawn(argv, out, fx->err, NULL);
}

static int run(struct fx *fx, int limit_s, char *const args[])
{
    return th_wait_exit(spawn_to(fx, fx->out, args), limit_s, "station");
}

static void expect_in(const char *path, const char *needle)
{
    char *text = th_slurp(path, NULL);
    if (!strstr(text, needle))
        fail_msg("%s does not mention \"%s\":\n%s", path, needle, text);
    free(text);
}

/* Write `body` to fx->dir/name and run `python3 name args...`; fails the
 * test with the script's output unless it exits 0. */
static void python(struct fx *fx, const char *name, const char *body, const char *args)
{
    char path[400], log[400];
    th_path(path, sizeof(path), fx->dir, name);
    snprintf(log, sizeof(log), "%s/%s.log", fx->dir, name);
    th_spit(path, body, strlen(body));
    int rc = th_sh("python3 '%s' %s >'%s' 2>&1", path, args, log);
    if (rc != 0) {
        char *text = th_slurp(log, NULL);
        fail_msg("%s %s failed (%d):\n%s", name, args, rc, text);
    }
}

/* ---- reading the file directly ------------------------------------------ */

static sqlite3 *db_rw(const char *path)
{
    return th_db_open(path, true);
}

/* Everything in the file, as one string, to prove a query changed nothing. */
static char *fingerprint(const char *path)
{
    sqlite3 *c = db_rw(path);
    char *a =
        th_q_text(c, "SELECT COUNT(*) || ':' || COALESCE(SUM(length(quote(id) || quote(slot) ||"
                     " quote(serial) || quote(result) || quote(reason) || quote(ended_ms))), 0)"
                     " || ':' || COALESCE(group_concat(id || result, ','), '') FROM sessions");
    char *b =
        th_q_text(c, "SELECT (SELECT COUNT(*) FROM steps) || ':' || (SELECT COUNT(*) FROM"
                     " session_images) || ':' || (SELECT group_concat(name, ',') FROM"
                     " sqlite_master) || ':' || (SELECT user_version FROM pragma_user_version)");
    sqlite3_close(c);
    size_t n = strlen(a) + strlen(b) + 2;
    char *all = malloc(n);
    snprintf(all, n, "%s|%s", a, b);
    free(a);
    free(b);
    return all;
}

/* ---- a database with a known content ------------------------------------ */

/* Base of the synthetic rows: 2026-11-20T00:00:00Z. */
#define T0 1795132800000LL
#define DAY 86400000LL

/* Tricky reasons: commas, quotes, CR, LF, CRLF, UTF-8, SQL. */
static const char *const reasons[] = {
    "flash:system: flash: device replied FAIL: a, b, c",
    "getvar:product: \"quoted\" and ''single''",
    "line one\nline two",
    "windows\r\nline",
    "bare\rcarriage",
    "x' OR 1=1 --",
    "ünïcödé ✓, \"both\"\n",
    "",
};

/* Run the real station for 6 units (2 FAIL), then add 240 synthetic
 * sessions spread over 3 days, 4 slots and every result. */
static void make_db(struct fx *fx)
{
    char *args[] = {"run",
                    "--simulate",
                    "6",
                    "--exit-after",
                    "6",
                    "--pace",
                    "0",
                    "--seed",
                    "1234",
                    "--db",
                    fx->db,
                    "--fault",
                    "2:fail=flash:system",
                    "--fault",
                    "4:disconnect=1500000",
                    NULL};
    assert_int_equal(run(fx, 60, args), 1);

    sqlite3 *c = db_rw(fx->db);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_exec(c, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(c,
                           "INSERT INTO sessions(id, station, slot, port, usb_serial, serial,"
                           " product, recipe, recipe_version, started_ms, ended_ms, result,"
                           " failed_step, reason, bytes) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL),
        SQLITE_OK);
    static const char *const results[] = {"PASS",    "PASS",    "PASS", "FAIL",
                                          "ABORTED", "SKIPPED", "PASS", NULL};
    for (int i = 0; i < 240; i++) {
        char slot[16], serial[32];
        const char *result = results[i % 8];
        int64_t started = T0 + (int64_t)(i % 3) * DAY + (int64_t)i * 97 * 1000 + i % 7;
        snprintf(slot, sizeof(slot), "slot-%c", 'A' + i % 4);
        if (i == 17)
            snprintf(serial, sizeof(serial), "Q'1,\"x\"");
        else
            snprintf(serial, sizeof(serial), "SYN%04d", i % 150); /* some repeat */
        sqlite3_bind_int64(st, 1, 1000 + i);
        sqlite3_bind_text(st, 2, "st-syn", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, slot, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, slot, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 5, serial, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 6, serial, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 7, "falcon", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 8, i % 5 == 0 ? "tablet" : "phone", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 9, i % 10 == 0 ? "2" : "1", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 10, started);
        if (result)
            sqlite3_bind_int64(st, 11, started + 1000 + (i * 37) % 5000);
        else
            sqlite3_bind_null(st, 11);
        if (result)
            sqlite3_bind_text(st, 12, result, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 12);
        bool bad = result && (!strcmp(result, "FAIL") || !strcmp(result, "ABORTED"));
        if (bad) {
            sqlite3_bind_text(st, 13, "flash:system", -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 14, reasons[(i / 8) % 8], -1, SQLITE_STATIC);
        } else {
            sqlite3_bind_null(st, 13);
            sqlite3_bind_null(st, 14);
        }
        sqlite3_bind_int64(st, 15, (int64_t)i * 1000);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(c, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(c);
}

/* Run a query command; stdout into `out` (a path in fx->dir); returns the
 * exit code. */
static int query(struct fx *fx, const char *out_name, char *const args[])
{
    char out[400];
    snprintf(out, sizeof(out), "%s/%s", fx->dir, out_name);
    return th_wait_exit(spawn_to(fx, out, args), 60, "station");
}

static char *path_in(struct fx *fx, const char *name)
{
    static char buf[4][400];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", fx->dir, name);
    return buf[k];
}

/* ---- Python checks ------------------------------------------------------ */

/* argv: csv file, db file. Every session of the file, field for field. */
static const char py_csv_report[] =
    "import csv, sqlite3, sys, datetime\n"
    "rows = list(csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')))\n"
    "db = sqlite3.connect(sys.argv[2])\n"
    "want = {r[0]: r for r in db.execute('select id, slot, serial, result, reason, bytes,"
    " started_ms, ended_ms, failed_step from sessions')}\n"
    "assert len(rows) == len(want), (len(rows), len(want))\n"
    "def iso(ms):\n"
    "    if ms is None: return ''\n"
    "    d = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc)\n"
    "    return d.strftime('%Y-%m-%dT%H:%M:%S') + '.%03dZ' % (ms % 1000)\n"
    "def s(v): return '' if v is None else str(v)\n"
    "prev = None\n"
    "for r in rows:\n"
    "    w = want[int(r['id'])]\n"
    "    got = (r['slot'], r['serial'], r['result'], r['reason'], r['bytes'], r['started'],"
    " r['ended'], r['failed_step'])\n"
    "    exp = (w[1], s(w[2]), s(w[3]), s(w[4]), str(w[5]), iso(w[6]), iso(w[7]), s(w[8]))\n"
    "    assert got == exp, (got, exp)\n"
    "    if w[7] is not None:\n"
    "        assert r['duration_s'] == '%.3f' % ((w[7] - w[6]) / 1000.0), r\n"
    "    key = (w[6], int(r['id']))\n"
    "    assert prev is None or prev <= key, 'not oldest first'\n"
    "    prev = key\n"
    "tricky = [r['reason'] for r in rows if '\\n' in r['reason'] or '\\r' in r['reason']]\n"
    "assert len(tricky) > 10, tricky\n"
    "print('ok', len(rows))\n";

/* argv: json file, db file, filter ('' or a result word). */
static const char py_json_report[] =
    "import json, sqlite3, sys\n"
    "rows = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "db = sqlite3.connect(sys.argv[2])\n"
    "q = 'select id, reason, result, serial, ended_ms - started_ms, bytes from sessions'\n"
    "args = ()\n"
    "if sys.argv[3]:\n"
    "    q += ' where result = ?'\n"
    "    args = (sys.argv[3],)\n"
    "want = {r[0]: r for r in db.execute(q, args)}\n"
    "assert isinstance(rows, list) and len(rows) == len(want), (len(rows), len(want))\n"
    "for r in rows:\n"
    "    w = want[r['id']]\n"
    "    assert (r['reason'], r['result'], r['serial'], r['bytes']) == w[1:4] + (w[5],), (r, w)\n"
    "    if w[4] is None: assert r['duration_s'] is None\n"
    "    else: assert abs(r['duration_s'] - w[4] / 1000.0) < 1e-9, (r, w)\n"
    "print('ok', len(rows))\n";

/* argv: csv file, db file, by, since_ms or '', until_ms or ''. */
static const char py_stats[] =
    "import csv, sqlite3, sys, datetime, statistics, math\n"
    "rows = list(csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')))\n"
    "db = sqlite3.connect(sys.argv[2])\n"
    "by = sys.argv[3]\n"
    "since = int(sys.argv[4]) if sys.argv[4] else None\n"
    "until = int(sys.argv[5]) if sys.argv[5] else None\n"
    "def key(slot, recipe, ver, started, reason):\n"
    "    d = datetime.datetime.fromtimestamp(started // 1000, datetime.timezone.utc)\n"
    "    return {'slot': slot, 'recipe': (recipe or '') + ' ' + (ver or ''),\n"
    "            'day': d.strftime('%Y-%m-%d'), 'hour': d.strftime('%Y-%m-%dT%H:00Z'),\n"
    "            'error': reason if reason is not None else '(no reason)'}[by]\n"
    "g = {}\n"
    "for slot, recipe, ver, st, en, res, reason in db.execute('select slot, recipe,"
    " recipe_version, started_ms, ended_ms, result, reason from sessions'):\n"
    "    if since is not None and st < since: continue\n"
    "    if until is not None and st >= until: continue\n"
    "    if by == 'error' and res not in ('FAIL', 'ABORTED'): continue\n"
    "    e = g.setdefault(key(slot, recipe, ver, st, reason), {'n': 0, 'PASS': 0, 'FAIL': 0,"
    " 'ABORTED': 0, 'SKIPPED': 0, None: 0, 'd': []})\n"
    "    e['n'] += 1\n"
    "    e[res] += 1\n"
    "    if res == 'PASS': e['d'].append(en - st)\n"
    "assert len(rows) == len(g), (len(rows), sorted(g))\n"
    "assert len(g) > 0\n"
    "for r in rows:\n"
    "    e = g[r[by]]\n"
    "    p, f = e['PASS'], e['FAIL']\n"
    "    want = (str(e['n']), str(p), str(f), str(e['ABORTED']), str(e['SKIPPED']),\n"
    "            (lambda t: '%d.%d' % (t // 10, t % 10))((1000 * p + (p + f) // 2) // (p + f))"
    " if p + f else '',\n"
    "            (lambda ms: '%d.%03d' % (ms // 1000, ms % 1000))(math.floor("
    "statistics.median(e['d']) + 0.5)) if e['d'] else '')\n"
    "    got = (r['sessions'], r['passed'], r['failed'], r['aborted'], r['skipped'],"
    " r['yield_pct'], r['median_s'])\n"
    "    assert got == want, (r[by], got, want)\n"
    "keys = [r[by] for r in rows]\n"
    "if by == 'error':\n"
    "    ns = [g[k]['n'] for k in keys]\n"
    "    assert ns == sorted(ns, reverse=True)\n"
    "else:\n"
    "    assert keys == sorted(keys), keys\n"
    "print('ok', by, len(rows))\n";

/* argv: json file; it must parse and be a list of objects. */
static const char py_json_parses[] =
    "import json, sys\n"
    "d = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "assert isinstance(d, list) and all(isinstance(x, dict) for x in d)\n"
    "n = int(sys.argv[2])\n"
    "assert n < 0 or len(d) == n, (len(d), n)\n"
    "print('ok', len(d))\n";

/* ---- tests: report ------------------------------------------------------ */

static void test_sql_in_filters_matches_nothing_changes_nothing(void **state)
{
    struct fx *fx = *state;
    make_db(fx);
    char *before = fingerprint(fx->db);

    const char *evil[] = {"x' OR 1=1 --",
                          "' OR '1'='1",
                          "\"; DROP TABLE sessions; --",
                          "x'); DELETE FROM sessions; --",
                          "%",
                          "_",
                          "*"};
    const char *opts[] = {"--serial", "--slot", "--recipe"};
    for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++) {
        for (size_t o = 0; o < 3; o++) {
            char *args[] = {"report",        "--db",     fx->db, (char *)opts[o],
                            (char *)evil[i], "--format", "csv",  NULL};
            assert_int_equal(query(fx, "q.csv", args), 0);
            char *out = th_slurp(path_in(fx, "q.csv"), NULL);
            if (th_count(out, "\r\n") != 1)
                fail_msg("%s \"%s\" matched rows:\n%s", opts[o], evil[i], out);
            free(out);
        }
        char *h[] = {"history", (char *)evil[i], "--db", fx->db, "--format", "json", NULL};
        assert_int_equal(query(fx, "h.json", h), 0);
        char *out = th_slurp(path_in(fx, "h.json"), NULL);
        assert_string_equal(out, "[]\n");
        free(out);
        char *s[] = {"stats", "--db", fx->db, "--slot", (char *)evil[i], "--format", "csv", NULL};
        assert_int_equal(query(fx, "s.csv", s), 0);
        out = th_slurp(path_in(fx, "s.csv"), NULL);
        assert_int_equal(th_count(out, "\r\n"), 1);
        free(out);
    }
    /* a serial that really holds quotes and a comma is found, exactly */
    char *q[] = {"report", "--db", fx->db, "--serial", "Q'1,\"x\"", "--format", "csv", NULL};
    assert_int_equal(query(fx, "q.csv", q), 0);
    char *out = th_slurp(path_in(fx, "q.csv"), NULL);
    assert_int_equal(th_count(out, "\r\n"), 2);
    assert_non_null(strstr(out, ",\"Q'1,\"\"x\"\"\","));
    free(out);

    char *after = fingerprint(fx->db);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static void test_csv_reads_back_exactly(void **state)
{
    struct fx *fx = *state;
    char args_buf[900];
    make_db(fx);
    char *args[] = {"report", "--db", fx->db, "--format", "csv", NULL};
    assert_int_equal(query(fx, "all.csv", args), 0);
    snprintf(args_buf, sizeof(args_buf), "'%s' '%s'", path_in(fx, "all.csv"), fx->db);
    python(fx, "csv_report.py", py_csv_report, args_buf);
    /* RFC 4180: CRLF between records, quoted fields keep their bare LF */
    char *out = th_slurp(path_in(fx, "all.csv"), NULL);
    assert_non_null(strstr(out, "\"line one\nline two\""));
    assert_non_null(strstr(out, "\"getvar:product: \"\"quoted\"\" and ''single''\""));
    free(out);
}

static void test_json_parses_and_matches(void **state)
{
    struct fx *fx = *state;
    char a[900];
    make_db(fx);

    char *r1[] = {"report", "--db", fx->db, "--format", "json", NULL};
    assert_int_equal(query(fx, "r.json", r1), 0);
    snprintf(a, sizeof(a), "'%s' '%s' ''", path_in(fx, "r.json"), fx->db);
    python(fx, "json_report.py", py_json_report, a);

    char *r2[] = {"report", "--db", fx->db, "--result", "fail", "--format", "json", NULL};
    assert_int_equal(query(fx, "f.json", r2), 0);
    snprintf(a, sizeof(a), "'%s' '%s' FAIL", path_in(fx, "f.json"), fx->db);
    python(fx, "json_report.py", py_json_report, a);

    static const char *const bys[] = {"slot", "recipe", "day", "hour", "error"};
    for (int i = 0; i < 5; i++) {
        char *s[] = {"stats", "--db", fx->db, "--by", (char *)bys[i], "--format", "json", NULL};
        assert_int_equal(query(fx, "s.json", s), 0);
        snprintf(a, sizeof(a), "'%s' -1", path_in(fx, "s.json"));
        python(fx, "json_parses.py", py_json_parses, a);
    }
    char *h[] = {"history", "SYN0010", "--db", fx->db, "--format", "json", NULL};
    assert_int_equal(query(fx, "h.json", h), 0);
    snprintf(a, sizeof(a), "'%s' 2", path_in(fx, "h.json"));
    python(fx, "json_parses.py", py_json_parses, a);
    /* nothing matches: still a JSON array */
    char *e[] = {"report", "--db", fx->db, "--serial", "none", "--format", "json", NULL};
    assert_int_equal(query(fx, "e.json", e), 0);
    snprintf(a, sizeof(a), "'%s' 0", path_in(fx, "e.json"));
    python(fx, "json_parses.py", py_json_parses, a);
}

static void test_stats_equal_independent_counts(void **state)
{
    struct fx *fx = *state;
    char a[900];
    make_db(fx);
    static const char *const bys[] = {"slot", "recipe", "day", "hour", "error"};
    for (int i = 0; i < 5; i++) {
        char *s[] = {"stats", "--db", fx->db, "--by", (char *)bys[i], "--format", "csv", NULL};
        assert_int_equal(query(fx, "s.csv", s), 0);
        snprintf(a, sizeof(a), "'%s' '%s' %s '' ''", path_in(fx, "s.csv"), fx->db, bys[i]);
        python(fx, "stats.py", py_stats, a);
    }
    /* one day, as QA asks for it: ISO dates, until exclusive */
    char *d[] = {"stats",      "--db",    fx->db,       "--by",     "slot", "--since",
                 "2026-11-21", "--until", "2026-11-22", "--format", "csv",  NULL};
    assert_int_equal(query(fx, "d.csv", d), 0);
    snprintf(a, sizeof(a), "'%s' '%s' slot %lld %lld", path_in(fx, "d.csv"), fx->db,
             (long long)(T0 + DAY), (long long)(T0 + 2 * DAY));
    python(fx, "stats.py", py_stats, a);
    /* the default grouping is by slot; table output has the header */
    char *t[] = {"stats", "--db", fx->db, NULL};
    assert_int_equal(query(fx, "t.txt", t), 0);
    expect_in(path_in(fx, "t.txt"), "slot");
    expect_in(path_in(fx, "t.txt"), "yield_pct");
    expect_in(path_in(fx, "t.txt"), "slot-C");
}

static void test_time_filters(void **state)
{
    struct fx *fx = *state;
    make_db(fx);
    sqlite3 *c = db_rw(fx->db);
    char sql[300];
    /* the 2nd synthetic day, three spellings of the same bounds */
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM sessions WHERE started_ms >= %lld AND"
             " started_ms < %lld",
             (long long)(T0 + DAY), (long long)(T0 + 2 * DAY));
    long long want = th_q_int(c, sql);
    assert_true(want > 10);
    const char *spell[][2] = {
        {"2026-11-21", "2026-11-22"},
        {"2026-11-21T00:00:00Z", "2026-11-22T00:00"},
        {"1795219200", "1795305600"},
    };
    for (int i = 0; i < 3; i++) {
        char *args[] = {"report",
                        "--db",
                        fx->db,
                        "--since",
                        (char *)spell[i][0],
                        "--until",
                        (char *)spell[i][1],
                        "--format",
                        "csv",
                        NULL};
        assert_int_equal(query(fx, "q.csv", args), 0);
        char *out = th_slurp(path_in(fx, "q.csv"), NULL);
        /* records end in CRLF; reasons hold no CRLF in PASS rows only, so
         * count with Python-free means: ids are unique, count ",st-syn," */
        assert_int_equal(th_count(out, ",st-syn,"), want);
        free(out);
    }
    /* --slot and --result narrow further; --recipe too */
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM sessions WHERE slot = 'slot-B' AND"
             " result = 'PASS' AND recipe = 'phone'");
    want = th_q_int(c, sql);
    char *args[] = {"report", "--db",     fx->db,  "--slot",   "slot-B", "--result",
                    "pass",   "--recipe", "phone", "--format", "csv",    NULL};
    assert_int_equal(query(fx, "q.csv", args), 0);
    char *out = th_slurp(path_in(fx, "q.csv"), NULL);
    assert_int_equal(th_count(out, ",slot-B,"), want);
    assert_int_equal(th_count(out, ",PASS,"), want);
    free(out);
    sqlite3_close(c);
}

static void test_history_lists_steps(void **state)
{
    struct fx *fx = *state;
    make_db(fx);
    sqlite3 *c = db_rw(fx->db);
    char *serial = th_q_text(c, "SELECT serial FROM sessions WHERE slot = 'virt-01'");
    char *failed = th_q_text(c, "SELECT serial FROM sessions WHERE slot = 'virt-02'");
    sqlite3_close(c);

    char *h[] = {"history", serial, "--db", fx->db, "--format", "csv", NULL};
    assert_int_equal(query(fx, "h.csv", h), 0);
    char *out = th_slurp(path_in(fx, "h.csv"), NULL);
    static const char *const steps[] = {",getvar:product,PASS,", ",getvar:serialno,PASS,",
                                        ",flash:boot,PASS,", ",flash:system,PASS,",
                                        ",reboot,PASS,"};
    for (int i = 0; i < 5; i++)
        if (th_count(out, steps[i]) != 1)
            fail_msg("history lacks %s:\n%s", steps[i], out);
    assert_int_equal(th_count(out, "\r\n"), 6); /* header + 5 steps */
    assert_non_null(strstr(out, "boot="));      /* image hashes */
    free(out);

    char *t[] = {"history", failed, "--db", fx->db, NULL};
    assert_int_equal(query(fx, "h.txt", t), 0);
    out = th_slurp(path_in(fx, "h.txt"), NULL);
    assert_non_null(strstr(out, "FAIL"));
    assert_non_null(strstr(out, "flash:system"));
    assert_non_null(strstr(out, "injected fault"));
    free(out);

    /* the USB serial finds it too; an unknown serial says so */
    char *u[] = {"history", "nobody", "--db", fx->db, NULL};
    assert_int_equal(query(fx, "u.txt", u), 0);
    expect_in(path_in(fx, "u.txt"), "no sessions recorded for serial nobody");
    free(serial);
    free(failed);
}

static void expect_usage(struct fx *fx, char *const args[], const char *needle)
{
    int rc = query(fx, "bad.txt", args);
    char *err = th_slurp(fx->err, NULL);
    if (rc != 2 || !strstr(err, needle))
        fail_msg("exit %d, stderr \"%s\" should name \"%s\"", rc, err, needle);
    free(err);
}

static void test_bad_values_exit_2(void **state)
{
    struct fx *fx = *state;
    make_db(fx);
    char *a1[] = {"report", "--db", fx->db, "--since", "yesterday", NULL};
    expect_usage(fx, a1, "--since");
    char *a2[] = {"report", "--db", fx->db, "--until", "2026-13-01", NULL};
    expect_usage(fx, a2, "--until");
    char *a3[] = {"report", "--db", fx->db, "--since", "2026-02-30", NULL};
    expect_usage(fx, a3, "--since");
    char *a4[] = {"report", "--db", fx->db, "--result", "maybe", NULL};
    expect_usage(fx, a4, "--result");
    char *a5[] = {"report", "--db", fx->db, "--format", "xml", NULL};
    expect_usage(fx, a5, "--format");
    char *a6[] = {"stats", "--db", fx->db, "--by", "week", NULL};
    expect_usage(fx, a6, "--by");
    char *a7[] = {"history", "--db", fx->db, NULL};
    expect_usage(fx, a7, "SERIAL");
    char *a8[] = {"report", "--db", fx->db, "--since", "2026-11-22", "--until", "2026-11-21", NULL};
    expect_usage(fx, a8, "--until");
    char *a9[] = {"report", "--bogus", NULL};
    expect_usage(fx, a9, "--bogus");
    char *a10[] = {"history", "S1", "--slot", "x", "--db", fx->db, NULL};
    expect_usage(fx, a10, "--slot");

    /* files: missing, not SQLite, SQLite but not ours, newer schema */
    char *missing = path_in(fx, "missing.db");
    char *a11[] = {"report", "--db", fx->db, "--db", missing, NULL};
    expect_usage(fx, a11, missing);
    char *text = path_in(fx, "text.db");
    FILE *f = fopen(text, "w");
    fputs("this is not an sqlite database, just text that is long enough to matter\n", f);
    fclose(f);
    char *a12[] = {"stats", "--db", text, NULL};
    expect_usage(fx, a12, text);
    char *other = path_in(fx, "other.db");
    sqlite3 *c;
    assert_int_equal(sqlite3_open(other, &c), SQLITE_OK);
    assert_int_equal(sqlite3_exec(c, "CREATE TABLE t(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(c);
    char *a13[] = {"history", "S1", "--db", other, NULL};
    expect_usage(fx, a13, other);
    expect_in(fx->err, "not a station database");
    char *newer = path_in(fx, "newer.db");
    assert_int_equal(sqlite3_open(newer, &c), SQLITE_OK);
    assert_int_equal(sqlite3_exec(c,
                                  "CREATE TABLE sessions(x); CREATE TABLE steps(x);"
                                  " CREATE TABLE images(x); CREATE TABLE session_images(x);"
                                  " PRAGMA user_version = 99",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(c);
    char *a14[] = {"report", "--db", newer, NULL};
    expect_usage(fx, a14, newer);
    expect_in(fx->err, "99");
    /* the default is station.db in the current directory: none here */
    char *a15[] = {"report", NULL};
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(fx->dir), 0);
    expect_usage(fx, a15, "station.db");
    assert_int_equal(chdir(cwd), 0);
}

static void test_several_databases_at_once(void **state)
{
    struct fx *fx = *state;
    make_db(fx);
    /* a second line, its file name holding a quote */
    char *second = path_in(fx, "line o'two.db");
    char *args[] = {"run",    "--simulate", "3",    "--exit-after", "3",
                    "--pace", "0",          "--db", second,         NULL};
    assert_int_equal(run(fx, 60, args), 0);

    sqlite3 *c = db_rw(fx->db);
    long long n1 = th_q_int(c, "SELECT COUNT(*) FROM sessions");
    long long p1 = th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS'");
    sqlite3_close(c);

    char *r[] = {"report", "--db", fx->db, "--db", second, "--format", "csv", NULL};
    assert_int_equal(query(fx, "r.csv", r), 0);
    char *out = th_slurp(path_in(fx, "r.csv"), NULL);
    assert_true(strncmp(out, "db,id,", 6) == 0);
    char label[520];
    snprintf(label, sizeof(label), "\r\n%s,", second);
    assert_int_equal(th_count(out, label), 3);
    free(out);

    char *s[] = {"stats", "--db",   fx->db,     "--db", second,
                 "--by",  "recipe", "--format", "json", NULL};
    assert_int_equal(query(fx, "s.json", s), 0);
    char a[900], py[600];
    snprintf(py, sizeof(py),
             "import json, sys\n"
             "d = json.load(open(sys.argv[1]))\n"
             "assert sum(x['sessions'] for x in d) == %lld + 3, d\n"
             "assert sum(x['passed'] for x in d) == %lld + 3, d\n"
             "print('ok')\n",
             n1, p1);
    snprintf(a, sizeof(a), "'%s'", path_in(fx, "s.json"));
    python(fx, "sum.py", py, a);
}

static void test_readers_never_block_the_station(void **state)
{
    struct fx *fx = *state;
    /* a station that keeps recording: 8 slow units replugged forever */
    char *args[] = {"run",         "--simulate", "8",    "--pace", "20",
                    "--replug-ms", "50",         "--db", fx->db,   NULL};
    pid_t pid = spawn_to(fx, fx->out, args);
    int passes = 0;
    for (int i = 0; i < 100 && passes < 3; i++) {
        th_sleep_ms(100);
        passes = (int)th_file_count(fx->out, " PASS ");
    }
    assert_true(passes >= 3);

    /* a reader holding a read transaction open does not stop commits */
    sqlite3 *c = th_db_open(fx->db, false);
    assert_int_equal(sqlite3_exec(c, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    long long seen = th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS'");
    for (int i = 0; i < 10; i++) {
        char *r[] = {"report", "--db", fx->db, "--format", "csv", NULL};
        uint64_t t0 = uv_hrtime();
        assert_int_equal(query(fx, "r.csv", r), 0);
        char *s[] = {"stats", "--db", fx->db, "--by", "hour", NULL};
        assert_int_equal(query(fx, "s.txt", s), 0);
        assert_true(uv_hrtime() - t0 < 5000000000ull);
    }
    int later = (int)th_file_count(fx->out, " PASS ");
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS'"), seen);
    assert_int_equal(sqlite3_exec(c, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(c);
    if (later <= passes)
        fail_msg("no PASS committed while readers ran (%d then %d)", passes, later);
    kill(pid, SIGTERM);
    assert_int_equal(th_wait_exit(pid, 30, "station"), 0);
    assert_false(th_file_has(fx->out, "DB ERROR"));
}

static void test_v1_file_is_read_then_migrated(void **state)
{
    struct fx *fx = *state;
    sqlite3 *c;
    assert_int_equal(sqlite3_open(fx->db, &c), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(c,
                     "CREATE TABLE sessions (id INTEGER PRIMARY KEY, station TEXT, slot TEXT NOT"
                     " NULL, port TEXT, usb_serial TEXT, serial TEXT, product TEXT, recipe TEXT,"
                     " recipe_version TEXT, started_ms INTEGER NOT NULL, ended_ms INTEGER,"
                     " result TEXT CHECK(result IN ('PASS','FAIL','ABORTED')), failed_step TEXT,"
                     " reason TEXT, bytes INTEGER NOT NULL DEFAULT 0, last_step TEXT);"
                     "CREATE TABLE steps (session_id INTEGER NOT NULL REFERENCES sessions(id),"
                     " seq INTEGER NOT NULL, name TEXT NOT NULL, started_ms INTEGER, ended_ms"
                     " INTEGER, result TEXT, detail TEXT, bytes INTEGER, info TEXT,"
                     " PRIMARY KEY(session_id, seq));"
                     "CREATE TABLE images (sha256 TEXT, name TEXT, path TEXT, size INTEGER,"
                     " PRIMARY KEY(sha256, path));"
                     "CREATE TABLE session_images (session_id INTEGER NOT NULL REFERENCES"
                     " sessions(id), name TEXT NOT NULL, sha256 TEXT NOT NULL,"
                     " PRIMARY KEY(session_id, name));"
                     "CREATE INDEX sessions_serial ON sessions(serial);"
                     "CREATE INDEX sessions_slot_started ON sessions(slot, started_ms);"
                     "CREATE INDEX sessions_started ON sessions(started_ms);"
                     "INSERT INTO sessions VALUES(7, 'old', 'A1', 'A1', NULL, 'OLD1', NULL,"
                     " 'demo-phone', '1.0', 1700000000000, 1700000005000, 'PASS', NULL, NULL,"
                     " 5, 'reboot');"
                     "PRAGMA user_version = 1;",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(c);
    /* QA reads an old file as it is (read-only: no migration) */
    char *r[] = {"report", "--db", fx->db, "--format", "csv", NULL};
    assert_int_equal(query(fx, "r.csv", r), 0);
    expect_in(path_in(fx, "r.csv"), "7,old,A1,A1,OLD1,");
    c = db_rw(fx->db);
    assert_int_equal(th_q_int(c, "PRAGMA user_version"), 1);
    sqlite3_close(c);
    /* the station migrates it and goes on numbering after it */
    char *args[] = {"run",    "--simulate", "1",    "--exit-after", "1",
                    "--pace", "0",          "--db", fx->db,         NULL};
    assert_int_equal(run(fx, 60, args), 0);
    c = db_rw(fx->db);
    assert_int_equal(th_q_int(c, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE id = 7 AND serial = 'OLD1'"),
                     1);
    assert_int_equal(th_q_int(c, "SELECT MIN(id) FROM sessions WHERE id > 7"), 8);
    sqlite3_close(c);
}

/* ---- tests: serial policy (real binary) --------------------------------- */

static void test_serial_policy_skip_fail_reflash(void **state)
{
    struct fx *fx = *state;
    char *first[] = {"run", "--simulate", "2",    "--exit-after", "2",    "--pace",
                     "0",   "--seed",     "4242", "--db",         fx->db, NULL};
    assert_int_equal(run(fx, 60, first), 0);

    /* default policy: skip; nothing is written to the units */
    assert_int_equal(run(fx, 60, first), 0);
    char *out = th_slurp(fx->out, NULL);
    assert_int_equal(th_count(out, " ALREADY DONE (already passed demo-phone 1.0 on 20"), 2);
    assert_int_equal(th_count(out, " PASS "), 0);
    free(out);
    sqlite3 *c = db_rw(fx->db);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'SKIPPED' AND"
                                 " bytes = 0 AND failed_step IS NULL AND reason LIKE"
                                 " 'already passed demo-phone 1.0 on 20%Z'"),
                     2);
    /* only the two getvar steps ran on a skipped unit */
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM steps JOIN sessions ON id = session_id WHERE"
                                 " sessions.result = 'SKIPPED'"),
                     4);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM steps JOIN sessions ON id = session_id WHERE"
                                 " sessions.result = 'SKIPPED' AND name LIKE 'flash:%'"),
                     0);
    sqlite3_close(c);

    /* fail: FAIL with a reason naming serial, recipe and date; exit 1 */
    char *fail[] = {"run",  "--simulate", "2",    "--exit-after", "2",    "--pace",
                    "0",    "--seed",     "4242", "--db",         fx->db, "--serial-policy",
                    "fail", NULL};
    assert_int_equal(run(fx, 60, fail), 1);
    c = db_rw(fx->db);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'FAIL' AND"
                                 " failed_step = 'getvar:serialno' AND reason LIKE 'serial SIM%'"
                                 " || ' already passed demo-phone 1.0 on 20%' AND bytes = 0"),
                     2);
    sqlite3_close(c);
    expect_in(fx->out, " already passed demo-phone 1.0 on ");

    /* reflash: flashed again */
    char *again[] = {"run",     "--simulate", "2",    "--exit-after", "2",    "--pace",
                     "0",       "--seed",     "4242", "--db",         fx->db, "--serial-policy",
                     "reflash", NULL};
    assert_int_equal(run(fx, 60, again), 0);
    c = db_rw(fx->db);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS' AND"
                                 " bytes = 5242880"),
                     4);
    sqlite3_close(c);

    /* a different seed: new serials, flashed normally */
    char *fresh[] = {"run", "--simulate", "2",    "--exit-after", "2",    "--pace",
                     "0",   "--seed",     "4343", "--db",         fx->db, NULL};
    assert_int_equal(run(fx, 60, fresh), 0);
    out = th_slurp(fx->out, NULL);
    assert_int_equal(th_count(out, " PASS "), 2);
    free(out);

    char *bad[] = {"run", "--simulate", "2", "--db", fx->db, "--serial-policy", "maybe", NULL};
    assert_int_equal(run(fx, 30, bad), 2);
    expect_in(fx->err, "--serial-policy");
}

/* ---- tests: serial policy in-process (two units, one serial) ------------ */

struct ip_unit {
    struct eng_vfb *dev;
    struct eng_transport *t;
    bool closed;
};

struct ip {
    uv_loop_t loop;
    char path[400];
    struct db *db;
    struct eng_engine *eng;
    struct st_serials *serials;
    struct ip_unit units[3];
    unsigned n_units;
    bool loaded, engine_closed, db_stopped;
    bool defer_verdict; /* answer no serial_check (abort-while-waiting test) */
    unsigned checks;
    int ended;
    char results[3][16];
    char reasons[3][300];
    char slots[3][16];
    int db_errors;
};

static void ip_on_event(const struct eng_event *ev, void *user_data)
{
    struct ip *ip = user_data;
    if (ev->type == ENG_EV_SESSION_BEGIN) {
        st_serials_begin(ip->serials, ev->session_id, ev->slot);
        struct db_session_begin b = {.id = ev->session_id,
                                     .slot = ev->slot,
                                     .port = ev->port,
                                     .recipe = ev->recipe,
                                     .recipe_version = ev->recipe_version,
                                     .started_ms = ev->t_ms};
        assert_int_equal(db_session_begin(ip->db, &b), 0);
    } else if (ev->type == ENG_EV_SESSION_END) {
        st_serials_end(ip->serials, ev->session_id);
        int k = ip->ended++;
        assert_true(k < 3);
        snprintf(ip->results[k], sizeof(ip->results[k]), "%s",
                 ev->result == ENG_RESULT_SKIPPED ? "SKIPPED" : eng_result_name(ev->result));
        snprintf(ip->reasons[k], sizeof(ip->reasons[k]), "%s", ev->text ? ev->text : "");
        snprintf(ip->slots[k], sizeof(ip->slots[k]), "%s", ev->slot);
        struct db_session_end e = {.id = ev->session_id,
                                   .serial = ev->serial,
                                   .ended_ms = ev->t_ms,
                                   .result = ip->results[k],
                                   .reason = ev->text,
                                   .failed_step = ev->failed_step};
        assert_int_equal(db_session_end(ip->db, &e, NULL, NULL), 0);
    }
}

static void ip_on_check(struct eng_engine *eng, int64_t session_id, const char *serial,
                        const char *recipe, const char *version, void *user_data)
{
    struct ip *ip = user_data;
    ip->checks++;
    if (!ip->defer_verdict)
        st_serials_check(ip->serials, eng, session_id, serial, recipe, version);
}

static void ip_on_loaded(int status, const char *message, void *user_data)
{
    struct ip *ip = user_data;
    assert_int_equal(status, 0);
    ip->loaded = true;
}

static void ip_on_db_error(const char *message, void *user_data)
{
    struct ip *ip = user_data;
    ip->db_errors++;
}

static void ip_on_note(struct eng_transport *t, enum eng_vt_note note, void *user_data)
{
    struct ip_unit *u = user_data;
    if (note == ENG_VT_CLOSED)
        u->closed = true;
}

static void ip_on_engine_closed(struct eng_engine *eng, void *user_data)
{
    struct ip *ip = user_data;
    ip->engine_closed = true;
}

static void ip_on_db_stopped(struct db *db, void *user_data)
{
    struct ip *ip = user_data;
    ip->db_stopped = true;
}

/* One turn of the loop that never blocks: a session waiting for its
 * verdict leaves nothing pending, and UV_RUN_ONCE would sleep forever. */
static void ip_turn(struct ip *ip)
{
    uv_run(&ip->loop, UV_RUN_NOWAIT);
    th_sleep_ms(1);
}

static void ip_run_until(struct ip *ip, const bool *flag, const int *count, int want)
{
    uint64_t t0 = uv_hrtime();
    while (!(flag ? *flag : *count >= want)) {
        ip_turn(ip);
        if (uv_hrtime() - t0 > 30000000000ull)
            fail_msg("in-process station did not get there within 30 s");
    }
}

static void ip_start(struct fx *fx, struct ip *ip, enum st_serial_policy policy)
{
    char err[300];
    memset(ip, 0, sizeof(*ip));
    assert_int_equal(uv_loop_init(&ip->loop), 0);
    snprintf(ip->path, sizeof(ip->path), "%s/ip.db", fx->dir);
    assert_int_equal(db_open(ip->path, &ip->db, err, sizeof(err)), 0);
    assert_int_equal(db_writer_start(ip->db, &ip->loop, ip_on_db_error, ip), 0);
    assert_int_equal(st_serials_new(ip->db, policy, &ip->serials), 0);
    struct eng_options eo = {.first_session_id = db_next_session_id(ip->db),
                             .serial_check = ip_on_check};
    assert_int_equal(eng_engine_new(&ip->loop, &eo, ip_on_event, ip, &ip->eng), 0);
    struct cfg_recipe r;
    cfg_recipe_default(&r, 1u << 20);
    assert_int_equal(eng_engine_load(ip->eng, &r, ip_on_loaded, ip), 0);
    ip_run_until(ip, &ip->loaded, NULL, 0);
}

/* Plug a virtual unit with `serial` into `port`, paced at `mbps`. */
static void ip_plug(struct ip *ip, const char *port, const char *serial, double mbps)
{
    struct ip_unit *u = &ip->units[ip->n_units++];
    struct eng_vfb_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.serial, sizeof(cfg.serial), "%s", serial);
    cfg.pace_mbps = mbps;
    assert_int_equal(eng_vfb_new(&cfg, &u->dev), 0);
    assert_int_equal(eng_vt_new(&ip->loop, u->dev, port, ip_on_note, u, &u->t), 0);
    eng_engine_device_arrived(ip->eng, u->t);
}

static void ip_stop(struct ip *ip)
{
    eng_engine_close(ip->eng, ip_on_engine_closed, ip);
    ip_run_until(ip, &ip->engine_closed, NULL, 0);
    db_writer_stop(ip->db, ip_on_db_stopped, ip);
    ip_run_until(ip, &ip->db_stopped, NULL, 0);
    for (unsigned i = 0; i < ip->n_units; i++) {
        assert_true(ip->units[i].closed);
        eng_vfb_free(ip->units[i].dev);
    }
    uv_run(&ip->loop, UV_RUN_NOWAIT);
    eng_engine_free(ip->eng);
    st_serials_free(ip->serials);
    db_close(ip->db);
    assert_int_equal(uv_loop_close(&ip->loop), 0);
}

static void test_same_serial_on_two_slots_is_flagged(void **state)
{
    struct fx *fx = *state;
    struct ip ip;
    ip_start(fx, &ip, ST_SERIAL_SKIP);
    /* the first unit is slow, so it is still on its slot when the second
     * reads the same serial */
    ip_plug(&ip, "virt-01", "0123456789ABCDEF", 2.0);
    ip_plug(&ip, "virt-02", "0123456789ABCDEF", 2.0);
    ip_run_until(&ip, NULL, &ip.ended, 2);
    assert_int_equal(ip.checks, 2);
    assert_string_equal(ip.slots[0], "virt-02");
    assert_string_equal(ip.results[0], "FAIL");
    assert_string_equal(ip.reasons[0], "serial 0123456789ABCDEF is also on slot virt-01");
    assert_string_equal(ip.slots[1], "virt-01");
    assert_string_equal(ip.results[1], "PASS");
    /* once the first has left the slot map, the serial is known as passed:
     * a third unit with it is skipped (policy skip) */
    ip_plug(&ip, "virt-03", "0123456789ABCDEF", 0);
    ip_run_until(&ip, NULL, &ip.ended, 3);
    assert_string_equal(ip.results[2], "SKIPPED");
    assert_non_null(strstr(ip.reasons[2], "already passed demo-phone 1.0 on 20"));
    assert_int_equal(eng_vfb_writes(ip.units[2].dev), 0);
    assert_int_equal(eng_vfb_writes(ip.units[0].dev) > 0, 1); /* virt-01 flashed */
    assert_int_equal(eng_vfb_writes(ip.units[1].dev), 0);     /* virt-02 refused */
    assert_int_equal(ip.db_errors, 0);
    ip_stop(&ip);

    /* and it is all recorded */
    sqlite3 *c = db_rw(ip.path);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'FAIL' AND reason ="
                                 " 'serial 0123456789ABCDEF is also on slot virt-01'"),
                     1);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'SKIPPED'"), 1);
    sqlite3_close(c);
}

static void test_abort_while_waiting_for_verdict(void **state)
{
    struct fx *fx = *state;
    struct ip ip;
    ip_start(fx, &ip, ST_SERIAL_SKIP);
    ip.defer_verdict = true; /* the check never answers */
    ip_plug(&ip, "virt-01", "WAITER", 0);
    uint64_t t0 = uv_hrtime();
    while (ip.checks == 0 && uv_hrtime() - t0 < 10000000000ull)
        ip_turn(&ip);
    assert_int_equal(ip.checks, 1);
    /* nothing happens while it waits: no command, no end */
    for (int i = 0; i < 200; i++)
        ip_turn(&ip);
    assert_int_equal(ip.ended, 0);
    unsigned cmds = eng_vfb_command_count(ip.units[0].dev);
    eng_engine_close(ip.eng, ip_on_engine_closed, &ip);
    ip_run_until(&ip, &ip.engine_closed, NULL, 0);
    assert_int_equal(ip.ended, 1);
    assert_string_equal(ip.results[0], "ABORTED");
    assert_string_equal(ip.reasons[0], "station stopped during getvar:serialno");
    assert_int_equal(eng_vfb_command_count(ip.units[0].dev), cmds);
    /* a late verdict for the gone session is ignored */
    eng_engine_serial_verdict(ip.eng, 1, ENG_SERIAL_PROCEED, NULL);
    db_writer_stop(ip.db, ip_on_db_stopped, &ip);
    ip_run_until(&ip, &ip.db_stopped, NULL, 0);
    assert_true(ip.units[0].closed);
    eng_vfb_free(ip.units[0].dev);
    uv_run(&ip.loop, UV_RUN_NOWAIT);
    eng_engine_free(ip.eng);
    st_serials_free(ip.serials);
    db_close(ip.db);
    assert_int_equal(uv_loop_close(&ip.loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sql_in_filters_matches_nothing_changes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_csv_reads_back_exactly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_parses_and_matches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_equal_independent_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_time_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_lists_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values_exit_2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_databases_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readers_never_block_the_station, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_file_is_read_then_migrated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serial_policy_skip_fail_reflash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_serial_on_two_slots_is_flagged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_while_waiting_for_verdict, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
