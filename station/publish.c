/*
 * The station side of `station watch` (station/publish.h): a listening
 * uv_pipe_t, one uv_pipe_t per watcher, and a timer that encodes the model
 * while anyone watches and hands the snapshot to every watcher that has
 * nothing in flight.
 */
#include "station/publish.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/st_error.h"
#include "ui/remote.h"

/* A snapshot, shared by the writes that carry it. */
struct snap {
    unsigned refs;
    unsigned long seq;
    size_t len;
    uint8_t *data;
};

struct watcher {
    uv_pipe_t pipe;
    struct st_publisher *pub;
    struct watcher *prev, *next;
    uv_write_t req;
    struct snap *inflight;  /* the one write in flight, or NULL */
    unsigned long seq_sent; /* the newest snapshot it was given */
    uint64_t write_started; /* uv_now() when the write began */
    bool closing;
    char rbuf[64];
};

struct st_publisher {
    uv_loop_t *loop;
    const struct ui_model *model;
    struct st_publisher_options o;
    uv_pipe_t server;
    uv_timer_t timer;
    bool timer_running;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    struct watcher *watchers;
    struct snap *last; /* the newest snapshot, or NULL */
    unsigned long seq;
    unsigned handles; /* open handles: server, timer, watchers */
    bool closing;
    void (*close_cb)(struct st_publisher *p, void *user_data);
    void *close_data;
    struct st_publisher_stats stats;
};

static void snap_unref(struct snap *s)
{
    if (s && --s->refs == 0) {
        free(s->data);
        free(s);
    }
}

static void handle_closed(struct st_publisher *p)
{
    if (--p->handles == 0 && p->closing && p->close_cb)
        p->close_cb(p, p->close_data);
}

static void on_watcher_closed(uv_handle_t *h)
{
    struct watcher *w = h->data;
    struct st_publisher *p = w->pub;
    free(w);
    handle_closed(p);
}

/* Take a watcher out of the list and close it; its write, if any, is
 * cancelled and still calls back before the close callback. */
static void drop_watcher(struct watcher *w)
{
    struct st_publisher *p = w->pub;
    if (w->closing)
        return;
    w->closing = true;
    if (w->prev)
        w->prev->next = w->next;
    else
        p->watchers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    p->stats.watchers--;
    uv_close((uv_handle_t *)&w->pipe, on_watcher_closed);
}

static void on_written(uv_write_t *req, int status);

static void send_last(struct watcher *w)
{
    struct st_publisher *p = w->pub;
    struct snap *s = p->last;
    uv_buf_t b = uv_buf_init((char *)s->data, (unsigned)s->len);
    w->req.data = w;
    int rc = uv_write(&w->req, (uv_stream_t *)&w->pipe, &b, 1, on_written);
    if (rc) {
        /* no callback will come */
        p->stats.gone++;
        drop_watcher(w);
        return;
    }
    s->refs++;
    w->inflight = s;
    w->seq_sent = s->seq;
    w->write_started = uv_now(p->loop);
    p->stats.sent++;
}

static void on_written(uv_write_t *req, int status)
{
    struct watcher *w = req->data;
    struct st_publisher *p = w->pub;
    snap_unref(w->inflight);
    w->inflight = NULL;
    if (w->closing)
        return;
    if (status < 0) {
        p->stats.gone++;
        drop_watcher(w);
        return;
    }
    /* it was behind: the newest snapshot now, not every one it missed */
    if (p->last && w->seq_sent != p->last->seq)
        send_last(w);
}

/* Encode the model; a new snapshot if it differs from the last one. */
static void take_snapshot(struct st_publisher *p)
{
    uint8_t *data;
    size_t len;
    if (ui_remote_encode(p->model, &data, &len) != 0)
        return; /* the next tick tries again */
    if (p->last && p->last->len == len && !memcmp(p->last->data, data, len)) {
        free(data);
        return;
    }
    struct snap *s = malloc(sizeof(*s));
    if (!s) {
        free(data);
        return;
    }
    *s = (struct snap){.refs = 1, .seq = ++p->seq, .len = len, .data = data};
    for (struct watcher *w = p->watchers; w; w = w->next)
        if (w->inflight && p->last && w->seq_sent != p->last->seq)
            p->stats.skipped++; /* it never got the previous one */
    snap_unref(p->last);
    p->last = s;
}

