/*
 * db_internal: the layout of struct db, shared by db.c (open, schema,
 * recovery, close) and writer.c (the writer thread and its queue).
 *
 * Ownership of the fields, so that no lock is needed where none is taken:
 * - "loop" fields are touched only by the loop thread;
 * - "writer" fields are set by db_writer_start() before the thread exists
 *   and then used only by the writer thread until it has been joined;
 * - "mu" fields are read and written only with `mu` held.
 */
#ifndef DB_DB_INTERNAL_H
#define DB_DB_INTERNAL_H

#include "db/db.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <uv.h>

/* Prepared statements of the writer, indices into struct db.stmts. */
enum db__stmt {
    DB__ST_BEGIN,
    DB__ST_COMMIT,
    DB__ST_ROLLBACK,
    DB__ST_INS_SESSION,
    DB__ST_INS_IMAGE,
    DB__ST_INS_SESSION_IMAGE,
    DB__ST_INS_STEP,
    DB__ST_UPD_LAST_STEP,
    DB__ST_UPD_END,
    DB__ST_FIND_PASS,
    DB__ST_COUNT
};

/* BEGIN, STEP and END are written in the batch's transaction; FIND is a
 * read (db_find_pass) answered after that transaction has committed. */
enum db__req_kind { DB__REQ_BEGIN, DB__REQ_STEP, DB__REQ_END, DB__REQ_FIND, DB__REQ_ERROR };

struct db__find {
    const char *serial, *recipe, *version;
    db_find_pass_cb cb;
    int64_t passed_ms; /* the answer, set by the writer */
};

/* One queued write. Every string it points to lives in the same
 * allocation, right after the struct, so a request is one malloc/free. */
struct db__req {
    struct db__req *next;
    enum db__req_kind kind;
    int status;      /* END and FIND on the done list: 0 or ST_EDB */
    db_commit_cb cb; /* DB__REQ_END only */
    void *cb_data;
    union {
        struct db_session_begin begin;
        struct db_step step;
        struct db_session_end end;
        struct db__find find;
    } u;
};

/* Where the writer is, as the loop thread sees it. */
enum db__wstate { DB__W_IDLE, DB__W_RUNNING, DB__W_STOPPING, DB__W_STOPPED };

struct db {
    /* loop (and the writer thread between start and join) */
    sqlite3 *conn;
    char *path;
    unsigned recovered;
    int64_t next_id;
    int64_t first_free_id;   /* ids from here up were unused at open */
    unsigned busy_ms;        /* sqlite3_busy_timeout of the connection */
    int wal_frames;          /* frames in the WAL after the last commit */
    struct db__pause *pause; /* test hook, NULL in production (ckpt_pause.c) */

    /* loop */
    enum db__wstate wstate;
    uv_loop_t *loop;
    uv_async_t async;
    db_error_cb on_error;
    void *error_data;
    void (*stop_cb)(struct db *db, void *user_data);
    void *stop_data;

    /* writer */
    uv_thread_t thread;
    sqlite3_stmt *stmts[DB__ST_COUNT];

    /* mu */
    uv_mutex_t mu;
    uv_cond_t cond;
    struct db__req *queue, **queue_tail;
    struct db__req *done, **done_tail;
    bool stopping;    /* no more requests will come; drain and exit */
    bool failed;      /* a batch failed; nothing more is written */
    bool exited;      /* the thread has left its loop (join won't block) */
    bool async_ready; /* the thread may uv_async_send() */
    uint64_t commits, commit_ns_total, commit_ns_max;
    char fail_msg[512];
    struct db__req fail_node; /* DB__REQ_ERROR entry on the done list */
};

/* Finalize the writer's statements (NULL entries are skipped). */
void db__finalize_stmts(struct db *db);

/*
 * Test hook (ckpt_pause.c): a VFS, registered under its own name, through
 * which the database at db_path is opened when the environment asks for it
 * (STATION_TEST_CHECKPOINT_PAUSE_MS). The first checkpoint that copies
 * pages into the main file then creates "<db_path>.checkpoint-paused" and
 * sleeps `ms` inside the checkpoint: after its page-th page (0 counts as 1),
 * or after its last one if it has fewer. Returns 0 and sets *out, or a
 * negative st_error code. Free it only after the connection using it is
 * closed.
 */
struct db__pause;
int db__pause_new(const char *db_path, unsigned ms, unsigned page, struct db__pause **out);
const char *db__pause_vfs_name(const struct db__pause *p);
void db__pause_free(struct db__pause *p);

#endif
