/*
 * Fastboot host state machine. One transfer is in flight at a time: the
 * command (bulk OUT), then replies (bulk IN, one message each), and for a
 * download the data phase in chunks of `chunk_size` bytes.
 */
#include "engine/fastboot.h"

#include <assert.h>
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"

enum fb_state {
    FB_IDLE,
    FB_SEND_CMD,
    FB_WAIT_REPLY,
    FB_SEND_DATA,
};

struct eng_fb {
    uv_loop_t *loop;
    struct eng_transport *t;
    struct eng_fb_hooks hooks;
    size_t chunk_size;
    uv_timer_t timer;
    struct eng_xfer xfer;
    enum fb_state state;
    bool in_flight; /* xfer submitted, callback not yet run */
    /* the running operation */
    eng_fb_done_cb cb;
    void *user_data;
    unsigned timeout_ms;
    char cmd[ENG_FB_COMMAND_MAX + 1];
    char reply[ENG_FB_REPLY_MAX + 1];
    struct eng_iov one; /* eng_fb_download()'s single range */
    const struct eng_iov *iov;
    unsigned n_iov, cur_iov;
    size_t iov_off; /* bytes of iov[cur_iov] already sent */
    /* eng_fb_set_file(): a file holding the bytes of `file_map` */
    int file_fd;
    const uint8_t *file_map;
    uint64_t file_size;
    uint64_t data_len, data_sent;
    bool download, data_done;
    /* ending: the in-flight transfer was cancelled; finish on its callback */
    bool ending;
    int end_status;
    char msg[320];
    /* closing */
    bool closing, timer_closing;
    unsigned op; /* bumped by start(): tells a hook's caller the operation changed */
    void (*close_cb)(void *user_data);
    void *close_user_data;
};

static void xfer_done(struct eng_xfer *x);

static void timer_closed(uv_handle_t *h)
{
    struct eng_fb *fb = h->data;
    void (*cb)(void *) = fb->close_cb;
    void *ud = fb->close_user_data;
    free(fb);
    if (cb)
        cb(ud);
}

static void close_timer(struct eng_fb *fb)
{
    if (fb->timer_closing)
        return;
    fb->timer_closing = true;
    uv_close((uv_handle_t *)&fb->timer, timer_closed);
}

static void finish(struct eng_fb *fb, int status, const char *text)
{
    assert(!fb->in_flight);
    uv_timer_stop(&fb->timer);
    eng_fb_done_cb cb = fb->cb;
    void *ud = fb->user_data;
    fb->state = FB_IDLE;
    fb->ending = false;
    fb->cb = NULL;
    fb->iov = NULL;
    if (cb)
        cb(fb, status, text, ud);
    if (fb->closing && fb->state == FB_IDLE)
        close_timer(fb);
}

static void finishf(struct eng_fb *fb, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finishf(struct eng_fb *fb, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fb->msg, sizeof(fb->msg), fmt, ap);
    va_end(ap);
    finish(fb, status, fb->msg);
}

/* Stop the running operation: cancel the transfer in flight and finish
 * from its callback, or finish now when nothing is in flight. */
static void end_with(struct eng_fb *fb, int status)
{
    if (fb->state == FB_IDLE)
        return;
    if (!fb->in_flight) {
        finish(fb, status, fb->msg);
        return;
    }
    if (fb->ending)
        return;
    fb->ending = true;
    fb->end_status = status;
    uv_timer_stop(&fb->timer);
    if (eng_transport_cancel(fb->t, &fb->xfer) != 0) {
        /* The transport lost track of it: its callback still comes. */
    }
}

static int submit(struct eng_fb *fb, enum eng_xfer_type type, void *buf, size_t len)
{
    fb->xfer.type = type;
    fb->xfer.buf = buf;
    fb->xfer.len = len;
    fb->xfer.cb = xfer_done;
    fb->xfer.user_data = fb;
    fb->xfer.from_file = false;
    const uint8_t *p = buf;
    if (type == ENG_XFER_BULK_OUT && fb->file_map && p >= fb->file_map &&
        (uint64_t)(p - fb->file_map) + len <= fb->file_size) {
        fb->xfer.from_file = true;
        fb->xfer.file_fd = fb->file_fd;
        fb->xfer.file_off = (uint64_t)(p - fb->file_map);
    }
    int rc = eng_transport_submit(fb->t, &fb->xfer);
    if (rc == 0)
        fb->in_flight = true;
    return rc;
}

