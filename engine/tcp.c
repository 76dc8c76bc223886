/*
 * Fastboot over TCP: one struct conn per connection attempt. It connects,
 * does the "FB01" handshake and then is the eng_transport the engine
 * holds. Two handles per connection (the socket and one timer: the
 * connect/handshake limit, later the "pump" that completes transfers on
 * the next loop iteration), and a third once an image frame is sent from
 * its file: a poll on a second descriptor of the socket, for room to
 * write, since libuv's stream writes only from memory. The connection is
 * freed once all are closed.
 *
 * Receiving reads exactly what the parser needs next (the 8-byte header,
 * then the payload straight into the frame's buffer), so nothing is read
 * past a full queue and no bytes sit in a side buffer.
 */
#include "engine/tcp.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/st_error.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_HANDSHAKE_TIMEOUT_MS 2000
#define DEFAULT_RETRY_MS 500
#define DEFAULT_MAX_FRAME (1u << 20)
#define DEFAULT_QUEUE_FRAMES 16
#define DEFAULT_QUEUE_BYTES (64u << 10)
/* At most this much of a frame goes into the socket per loop iteration:
 * over loopback the kernel runs the receiving side in the sender's call,
 * so 64 connections taking 1 MiB each at once held the loop for 20 ms
 * (B3 --tcp in docs/BENCHMARKS.md). */
#define FILE_SEND_PER_WAKEUP (256u << 10)

enum conn_phase {
    CP_CONNECTING,
    CP_HANDSHAKE,
    CP_ATTACHED, /* handed to the engine */
};

struct frame {
    struct frame *next;
    size_t len;
    uint8_t data[];
};

struct conn {
    struct eng_transport pub; /* first: the public handle is the conn */
    uv_loop_t *loop;
    struct eng_engine *eng;
    struct eng_tcp_source *src; /* NULL once the source let go of it */
    const struct eng_tcp_options *opts;
    enum conn_phase phase;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_write_t hs_req, write_req;
    uint8_t out_hdr[8];
    /* receiving */
    uint8_t hs[4];
    size_t hs_got;
    uint8_t hdr[8];
    size_t hdr_got;
    struct frame *rx; /* payload being received, after its header */
    size_t rx_got;
    struct frame *q_head, *q_tail;
    unsigned q_frames;
    size_t q_bytes;
    bool reading;
    /* transfers in flight (one each way) */
    struct eng_xfer *out, *in;
    bool out_canceled, in_canceled;
    /* An OUT sent from its file (sendfile): the socket's second descriptor
     * is watched for room to write while the frame goes out. */
    uv_poll_t poll;
    int poll_fd;      /* dup() of the socket; -1 before the first use */
    bool file_out;    /* c->out goes through sendfile */
    size_t file_sent; /* bytes of that frame sent, header included */
    int file_status;  /* how it ended, once done or failed */
    bool file_done;   /* ... completed on the next pump */
    bool no_sendfile; /* the file cannot be sent from: write from memory */
    /* the link */
    bool eof;           /* the device will send nothing more */
    bool dropped;       /* the socket is closed or closing */
    int drop_status;    /* what a waiting IN completes with once dropped */
    bool left_reported; /* eng_engine_device_left() was called */
    bool failed;        /* an attempt that never reached the engine */
    /* closing */
    bool closing, timer_closing;
    int open_handles;
    eng_transport_close_cb close_cb;
    void *close_user_data;
};

struct eng_tcp_source {
    uv_loop_t *loop;
    struct eng_engine *eng;
    struct eng_tcp_options opts;
    char host[ENG_TCP_HOST_MAX];
    uint16_t port;
    char port_name[64];
    struct sockaddr_storage addr;
    uv_timer_t retry;
    struct conn *conn; /* the connection (any phase) or NULL */
    unsigned arrivals;
    uint64_t file_bytes; /* frame payload bytes sent from files */
    bool stopping, retry_closed;
    void (*stop_cb)(struct eng_tcp_source *src, void *user_data);
    void *stop_user_data;
};

