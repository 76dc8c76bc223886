/*
 * db: the station's SQLite record of every session and step.
 *
 * Lifecycle: db_open() on the main thread before the loop runs (creates or
 * migrates the schema, closes sessions left open by a crash as ABORTED);
 * db_writer_start() hands all further writes to one writer thread; the
 * enqueue functions below copy their arguments and return at once;
 * db_writer_stop() drains the queue, joins the thread and closes the
 * libuv handle; db_close() frees everything.
 *
 * Durability: the database is in WAL mode with synchronous=FULL. A
 * session's end is reported to its db_commit_cb only after the transaction
 * holding it has been committed, so the caller may then show the result.
 * Step rows and session starts are batched into the same transactions.
 * The writer checkpoints the WAL itself (PASSIVE, once it holds about
 * 1000 pages), after the batch's callbacks were handed to the loop, so
 * that no result waits for a checkpoint and the WAL stays bounded over a
 * shift.
 *
 * Threading: every function here is called from the loop thread only;
 * callbacks run on the loop thread. The writer thread never touches the
 * loop except through its uv_async_t.
 */
#ifndef DB_DB_H
#define DB_DB_H

#include <stdint.h>
#include <uv.h>

/* Latest schema version (PRAGMA user_version). 1: the first schema;
 * 2: sessions.result may also be 'SKIPPED' (serial policy), index on
 * sessions.usb_serial. */
#define DB_SCHEMA_VERSION 2

struct db;

struct db_image_ref {
    const char *name;   /* image name in the recipe ("system") */
    const char *sha256; /* lowercase hex */
    const char *path;   /* file path or "(demo)" */
    uint64_t size;
};

struct db_session_begin {
    int64_t id;          /* from db_next_session_id() */
    const char *station; /* station id */
    const char *slot;
    const char *port;       /* port path or transport address */
    const char *usb_serial; /* serial from the transport (iSerial), may be NULL */
    const char *recipe;
    const char *recipe_version;
    int64_t started_ms; /* unix time, milliseconds */
    unsigned n_images;
    const struct db_image_ref *images;
};

struct db_step {
    int64_t session_id;
    unsigned seq;     /* 0-based step index in the recipe */
    const char *name; /* "flash:system" */
    int64_t started_ms, ended_ms;
    const char *result; /* "PASS", "FAIL" or "ABORTED" */
    const char *detail; /* reply text or failure reason, may be NULL */
    uint64_t bytes;
    const char *info; /* INFO lines joined by '\n', may be NULL */
};

struct db_session_end {
    int64_t id;
    const char *serial;  /* getvar serialno (or the best identity), may be NULL */
    const char *product; /* may be NULL */
    int64_t ended_ms;
    const char *result;      /* "PASS", "FAIL", "ABORTED" or "SKIPPED" (serial policy:
                              * nothing was written to the device) */
    const char *failed_step; /* may be NULL */
    const char *reason;      /* may be NULL */
    uint64_t bytes;
};

/* Called on the loop thread once the session end is durable (status 0), or
 * with ST_EDB if it could not be written. */
typedef void (*db_commit_cb)(int status, void *user_data);

/* Called on the loop thread when the writer fails; `message` names the
 * failing call and SQLite's message ("DB ERROR: COMMIT: database or disk
 * is full (No space left on device)"). */
typedef void (*db_error_cb)(const char *message, void *user_data);

/* The answer of db_find_pass(), on the loop thread: status 0 and
 * passed_ms > 0 (the end of the latest PASS) or 0 (none), or status
 * ST_EDB when the writer failed before or while answering. */
typedef void (*db_find_pass_cb)(int status, int64_t passed_ms, void *user_data);

/*
 * Open (creating if needed) the database at `path`, migrate it to
 * DB_SCHEMA_VERSION and close every session without an end as ABORTED
 * ("station stopped during STEP"). Synchronous; call before the loop runs.
 * Returns 0 and sets *out, or a negative st_error code and writes a
 * message naming the path into errbuf.
 */
int db_open(const char *path, struct db **out, char *errbuf, size_t errlen);

/* How long a write waits for another process's lock before it fails
 * with "database is locked" (default 5000 ms). Call before
 * db_writer_start(); returns 0 or ST_EINVAL after it. */
int db_set_busy_timeout(struct db *db, unsigned ms);

/* Number of sessions db_open() closed as ABORTED. */
unsigned db_recovered_count(const struct db *db);

/* The next unused session id (monotonic within this process). Every id
 * from the first value returned upwards belongs to this process, so a
 * caller may take the first one and count up from it by itself (the
 * engine does). */
int64_t db_next_session_id(struct db *db);

/* Start the writer thread; errors are reported through `on_error`. */
int db_writer_start(struct db *db, uv_loop_t *loop, db_error_cb on_error, void *user_data);

/* Enqueue writes. They copy every string. 0 or a negative st_error code
 * (ST_ECLOSED after db_writer_stop, ST_EDB once the writer has failed,
 * ST_EINVAL before db_writer_start or for a request the schema would
 * reject: an id below the first db_next_session_id(), a NULL slot or step name,
 * a result other than "PASS", "FAIL" or "ABORTED", or "SKIPPED" for a
 * session end). A step row also becomes its session's last_step, which
 * recovery names. */
int db_session_begin(struct db *db, const struct db_session_begin *s);
int db_step(struct db *db, const struct db_step *s);
int db_session_end(struct db *db, const struct db_session_end *s, db_commit_cb cb, void *user_data);

/*
 * Ask, through the writer thread (the loop thread never runs SQL), when
 * `serial` last PASSED the recipe `recipe` `version` in this database.
 * The lookup is queued behind every write enqueued before it and runs
 * after their commit, so it sees them. Strings are copied. Returns 0 and
 * then `cb` runs exactly once on the loop thread (also while stopping:
 * the drain answers it), or a negative code (the enqueue errors above)
 * and `cb` never runs.
 */
int db_find_pass(struct db *db, const char *serial, const char *recipe, const char *version,
                 db_find_pass_cb cb, void *user_data);

/* Drain every queued write, join the thread and close the async handle;
 * `cb` runs on the loop thread after that (pending commit callbacks run
 * first). Returns at once: the loop must run for the drain to finish. If
 * the writer was never started, `cb` runs before this returns. */
void db_writer_stop(struct db *db, void (*cb)(struct db *db, void *user_data), void *user_data);

/* Commit latency of the writer so far, measured on a monotonic clock from
 * BEGIN to the return of COMMIT, successful batches only: the number of
 * transactions, their mean and their maximum in milliseconds (0 when none).
 * Any out pointer may be NULL. Callable at any time from the loop thread. */
void db_commit_stats(const struct db *db, uint64_t *count, double *mean_ms, double *max_ms);

/* Free the database handle. The writer must be stopped (or never started). */
void db_close(struct db *db);

#endif