static void publish(struct st_publisher *p)
{
    uint64_t now = uv_now(p->loop);
    take_snapshot(p);
    for (struct watcher *w = p->watchers, *next; w; w = next) {
        next = w->next;
        if (w->inflight) {
            if (now - w->write_started >= p->o.stall_ms) {
                p->stats.stalled++;
                drop_watcher(w);
            }
        } else if (p->last && w->seq_sent != p->last->seq) {
            send_last(w);
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    struct st_publisher *p = t->data;
    if (!p->watchers) {
        /* nobody watches: no work, no memory */
        uv_timer_stop(&p->timer);
        p->timer_running = false;
        snap_unref(p->last);
        p->last = NULL;
        return;
    }
    publish(p);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct watcher *w = h->data;
    *buf = uv_buf_init(w->rbuf, sizeof(w->rbuf));
}

/* Watchers send nothing: EOF, an error or any byte ends the watcher. */
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct watcher *w = s->data;
    if (nread == 0)
        return;
    w->pub->stats.gone++;
    drop_watcher(w);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct st_publisher *p = server->data;
    if (status < 0 || p->closing)
        return;
    struct watcher *w = calloc(1, sizeof(*w));
    if (!w)
        return; /* it stays in the backlog until memory allows */
    w->pub = p;
    uv_pipe_init(p->loop, &w->pipe, 0);
    w->pipe.data = w;
    p->handles++;
    if (uv_accept(server, (uv_stream_t *)&w->pipe) != 0) {
        w->closing = true;
        uv_close((uv_handle_t *)&w->pipe, on_watcher_closed);
        return;
    }
    if (p->stats.watchers >= p->o.max_watchers) {
        p->stats.refused++;
        w->closing = true;
        uv_close((uv_handle_t *)&w->pipe, on_watcher_closed);
        return;
    }
    w->next = p->watchers;
    if (p->watchers)
        p->watchers->prev = w;
    p->watchers = w;
    p->stats.watchers++;
    p->stats.accepted++;
    if (uv_read_start((uv_stream_t *)&w->pipe, on_alloc, on_read) != 0) {
        p->stats.gone++;
        drop_watcher(w);
        return;
    }
    if (!p->timer_running) {
        uv_timer_start(&p->timer, on_tick, p->o.period_ms, p->o.period_ms);
        p->timer_running = true;
    }
    publish(p); /* the newcomer sees the screen at once */
}

int st_publisher_default_path(const char *db_path, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s.sock", db_path);
    if (n < 0 || (size_t)n >= size || (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return ST_ERANGE;
    return 0;
}

/* Is someone listening at `path`? */
static bool in_use(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return false;
    bool used = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 || errno == EAGAIN;
    close(fd);
    return used;
}

/* A bound, listening-ready socket at `path` with mode 0660. */
static int bind_socket(const char *path, int *out_fd, struct stat *out_st, char *err,
                       size_t err_size)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, err_size, "watch socket %s: longer than the %zu bytes a Unix socket allows",
                 path, sizeof(sa.sun_path) - 1);
        return ST_ERANGE;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_size, "watch socket %s: socket: %s", path, strerror(errno));
        return st_error_from_errno(errno);
    }
    /* Linux gives the socket file the socket's own mode (less the umask):
     * set it before bind so that the file is never open to everyone. */
    if (fchmod(fd, 0660) != 0) {
        snprintf(err, err_size, "watch socket %s: fchmod: %s", path, strerror(errno));
        goto fail;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (errno != EADDRINUSE) {
            snprintf(err, err_size, "watch socket %s: bind: %s", path, strerror(errno));
            goto fail;
        }
        if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) {
            snprintf(err, err_size, "watch socket %s: the path exists and is not a socket", path);
            close(fd);
            return ST_EINVAL;
        }
        if (in_use(&sa)) {
            snprintf(err, err_size, "watch socket %s: another station is listening there", path);
            close(fd);
            return ST_EBUSY;
        }
        /* left by a station that is gone */
        if (unlink(path) != 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            snprintf(err, err_size, "watch socket %s: replacing a stale socket: %s", path,
                     strerror(errno));
            goto fail;
        }
    }
    /* group read and write whatever the umask took away (connect needs write) */
    if (chmod(path, 0660) != 0 || lstat(path, out_st) != 0) {
        snprintf(err, err_size, "watch socket %s: chmod: %s", path, strerror(errno));
        unlink(path);
        goto fail;
    }
    *out_fd = fd;
    return 0;
