/*
 * writer.c: the one thread that writes to the database after
 * db_writer_start(), so that no fsync ever runs on the loop thread.
 *
 * The loop thread copies each request into one allocation and appends it
 * to a queue. The writer takes the whole queue at once and writes it in
 * one transaction (group commit: a busy station pays one fsync for many
 * rows). Once COMMIT has returned, the session ends of that batch move to
 * the done list and a uv_async_t wakes the loop, which runs their
 * callbacks in order. A failed batch is rolled back and turns the writer
 * "failed": the loop hears about it once through on_error, the ends
 * already accepted get ST_EDB, and new requests are refused. After a
 * batch has been handed to the loop, the writer checkpoints the WAL once
 * it has grown large (checkpoint()).
 */
#include "db/db_internal.h"

#include "st_error.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The WAL size at which the writer checkpoints: SQLite's default
 * wal_autocheckpoint, in frames of one page. */
#define DB__CHECKPOINT_FRAMES 1000

/* `what` names the call in error messages ("DB ERROR: INSERT steps: ..."). */
static const struct {
    const char *what;
    const char *sql;
} stmt_defs[DB__ST_COUNT] = {
    [DB__ST_BEGIN] = {"BEGIN", "BEGIN IMMEDIATE"},
    [DB__ST_COMMIT] = {"COMMIT", "COMMIT"},
    [DB__ST_ROLLBACK] = {"ROLLBACK", "ROLLBACK"},
    [DB__ST_INS_SESSION] = {"INSERT sessions",
                            "INSERT INTO sessions(id, station, slot, port, usb_serial, recipe,"
                            " recipe_version, started_ms) VALUES(?,?,?,?,?,?,?,?)"},
    [DB__ST_INS_IMAGE] = {"INSERT images", "INSERT OR IGNORE INTO images(sha256, name, path, size)"
                                           " VALUES(?,?,?,?)"},
    [DB__ST_INS_SESSION_IMAGE] = {"INSERT session_images",
                                  "INSERT INTO session_images(session_id, name, sha256)"
                                  " VALUES(?,?,?)"},
    /* OR REPLACE: a step repeated after a re-enumeration keeps its last
     * outcome instead of failing the whole writer on the primary key. */
    [DB__ST_INS_STEP] = {"INSERT steps",
                         "INSERT OR REPLACE INTO steps(session_id, seq, name, started_ms,"
                         " ended_ms, result, detail, bytes, info) VALUES(?,?,?,?,?,?,?,?,?)"},
    [DB__ST_UPD_LAST_STEP] = {"UPDATE sessions.last_step",
                              "UPDATE sessions SET last_step = ? WHERE id = ?"},
    [DB__ST_UPD_END] = {"UPDATE sessions (end)",
                        "UPDATE sessions SET serial = ?, product = ?, ended_ms = ?, result = ?,"
                        " failed_step = ?, reason = ?, bytes = ? WHERE id = ?"},
    /* The serial policy's question; uses the index on serial. */
    [DB__ST_FIND_PASS] = {"SELECT passed session",
                          "SELECT MAX(ended_ms) FROM sessions WHERE serial = ? AND result = 'PASS'"
                          " AND recipe IS ? AND recipe_version IS ?"},
};

/* ---- writer thread ------------------------------------------------------ */

/* Binds collect the first error so a statement is written as a flat list
 * of binds followed by one checked run(). */
struct bind {
    struct db *db;
    enum db__stmt which;
    int idx;
    int rc;
};

static struct bind bind_start(struct db *db, enum db__stmt which)
{
    return (struct bind){.db = db, .which = which, .idx = 0, .rc = SQLITE_OK};
}

/* SQLITE_STATIC: the request outlives the statement's use of the text. */
static void bind_text(struct bind *b, const char *s)
{
    sqlite3_stmt *st = b->db->stmts[b->which];

    if (b->rc != SQLITE_OK)
        return;
    b->idx++;
    b->rc = s ? sqlite3_bind_text(st, b->idx, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, b->idx);
}

