#include "engine/virt/vtransport.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/st_error.h"

struct vt {
    struct eng_transport pub; /* first: the public handle is the vt */
    uv_loop_t *loop;
    struct eng_vfb *dev;
    eng_vt_notify notify;
    void *user_data;
    uv_timer_t out_timer, in_timer;
    struct eng_xfer *out, *in;
    bool out_canceled, in_canceled;
    bool gone, notified, closing;
    int open_handles;
    eng_transport_close_cb close_cb;
    void *close_user_data;
    double busy_until_ms; /* pacing: the simulated wire is busy until then */
};

static int vt_submit(struct eng_transport *t, struct eng_xfer *x);
static int vt_cancel(struct eng_transport *t, struct eng_xfer *x);
static void vt_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data);

static const struct eng_transport_ops vt_ops = {
    .name = "virt",
    .submit = vt_submit,
    .cancel = vt_cancel,
    .close = vt_close,
};

static void timer_closed(uv_handle_t *h)
{
    struct vt *v = h->data;
    if (--v->open_handles > 0)
        return;
    if (v->close_cb)
        v->close_cb(&v->pub, v->close_user_data);
    if (v->notify)
        v->notify(&v->pub, ENG_VT_CLOSED, v->user_data);
    free(v);
}

static void maybe_finish_close(struct vt *v)
{
    if (!v->closing || v->out || v->in)
        return;
    if (!uv_is_closing((uv_handle_t *)&v->out_timer)) {
        uv_close((uv_handle_t *)&v->out_timer, timer_closed);
        uv_close((uv_handle_t *)&v->in_timer, timer_closed);
    }
}

static void complete(struct vt *v, struct eng_xfer *x, int status, size_t actual)
{
    x->status = status;
    x->actual = actual;
    x->cb(x);
    maybe_finish_close(v);
}

static void in_fire(uv_timer_t *timer);
static void out_fire(uv_timer_t *timer);

static void start_in_timer(struct vt *v)
{
    if (!uv_is_active((uv_handle_t *)&v->in_timer))
        uv_timer_start(&v->in_timer, in_fire, 0, 0);
}

/* The device is no longer there: what is in flight ends with ST_ENODEV
 * on the next tick, and the owner hears of it once. */
static void go_away(struct vt *v, enum eng_vt_note why)
{
    v->gone = true;
    if (v->in)
        start_in_timer(v);
    if (v->out)
        uv_timer_start(&v->out_timer, out_fire, 0, 0);
    if (v->notify && !v->notified && !v->closing) {
        v->notified = true;
        v->notify(&v->pub, why, v->user_data);
    }
}

static void in_fire(uv_timer_t *timer)
{
    struct vt *v = timer->data;
    struct eng_xfer *x = v->in;
    if (!x)
        return;
    if (v->in_canceled) {
        v->in = NULL;
        v->in_canceled = false;
        complete(v, x, ST_ECANCELED, 0);
        return;
    }
    if (v->gone) {
        v->in = NULL;
        complete(v, x, ST_ENODEV, 0);
        return;
    }
    if (eng_vfb_in_halted(v->dev)) {
        v->in = NULL;
        complete(v, x, ST_EPIPE, 0); /* the endpoint is halted: a stall */
        return;
    }
    if (!eng_vfb_reply_pending(v->dev))
        return; /* keep waiting */
    v->in = NULL;
    size_t n = eng_vfb_host_read(v->dev, x->buf, x->len);
    bool reenum = eng_vfb_take_reenumerate(v->dev);
    if (n > x->len)
        complete(v, x, ST_EOVERFLOW, x->len);
    else
        complete(v, x, 0, n);
    if (reenum)
        go_away(v, ENG_VT_REENUMERATE);
    else if (v->in)
        start_in_timer(v);
}

