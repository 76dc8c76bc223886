/*
 * db.c: opening the station database: pragmas, schema migrations and the
 * recovery of sessions a crash left open. Everything here is synchronous
 * and runs before the loop does; writes after that belong to writer.c.
 */
#include "db/db_internal.h"

#include "st_error.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * Migrations: entry N takes the schema from user_version N to N + 1.
 * A later version appends one entry and bumps DB_SCHEMA_VERSION; a fresh
 * file (version 0) runs them all, in one transaction with the version
 * bump, so a crash never leaves a half-migrated file.
 */
static const char *const migrations[] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE sessions ("
    "  id INTEGER PRIMARY KEY,"
    "  station TEXT,"
    "  slot TEXT NOT NULL,"
    "  port TEXT,"
    "  usb_serial TEXT,"
    "  serial TEXT,"
    "  product TEXT,"
    "  recipe TEXT,"
    "  recipe_version TEXT,"
    "  started_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER,"
    "  result TEXT CHECK(result IN ('PASS','FAIL','ABORTED')),"
    "  failed_step TEXT,"
    "  reason TEXT,"
    "  bytes INTEGER NOT NULL DEFAULT 0,"
    "  last_step TEXT);"
    "CREATE TABLE steps ("
    "  session_id INTEGER NOT NULL REFERENCES sessions(id),"
    "  seq INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  started_ms INTEGER,"
    "  ended_ms INTEGER,"
    "  result TEXT,"
    "  detail TEXT,"
    "  bytes INTEGER,"
    "  info TEXT,"
    "  PRIMARY KEY(session_id, seq));"
    "CREATE TABLE images ("
    "  sha256 TEXT,"
    "  name TEXT,"
    "  path TEXT,"
    "  size INTEGER,"
    "  PRIMARY KEY(sha256, path));"
    "CREATE TABLE session_images ("
    "  session_id INTEGER NOT NULL REFERENCES sessions(id),"
    "  name TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  PRIMARY KEY(session_id, name));"
    "CREATE INDEX sessions_serial ON sessions(serial);"
    "CREATE INDEX sessions_slot_started ON sessions(slot, started_ms);"
    "CREATE INDEX sessions_started ON sessions(started_ms);",

    /* 1 -> 2: result 'SKIPPED' (serial policy). A CHECK constraint cannot
     * be altered, so the table is rebuilt the way SQLite documents it
     * (https://sqlite.org/lang_altertable.html#otheralter): new table,
     * copy, drop, rename, indexes again. Foreign keys are off while this
     * runs (db_open turns them on after COMMIT) and checked before it. */
    "CREATE TABLE sessions_v2 ("
    "  id INTEGER PRIMARY KEY,"
    "  station TEXT,"
    "  slot TEXT NOT NULL,"
    "  port TEXT,"
    "  usb_serial TEXT,"
    "  serial TEXT,"
    "  product TEXT,"
    "  recipe TEXT,"
    "  recipe_version TEXT,"
    "  started_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER,"
    "  result TEXT CHECK(result IN ('PASS','FAIL','ABORTED','SKIPPED')),"
    "  failed_step TEXT,"
    "  reason TEXT,"
    "  bytes INTEGER NOT NULL DEFAULT 0,"
    "  last_step TEXT);"
    "INSERT INTO sessions_v2(id, station, slot, port, usb_serial, serial, product, recipe,"
    "  recipe_version, started_ms, ended_ms, result, failed_step, reason, bytes, last_step)"
    " SELECT id, station, slot, port, usb_serial, serial, product, recipe, recipe_version,"
    "  started_ms, ended_ms, result, failed_step, reason, bytes, last_step FROM sessions;"
    "DROP TABLE sessions;"
    "ALTER TABLE sessions_v2 RENAME TO sessions;"
    "CREATE INDEX sessions_serial ON sessions(serial);"
    "CREATE INDEX sessions_slot_started ON sessions(slot, started_ms);"
    "CREATE INDEX sessions_started ON sessions(started_ms);"
    /* history SERIAL also matches the USB iSerial */
    "CREATE INDEX sessions_usb_serial ON sessions(usb_serial);",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == DB_SCHEMA_VERSION,
               "one migration per schema version");

/* Translate an SQLite result code; CANTOPEN is told apart by errno so
 * that "no such directory" and "permission denied" reach the operator. */
