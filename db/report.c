/*
 * report.c: the QA queries (report, stats, history) over station
 * databases attached read-only to one in-memory connection.
 *
 * Several files are queried with one compound SELECT: a branch per file,
 * each with the filters inside it so that each file's own indexes answer
 * it, and an outer SELECT that formats, orders and (for stats) groups.
 * The SQL text is built from fixed templates; values only ever arrive as
 * bound parameters.
 */
#include "db/report.h"

#include "db/db.h"
#include "st_error.h"

#include <assert.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct db_reader {
    sqlite3 *conn;
    unsigned n;
    char *paths[DB_READER_MAX_FILES];
};

/* Seconds with three decimals from a millisecond expression; NULL stays
 * NULL (SQLite's printf would print a NULL as 0). */
#define SECS(x) "CASE WHEN (" x ") IS NULL THEN NULL ELSE printf('%.3f', (" x ") / 1000.0) END"

/* ISO 8601 UTC with milliseconds from a Unix-ms column; integer maths so
 * no value is rounded through a double. */
#define ISO(x)                                                                                     \
    "CASE WHEN " x " IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%S', " x                      \
    " / 1000, 'unixepoch') || printf('.%03dZ', " x " % 1000) END"

/* ---- opening ------------------------------------------------------------ */

static void set_err(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!errbuf || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

/* "file:" URI of `path` opened read-only; every byte that could mean
 * something in a URI is percent-encoded. sqlite3_free() the result. */
static char *ro_uri(const char *path)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(path);
    char *uri = sqlite3_malloc64(5 + 3 * n + 9 + 1), *p;

    if (!uri)
        return NULL;
    p = uri;
    memcpy(p, "file:", 5);
    p += 5;
    for (const unsigned char *s = (const unsigned char *)path; *s; s++) {
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
            strchr("/._-~", *s)) {
            *p++ = (char)*s;
        } else {
            *p++ = '%';
            *p++ = hex[*s >> 4];
            *p++ = hex[*s & 15];
        }
    }
    memcpy(p, "?mode=ro", 9);
    return uri;
}