static void fail_submit(struct eng_fb *fb, int rc, const char *what)
{
    if (rc == ST_ENODEV && fb->download && fb->state == FB_SEND_DATA)
        finishf(fb, rc, "device disconnected after %" PRIu64 " of %" PRIu64 " bytes", fb->data_sent,
                fb->data_len);
    else if (rc == ST_ENODEV)
        finishf(fb, rc, "device disconnected");
    else if (rc == ST_EPIPE && fb->state == FB_SEND_DATA)
        finishf(fb, rc,
                "device stalled the bulk OUT endpoint after %" PRIu64 " of %" PRIu64 " bytes",
                fb->data_sent, fb->data_len);
    else if (rc == ST_EPIPE && fb->state == FB_WAIT_REPLY)
        finishf(fb, rc, "device stalled the bulk IN endpoint instead of replying");
    else
        finishf(fb, rc, "cannot %s: %s", what, st_strerror(rc));
}

static void send_chunk(struct eng_fb *fb)
{
    while (fb->cur_iov < fb->n_iov && fb->iov_off == fb->iov[fb->cur_iov].len) {
        fb->cur_iov++;
        fb->iov_off = 0;
    }
    if (fb->cur_iov == fb->n_iov) {
        finishf(fb, ST_EINTERNAL, "download ranges hold fewer bytes than announced");
        return;
    }
    const struct eng_iov *v = &fb->iov[fb->cur_iov];
    size_t left = v->len - fb->iov_off;
    size_t n = left < fb->chunk_size ? left : fb->chunk_size;
    fb->state = FB_SEND_DATA;
    int rc = submit(fb, ENG_XFER_BULK_OUT, (void *)((const uint8_t *)v->base + fb->iov_off), n);
    if (rc)
        fail_submit(fb, rc, "send data");
}

static void read_reply(struct eng_fb *fb)
{
    fb->state = FB_WAIT_REPLY;
    int rc = submit(fb, ENG_XFER_BULK_IN, fb->reply, ENG_FB_REPLY_MAX);
    if (rc)
        fail_submit(fb, rc, "read reply");
}

/* Copy a reply for a message, showing bytes that are not printable. */
static void printable(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o] = '\0';
}

static bool all_printable(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return false;
        if (c == 0x7f)
            return false;
    }
    return true;
}

static void on_reply(struct eng_fb *fb, size_t n)
{
    char shown[128];
    fb->reply[n] = '\0';
    if (n < 4 || !all_printable(fb->reply, n)) {
        printable(fb->reply, n < 24 ? n : 24, shown, sizeof(shown));
        finishf(fb, ST_EPROTO, "garbage reply \"%s\" (%zu bytes)", shown, n);
        return;
    }
    const char *text = fb->reply + 4;
    if (!memcmp(fb->reply, "INFO", 4) || !memcmp(fb->reply, "TEXT", 4)) {
        unsigned op = fb->op;
        if (fb->hooks.info)
            fb->hooks.info(fb, text, fb->hooks.user_data);
        if (fb->op != op || fb->state == FB_IDLE)
            return; /* the hook ended the operation */
        /* A device that reports progress is alive: give it the full time again. */
        uv_timer_again(&fb->timer);
        read_reply(fb);
        return;
    }
    if (!memcmp(fb->reply, "OKAY", 4)) {
        if (fb->download && !fb->data_done) {
            finishf(fb, ST_EPROTO, "device replied OKAY to %s instead of DATA", fb->cmd);
            return;
        }
        snprintf(fb->msg, sizeof(fb->msg), "%s", text);
        finish(fb, 0, fb->msg);
        return;
    }
    if (!memcmp(fb->reply, "FAIL", 4)) {
        finishf(fb, ST_EDEVFAIL, "device replied FAIL: %s", text);
        return;
    }
    if (!memcmp(fb->reply, "DATA", 4)) {
        char *end;
        unsigned long long want = strtoull(text, &end, 16);
        if (!fb->download || fb->data_done) {
            finishf(fb, ST_EPROTO, "unexpected DATA reply to %s", fb->cmd);
        } else if (n != 12 || *end != '\0') {
            printable(fb->reply, n, shown, sizeof(shown));
            finishf(fb, ST_EPROTO, "malformed DATA reply \"%s\"", shown);
        } else if (want != fb->data_len) {
            finishf(fb, ST_EPROTO, "device asked for %llu bytes, not %" PRIu64, want, fb->data_len);
        } else {
            send_chunk(fb);
        }
        return;
    }
    printable(fb->reply, n < 24 ? n : 24, shown, sizeof(shown));
    finishf(fb, ST_EPROTO, "unknown reply \"%s\"", shown);
}