static int tcp_submit(struct eng_transport *t, struct eng_xfer *x);
static int tcp_cancel(struct eng_transport *t, struct eng_xfer *x);
static void tcp_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data);

static const struct eng_transport_ops tcp_ops = {
    .name = "tcp",
    .submit = tcp_submit,
    .cancel = tcp_cancel,
    .close = tcp_close,
};

static void source_conn_done(struct eng_tcp_source *src, struct conn *c);

/* libuv errors are negative errno values; a connection that breaks
 * (reset, broken pipe, not connected) means the device went away. */
static int from_uv(int uverr)
{
    switch (uverr) {
    case UV_ECONNRESET:
    case UV_EPIPE:
    case UV_ENOTCONN:
    case UV_ECONNABORTED:
    case UV_EBADF:
    case UV_EOF:
        return ST_ENODEV;
    default:
        return st_error_from_errno(-uverr);
    }
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* ---- lifetime ---- */

static void free_queue(struct conn *c)
{
    while (c->q_head) {
        struct frame *f = c->q_head;
        c->q_head = f->next;
        free(f);
    }
    c->q_tail = NULL;
    c->q_frames = 0;
    c->q_bytes = 0;
    free(c->rx);
    c->rx = NULL;
}

static void handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    /* The source first: the close callback may lead to the source's
     * owner stopping and freeing it. */
    if (c->src)
        source_conn_done(c->src, c);
    if (c->close_cb)
        c->close_cb(&c->pub, c->close_user_data);
    free_queue(c);
    free(c);
}

static void poll_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    close(c->poll_fd);
    c->poll_fd = -1;
    handle_closed(h);
}

static void close_socket(struct conn *c)
{
    /* The second descriptor too, or the connection would stay open. */
    if (c->poll_fd >= 0 && !uv_is_closing((uv_handle_t *)&c->poll))
        uv_close((uv_handle_t *)&c->poll, poll_closed);
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    c->reading = false;
    uv_close((uv_handle_t *)&c->tcp, handle_closed);
}

static void close_all(struct conn *c)
{
    close_socket(c);
    if (!c->timer_closing) {
        c->timer_closing = true;
        uv_close((uv_handle_t *)&c->timer, handle_closed);
    }
}

/* An attempt that never reached the engine: close it; the source retries. */
static void attempt_fail(struct conn *c)
{
    if (c->failed)
        return;
    c->failed = true;
    close_all(c);
}

/* ---- the attached transport ---- */

static void on_pump(uv_timer_t *t);

/* Complete transfers and report the link on the next loop iteration. */
static void kick(struct conn *c)
{
    if (!c->timer_closing)
        uv_timer_start(&c->timer, on_pump, 0, 0);
}

/* The link is unusable: close the socket (a write in flight then ends with
 * UV_ECANCELED), forget what was received, and let the pump report it. */
static void drop_link(struct conn *c, int status)
{
    if (c->dropped)
        return;
    c->dropped = true;
    c->drop_status = status;
    free_queue(c);
    close_socket(c);
    kick(c);
}

static void maybe_finish_close(struct conn *c)
{
    if (!c->closing || c->in || c->out || c->timer_closing)
        return;
    close_all(c);
}

static void complete(struct eng_xfer *x, int status, size_t actual)
{
    x->status = status;
    x->actual = actual;
    x->cb(x);
}

static bool queue_full(const struct conn *c)
{
    return c->q_frames >= c->opts->queue_frames || c->q_bytes >= c->opts->queue_bytes;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void resume_reading(struct conn *c)
{
    if (c->reading || c->eof || c->dropped || c->closing || queue_full(c))
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc)
        drop_link(c, from_uv(rc));
    else
        c->reading = true;
}

static void file_out_end(struct conn *c);