/* One integer from `sql`, or an SQLite error code. */
static int query_int(sqlite3 *conn, const char *sql, int64_t *val)
{
    sqlite3_stmt *st = NULL;
    int rc;

    rc = sqlite3_prepare_v2(conn, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *val = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

/* Attach `path` as schema d<i> and check that it is a station database
 * this code can read. */
static int attach(struct db_reader *r, unsigned i, const char *path, char *errbuf, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int64_t version = 0, tables = 0;
    char sql[160], *uri;
    struct stat sb;
    int rc;

    if (stat(path, &sb) != 0) {
        set_err(errbuf, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? ST_ENOENT : st_error_from_errno(errno);
    }
    if (!S_ISREG(sb.st_mode)) {
        set_err(errbuf, errlen, "%s: not a station database (not a regular file)", path);
        return ST_EDB;
    }
    uri = ro_uri(path);
    if (!uri) {
        set_err(errbuf, errlen, "%s: out of memory", path);
        return ST_ENOMEM;
    }
    snprintf(sql, sizeof sql, "ATTACH ?1 AS d%u", i);
    rc = sqlite3_prepare_v2(r->conn, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 1, uri, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        set_err(errbuf, errlen, "%s: cannot open: %s", path, sqlite3_errmsg(r->conn));
    sqlite3_finalize(st);
    sqlite3_free(uri);
    if (rc != SQLITE_OK)
        return ST_EDB;

    /* The first read of the file: a text file fails here. */
    snprintf(sql, sizeof sql, "PRAGMA d%u.user_version", i);
    rc = query_int(r->conn, sql, &version);
    if (rc == SQLITE_OK) {
        snprintf(sql, sizeof sql,
                 "SELECT COUNT(*) FROM d%u.sqlite_master WHERE type = 'table' AND"
                 " name IN ('sessions', 'steps', 'images', 'session_images')",
                 i);
        rc = query_int(r->conn, sql, &tables);
    }
    if (rc != SQLITE_OK) {
        set_err(errbuf, errlen, "%s: not a station database (%s)", path, sqlite3_errmsg(r->conn));
        return ST_EDB;
    }
    if (version > DB_SCHEMA_VERSION) {
        set_err(errbuf, errlen,
                "%s: schema version %lld is newer than this station reads (%d); upgrade the "
                "station",
                path, (long long)version, DB_SCHEMA_VERSION);
        return ST_EDB;
    }
    if (version < 1 || tables != 4) {
        set_err(errbuf, errlen, "%s: not a station database (no station tables)", path);
        return ST_EDB;
    }
    return 0;
}

int db_reader_open(const char *const *paths, unsigned n, struct db_reader **out, char *errbuf,
                   size_t errlen)
{
    struct db_reader *r;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!paths || !out || n == 0 || n > DB_READER_MAX_FILES) {
        set_err(errbuf, errlen, "between 1 and %d database files, please", DB_READER_MAX_FILES);
        return ST_EINVAL;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        goto out_nomem;
    rc = sqlite3_open_v2(":memory:", &r->conn,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(errbuf, errlen, "cannot open a connection: %s", sqlite3_errstr(rc));
        rc = ST_EDB;
        goto out_close;
    }
    /* A station checkpointing at the same moment holds a lock briefly. */
    sqlite3_busy_timeout(r->conn, 5000);
    for (unsigned i = 0; i < n; i++) {
        r->paths[i] = strdup(paths[i]);
        if (!r->paths[i])
            goto out_nomem_close;
        r->n = i + 1;
        rc = attach(r, i, paths[i], errbuf, errlen);
        if (rc != 0)
            goto out_close;
    }
    *out = r;
    return 0;

out_nomem_close:
    db_reader_close(r);
out_nomem:
    set_err(errbuf, errlen, "out of memory");
    return ST_ENOMEM;
out_close:
    db_reader_close(r);
    return rc;
}

void db_reader_close(struct db_reader *r)
{
    if (!r)
        return;
    sqlite3_close(r->conn);
    for (unsigned i = 0; i < r->n; i++)
        free(r->paths[i]);
    free(r);
}

int db_group_parse(const char *s, enum db_group *out)
{
    static const char *const names[] = {"slot", "recipe", "day", "hour", "error"};

    for (unsigned i = 0; s && i < sizeof names / sizeof names[0]; i++) {
        if (!strcmp(s, names[i])) {
            *out = (enum db_group)i;
            return 0;
        }
    }
    return ST_EINVAL;
}

/* ---- building the SQL --------------------------------------------------- */

/* Parameter numbers; the same number may appear in every branch. */
enum { P_SINCE = 1, P_UNTIL, P_SERIAL, P_SLOT, P_RESULT, P_RECIPE, P_COUNT };

/* Append `tmpl` once per attached file, joined by UNION ALL, with "@S"
 * replaced by the schema name and "@L" by the file's label as an SQL
 * string literal; `where` (fixed text with ?N placeholders) is appended to
 * each branch. */
static void append_union(sqlite3_str *sql, const struct db_reader *r, const char *tmpl,
                         const char *where)
{
    for (unsigned i = 0; i < r->n; i++) {
        if (i)
            sqlite3_str_appendall(sql, " UNION ALL ");
        for (const char *p = tmpl; *p; p++) {
            if (p[0] == '@' && p[1] == 'S') {
                sqlite3_str_appendf(sql, "d%u", i);
                p++;
            } else if (p[0] == '@' && p[1] == 'L') {
                sqlite3_str_appendf(sql, "%Q", r->paths[i]);
                p++;
            } else {
                sqlite3_str_appendchar(sql, 1, *p);
            }
        }
        sqlite3_str_appendall(sql, where);
    }
}

/* The WHERE conditions of `f` on columns of table alias `t`, one "AND"
 * each, only for the fields that are set. */
static void filter_sql(char *buf, size_t len, const struct db_filter *f, const char *t)
{
    size_t used = 0;

#define ADD(...) used += (size_t)snprintf(buf + used, used < len ? len - used : 0, __VA_ARGS__)
    buf[0] = '\0';
    if (f->has_since)
        ADD(" AND %s.started_ms >= ?%d", t, P_SINCE);
    if (f->has_until)
        ADD(" AND %s.started_ms < ?%d", t, P_UNTIL);
    if (f->serial)
        ADD(" AND (%s.serial = ?%d OR %s.usb_serial = ?%d)", t, P_SERIAL, t, P_SERIAL);
    if (f->slot)
        ADD(" AND %s.slot = ?%d", t, P_SLOT);
    if (f->result)
        ADD(" AND %s.result = ?%d", t, P_RESULT);
    if (f->recipe)
        ADD(" AND %s.recipe = ?%d", t, P_RECIPE);
#undef ADD
    assert(used < len);
}

static int bind_filter(sqlite3_stmt *st, const struct db_filter *f)
{
    int rc = SQLITE_OK;

    if (f->has_since)
        rc = sqlite3_bind_int64(st, P_SINCE, f->since_ms);
    if (rc == SQLITE_OK && f->has_until)
        rc = sqlite3_bind_int64(st, P_UNTIL, f->until_ms);
    if (rc == SQLITE_OK && f->serial)
        rc = sqlite3_bind_text(st, P_SERIAL, f->serial, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && f->slot)
        rc = sqlite3_bind_text(st, P_SLOT, f->slot, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && f->result)
        rc = sqlite3_bind_text(st, P_RESULT, f->result, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && f->recipe)
        rc = sqlite3_bind_text(st, P_RECIPE, f->recipe, -1, SQLITE_STATIC);
    return rc;
}

/* A query failed: name the file. With several, a corrupt one is found by
 * quick_check; otherwise all are named. */
static void query_error(struct db_reader *r, int rc, char *errbuf, size_t errlen)
{
    char msg[300], names[600] = "";
    size_t used = 0;
    int culprit = -1;

    snprintf(msg, sizeof msg, "%s", sqlite3_errmsg(r->conn));
    if (r->n == 1) {
        culprit = 0;
    } else if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB) {
        for (unsigned i = 0; i < r->n && culprit < 0; i++) {
            char sql[48];
            sqlite3_stmt *st = NULL;
            snprintf(sql, sizeof sql, "PRAGMA d%u.quick_check(1)", i);
            if (sqlite3_prepare_v2(r->conn, sql, -1, &st, NULL) != SQLITE_OK ||
                sqlite3_step(st) != SQLITE_ROW ||
                strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0)
                culprit = (int)i;
            sqlite3_finalize(st);
        }
    }
    if (culprit >= 0) {
        set_err(errbuf, errlen, "%s: %s", r->paths[culprit], msg);
        return;
    }
    for (unsigned i = 0; i < r->n; i++)
        used += (size_t)snprintf(names + used, used < sizeof names ? sizeof names - used : 0,
                                 "%s%s", i ? ", " : "", r->paths[i]);
    set_err(errbuf, errlen, "query over %s failed: %s", names, msg);
}

/* Prepare the finished SQL text, bind `f`, and feed every row to `sink`. */
static int run_query(struct db_reader *r, sqlite3_str *sql, const struct db_filter *f,
                     const struct db_sink *sink, char *errbuf, size_t errlen)
{
    const char *names[64], *values[64];
    sqlite3_stmt *st = NULL;
    char *text;
    int rc, n, ret = 0;

    rc = sqlite3_str_errcode(sql);
    text = sqlite3_str_finish(sql);
    if (rc != SQLITE_OK || !text) {
        sqlite3_free(text);
        set_err(errbuf, errlen, "out of memory");
        return ST_ENOMEM;
    }
    rc = sqlite3_prepare_v2(r->conn, text, -1, &st, NULL);
    sqlite3_free(text);
    if (rc == SQLITE_OK)
        rc = bind_filter(st, f);
    if (rc != SQLITE_OK)
        goto out_err;
    n = sqlite3_column_count(st);
    assert(n > 0 && n <= 64);
    for (int i = 0; i < n; i++)
        names[i] = sqlite3_column_name(st, i);
    if (sink->columns && sink->columns(sink->user, (unsigned)n, names) != 0) {
        ret = ST_ECANCELED;
        goto out;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < n; i++)
            values[i] = (const char *)sqlite3_column_text(st, i);
        if (sink->row && sink->row(sink->user, (unsigned)n, values) != 0) {
            ret = ST_ECANCELED;
            goto out;
        }
    }
    if (rc == SQLITE_DONE)
        goto out;
out_err:
    query_error(r, rc, errbuf, errlen);
    ret = ST_EDB;
out:
    sqlite3_finalize(st);
    return ret;
}

/* ---- report ------------------------------------------------------------- */

static const char report_branch[] =
    "SELECT @L AS db, s.id, s.station, s.slot, s.port, s.serial, s.usb_serial, s.product,"
    " s.recipe, s.recipe_version, s.started_ms, s.ended_ms, s.result, s.failed_step, s.reason,"
    " s.bytes FROM @S.sessions AS s WHERE 1";

int db_report(struct db_reader *r, const struct db_filter *f, enum db_shape shape,
              const struct db_sink *sink, char *errbuf, size_t errlen)
{
    static const struct db_filter none;
    sqlite3_str *sql = sqlite3_str_new(r->conn);
    char where[512];

    if (!f)
        f = &none;
    filter_sql(where, sizeof where, f, "s");
    if (shape == DB_SHAPE_JSON) {
        sqlite3_str_appendall(sql, "SELECT json_object(");
        if (r->n > 1)
            sqlite3_str_appendall(sql, "'db', db, ");
        sqlite3_str_appendall(
            sql,
            "'id', id, 'station', station, 'slot', slot, 'port', port, 'serial', serial,"
            " 'usb_serial', usb_serial, 'product', product, 'recipe', recipe,"
            " 'version', recipe_version, 'started', " ISO(
                "started_ms") ","
                              " 'ended', " ISO(
                                  "ended_ms") ", 'duration_s', (ended_ms - started_ms) / 1000.0,"
                                              " 'result', result, 'failed_step', failed_step, "
                                              "'reason', reason,"
                                              " 'bytes', bytes) AS json");
    } else {
        sqlite3_str_appendall(sql, "SELECT ");
        if (r->n > 1)
            sqlite3_str_appendall(sql, "db, ");
        sqlite3_str_appendall(
            sql,
            "id, station, slot, port, serial, usb_serial, product, recipe,"
            " recipe_version AS version, " ISO("started_ms") " AS started, " ISO(
                "ended_ms") " AS ended,"
                            " " SECS(
                                "ended_ms - started_ms") " AS duration_s,"
                                                         " result, failed_step, reason, bytes");
    }
    sqlite3_str_appendall(sql, " FROM (");
    append_union(sql, r, report_branch, where);
    sqlite3_str_appendall(sql, ") ORDER BY started_ms, db, id");
    return run_query(r, sql, f, sink, errbuf, errlen);
}

/* ---- stats -------------------------------------------------------------- */

static const struct {
    const char *name; /* the key column */
    const char *key;  /* its expression on sessions AS s */
    const char *order;
} groups[] = {
    [DB_BY_SLOT] = {"slot", "s.slot", "g.k"},
    [DB_BY_RECIPE] = {"recipe", "COALESCE(s.recipe, '') || ' ' || COALESCE(s.recipe_version, '')",
                      "g.k"},
    [DB_BY_DAY] = {"day", "strftime('%Y-%m-%d', s.started_ms / 1000, 'unixepoch')", "g.k"},
    [DB_BY_HOUR] = {"hour", "strftime('%Y-%m-%dT%H:00Z', s.started_ms / 1000, 'unixepoch')", "g.k"},
    [DB_BY_ERROR] = {"error", "COALESCE(s.reason, '(no reason)')", "g.n DESC, g.k"},
};

int db_stats(struct db_reader *r, enum db_group by, const struct db_filter *f, enum db_shape shape,
             const struct db_sink *sink, char *errbuf, size_t errlen)
{
    static const struct db_filter none;
    sqlite3_str *sql, *branch;
    char where[600];
    char *btext;

    if ((unsigned)by >= sizeof groups / sizeof groups[0]) {
        set_err(errbuf, errlen, "unknown grouping");
        return ST_EINVAL;
    }
    if (!f)
        f = &none;
    filter_sql(where, sizeof where, f, "s");
    if (by == DB_BY_ERROR)
        strcat(where, " AND s.result IN ('FAIL', 'ABORTED')");

    branch = sqlite3_str_new(r->conn);
    sqlite3_str_appendf(branch,
                        "SELECT %s AS k, s.result AS result, CASE WHEN s.result = 'PASS'"
                        " THEN s.ended_ms - s.started_ms END AS d FROM @S.sessions AS s WHERE 1",
                        groups[by].key);
    btext = sqlite3_str_finish(branch);
    if (!btext) {
        set_err(errbuf, errlen, "out of memory");
        return ST_ENOMEM;
    }
    sql = sqlite3_str_new(r->conn);
    sqlite3_str_appendall(sql, "WITH f AS MATERIALIZED (");
    append_union(sql, r, btext, where);
    sqlite3_free(btext);
    sqlite3_str_appendall(
        sql, "), g0 AS (SELECT k, COUNT(*) AS n, TOTAL(result = 'PASS') AS p,"
             " TOTAL(result = 'FAIL') AS fl, TOTAL(result = 'ABORTED') AS a,"
             " TOTAL(result = 'SKIPPED') AS sk FROM f GROUP BY k),"
             /* yield in tenths of a percent, rounded half up */
             " g AS (SELECT *, CASE WHEN p + fl > 0 THEN (1000 * CAST(p AS INTEGER)"
             " + CAST(p + fl AS INTEGER) / 2) / CAST(p + fl AS INTEGER) END AS yt FROM g0),"
             /* the median: the middle row, or the mean of the middle two;
              * ms is it in whole milliseconds, halves rounded up */
             " m0 AS (SELECT k, AVG(d) AS med FROM (SELECT k, d,"
             " ROW_NUMBER() OVER (PARTITION BY k ORDER BY d) AS rn,"
             " COUNT(*) OVER (PARTITION BY k) AS c FROM f WHERE d IS NOT NULL)"
             " WHERE rn IN ((c + 1) / 2, (c + 2) / 2) GROUP BY k),"
             " m AS (SELECT k, med, CAST(floor(med + 0.5) AS INTEGER) AS ms FROM m0)");
    if (shape == DB_SHAPE_JSON)
        sqlite3_str_appendf(sql,
                            " SELECT json_object('%s', g.k, 'sessions', g.n,"
                            " 'passed', CAST(g.p AS INTEGER), 'failed', CAST(g.fl AS INTEGER),"
                            " 'aborted', CAST(g.a AS INTEGER), 'skipped', CAST(g.sk AS INTEGER),"
                            " 'yield_pct', CASE WHEN g.p + g.fl > 0 THEN g.yt / 10.0 END,"
                            " 'median_s', m.ms / 1000.0) AS json",
                            groups[by].name);
    else
        sqlite3_str_appendf(sql,
                            " SELECT g.k AS %s, g.n AS sessions, CAST(g.p AS INTEGER) AS passed,"
                            " CAST(g.fl AS INTEGER) AS failed, CAST(g.a AS INTEGER) AS aborted,"
                            " CAST(g.sk AS INTEGER) AS skipped,"
                            /* integer maths: no tie is rounded two ways */
                            " CASE WHEN g.p + g.fl > 0 THEN printf('%%d.%%d', g.yt / 10,"
                            " g.yt %% 10) END AS yield_pct,"
                            " CASE WHEN m.med IS NOT NULL THEN printf('%%d.%%03d', m.ms / 1000,"
                            " m.ms %% 1000) END AS median_s",
                            groups[by].name);
    sqlite3_str_appendf(sql, " FROM g LEFT JOIN m ON m.k = g.k ORDER BY %s", groups[by].order);
    return run_query(r, sql, f, sink, errbuf, errlen);
}

/* ---- history ------------------------------------------------------------ */

static const char history_rows_branch[] =
    "SELECT @L AS db, s.id AS sid, s.station, s.slot, s.port, s.serial, s.usb_serial,"
    " s.product, s.recipe, s.recipe_version, s.started_ms, s.ended_ms, s.result,"
    " s.failed_step, s.reason,"
    /* a SKIPPED session wrote nothing: no image went onto the unit */
    " CASE WHEN s.result IS NOT 'SKIPPED' THEN (SELECT group_concat(name || '=' || sha256, ' ')"
    " FROM (SELECT name, sha256 FROM @S.session_images WHERE session_id = s.id ORDER BY name))"
    " END AS images,"
    " t.seq, t.name AS step_name, t.result AS step_result, t.started_ms AS t_started,"
    " t.ended_ms AS t_ended, t.bytes AS step_bytes, t.detail, t.info"
    " FROM @S.sessions AS s LEFT JOIN @S.steps AS t ON t.session_id = s.id WHERE 1";

static const char history_json_branch[] =
    "SELECT @L AS db, s.id AS sid, s.started_ms AS o, json_object(@DB"
    " 'session', s.id, 'station', s.station, 'slot', s.slot, 'port', s.port,"
    " 'serial', s.serial, 'usb_serial', s.usb_serial, 'product', s.product,"
    " 'recipe', s.recipe, 'version', s.recipe_version,"
    " 'started', " ISO("s.started_ms") ", 'ended', " ISO(
        "s.ended_ms") ","
                      " 'duration_s', (s.ended_ms - s.started_ms) / 1000.0, 'result', s.result,"
                      " 'failed_step', s.failed_step, 'reason', s.reason, 'bytes', s.bytes,"
                      " 'images', CASE WHEN s.result IS NOT 'SKIPPED' THEN json((SELECT"
                      " json_group_array(json_object('name', name, 'sha256', sha256)) FROM (SELECT "
                      "name, sha256"
                      " FROM @S.session_images WHERE session_id = s.id ORDER BY name))) ELSE "
                      "json('[]') END,"
                      " 'steps', json((SELECT json_group_array(json_object('step', seq, 'name', "
                      "name,"
                      " 'result', result, 'started', " ISO("started_ms") ", 'ended', " ISO(
                          "ended_ms") ","
                                      " 'duration_s', (ended_ms - started_ms) / 1000.0, 'bytes', "
                                      "bytes, 'detail', detail,"
                                      " 'info', info)) FROM (SELECT * FROM @S.steps WHERE "
                                      "session_id = s.id ORDER BY seq))))"
                                      " AS json FROM @S.sessions AS s WHERE 1";

int db_history(struct db_reader *r, const char *serial, enum db_shape shape,
               const struct db_sink *sink, char *errbuf, size_t errlen)
{
    struct db_filter f = {.serial = serial};
    char where[256], tmpl[sizeof history_json_branch + 16];
    const char *db_key;
    sqlite3_str *sql;
    char *at;

    if (!serial) {
        set_err(errbuf, errlen, "no serial given");
        return ST_EINVAL;
    }
    filter_sql(where, sizeof where, &f, "s");
    sql = sqlite3_str_new(r->conn);
    if (shape == DB_SHAPE_JSON) {
        /* "@DB" becomes the db key when several files are read. */
        db_key = r->n > 1 ? "'db', @L," : "";
        at = strstr(history_json_branch, "@DB");
        assert(at);
        snprintf(tmpl, sizeof tmpl, "%.*s%s%s", (int)(at - history_json_branch),
                 history_json_branch, db_key, at + 3);
        sqlite3_str_appendall(sql, "SELECT json FROM (");
        append_union(sql, r, tmpl, where);
        sqlite3_str_appendall(sql, ") ORDER BY o, db, sid");
    } else {
        sqlite3_str_appendall(sql, "SELECT ");
        if (r->n > 1)
            sqlite3_str_appendall(sql, "db, ");
        sqlite3_str_appendall(
            sql,
            "sid AS session, station, slot, port, serial, usb_serial, product, recipe,"
            " recipe_version AS version, " ISO("started_ms") " AS started, " ISO(
                "ended_ms") " AS ended, result, failed_step, reason, images,"
                            " seq AS step, step_name, step_result,"
                            " " SECS("t_ended - t_started") " AS step_duration_s,"
                                                            " step_bytes, detail AS step_detail, "
                                                            "info AS step_info FROM (");
        append_union(sql, r, history_rows_branch, where);
        sqlite3_str_appendall(sql, ") ORDER BY started_ms, db, sid, seq");
    }
    return run_query(r, sql, &f, sink, errbuf, errlen);
}