static void xfer_done(struct eng_xfer *x)
{
    struct eng_fb *fb = x->user_data;
    fb->in_flight = false;
    if (fb->ending) {
        finish(fb, fb->end_status, fb->msg);
        return;
    }
    if (fb->state == FB_SEND_DATA) {
        fb->data_sent += x->actual;
        fb->iov_off += x->actual;
    }
    if (x->status) {
        if (x->status == ST_EOVERFLOW)
            finishf(fb, ST_EOVERFLOW, "reply longer than %d bytes", ENG_FB_REPLY_MAX);
        else
            fail_submit(fb, x->status, fb->state == FB_SEND_CMD ? "send command" : "transfer");
        return;
    }
    switch (fb->state) {
    case FB_SEND_CMD:
        if (x->actual != x->len) {
            finishf(fb, ST_EPROTO, "short write of command (%zu of %zu bytes)", x->actual, x->len);
            return;
        }
        read_reply(fb);
        break;
    case FB_WAIT_REPLY:
        on_reply(fb, x->actual);
        break;
    case FB_SEND_DATA:
        if (fb->hooks.progress) {
            unsigned op = fb->op;
            fb->hooks.progress(fb, fb->data_sent, fb->data_len, fb->hooks.user_data);
            if (fb->op != op || fb->state == FB_IDLE)
                return; /* the hook ended the operation */
        }
        if (x->actual != x->len) {
            finishf(fb, ST_EPROTO, "short transfer after %" PRIu64 " of %" PRIu64 " bytes",
                    fb->data_sent, fb->data_len);
            return;
        }
        if (fb->data_sent < fb->data_len) {
            send_chunk(fb);
        } else {
            fb->data_done = true;
            read_reply(fb);
        }
        break;
    case FB_IDLE:
        assert(0 && "transfer completed while idle");
        break;
    }
}

static void on_timeout(uv_timer_t *timer)
{
    struct eng_fb *fb = timer->data;
    /* whole tenths: "5 s", "1.3 s" */
    double s = (double)((fb->timeout_ms + 50) / 100) / 10.0;
    switch (fb->state) {
    case FB_SEND_DATA:
        snprintf(fb->msg, sizeof(fb->msg),
                 "data phase timed out after %" PRIu64 " of %" PRIu64 " bytes (limit %g s)",
                 fb->data_sent, fb->data_len, s);
        break;
    case FB_SEND_CMD:
        snprintf(fb->msg, sizeof(fb->msg), "command not taken within %g s", s);
        break;
    default:
        snprintf(fb->msg, sizeof(fb->msg), "no reply within %g s", s);
        break;
    }
    end_with(fb, ST_ETIMEDOUT);
}

int eng_fb_new(uv_loop_t *loop, struct eng_transport *t, const struct eng_fb_hooks *hooks,
               size_t chunk_size, struct eng_fb **out)
{
    struct eng_fb *fb = calloc(1, sizeof(*fb));
    if (!fb)
        return ST_ENOMEM;
    fb->loop = loop;
    fb->t = t;
    if (hooks)
        fb->hooks = *hooks;
    fb->chunk_size = chunk_size ? chunk_size : 1u << 20;
    uv_timer_init(loop, &fb->timer);
    fb->timer.data = fb;
    *out = fb;
    return 0;
}