static void bind_int(struct bind *b, int64_t v)
{
    if (b->rc != SQLITE_OK)
        return;
    b->idx++;
    b->rc = sqlite3_bind_int64(b->db->stmts[b->which], b->idx, v);
}

/* Which operation an SQLITE_IOERR_* code names, or NULL. */
static const char *ioerr_op(int ext)
{
    switch (ext) {
    case SQLITE_IOERR_READ:
    case SQLITE_IOERR_SHORT_READ:
        return "read";
    case SQLITE_IOERR_WRITE:
        return "write";
    case SQLITE_IOERR_FSYNC:
    case SQLITE_IOERR_DIR_FSYNC:
        return "fsync";
    case SQLITE_IOERR_TRUNCATE:
        return "truncate";
    case SQLITE_IOERR_SHMOPEN:
    case SQLITE_IOERR_SHMSIZE:
    case SQLITE_IOERR_SHMMAP:
        return "shared memory";
    default:
        return NULL;
    }
}

/* "DB ERROR: COMMIT: database or disk is full (No space left on device)",
 * "DB ERROR: COMMIT: disk I/O error (write: Operation not permitted)": the
 * call, SQLite's message, and what the OS said. SQLite does not keep the
 * errno of a failed WAL write (sqlite3_system_errno() is 0 then), so the
 * caller passes errno as it was right after the failing step. */
static void fail_message(struct db *db, enum db__stmt which, int saved_errno, char *msg, size_t len)
{
    int ext = sqlite3_extended_errcode(db->conn);
    int rc = ext & 0xff;
    int sys = sqlite3_system_errno(db->conn);
    const char *op = rc == SQLITE_IOERR ? ioerr_op(ext) : NULL;
    bool os = rc == SQLITE_IOERR || rc == SQLITE_FULL || rc == SQLITE_CANTOPEN;

    if (os && sys <= 0)
        sys = saved_errno;
    if (os && sys > 0)
        snprintf(msg, len, "DB ERROR: %s: %s (%s%s%s)", stmt_defs[which].what,
                 sqlite3_errmsg(db->conn), op ? op : "", op ? ": " : "", strerror(sys));
    else if (op)
        snprintf(msg, len, "DB ERROR: %s: %s (%s)", stmt_defs[which].what, sqlite3_errmsg(db->conn),
                 op);
    else
        snprintf(msg, len, "DB ERROR: %s: %s", stmt_defs[which].what, sqlite3_errmsg(db->conn));
}

/* Step the statement to completion; on failure write the message naming
 * the call into msg. The statement is reset either way. A row, if the
 * statement returns one, is handed to `row` before the reset. */