static void pump(struct conn *c)
{
    if (c->file_out && (c->file_done || c->dropped))
        file_out_end(c);
    for (;;) {
        struct eng_xfer *x = c->in;
        if (!x)
            break;
        if (c->in_canceled) {
            c->in = NULL;
            c->in_canceled = false;
            complete(x, ST_ECANCELED, 0);
        } else if (c->q_head) {
            struct frame *f = c->q_head;
            c->q_head = f->next;
            if (!c->q_head)
                c->q_tail = NULL;
            c->q_frames--;
            c->q_bytes -= f->len;
            size_t n = f->len < x->len ? f->len : x->len;
            memcpy(x->buf, f->data, n);
            c->in = NULL;
            int status = f->len > x->len ? ST_EOVERFLOW : 0;
            free(f);
            resume_reading(c);
            complete(x, status, n);
        } else if (c->dropped || c->eof) {
            c->in = NULL;
            complete(x, c->dropped ? c->drop_status : ST_ENODEV, 0);
        } else {
            break;
        }
    }
    /* After EOF, frames still queued are delivered first (the OKAY to
     * "reboot-bootloader" arrives together with the close); the link is
     * reported gone once they are read or nobody is going to read them. */
    if (c->eof && !c->dropped && (!c->q_head || (!c->in && !c->out)))
        drop_link(c, ST_ENODEV);
    if (c->dropped && !c->left_reported && !c->closing && c->phase == CP_ATTACHED) {
        c->left_reported = true;
        eng_engine_device_left(c->eng, &c->pub);
    }
    maybe_finish_close(c);
}

static void on_pump(uv_timer_t *t)
{
    pump(t->data);
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    struct eng_xfer *x = c->out;
    assert(x);
    c->out = NULL;
    if (c->out_canceled) {
        c->out_canceled = false;
        complete(x, ST_ECANCELED, status == 0 ? x->len : 0);
    } else if (status == 0) {
        complete(x, 0, x->len);
    } else {
        /* reset, broken pipe, or our own close after the device left */
        drop_link(c, ST_ENODEV);
        complete(x, ST_ENODEV, 0);
    }
    kick(c);
}

/* ---- sending from a file ---- */

/* The frame sent from its file is over (all sent, failed, or the link
 * dropped): complete it as on_write completes a write. */
static void file_out_end(struct conn *c)
{
    struct eng_xfer *x = c->out;
    int status = c->dropped && !c->file_done ? ST_ENODEV : c->file_status;
    c->out = NULL;
    c->file_out = false;
    c->file_done = false;
    if (!uv_is_closing((uv_handle_t *)&c->poll))
        uv_poll_stop(&c->poll);
    if (c->out_canceled) {
        c->out_canceled = false;
        complete(x, ST_ECANCELED, status == 0 && c->file_sent ? x->len : 0);
    } else {
        complete(x, status, status == 0 ? x->len : 0);
    }
    kick(c);
}

static void file_out_fail(struct conn *c, int status)
{
    c->file_status = status;
    c->file_done = true;
    drop_link(c, ST_ENODEV); /* part of a frame may be on the wire */
}

/* Send the header, then the payload from the file (or from the mapping
 * when the kernel cannot send from this file), until the socket is full
 * or the frame is out. True when it is out; false to wait for room (or
 * after a failure, which drops the link). */
static bool file_send(struct conn *c)
{
    struct eng_xfer *x = c->out;
    const size_t hdr = sizeof(c->out_hdr), total = hdr + x->len;
    const size_t stop_at = c->file_sent + FILE_SEND_PER_WAKEUP;
    while (c->file_sent < total) {
        if (c->file_sent >= stop_at)
            return false; /* the rest on a later iteration: the socket stays writable */
        ssize_t n;
        if (c->file_sent < hdr) {
            n = send(c->poll_fd, c->out_hdr + c->file_sent, hdr - c->file_sent, MSG_NOSIGNAL);
        } else if (!c->no_sendfile) {
            off_t off = (off_t)(x->file_off + (c->file_sent - hdr));
            n = sendfile(c->poll_fd, x->file_fd, &off, total - c->file_sent);
            if (n < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                c->no_sendfile = true; /* this file cannot be spliced */
                continue;
            }
            if (n == 0) { /* the file is shorter than the frame: it changed */
                file_out_fail(c, ST_EIO);
                return false;
            }
            if (n > 0 && c->src)
                c->src->file_bytes += (uint64_t)n;
        } else {
            n = send(c->poll_fd, (const uint8_t *)x->buf + (c->file_sent - hdr),
                     total - c->file_sent, MSG_NOSIGNAL);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return false; /* wait for room */
            file_out_fail(c, errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN
                                 ? ST_ENODEV
                                 : st_error_from_errno(errno));
            return false;
        }
        c->file_sent += (size_t)n;
    }
    c->file_status = 0;
    c->file_done = true;
    return true;
}