static int start(struct eng_fb *fb, const char *cmd, unsigned timeout_ms, eng_fb_done_cb cb,
                 void *user_data)
{
    size_t len = strlen(cmd);
    if (fb->closing)
        return ST_ECLOSED;
    if (fb->state != FB_IDLE)
        return ST_EBUSY;
    if (len == 0 || len > ENG_FB_COMMAND_MAX || !cb)
        return ST_EINVAL;
    memcpy(fb->cmd, cmd, len + 1);
    fb->op++;
    fb->cb = cb;
    fb->user_data = user_data;
    fb->timeout_ms = timeout_ms ? timeout_ms : 5000;
    fb->ending = false;
    fb->msg[0] = '\0';
    fb->state = FB_SEND_CMD;
    int rc = submit(fb, ENG_XFER_BULK_OUT, fb->cmd, len);
    if (rc) {
        fb->state = FB_IDLE;
        fb->cb = NULL;
        return rc;
    }
    uv_timer_start(&fb->timer, on_timeout, fb->timeout_ms, fb->timeout_ms);
    return 0;
}

int eng_fb_command(struct eng_fb *fb, const char *cmd, unsigned timeout_ms, eng_fb_done_cb cb,
                   void *user_data)
{
    if (fb->closing)
        return ST_ECLOSED;
    if (fb->state != FB_IDLE)
        return ST_EBUSY;
    fb->download = false;
    fb->data_done = false;
    return start(fb, cmd, timeout_ms, cb, user_data);
}

int eng_fb_download_iov(struct eng_fb *fb, const struct eng_iov *iov, unsigned n, uint64_t total,
                        unsigned timeout_ms, eng_fb_done_cb cb, void *user_data)
{
    char cmd[32];
    uint64_t sum = 0;
    if (fb->closing)
        return ST_ECLOSED;
    if (fb->state != FB_IDLE)
        return ST_EBUSY;
    if (!iov)
        return ST_EINVAL;
    for (unsigned i = 0; i < n; i++)
        sum += iov[i].len;
    if (total == 0 || total > 0xffffffffu || sum != total)
        return ST_EINVAL;
    snprintf(cmd, sizeof(cmd), "download:%08" PRIx64, total);
    fb->download = true;
    fb->data_done = false;
    fb->iov = iov;
    fb->n_iov = n;
    fb->cur_iov = 0;
    fb->iov_off = 0;
    fb->data_len = total;
    fb->data_sent = 0;
    return start(fb, cmd, timeout_ms, cb, user_data);
}

int eng_fb_download(struct eng_fb *fb, const void *data, uint64_t len, unsigned timeout_ms,
                    eng_fb_done_cb cb, void *user_data)
{
    if (fb->state != FB_IDLE)
        return ST_EBUSY;
    if (!data)
        return ST_EINVAL;
    fb->one = (struct eng_iov){.base = data, .len = (size_t)len};
    return eng_fb_download_iov(fb, &fb->one, 1, len, timeout_ms, cb, user_data);
}

void eng_fb_abort(struct eng_fb *fb, int status, const char *reason)
{
    if (fb->state == FB_IDLE || fb->ending)
        return;
    if (status == ST_ENODEV && fb->download && fb->state == FB_SEND_DATA)
        snprintf(fb->msg, sizeof(fb->msg),
                 "device disconnected after %" PRIu64 " of %" PRIu64 " bytes", fb->data_sent,
                 fb->data_len);
    else
        snprintf(fb->msg, sizeof(fb->msg), "%s", reason ? reason : st_strerror(status));
    end_with(fb, status);
}

uint64_t eng_fb_data_sent(const struct eng_fb *fb)
{
    return fb->download ? fb->data_sent : 0;
}

bool eng_fb_busy(const struct eng_fb *fb)
{
    return fb->state != FB_IDLE;
}

void eng_fb_close(struct eng_fb *fb, void (*cb)(void *user_data), void *user_data)
{
    assert(!fb->closing);
    fb->closing = true;
    fb->close_cb = cb;
    fb->close_user_data = user_data;
    if (fb->state != FB_IDLE) {
        if (!fb->ending)
            snprintf(fb->msg, sizeof(fb->msg), "cancelled");
        end_with(fb, ST_ECANCELED);
        return; /* finish() closes the timer */
    }
    close_timer(fb);
}

void eng_fb_set_file(struct eng_fb *fb, int fd, const void *map, uint64_t size)
{
    fb->file_fd = fd;
    fb->file_map = fd >= 0 ? map : NULL;
    fb->file_size = fd >= 0 ? size : 0;
}