static void out_fire(uv_timer_t *timer)
{
    struct vt *v = timer->data;
    struct eng_xfer *x = v->out;
    if (!x)
        return;
    v->out = NULL;
    if (v->out_canceled) {
        v->out_canceled = false;
        complete(v, x, ST_ECANCELED, 0);
        return;
    }
    if (v->gone) {
        complete(v, x, ST_ENODEV, 0);
        return;
    }
    size_t accepted = 0;
    int rc = eng_vfb_host_write(v->dev, x->buf, x->len, &accepted);
    if (rc == ST_ENODEV) {
        v->gone = true;
        complete(v, x, ST_ENODEV, accepted);
        go_away(v, ENG_VT_GONE);
        return;
    }
    complete(v, x, rc, accepted);
    if (v->in && (eng_vfb_reply_pending(v->dev) || eng_vfb_in_halted(v->dev)))
        start_in_timer(v);
}

static int vt_submit(struct eng_transport *t, struct eng_xfer *x)
{
    struct vt *v = (struct vt *)t;
    if (v->closing)
        return ST_ECLOSED;
    if (v->gone)
        return ST_ENODEV;
    x->status = 0;
    x->actual = 0;
    if (x->type == ENG_XFER_BULK_OUT) {
        if (v->out)
            return ST_EBUSY;
        double pace = eng_vfb_config(v->dev)->pace_mbps;
        uint64_t delay = 0;
        if (eng_vfb_write_is_slow(v->dev, x->buf, x->len)) {
            /* the device NAKs: the bytes go in long after any time limit */
            delay = ENG_VFB_SLOW_MS;
        } else if (pace > 0) {
            double now = (double)uv_now(v->loop);
            double start = v->busy_until_ms > now ? v->busy_until_ms : now;
            v->busy_until_ms = start + (double)x->len / (pace * 1e3);
            delay = (uint64_t)(v->busy_until_ms - now);
        }
        v->out = x;
        v->out_canceled = false;
        uv_timer_start(&v->out_timer, out_fire, delay, 0);
        return 0;
    }
    if (x->type == ENG_XFER_BULK_IN) {
        if (v->in)
            return ST_EBUSY;
        v->in = x;
        v->in_canceled = false;
        if (eng_vfb_reply_pending(v->dev) || eng_vfb_in_halted(v->dev))
            start_in_timer(v);
        return 0;
    }
    return ST_EINVAL; /* the virtual fastboot device has no control requests */
}

static int vt_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    struct vt *v = (struct vt *)t;
    if (x == v->out) {
        v->out_canceled = true;
        uv_timer_start(&v->out_timer, out_fire, 0, 0);
        return 0;
    }
    if (x == v->in) {
        v->in_canceled = true;
        uv_timer_stop(&v->in_timer);
        start_in_timer(v);
        return 0;
    }
    return ST_EINVAL;
}

static void vt_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data)
{
    struct vt *v = (struct vt *)t;
    assert(!v->closing);
    v->closing = true;
    v->close_cb = close_cb;
    v->close_user_data = user_data;
    if (v->out)
        vt_cancel(t, v->out);
    if (v->in)
        vt_cancel(t, v->in);
    maybe_finish_close(v);
}

int eng_vt_new(uv_loop_t *loop, struct eng_vfb *dev, const char *port, eng_vt_notify notify,
               void *user_data, struct eng_transport **out)
{
    struct vt *v = calloc(1, sizeof(*v));
    if (!v)
        return ST_ENOMEM;
    v->pub.ops = &vt_ops;
    v->pub.impl = v;
    snprintf(v->pub.port, sizeof(v->pub.port), "%s", port);
    const struct eng_vfb_config *cfg = eng_vfb_config(dev);
    snprintf(v->pub.usb_serial, sizeof(v->pub.usb_serial), "%s",
             cfg->usb_serial[0] ? cfg->usb_serial : cfg->serial);
    v->pub.vid = 0x18d1; /* the ids a fastboot bootloader commonly shows */
    v->pub.pid = 0x4ee0;
    v->loop = loop;
    v->dev = dev;
    v->notify = notify;
    v->user_data = user_data;
    uv_timer_init(loop, &v->out_timer);
    uv_timer_init(loop, &v->in_timer);
    v->out_timer.data = v;
    v->in_timer.data = v;
    v->open_handles = 2;
    *out = &v->pub;
    return 0;
}

void eng_vt_unplug(struct eng_transport *t)
{
    struct vt *v = (struct vt *)t;
    if (v->closing)
        return;
    go_away(v, ENG_VT_GONE);
}