static void on_writable(uv_poll_t *p, int status, int events)
{
    struct conn *c = p->data;
    (void)events;
    if (!c->file_out || c->file_done || c->dropped)
        return;
    if (status < 0)
        file_out_fail(c, from_uv(status));
    else if (file_send(c))
        file_out_end(c);
}

/* Send x from its file: 0, or a negative code to send it from memory. */
static int file_out_start(struct conn *c, struct eng_xfer *x)
{
    if (c->opts->no_sendfile || c->no_sendfile)
        return ST_EINVAL;
    if (c->poll_fd < 0) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
            return ST_EINVAL;
        int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dup_fd < 0)
            return ST_EINVAL;
        if (uv_poll_init_socket(c->loop, &c->poll, dup_fd) != 0) {
            close(dup_fd);
            return ST_EINVAL;
        }
        c->poll.data = c;
        c->poll_fd = dup_fd;
        c->open_handles++;
    }
    if (uv_poll_start(&c->poll, UV_WRITABLE, on_writable) != 0)
        return ST_EINVAL;
    c->out = x;
    c->out_canceled = false;
    c->file_out = true;
    c->file_sent = 0;
    c->file_status = 0;
    c->file_done = false;
    /* As much as the socket takes now, as uv_write does; the callback
     * comes on the next pump if that was all. */
    if (file_send(c) || c->dropped)
        kick(c);
    return 0;
}

static int tcp_submit(struct eng_transport *t, struct eng_xfer *x)
{
    struct conn *c = (struct conn *)t;
    if (c->closing)
        return ST_ECLOSED;
    if (c->dropped)
        return ST_ENODEV;
    x->status = 0;
    x->actual = 0;
    switch (x->type) {
    case ENG_XFER_BULK_OUT: {
        if (c->out)
            return ST_EBUSY;
        if (c->eof)
            return ST_ENODEV;
        put_be64(c->out_hdr, x->len);
        if (x->from_file && x->len && file_out_start(c, x) == 0)
            return 0;
        uv_buf_t bufs[2] = {
            uv_buf_init((char *)c->out_hdr, sizeof(c->out_hdr)),
            uv_buf_init((char *)x->buf, (unsigned)x->len),
        };
        /* uv_buf_init takes an unsigned length: larger buffers are set directly */
        bufs[1].len = x->len;
        c->write_req.data = c;
        int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, x->len ? 2 : 1, on_write);
        if (rc)
            return from_uv(rc);
        c->out = x;
        c->out_canceled = false;
        return 0;
    }
    case ENG_XFER_BULK_IN:
        if (c->in)
            return ST_EBUSY;
        if (c->eof && !c->q_head)
            return ST_ENODEV;
        c->in = x;
        c->in_canceled = false;
        if (c->q_head)
            kick(c);
        return 0;
    case ENG_XFER_CONTROL:
    default:
        return ST_EINVAL; /* fastboot over TCP has no control requests */
    }
}

/* A write cannot be taken back once libuv has it. If all its bytes are
 * already with the kernel, its callback is imminent and only reports
 * ST_ECANCELED; otherwise half a frame may be on the wire, so the
 * connection is dropped (which completes the write). */