fail : {
    int rc = st_error_from_errno(errno);
    close(fd);
    return rc ? rc : ST_EIO;
}
}

static void free_on_close(uv_handle_t *h)
{
    free(h->data);
}

int st_publisher_new(uv_loop_t *loop, const struct ui_model *model, const char *path,
                     const struct st_publisher_options *opts, struct st_publisher **out, char *err,
                     size_t err_size)
{
    struct stat st;
    int fd = -1, rc;
    struct st_publisher *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, err_size, "watch socket %s: out of memory", path);
        return ST_ENOMEM;
    }
    p->loop = loop;
    p->model = model;
    if (opts)
        p->o = *opts;
    if (!p->o.period_ms)
        p->o.period_ms = 200;
    if (!p->o.stall_ms)
        p->o.stall_ms = 10000;
    if (!p->o.max_watchers)
        p->o.max_watchers = 32;
    rc = bind_socket(path, &fd, &st, err, err_size);
    if (rc) {
        free(p);
        return rc;
    }
    snprintf(p->path, sizeof(p->path), "%s", path);
    p->dev = st.st_dev;
    p->ino = st.st_ino;
    uv_pipe_init(loop, &p->server, 0);
    p->server.data = p;
    p->handles = 1;
    rc = uv_pipe_open(&p->server, fd);
    if (rc)
        close(fd); /* not taken over by the handle */
    else
        rc = uv_listen((uv_stream_t *)&p->server, 16, on_connection);
    if (rc) {
        snprintf(err, err_size, "watch socket %s: listen: %s", path, uv_strerror(rc));
        unlink(path);
        /* p goes with the handle's close callback, once the loop runs */
        uv_close((uv_handle_t *)&p->server, free_on_close);
        return st_error_from_errno(-rc) ? st_error_from_errno(-rc) : ST_EIO;
    }
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    p->handles++;
    *out = p;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

void st_publisher_close(struct st_publisher *p, void (*cb)(struct st_publisher *p, void *user_data),
                        void *user_data)
{
    if (!p || p->closing)
        return;
    if (p->watchers)
        publish(p); /* the last state (STOPPING, final counts) to whoever keeps up */
    p->closing = true;
    p->close_cb = cb;
    p->close_data = user_data;
    struct stat st;
    if (lstat(p->path, &st) == 0 && st.st_dev == p->dev && st.st_ino == p->ino)
        unlink(p->path);
    while (p->watchers)
        drop_watcher(p->watchers);
    uv_close((uv_handle_t *)&p->server, on_closed);
    uv_close((uv_handle_t *)&p->timer, on_closed);
}

void st_publisher_free(struct st_publisher *p)
{
    if (!p)
        return;
    snap_unref(p->last);
    free(p);
}

void st_publisher_stats(const struct st_publisher *p, struct st_publisher_stats *out)
{
    *out = p->stats;
}

const char *st_publisher_path(const struct st_publisher *p)
{
    return p->path;
}
