/*
 * st_publisher: the station's side of `station watch`. It listens on a
 * Unix socket (mode 0660: the station's group only) and sends every
 * watcher snapshots of the dashboard's model (ui/remote.h) while it
 * changes. Watchers only read: whatever they send is read and dropped,
 * so nothing a watcher does reaches the station.
 *
 * A watcher can cost the station nothing:
 *  - writes are non-blocking (uv_pipe_t on the station's loop);
 *  - each watcher has at most one snapshot in flight. While it is, newer
 *    snapshots are not queued: the watcher is marked behind and gets the
 *    newest one when its write completes (snapshots are whole, so skipping
 *    some loses nothing but intermediate frames);
 *  - a watcher whose write stays unfinished for `stall_ms` is disconnected;
 *  - at most `max_watchers` at once; more are accepted and closed at once;
 *  - a watcher that vanishes fails its write with EPIPE (the station
 *    ignores SIGPIPE) or reads EOF, and is closed.
 * Memory is therefore bounded by (watchers + 1) snapshots, which are
 * shared (reference-counted) between the watchers they are sent to.
 *
 * The socket path: a stale socket left by a station that died is replaced;
 * a path where another station is listening, or that is not a socket, is
 * an error. The path is removed on close if it is still ours.
 *
 * Lifecycle, on the loop thread: st_publisher_new() (listening at once),
 * st_publisher_close() (one last snapshot to each watcher that is not
 * behind, then every handle closed; its callback runs once they are), then
 * st_publisher_free(). The model must outlive the publisher.
 */
#ifndef ST_PUBLISH_H
#define ST_PUBLISH_H

#include <stddef.h>
#include <uv.h>

#include "ui/model.h"

struct st_publisher;

struct st_publisher_options {
    unsigned period_ms;    /* how often the model is looked at; 0 = 200 */
    unsigned stall_ms;     /* a write unfinished this long disconnects; 0 = 10000 */
    unsigned max_watchers; /* 0 = 32 */
};

/* Counters, for tests and benchmarks. */
struct st_publisher_stats {
    unsigned watchers;      /* connected now */
    unsigned long accepted; /* connections taken */
    unsigned long refused;  /* connections closed for being over max_watchers */
    unsigned long sent;     /* snapshots written (started) */
    unsigned long skipped;  /* snapshots a watcher did not get because it was behind */
    unsigned long stalled;  /* watchers disconnected for stalling */
    unsigned long gone;     /* watchers that hung up or failed a write */
};

/* The default socket for a database: "DB.sock". Returns 0, or ST_ERANGE
 * when it does not fit in `size` or in a Unix socket address. */
int st_publisher_default_path(const char *db_path, char *buf, size_t size);

/* Listen at `path` and publish `model`. 0 and *out, or a negative
 * st_error code with a message in err (ST_EBUSY: another station listens
 * there; ST_ERANGE: the path is too long for a Unix socket; ST_EINVAL:
 * something that is not a socket is in the way). On failure a handle
 * may still be closing: run the loop before closing it. */
int st_publisher_new(uv_loop_t *loop, const struct ui_model *model, const char *path,
                     const struct st_publisher_options *opts, struct st_publisher **out, char *err,
                     size_t err_size);

/* Close every handle; `cb` (may be NULL) runs once they are all closed. */
void st_publisher_close(struct st_publisher *p, void (*cb)(struct st_publisher *p, void *user_data),
                        void *user_data);

/* Free after the close callback (or once the loop has run); NULL is accepted. */
void st_publisher_free(struct st_publisher *p);

void st_publisher_stats(const struct st_publisher *p, struct st_publisher_stats *out);

/* The socket path. */
const char *st_publisher_path(const struct st_publisher *p);

#endif