static void cancel_out(struct conn *c)
{
    if (c->out_canceled)
        return;
    c->out_canceled = true;
    if (c->file_out) {
        /* all sent: it ends on the next pump; otherwise drop the link */
        if (!c->file_done)
            drop_link(c, ST_ENODEV);
        else
            kick(c);
        return;
    }
    if (!c->dropped && c->tcp.write_queue_size > 0)
        drop_link(c, ST_ENODEV);
}

static int tcp_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    struct conn *c = (struct conn *)t;
    if (x && x == c->in) {
        c->in_canceled = true;
        kick(c);
        return 0;
    }
    if (x && x == c->out) {
        cancel_out(c);
        return 0;
    }
    return ST_EINVAL;
}

static void tcp_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data)
{
    struct conn *c = (struct conn *)t;
    assert(!c->closing);
    c->closing = true;
    c->close_cb = close_cb;
    c->close_user_data = user_data;
    if (c->in)
        c->in_canceled = true;
    if (c->out)
        cancel_out(c);
    kick(c);
}

/* ---- receiving ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    if (c->phase == CP_HANDSHAKE)
        *buf = uv_buf_init((char *)c->hs + c->hs_got, (unsigned)(sizeof(c->hs) - c->hs_got));
    else if (!c->rx)
        *buf = uv_buf_init((char *)c->hdr + c->hdr_got, (unsigned)(sizeof(c->hdr) - c->hdr_got));
    else {
        size_t left = c->rx->len - c->rx_got;
        *buf = uv_buf_init((char *)c->rx->data + c->rx_got,
                           left > 1u << 30 ? 1u << 30 : (unsigned)left);
    }
}

static void push_frame(struct conn *c, struct frame *f)
{
    f->next = NULL;
    if (c->q_tail)
        c->q_tail->next = f;
    else
        c->q_head = f;
    c->q_tail = f;
    c->q_frames++;
    c->q_bytes += f->len;
    if (queue_full(c) && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    kick(c);
}

static void attach(struct conn *c);

static void handshake_read(struct conn *c, size_t n)
{
    c->hs_got += n;
    if (c->hs_got < sizeof(c->hs))
        return;
    /* "FB" and a two-digit protocol version (shared/notes/fastboot.md) */
    if (c->hs[0] != 'F' || c->hs[1] != 'B' || c->hs[2] < '0' || c->hs[2] > '9' || c->hs[3] < '0' ||
        c->hs[3] > '9') {
        attempt_fail(c);
        return;
    }
    attach(c);
}

static void frame_read(struct conn *c, size_t n)
{
    if (!c->rx) {
        c->hdr_got += n;
        if (c->hdr_got < sizeof(c->hdr))
            return;
        c->hdr_got = 0;
        uint64_t len = be64(c->hdr);
        if (len > c->opts->max_frame) {
            drop_link(c, ST_EPROTO);
            return;
        }
        struct frame *f = malloc(sizeof(*f) + (size_t)len);
        if (!f) {
            drop_link(c, ST_ENOMEM);
            return;
        }
        f->len = (size_t)len;
        if (len == 0) {
            push_frame(c, f);
            return;
        }
        c->rx = f;
        c->rx_got = 0;
        return;
    }
    c->rx_got += n;
    if (c->rx_got < c->rx->len)
        return;
    struct frame *f = c->rx;
    c->rx = NULL;
    push_frame(c, f);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;
    if (nread == 0 || c->dropped || c->failed)
        return;
    if (nread < 0) {
        if (c->phase != CP_ATTACHED) {
            attempt_fail(c);
            return;
        }
        uv_read_stop(s);
        c->reading = false;
        /* EOF or a reset: nothing more will arrive; what did is delivered. */
        c->eof = true;
        free(c->rx);
        c->rx = NULL;
        kick(c);
        return;
    }
    if (c->phase == CP_HANDSHAKE)
        handshake_read(c, (size_t)nread);
    else
        frame_read(c, (size_t)nread);
}

/* ---- connecting ---- */

static void attach(struct conn *c)
{
    struct eng_tcp_source *src = c->src;
    uv_timer_stop(&c->timer);
    c->phase = CP_ATTACHED;
    src->arrivals++;
    /* The engine may start a session (submits) or close the transport
     * right away; both are fine from here. */
    eng_engine_device_arrived(c->eng, &c->pub);
}