static int run_rows(struct bind *b, char *msg, size_t len, void (*row)(sqlite3_stmt *st, void *arg),
                    void *arg)
{
    sqlite3_stmt *st = b->db->stmts[b->which];
    int rc = b->rc, saved_errno = 0;

    if (rc == SQLITE_OK) {
        errno = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            if (row)
                row(st, arg);
        saved_errno = errno;
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        fail_message(b->db, b->which, saved_errno, msg, len);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_OK ? 0 : ST_EDB;
}

static int run(struct bind *b, char *msg, size_t len)
{
    return run_rows(b, msg, len, NULL, NULL);
}

static int run_plain(struct db *db, enum db__stmt which, char *msg, size_t len)
{
    struct bind b = bind_start(db, which);

    return run(&b, msg, len);
}

static int write_begin(struct db *db, const struct db_session_begin *s, char *msg, size_t len)
{
    struct bind b = bind_start(db, DB__ST_INS_SESSION);
    int rc;

    bind_int(&b, s->id);
    bind_text(&b, s->station);
    bind_text(&b, s->slot);
    bind_text(&b, s->port);
    bind_text(&b, s->usb_serial);
    bind_text(&b, s->recipe);
    bind_text(&b, s->recipe_version);
    bind_int(&b, s->started_ms);
    rc = run(&b, msg, len);
    for (unsigned i = 0; rc == 0 && i < s->n_images; i++) {
        const struct db_image_ref *img = &s->images[i];

        b = bind_start(db, DB__ST_INS_IMAGE);
        bind_text(&b, img->sha256);
        bind_text(&b, img->name);
        bind_text(&b, img->path);
        bind_int(&b, (int64_t)img->size);
        rc = run(&b, msg, len);
        if (rc != 0)
            break;
        b = bind_start(db, DB__ST_INS_SESSION_IMAGE);
        bind_int(&b, s->id);
        bind_text(&b, img->name);
        bind_text(&b, img->sha256);
        rc = run(&b, msg, len);
    }
    return rc;
}

static int write_step(struct db *db, const struct db_step *s, char *msg, size_t len)
{
    struct bind b = bind_start(db, DB__ST_INS_STEP);
    int rc;

    bind_int(&b, s->session_id);
    bind_int(&b, s->seq);
    bind_text(&b, s->name);
    bind_int(&b, s->started_ms);
    bind_int(&b, s->ended_ms);
    bind_text(&b, s->result);
    bind_text(&b, s->detail);
    bind_int(&b, (int64_t)s->bytes);
    bind_text(&b, s->info);
    rc = run(&b, msg, len);
    if (rc != 0)
        return rc;
    /* Kept on the session so recovery can say where a crash struck. */
    b = bind_start(db, DB__ST_UPD_LAST_STEP);
    bind_text(&b, s->name);
    bind_int(&b, s->session_id);
    return run(&b, msg, len);
}

static int write_end(struct db *db, const struct db_session_end *s, char *msg, size_t len)
{
    struct bind b = bind_start(db, DB__ST_UPD_END);

    bind_text(&b, s->serial);
    bind_text(&b, s->product);
    bind_int(&b, s->ended_ms);
    bind_text(&b, s->result);
    bind_text(&b, s->failed_step);
    bind_text(&b, s->reason);
    bind_int(&b, (int64_t)s->bytes);
    bind_int(&b, s->id);
    return run(&b, msg, len);
}

static void on_passed_row(sqlite3_stmt *st, void *arg)
{
    int64_t *out = arg;

    *out = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 0);
}

static int read_find(struct db *db, struct db__find *f, char *msg, size_t len)
{
    struct bind b = bind_start(db, DB__ST_FIND_PASS);

    f->passed_ms = 0;
    bind_text(&b, f->serial);
    bind_text(&b, f->recipe);
    bind_text(&b, f->version);
    return run_rows(&b, msg, len, on_passed_row, &f->passed_ms);
}

