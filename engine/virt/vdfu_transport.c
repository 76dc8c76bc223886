/*
 * In-process transport to a virtual DFU device (vdfu_transport.h). One
 * transfer at a time (DFU uses endpoint 0 only, and the host waits for
 * each request): a control request or a bus reset.
 */
#include "engine/virt/vdfu_transport.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/dfu.h"

struct vdt {
    struct eng_transport pub; /* first: the public handle is the vdt */
    uv_loop_t *loop;
    struct eng_vdfu *dev;
    unsigned latency_ms;
    eng_vt_notify notify;
    void *user_data;
    uv_timer_t timer;
    struct eng_xfer *x; /* in flight */
    bool is_reset;      /* x is a bus reset, not a control request */
    bool held;          /* x was held back for the device's answer delay */
    bool canceled;
    bool gone, notified, closing;
    eng_transport_close_cb close_cb;
    void *close_user_data;
};

static int vdt_submit(struct eng_transport *t, struct eng_xfer *x);
static int vdt_cancel(struct eng_transport *t, struct eng_xfer *x);
static void vdt_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data);
static int vdt_reset(struct eng_transport *t, struct eng_xfer *x);

static const struct eng_transport_ops vdt_ops = {
    .name = "virt-dfu",
    .submit = vdt_submit,
    .cancel = vdt_cancel,
    .close = vdt_close,
    .reset = vdt_reset,
};

static void timer_closed(uv_handle_t *h)
{
    struct vdt *v = h->data;
    if (v->close_cb)
        v->close_cb(&v->pub, v->close_user_data);
    if (v->notify)
        v->notify(&v->pub, ENG_VT_CLOSED, v->user_data);
    free(v);
}

static void maybe_finish_close(struct vdt *v)
{
    if (!v->closing || v->x)
        return;
    if (!uv_is_closing((uv_handle_t *)&v->timer))
        uv_close((uv_handle_t *)&v->timer, timer_closed);
}

static void complete(struct vdt *v, int status, size_t actual)
{
    struct eng_xfer *x = v->x;
    v->x = NULL;
    v->canceled = false;
    x->status = status;
    x->actual = actual;
    x->cb(x);
}

static void fire(uv_timer_t *timer);

static void go_away(struct vdt *v, enum eng_vt_note why)
{
    v->gone = true;
    if (v->x)
        uv_timer_start(&v->timer, fire, 0, 0); /* a parked request ends now */
    if (v->notify && !v->notified && !v->closing) {
        v->notified = true;
        v->notify(&v->pub, why, v->user_data);
    }
}

static void fire(uv_timer_t *timer)
{
    struct vdt *v = timer->data;
    struct eng_xfer *x = v->x;
    if (!x)
        return;
    if (v->canceled) {
        complete(v, ST_ECANCELED, 0);
        maybe_finish_close(v);
        return;
    }
    if (v->gone) {
        complete(v, ST_ENODEV, 0);
        maybe_finish_close(v);
        return;
    }
    uint64_t now = uv_now(v->loop);
    if (v->is_reset) {
        eng_vdfu_bus_reset(v->dev, now);
        eng_vdfu_take_reenumerate(v->dev);
        complete(v, 0, 0);
        go_away(v, ENG_VT_REENUMERATE);
        maybe_finish_close(v);
        return;
    }
    unsigned delay = v->held ? 0 : eng_vdfu_answer_delay(v->dev, x->setup);
    if (delay) {
        v->held = true; /* a slow device: NAKed for that long, then answered */
        uv_timer_start(&v->timer, fire, delay, 0);
        return;
    }
    size_t actual = 0;
    int rc = eng_vdfu_control(v->dev, now, x->setup, x->buf, &actual);
    if (rc == ST_EAGAIN)
        return; /* NAKed: stays in flight until cancelled */
    size_t wlength = (size_t)(x->setup[6] | x->setup[7] << 8);
    if (rc == 0 && actual > wlength) {
        /* more than the data stage holds: the host controller reports babble */
        rc = ST_EOVERFLOW;
        actual = wlength;
    }
    if (rc == ST_ENODEV) {
        complete(v, ST_ENODEV, 0);
        go_away(v, ENG_VT_GONE);
        maybe_finish_close(v);
        return;
    }
    bool reenum = eng_vdfu_take_reenumerate(v->dev);
    complete(v, rc, actual);
    if (reenum)
        go_away(v, ENG_VT_REENUMERATE);
    maybe_finish_close(v);
}