static void on_attempt_timeout(uv_timer_t *t)
{
    attempt_fail(t->data);
}

static void on_handshake_written(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    if (status && c->phase == CP_HANDSHAKE)
        attempt_fail(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    if (c->failed)
        return;
    if (status) {
        attempt_fail(c); /* refused, unreachable: quiet, the source retries */
        return;
    }
    static const char hello[] = "FB01";
    uv_tcp_nodelay(&c->tcp, 1); /* commands and replies are small: no Nagle delay */
    c->phase = CP_HANDSHAKE;
    uv_timer_start(&c->timer, on_attempt_timeout, c->opts->handshake_timeout_ms, 0);
    uv_buf_t b = uv_buf_init((char *)hello, 4);
    c->hs_req.data = c;
    if (uv_write(&c->hs_req, (uv_stream_t *)&c->tcp, &b, 1, on_handshake_written) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        attempt_fail(c);
        return;
    }
    c->reading = true;
}

static int conn_start(struct eng_tcp_source *src, struct conn **out)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return ST_ENOMEM;
    c->pub.ops = &tcp_ops;
    c->pub.impl = c;
    snprintf(c->pub.port, sizeof(c->pub.port), "%s", src->port_name);
    c->pub.profile = src->opts.profile;
    c->loop = src->loop;
    c->eng = src->eng;
    c->src = src;
    c->opts = &src->opts;
    c->phase = CP_CONNECTING;
    int rc = uv_tcp_init(src->loop, &c->tcp);
    if (rc) {
        free(c);
        return from_uv(rc);
    }
    uv_timer_init(src->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->connect_req.data = c;
    c->poll_fd = -1;
    c->open_handles = 2;
    *out = c;
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&src->addr, on_connect);
    if (rc) {
        attempt_fail(c); /* closes; source_conn_done() schedules the retry */
        return 0;
    }
    uv_timer_start(&c->timer, on_attempt_timeout, src->opts.connect_timeout_ms, 0);
    return 0;
}

/* ---- the source ---- */

static void on_retry(uv_timer_t *t)
{
    struct eng_tcp_source *src = t->data;
    if (src->stopping || src->conn)
        return;
    if (conn_start(src, &src->conn) != 0) {
        src->conn = NULL;
        uv_timer_start(&src->retry, on_retry, src->opts.retry_ms, 0);
    }
}

static void maybe_stopped(struct eng_tcp_source *src)
{
    if (!src->stopping || !src->retry_closed || src->conn || !src->stop_cb)
        return;
    void (*cb)(struct eng_tcp_source *, void *) = src->stop_cb;
    src->stop_cb = NULL;
    cb(src, src->stop_user_data);
}

static void source_conn_done(struct eng_tcp_source *src, struct conn *c)
{
    if (src->conn != c)
        return;
    src->conn = NULL;
    if (src->stopping)
        maybe_stopped(src);
    else
        uv_timer_start(&src->retry, on_retry, src->opts.retry_ms, 0);
}

int eng_tcp_parse_address(const char *spec, char *host, size_t host_len, uint16_t *first,
                          uint16_t *last)
{
    const char *colon, *h = spec;
    size_t hl;
    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (!rb || rb[1] != ':')
            return ST_EINVAL;
        h = spec + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon || memchr(spec, ':', (size_t)(colon - spec)))
            return ST_EINVAL; /* IPv6 needs brackets */
        hl = (size_t)(colon - spec);
    }
    if (hl == 0 || hl >= host_len || hl >= ENG_TCP_HOST_MAX)
        return ST_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    const char *p = colon + 1;
    unsigned long a = 0, b = 0;
    char *end;
    if (*p < '0' || *p > '9')
        return ST_EINVAL;
    errno = 0;
    a = strtoul(p, &end, 10);
    if (errno || a == 0 || a > 65535)
        return ST_EINVAL;
    b = a;
    if (*end == '-') {
        p = end + 1;
        if (*p < '0' || *p > '9')
            return ST_EINVAL;
        b = strtoul(p, &end, 10);
        if (errno || b < a || b > 65535)
            return ST_EINVAL;
    }
    if (*end != '\0')
        return ST_EINVAL;
    struct sockaddr_storage ss;
    const char *num = strcmp(host, "localhost") ? host : "127.0.0.1";
    if (uv_ip4_addr(num, (int)a, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(num, (int)a, (struct sockaddr_in6 *)&ss) != 0)
        return ST_EINVAL;
    *first = (uint16_t)a;
    *last = (uint16_t)b;
    return 0;
}