/* Answer the batch's lookups, in order, after its writes have committed. */
static int read_batch(struct db *db, struct db__req *batch, char *msg, size_t len)
{
    int rc;

    for (struct db__req *r = batch; r; r = r->next) {
        if (r->kind != DB__REQ_FIND)
            continue;
        rc = read_find(db, &r->u.find, msg, len);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static bool has_writes(const struct db__req *batch)
{
    for (const struct db__req *r = batch; r; r = r->next)
        if (r->kind != DB__REQ_FIND)
            return true;
    return false;
}

/* Write a batch in one transaction; *ns gets its duration on success. A
 * batch of lookups only opens no transaction and leaves *ns alone. */
static int write_batch(struct db *db, const struct db__req *batch, char *msg, size_t len,
                       uint64_t *ns)
{
    uint64_t t0 = uv_hrtime();
    char ignored[8];
    int rc;

    if (!has_writes(batch))
        return 0;
    rc = run_plain(db, DB__ST_BEGIN, msg, len);
    if (rc != 0)
        return rc;
    for (const struct db__req *r = batch; r; r = r->next) {
        assert(r->kind != DB__REQ_ERROR);
        switch (r->kind) {
        case DB__REQ_BEGIN:
            rc = write_begin(db, &r->u.begin, msg, len);
            break;
        case DB__REQ_STEP:
            rc = write_step(db, &r->u.step, msg, len);
            break;
        case DB__REQ_END:
            rc = write_end(db, &r->u.end, msg, len);
            break;
        case DB__REQ_FIND:
        case DB__REQ_ERROR:
            break;
        }
        if (rc != 0)
            goto out_rollback;
    }
    rc = run_plain(db, DB__ST_COMMIT, msg, len);
    if (rc != 0)
        goto out_rollback;
    *ns = uv_hrtime() - t0;
    return 0;
out_rollback:
    /* Some errors (SQLITE_FULL, IOERR) have already rolled back. */
    if (!sqlite3_get_autocommit(db->conn))
        run_plain(db, DB__ST_ROLLBACK, ignored, sizeof ignored);
    return rc;
}

/* SQLite's WAL hook, on the writer thread after each COMMIT: the size of
 * the WAL, in frames, for checkpoint(). Setting it turns SQLite's own
 * checkpoint at COMMIT (wal_autocheckpoint) off. */
static int on_wal_commit(void *arg, sqlite3 *conn, const char *name, int frames)
{
    struct db *db = arg;

    db->wal_frames = frames;
    return SQLITE_OK;
}

/* Copy the WAL back into the database file once it holds
 * DB__CHECKPOINT_FRAMES frames (about 4 MiB), so that it stays bounded over
 * a shift. SQLite would do this inside COMMIT; here it runs once the loop
 * has been told the batch is durable, so no result waits for it. PASSIVE:
 * it never waits for a reader (station report); frames a reader still
 * needs are copied by a later checkpoint, as the next COMMIT reports the
 * WAL still large. A failure is not the batch's, which is durable in the
 * WAL already; a disk that went bad fails the next COMMIT, which says so. */
static void checkpoint(struct db *db)
{
    int log = 0, copied = 0;

    if (db->wal_frames < DB__CHECKPOINT_FRAMES)
        return;
    db->wal_frames = 0;
    (void)sqlite3_wal_checkpoint_v2(db->conn, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
}

/* Under mu: move the ends and lookups of a batch to the done list with
 * `status` and return the rest, which the caller frees outside the lock. */
static struct db__req *finish_batch(struct db *db, struct db__req *batch, int status)
{
    struct db__req *r, *next, *garbage = NULL;

    for (r = batch; r; r = next) {
        next = r->next;
        r->next = NULL;
        if (r->kind == DB__REQ_END || r->kind == DB__REQ_FIND) {
            r->status = status;
            *db->done_tail = r;
            db->done_tail = &r->next;
        } else {
            r->next = garbage;
            garbage = r;
        }
    }
    return garbage;
}

static void writer_main(void *arg)
{
    struct db *db = arg;
    struct db__req *batch, *garbage, *next;
    char msg[sizeof db->fail_msg];
    uint64_t ns = 0;
    bool failed, notify;
    int rc;

    uv_mutex_lock(&db->mu);
    for (;;) {
        while (!db->queue && !db->stopping)
            uv_cond_wait(&db->cond, &db->mu);
        if (!db->queue)
            break;
        batch = db->queue;
        db->queue = NULL;
        db->queue_tail = &db->queue;
        failed = db->failed;
        uv_mutex_unlock(&db->mu);

        ns = 0;
        rc = failed ? ST_EDB : write_batch(db, batch, msg, sizeof msg, &ns);
        if (rc == 0)
            rc = read_batch(db, batch, msg, sizeof msg);

        uv_mutex_lock(&db->mu);
        if (rc == 0) {
            if (ns > 0) { /* a batch of lookups only commits nothing */
                db->commits++;
                db->commit_ns_total += ns;
                if (ns > db->commit_ns_max)
                    db->commit_ns_max = ns;
            }
        } else if (!failed) {
            /* The error goes ahead of the callbacks it explains. */
            db->failed = true;
            memcpy(db->fail_msg, msg, sizeof msg);
            db->fail_node.next = NULL;
            *db->done_tail = &db->fail_node;
            db->done_tail = &db->fail_node.next;
        }
        garbage = finish_batch(db, batch, rc);
        notify = db->async_ready && db->done;
        uv_mutex_unlock(&db->mu);

        for (; garbage; garbage = next) {
            next = garbage->next;
            free(garbage);
        }
        if (notify)
            uv_async_send(&db->async);
        if (rc == 0)
            checkpoint(db);
        uv_mutex_lock(&db->mu);
    }
    db->exited = true;
    notify = db->async_ready;
    uv_mutex_unlock(&db->mu);
    db__finalize_stmts(db);
    if (notify)
        uv_async_send(&db->async);
}

void db__finalize_stmts(struct db *db)
{
    for (int i = 0; i < DB__ST_COUNT; i++) {
        sqlite3_finalize(db->stmts[i]);
        db->stmts[i] = NULL;
    }
}

/* ---- loop thread -------------------------------------------------------- */

/* Run the done list: the error report (once) and the commit callbacks, in
 * the order the writer produced them. Callbacks may enqueue or stop. */
static void run_done(struct db *db)
{
    struct db__req *r, *next;

    uv_mutex_lock(&db->mu);
    r = db->done;
    db->done = NULL;
    db->done_tail = &db->done;
    uv_mutex_unlock(&db->mu);

    for (; r; r = next) {
        next = r->next;
        if (r->kind == DB__REQ_ERROR) {
            /* fail_msg is written once, before the node is published. */
            if (db->on_error)
                db->on_error(db->fail_msg, db->error_data);
            continue;
        }
        if (r->kind == DB__REQ_FIND) {
            r->u.find.cb(r->status, r->status ? 0 : r->u.find.passed_ms, r->cb_data);
            free(r);
            continue;
        }
        if (r->cb)
            r->cb(r->status, r->cb_data);
        free(r);
    }
}

static void on_async_close(uv_handle_t *handle)
{
    struct db *db = handle->data;

    db->wstate = DB__W_STOPPED;
    if (db->stop_cb)
        db->stop_cb(db, db->stop_data);
}

static void on_async(uv_async_t *async)
{
    struct db *db = async->data;
    bool exited;

    run_done(db);
    if (db->wstate != DB__W_STOPPING)
        return;
    uv_mutex_lock(&db->mu);
    exited = db->exited;
    uv_mutex_unlock(&db->mu);
    if (!exited)
        return;
    /* The thread has left its loop: joining only waits for its return. */
    uv_thread_join(&db->thread);
    run_done(db);
    uv_close((uv_handle_t *)&db->async, on_async_close);
}

int db_writer_start(struct db *db, uv_loop_t *loop, db_error_cb on_error, void *user_data)
{
    int rc;

    if (!db || !loop || db->wstate != DB__W_IDLE)
        return ST_EINVAL;
    for (int i = 0; i < DB__ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(db->conn, stmt_defs[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
                                &db->stmts[i], NULL);
        if (rc != SQLITE_OK) {
            rc = (rc & 0xff) == SQLITE_NOMEM ? ST_ENOMEM : ST_EDB;
            goto out_finalize;
        }
    }
    db->loop = loop;
    db->on_error = on_error;
    db->error_data = user_data;
    db->wal_frames = 0;
    sqlite3_wal_hook(db->conn, on_wal_commit, db);
    /* Thread first: if the async handle then fails, the thread can still be
     * stopped and joined at once, whereas a handle would need a close
     * callback before the caller could free anything. */
    rc = uv_thread_create(&db->thread, writer_main, db);
    if (rc != 0) {
        rc = st_error_from_errno(rc);
        goto out_finalize;
    }
    rc = uv_async_init(loop, &db->async, on_async);
    if (rc != 0) {
        uv_mutex_lock(&db->mu);
        db->stopping = true;
        uv_cond_signal(&db->cond);
        uv_mutex_unlock(&db->mu);
        uv_thread_join(&db->thread); /* it finalized the statements */
        db->stopping = false;
        db->exited = false;
        return st_error_from_errno(rc);
    }
    db->async.data = db;
    uv_mutex_lock(&db->mu);
    db->async_ready = true;
    uv_mutex_unlock(&db->mu);
    db->wstate = DB__W_RUNNING;
    return 0;

out_finalize:
    db__finalize_stmts(db);
    return rc;
}

void db_writer_stop(struct db *db, void (*cb)(struct db *db, void *user_data), void *user_data)
{
    if (db->wstate == DB__W_IDLE) {
        db->wstate = DB__W_STOPPED;
        if (cb)
            cb(db, user_data);
        return;
    }
    assert(db->wstate == DB__W_RUNNING);
    db->wstate = DB__W_STOPPING;
    db->stop_cb = cb;
    db->stop_data = user_data;
    uv_mutex_lock(&db->mu);
    db->stopping = true;
    uv_cond_signal(&db->cond);
    uv_mutex_unlock(&db->mu);
}

void db_commit_stats(const struct db *db, uint64_t *count, double *mean_ms, double *max_ms)
{
    /* The lock guards fields the writer updates; it is not logical state. */
    uv_mutex_t *mu = (uv_mutex_t *)&db->mu;
    uint64_t n, total, max;

    uv_mutex_lock(mu);
    n = db->commits;
    total = db->commit_ns_total;
    max = db->commit_ns_max;
    uv_mutex_unlock(mu);
    if (count)
        *count = n;
    if (mean_ms)
        *mean_ms = n ? (double)total / (double)n / 1e6 : 0.0;
    if (max_ms)
        *max_ms = (double)max / 1e6;
}

/* ---- enqueueing (loop thread) ------------------------------------------- */

_Static_assert(_Alignof(struct db__req) >= _Alignof(struct db_image_ref),
               "an image array may follow a request directly");

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

/* Copy s to *cur and advance it; NULL stays NULL. */
static const char *put_str(char **cur, const char *s)
{
    char *dst = *cur;
    size_t n;

    if (!s)
        return NULL;
    n = strlen(s) + 1;
    memcpy(dst, s, n);
    *cur += n;
    return dst;
}

static bool valid_result(const char *r)
{
    return r && (!strcmp(r, "PASS") || !strcmp(r, "FAIL") || !strcmp(r, "ABORTED"));
}

/* A session may also end SKIPPED (schema v2); its steps may not. */
static bool valid_end_result(const char *r)
{
    return valid_result(r) || (r && !strcmp(r, "SKIPPED"));
}

/* Refuse what the schema would reject inside a batch: one bad request
 * must not fail the writer for every session sharing its transaction. */
static bool valid_id(const struct db *db, int64_t id)
{
    return id >= db->first_free_id;
}

static int writer_state(const struct db *db)
{
    switch (db->wstate) {
    case DB__W_RUNNING:
        return 0;
    case DB__W_IDLE:
        return ST_EINVAL;
    default:
        return ST_ECLOSED;
    }
}

/* Append r to the queue, or free it if the writer has failed. */
static int enqueue(struct db *db, struct db__req *r)
{
    int rc = 0;

    uv_mutex_lock(&db->mu);
    if (db->failed) {
        rc = ST_EDB;
        goto out_unlock;
    }
    r->next = NULL;
    *db->queue_tail = r;
    db->queue_tail = &r->next;
    uv_cond_signal(&db->cond);
out_unlock:
    uv_mutex_unlock(&db->mu);
    if (rc != 0)
        free(r);
    return rc;
}

int db_session_begin(struct db *db, const struct db_session_begin *s)
{
    struct db_session_begin *c;
    struct db_image_ref *imgs;
    struct db__req *r;
    size_t size;
    char *cur;
    int rc;

    rc = writer_state(db);
    if (rc != 0)
        return rc;
    if (!s || !s->slot || !valid_id(db, s->id) || (s->n_images && !s->images))
        return ST_EINVAL;
    size = sizeof *r + (size_t)s->n_images * sizeof *imgs;
    size += str_size(s->station) + str_size(s->slot) + str_size(s->port) + str_size(s->usb_serial) +
            str_size(s->recipe) + str_size(s->recipe_version);
    for (unsigned i = 0; i < s->n_images; i++) {
        const struct db_image_ref *img = &s->images[i];

        if (!img->name || !img->sha256 || !img->path)
            return ST_EINVAL;
        size += str_size(img->name) + str_size(img->sha256) + str_size(img->path);
    }
    r = malloc(size);
    if (!r)
        return ST_ENOMEM;
    memset(r, 0, sizeof *r);
    r->kind = DB__REQ_BEGIN;
    c = &r->u.begin;
    *c = *s;
    imgs = (struct db_image_ref *)(r + 1);
    cur = (char *)(imgs + s->n_images);
    c->station = put_str(&cur, s->station);
    c->slot = put_str(&cur, s->slot);
    c->port = put_str(&cur, s->port);
    c->usb_serial = put_str(&cur, s->usb_serial);
    c->recipe = put_str(&cur, s->recipe);
    c->recipe_version = put_str(&cur, s->recipe_version);
    for (unsigned i = 0; i < s->n_images; i++) {
        imgs[i].name = put_str(&cur, s->images[i].name);
        imgs[i].sha256 = put_str(&cur, s->images[i].sha256);
        imgs[i].path = put_str(&cur, s->images[i].path);
        imgs[i].size = s->images[i].size;
    }
    c->images = s->n_images ? imgs : NULL;
    assert(cur == (char *)r + size);
    return enqueue(db, r);
}

int db_step(struct db *db, const struct db_step *s)
{
    struct db__req *r;
    size_t size;
    char *cur;
    int rc;

    rc = writer_state(db);
    if (rc != 0)
        return rc;
    if (!s || !s->name || !valid_result(s->result) || !valid_id(db, s->session_id))
        return ST_EINVAL;
    size = sizeof *r + str_size(s->name) + str_size(s->result) + str_size(s->detail) +
           str_size(s->info);
    r = malloc(size);
    if (!r)
        return ST_ENOMEM;
    memset(r, 0, sizeof *r);
    r->kind = DB__REQ_STEP;
    r->u.step = *s;
    cur = (char *)(r + 1);
    r->u.step.name = put_str(&cur, s->name);
    r->u.step.result = put_str(&cur, s->result);
    r->u.step.detail = put_str(&cur, s->detail);
    r->u.step.info = put_str(&cur, s->info);
    assert(cur == (char *)r + size);
    return enqueue(db, r);
}

int db_session_end(struct db *db, const struct db_session_end *s, db_commit_cb cb, void *user_data)
{
    struct db__req *r;
    size_t size;
    char *cur;
    int rc;

    rc = writer_state(db);
    if (rc != 0)
        return rc;
    if (!s || !valid_end_result(s->result) || !valid_id(db, s->id))
        return ST_EINVAL;
    size = sizeof *r + str_size(s->serial) + str_size(s->product) + str_size(s->result) +
           str_size(s->failed_step) + str_size(s->reason);
    r = malloc(size);
    if (!r)
        return ST_ENOMEM;
    memset(r, 0, sizeof *r);
    r->kind = DB__REQ_END;
    r->cb = cb;
    r->cb_data = user_data;
    r->u.end = *s;
    cur = (char *)(r + 1);
    r->u.end.serial = put_str(&cur, s->serial);
    r->u.end.product = put_str(&cur, s->product);
    r->u.end.result = put_str(&cur, s->result);
    r->u.end.failed_step = put_str(&cur, s->failed_step);
    r->u.end.reason = put_str(&cur, s->reason);
    assert(cur == (char *)r + size);
    return enqueue(db, r);
}

int db_find_pass(struct db *db, const char *serial, const char *recipe, const char *version,
                 db_find_pass_cb cb, void *user_data)
{
    struct db__req *r;
    size_t size;
    char *cur;
    int rc;

    rc = writer_state(db);
    if (rc != 0)
        return rc;
    if (!serial || !cb)
        return ST_EINVAL;
    size = sizeof *r + str_size(serial) + str_size(recipe) + str_size(version);
    r = malloc(size);
    if (!r)
        return ST_ENOMEM;
    memset(r, 0, sizeof *r);
    r->kind = DB__REQ_FIND;
    r->cb_data = user_data;
    r->u.find.cb = cb;
    cur = (char *)(r + 1);
    r->u.find.serial = put_str(&cur, serial);
    r->u.find.recipe = put_str(&cur, recipe);
    r->u.find.version = put_str(&cur, version);
    assert(cur == (char *)r + size);
    return enqueue(db, r);
}