static int start(struct vdt *v, struct eng_xfer *x, bool is_reset)
{
    if (v->closing)
        return ST_ECLOSED;
    if (v->gone)
        return ST_ENODEV;
    if (v->x)
        return ST_EBUSY;
    x->status = 0;
    x->actual = 0;
    v->x = x;
    v->is_reset = is_reset;
    v->held = false;
    v->canceled = false;
    uv_timer_start(&v->timer, fire, v->latency_ms, 0);
    return 0;
}

static int vdt_submit(struct eng_transport *t, struct eng_xfer *x)
{
    struct vdt *v = (struct vdt *)t;
    if (x->type != ENG_XFER_CONTROL)
        return ST_EINVAL; /* DFU lives on endpoint 0 */
    size_t wlength = (size_t)(x->setup[6] | x->setup[7] << 8);
    if (wlength > x->len || (wlength && !x->buf))
        return ST_EINVAL;
    return start(v, x, false);
}

static int vdt_reset(struct eng_transport *t, struct eng_xfer *x)
{
    return start((struct vdt *)t, x, true);
}

static int vdt_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    struct vdt *v = (struct vdt *)t;
    if (x != v->x)
        return ST_EINVAL;
    v->canceled = true;
    uv_timer_start(&v->timer, fire, 0, 0);
    return 0;
}

static void vdt_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data)
{
    struct vdt *v = (struct vdt *)t;
    assert(!v->closing);
    v->closing = true;
    v->close_cb = close_cb;
    v->close_user_data = user_data;
    if (v->x)
        vdt_cancel(t, v->x);
    maybe_finish_close(v);
}

/* ASCII from a UTF-16LE string descriptor. */
static void string_of(struct eng_vdfu *dev, uint8_t index, char *out, size_t cap)
{
    uint8_t d[256];
    out[0] = '\0';
    if (!index)
        return;
    size_t n = eng_vdfu_descriptor(dev, 3, index, d, sizeof(d));
    if (n > sizeof(d))
        n = sizeof(d);
    size_t o = 0;
    for (size_t i = 2; i + 1 < n && o + 1 < cap; i += 2)
        out[o++] = d[i + 1] == 0 && d[i] >= 0x20 && d[i] < 0x7f ? (char)d[i] : '?';
    out[o] = '\0';
}

/* What a USB transport learns from the descriptors. */
static int describe(struct vdt *v)
{
    uint8_t d[512];
    if (eng_vdfu_descriptor(v->dev, 1, 0, d, sizeof(d)) != 18)
        return ST_EINVAL;
    v->pub.vid = (uint16_t)(d[8] | d[9] << 8);
    v->pub.pid = (uint16_t)(d[10] | d[11] << 8);
    uint16_t bcd_device = (uint16_t)(d[12] | d[13] << 8);
    string_of(v->dev, d[16], v->pub.usb_serial, sizeof(v->pub.usb_serial));
    size_t n = eng_vdfu_descriptor(v->dev, 2, 0, d, sizeof(d));
    if (n == 0 || n > sizeof(d))
        return ST_EINVAL;
    uint8_t alt_string[ENG_DFU_MAX_ALTS];
    int rc = eng_dfu_parse_config(d, n, &v->pub.dfu, alt_string);
    if (rc)
        return rc;
    v->pub.dfu.bcd_device = bcd_device;
    for (unsigned a = 0; a < v->pub.dfu.n_alts; a++)
        string_of(v->dev, alt_string[a], v->pub.dfu.alt_names[a], ENG_DFU_ALT_NAME_MAX);
    v->pub.protocol_kind = ENG_PROTO_DFU;
    return 0;
}

int eng_vdt_new(uv_loop_t *loop, struct eng_vdfu *dev, const char *port, unsigned latency_ms,
                eng_vt_notify notify, void *user_data, struct eng_transport **out)
{
    struct vdt *v = calloc(1, sizeof(*v));
    if (!v)
        return ST_ENOMEM;
    v->pub.ops = &vdt_ops;
    v->pub.impl = v;
    snprintf(v->pub.port, sizeof(v->pub.port), "%s", port);
    v->loop = loop;
    v->dev = dev;
    v->latency_ms = latency_ms;
    v->notify = notify;
    v->user_data = user_data;
    int rc = describe(v);
    if (rc) {
        free(v);
        return rc;
    }
    uv_timer_init(loop, &v->timer);
    v->timer.data = v;
    *out = &v->pub;
    return 0;
}

void eng_vdt_unplug(struct eng_transport *t)
{
    struct vdt *v = (struct vdt *)t;
    if (v->closing)
        return;
    go_away(v, ENG_VT_GONE);
}