int eng_tcp_source_new(uv_loop_t *loop, struct eng_engine *eng, const char *host, uint16_t port,
                       const struct eng_tcp_options *opts, struct eng_tcp_source **out)
{
    if (!host || strlen(host) >= ENG_TCP_HOST_MAX || port == 0)
        return ST_EINVAL;
    struct eng_tcp_source *src = calloc(1, sizeof(*src));
    if (!src)
        return ST_ENOMEM;
    const char *num = strcmp(host, "localhost") ? host : "127.0.0.1";
    bool v6 = false;
    if (uv_ip4_addr(num, port, (struct sockaddr_in *)&src->addr) != 0) {
        if (uv_ip6_addr(num, port, (struct sockaddr_in6 *)&src->addr) != 0) {
            free(src);
            return ST_EINVAL;
        }
        v6 = true;
    }
    if (opts)
        src->opts = *opts;
    if (!src->opts.connect_timeout_ms)
        src->opts.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    if (!src->opts.handshake_timeout_ms)
        src->opts.handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (!src->opts.retry_ms)
        src->opts.retry_ms = DEFAULT_RETRY_MS;
    if (!src->opts.max_frame)
        src->opts.max_frame = DEFAULT_MAX_FRAME;
    if (!src->opts.queue_frames)
        src->opts.queue_frames = DEFAULT_QUEUE_FRAMES;
    if (!src->opts.queue_bytes)
        src->opts.queue_bytes = DEFAULT_QUEUE_BYTES;
    src->loop = loop;
    src->eng = eng;
    snprintf(src->host, sizeof(src->host), "%s", host);
    src->port = port;
    snprintf(src->port_name, sizeof(src->port_name), v6 ? "tcp:[%s]:%u" : "tcp:%s:%u", host,
             (unsigned)port);
    uv_timer_init(loop, &src->retry);
    src->retry.data = src;
    uv_timer_start(&src->retry, on_retry, 0, 0);
    *out = src;
    return 0;
}

const char *eng_tcp_source_port(const struct eng_tcp_source *src)
{
    return src->port_name;
}

unsigned eng_tcp_source_arrivals(const struct eng_tcp_source *src)
{
    return src->arrivals;
}

uint64_t eng_tcp_source_file_bytes(const struct eng_tcp_source *src)
{
    return src->file_bytes;
}

static void retry_closed(uv_handle_t *h)
{
    struct eng_tcp_source *src = h->data;
    src->retry_closed = true;
    maybe_stopped(src);
}

void eng_tcp_source_stop(struct eng_tcp_source *src,
                         void (*cb)(struct eng_tcp_source *src, void *user_data), void *user_data)
{
    assert(!src->stopping);
    src->stopping = true;
    src->stop_cb = cb;
    src->stop_user_data = user_data;
    struct conn *c = src->conn;
    if (c && c->phase == CP_ATTACHED) {
        /* The engine holds it and will close it; we no longer care when. */
        c->src = NULL;
        src->conn = NULL;
    } else if (c) {
        attempt_fail(c); /* source_conn_done() follows from its close */
    }
    uv_close((uv_handle_t *)&src->retry, retry_closed);
}

void eng_tcp_source_free(struct eng_tcp_source *src)
{
    if (!src)
        return;
    assert(!src->conn);
    free(src);
}