static int err_from_sqlite(sqlite3 *conn, int rc)
{
    int sys;

    switch (rc & 0xff) {
    case SQLITE_OK:
        return 0;
    case SQLITE_NOMEM:
        return ST_ENOMEM;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return ST_EACCES;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return ST_EBUSY;
    case SQLITE_CANTOPEN:
        sys = conn ? sqlite3_system_errno(conn) : 0;
        if (sys == ENOENT || sys == ENOTDIR || sys == EACCES || sys == EPERM || sys == EROFS)
            return st_error_from_errno(sys);
        return ST_EDB;
    default:
        return ST_EDB;
    }
}

/* Format "cannot open database PATH: sqlite's message" into errbuf and
 * return the translated code. */
static int open_error(struct db *db, int rc, const char *doing, char *errbuf, size_t errlen)
{
    const char *msg = db->conn ? sqlite3_errmsg(db->conn) : sqlite3_errstr(rc);

    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s %s: %s", doing, db->path, msg);
    return err_from_sqlite(db->conn, rc);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run a statement that returns at most one integer row; *val is left
 * alone when it returns none. */
static int query_int(sqlite3 *conn, const char *sql, int64_t *val)
{
    sqlite3_stmt *st = NULL;
    int rc;

    rc = sqlite3_prepare_v2(conn, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *val = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
out:
    sqlite3_finalize(st);
    return rc;
}

/* Refuse a file written by a newer station: its schema may mean things
 * this code would get wrong. Checked before anything is changed, and again
 * inside the migration transaction in case another process migrated it. */
static int check_version(struct db *db, int64_t *version, char *errbuf, size_t errlen)
{
    int rc;

    *version = 0;
    rc = query_int(db->conn, "PRAGMA user_version", version);
    if (rc != SQLITE_OK)
        return open_error(db, rc, "cannot open database", errbuf, errlen);
    if (*version >= 0 && *version <= DB_SCHEMA_VERSION)
        return 0;
    if (errbuf && errlen)
        snprintf(errbuf, errlen,
                 "database %s has schema version %" PRId64
                 ", newer than this station supports (%d); upgrade the station",
                 db->path, *version, DB_SCHEMA_VERSION);
    return ST_EDB;
}

/* Per-connection settings. WAL is checked, not assumed: on a file system
 * without shared memory SQLite silently keeps the rollback journal, and
 * then the writer would block every reader during a commit. */
static int set_pragmas(struct db *db, char *errbuf, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    const char *mode;
    int rc;

    rc = sqlite3_busy_timeout(db->conn, (int)db->busy_ms);
    if (rc != SQLITE_OK)
        goto out_err;
    rc = sqlite3_prepare_v2(db->conn, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto out_err;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        goto out_err;
    mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "cannot open database %s: journal_mode is %s, not wal",
                     db->path, mode ? mode : "unknown");
        rc = ST_EDB;
        goto out;
    }
    /* Foreign keys stay off until the migrations are done: a table
     * rebuild drops a parent table (see migrations[1]). */
    rc = sqlite3_exec(db->conn, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF", NULL, NULL,
                      NULL);
    if (rc != SQLITE_OK)
        goto out_err;
    rc = 0;
    goto out;
out_err:
    rc = open_error(db, rc, "cannot open database", errbuf, errlen);
out:
    sqlite3_finalize(st);
    return rc;
}

/* Close as ABORTED every session a previous run left without an end. The
 * reason names the last step recorded, which is the step that had ended
 * last when the station stopped. */
static int recover(struct db *db)
{
    static const char sql[] = "UPDATE sessions SET result = 'ABORTED', ended_ms = ?1,"
                              " reason = 'station stopped during ' || COALESCE(last_step, 'start')"
                              " WHERE ended_ms IS NULL";
    sqlite3_stmt *st = NULL;
    int rc;

    rc = sqlite3_prepare_v2(db->conn, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_bind_int64(st, 1, now_ms());
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        goto out;
    db->recovered = (unsigned)sqlite3_changes(db->conn);
    rc = SQLITE_OK;
out:
    sqlite3_finalize(st);
    return rc;
}

/* After a rebuild: a row of a child table whose session is gone makes
 * the migration fail rather than commit. Returns an SQLite code, or
 * SQLITE_CONSTRAINT with the message in errbuf. */
static int foreign_key_check(struct db *db, char *errbuf, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc;

    rc = sqlite3_prepare_v2(db->conn, "PRAGMA foreign_key_check", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && errbuf && errlen)
        snprintf(errbuf, errlen, "cannot migrate database %s: table %s has rows without their %s",
                 db->path, (const char *)sqlite3_column_text(st, 0),
                 (const char *)sqlite3_column_text(st, 2));
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE)
        return SQLITE_OK;
    return rc == SQLITE_ROW ? SQLITE_CONSTRAINT : rc;
}

/* Migrate, recover and read the next id in one write transaction. Taking
 * the write lock even when there is nothing to change makes a read-only
 * file or directory fail here, at open, rather than at the first commit. */
static int migrate_and_recover(struct db *db, char *errbuf, size_t errlen)
{
    const char *doing = "cannot open database";
    int64_t version, max_id = 0;
    char sql[64];
    int rc;

    rc = sqlite3_exec(db->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto out_err;
    rc = check_version(db, &version, errbuf, errlen);
    if (rc < 0) {
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    doing = "cannot migrate database";
    for (int64_t v = version; v < DB_SCHEMA_VERSION; v++) {
        rc = sqlite3_exec(db->conn, migrations[v], NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto out_rollback;
    }
    if (version != DB_SCHEMA_VERSION) {
        if (version > 0) {
            rc = foreign_key_check(db, errbuf, errlen);
            if (rc == SQLITE_CONSTRAINT) {
                sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
                return ST_EDB;
            }
            if (rc != SQLITE_OK)
                goto out_rollback;
        }
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", DB_SCHEMA_VERSION);
        rc = sqlite3_exec(db->conn, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto out_rollback;
    }
    doing = "cannot recover open sessions in";
    rc = recover(db);
    if (rc != SQLITE_OK)
        goto out_rollback;
    rc = query_int(db->conn, "SELECT MAX(id) FROM sessions", &max_id);
    if (rc != SQLITE_OK)
        goto out_rollback;
    db->next_id = max_id > 0 ? max_id + 1 : 1;
    db->first_free_id = db->next_id;
    doing = "cannot open database";
    rc = sqlite3_exec(db->conn, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto out_rollback;
    rc = sqlite3_exec(db->conn, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto out_err;
    return 0;
out_rollback:
    /* Format before ROLLBACK, which would replace sqlite's message. */
    rc = open_error(db, rc, doing, errbuf, errlen);
    if (!sqlite3_get_autocommit(db->conn))
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
    return rc;
out_err:
    return open_error(db, rc, doing, errbuf, errlen);
}

/* The value of environment variable `name`: 0 when unset, 1 and *val when
 * a number from 1 to max, -1 otherwise. */
static int env_uint(const char *name, unsigned long max, unsigned long *val)
{
    const char *env = getenv(name);
    char *end;

    if (!env || !*env)
        return 0;
    errno = 0;
    *val = strtoul(env, &end, 10);
    return errno == 0 && *end == '\0' && *val >= 1 && *val <= max ? 1 : -1;
}

/* tests/test_crash.c stops the station inside a WAL checkpoint to kill it
 * there (ckpt_pause.c): STATION_TEST_CHECKPOINT_PAUSE_MS how long, and
 * STATION_TEST_CHECKPOINT_PAUSE_PAGE after which page (default 1). Unset,
 * *vfs stays NULL: SQLite's default VFS. */
static int open_test_hook(struct db *db, const char **vfs, char *errbuf, size_t errlen)
{
    static const char ms_name[] = "STATION_TEST_CHECKPOINT_PAUSE_MS";
    static const char page_name[] = "STATION_TEST_CHECKPOINT_PAUSE_PAGE";
    unsigned long ms = 0, page = 1;
    const char *bad = NULL;
    int rc;

    *vfs = NULL;
    rc = env_uint(ms_name, 600000, &ms);
    if (rc == 0)
        return 0;
    if (rc < 0)
        bad = ms_name;
    else if (env_uint(page_name, 1000000, &page) < 0)
        bad = page_name;
    if (bad) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "cannot open database %s: %s=\"%s\" is not a number in range",
                     db->path, bad, getenv(bad));
        return ST_EINVAL;
    }
    rc = db__pause_new(db->path, (unsigned)ms, (unsigned)page, &db->pause);
    if (rc != 0) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "cannot open database %s: checkpoint pause: %s", db->path,
                     st_strerror(rc));
        return rc;
    }
    *vfs = db__pause_vfs_name(db->pause);
    return 0;
}

/* Before SQLite initialises: no bulk page-cache allocation per cache.
 * By default every page cache the connection opens (main, temp, the
 * schema work of a migration) takes 20 pages at once, about 85 KiB each,
 * and the heap keeps them dirty after they are freed; the station's
 * database needs a handful of pages at a time, so they are allocated one
 * by one. Fails harmlessly (SQLITE_MISUSE) if something in the process
 * has already used SQLite. */
static uv_once_t sqlite_config_once = UV_ONCE_INIT;

static void sqlite_config(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_PAGECACHE, (void *)NULL, 0, 0);
}

int db_open(const char *path, struct db **out, char *errbuf, size_t errlen)
{
    uv_once(&sqlite_config_once, sqlite_config);
    const char *vfs;
    int64_t version;
    struct db *db;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!path || !*path || !out) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "cannot open database: no path given");
        return ST_EINVAL;
    }
    db = calloc(1, sizeof *db);
    if (!db)
        goto out_nomem;
    db->path = strdup(path);
    if (!db->path)
        goto out_free_db;
    if (uv_mutex_init(&db->mu) != 0)
        goto out_free_path;
    if (uv_cond_init(&db->cond) != 0)
        goto out_free_mutex;
    db->queue_tail = &db->queue;
    db->done_tail = &db->done;
    db->fail_node.kind = DB__REQ_ERROR;
    db->wstate = DB__W_IDLE;
    db->busy_ms = 5000;

    rc = open_test_hook(db, &vfs, errbuf, errlen);
    if (rc < 0)
        goto out_close;
    /* FULLMUTEX although only one thread uses the connection at a time:
     * it is handed from the loop thread to the writer, and the cost of an
     * uncontended mutex is nothing next to an fsync. */
    rc = sqlite3_open_v2(path, &db->conn,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, vfs);
    if (rc != SQLITE_OK) {
        rc = open_error(db, rc, "cannot open database", errbuf, errlen);
        goto out_close;
    }
    sqlite3_extended_result_codes(db->conn, 1);
    /* SQLite falls back to read-only when it may not write the file. */
    if (sqlite3_db_readonly(db->conn, "main") == 1) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "cannot open database %s: file is read-only", path);
        rc = ST_EACCES;
        goto out_close;
    }
    rc = check_version(db, &version, errbuf, errlen);
    if (rc < 0)
        goto out_close;
    rc = set_pragmas(db, errbuf, errlen);
    if (rc < 0)
        goto out_close;
    rc = migrate_and_recover(db, errbuf, errlen);
    if (rc < 0)
        goto out_close;
    *out = db;
    return 0;

out_close:
    db_close(db);
    return rc;
out_free_mutex:
    uv_mutex_destroy(&db->mu);
out_free_path:
    free(db->path);
out_free_db:
    free(db);
out_nomem:
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "cannot open database %s: out of memory", path);
    return ST_ENOMEM;
}

int db_set_busy_timeout(struct db *db, unsigned ms)
{
    if (!db || db->wstate != DB__W_IDLE || ms > INT32_MAX)
        return ST_EINVAL;
    db->busy_ms = ms;
    return sqlite3_busy_timeout(db->conn, (int)ms) == SQLITE_OK ? 0 : ST_EDB;
}

unsigned db_recovered_count(const struct db *db)
{
    return db->recovered;
}

int64_t db_next_session_id(struct db *db)
{
    return db->next_id++;
}

void db_close(struct db *db)
{
    struct db__req *r, *next;
    int rc;

    if (!db)
        return;
    assert(db->wstate == DB__W_IDLE || db->wstate == DB__W_STOPPED);
    db__finalize_stmts(db);
    /* Only reachable with requests left if the writer never ran them. */
    for (r = db->queue; r; r = next) {
        next = r->next;
        free(r);
    }
    for (r = db->done; r; r = next) {
        next = r->next;
        if (r != &db->fail_node)
            free(r);
    }
    rc = sqlite3_close(db->conn); /* harmless on NULL */
    assert(rc == SQLITE_OK && "a statement is still open");
    (void)rc;
    db__pause_free(db->pause); /* the connection that used it is gone */
    uv_cond_destroy(&db->cond);
    uv_mutex_destroy(&db->mu);
    free(db->path);
    free(db);
}
