/*
 * fuzz_transport: the scripted transport (fuzz_transport.h).
 */
#include "fuzz_transport.h"

#include <stdlib.h>
#include <string.h>

#define FT_SLOTS 4

struct slot {
    struct eng_xfer *x;
    bool used, hang, cancelled;
    unsigned seq;
    int status;
    size_t actual;
    const uint8_t *data; /* IN: bytes to deliver (into the fuzz input) */
    size_t data_len;
};

struct ft {
    struct eng_transport pub;
    uv_loop_t *loop;
    uv_timer_t timer;
    struct fz *script;
    struct slot slots[FT_SLOTS];
    unsigned seq, n_submits;
    bool closing, timer_closing;
    eng_transport_close_cb close_cb;
    void *close_user_data;
};

static const int complete_errors[8] = {ST_ENODEV,    ST_EPIPE,  ST_EIO,    ST_ETIMEDOUT,
                                       ST_EOVERFLOW, ST_EPROTO, ST_ENOMEM, ST_ENODEV};
static const int submit_errors[8] = {ST_ENODEV, ST_EIO,    ST_EBUSY,   ST_ENOMEM,
                                     ST_EPIPE,  ST_EINVAL, ST_ECLOSED, ST_ENODEV};

static void maybe_closed(struct ft *t);

static bool is_in(const struct eng_xfer *x)
{
    return x->type == ENG_XFER_BULK_IN ||
           (x->type == ENG_XFER_CONTROL && (x->setup[0] & 0x80) != 0);
}

static void fire(uv_timer_t *timer)
{
    struct ft *t = timer->data;
    unsigned upto = t->seq; /* what a callback submits now completes on a later tick */
    for (;;) {
        struct slot *s = NULL;
        for (unsigned i = 0; i < FT_SLOTS; i++) {
            struct slot *c = &t->slots[i];
            if (c->used && (!c->hang || c->cancelled) && c->seq < upto && (!s || c->seq < s->seq))
                s = c;
        }
        if (!s)
            break;
        struct eng_xfer *x = s->x;
        s->used = false;
        if (s->cancelled) {
            x->status = ST_ECANCELED;
            x->actual = 0;
        } else {
            x->status = s->status;
            x->actual = s->actual;
            if (s->data_len && x->buf)
                memcpy(x->buf, s->data, s->data_len);
        }
        x->cb(x);
    }
    maybe_closed(t);
}

static struct slot *find(struct ft *t, const struct eng_xfer *x)
{
    for (unsigned i = 0; i < FT_SLOTS; i++)
        if (t->slots[i].used && t->slots[i].x == x)
            return &t->slots[i];
    return NULL;
}

/* Read one event for `x` (NULL x->buf/len for a reset); 0 or submit()'s error. */
static int take_event(struct ft *t, struct eng_xfer *x, bool reset)
{
    if (t->closing)
        return ST_ECLOSED;
    if (find(t, x))
        abort(); /* the driver submitted a transfer that is in flight */
    struct slot *s = NULL;
    for (unsigned i = 0; i < FT_SLOTS && !s; i++)
        if (!t->slots[i].used)
            s = &t->slots[i];
    if (!s)
        return ST_EBUSY;
    t->n_submits++;
    memset(s, 0, sizeof(*s));
    s->x = x;
    if (fz_empty(t->script)) {
        s->status = ST_ENODEV; /* the device has gone */
    } else {
        uint8_t b = fz_u8(t->script);
        switch (b >> 5) {
        case 5:
            s->status = complete_errors[b & 7];
            break;
        case 6:
            return submit_errors[b & 7];
        case 7:
            s->hang = true;
            break;
        case 4:
            if (!reset && !is_in(x)) {
                s->actual = fz_u16(t->script) % (x->len + 1);
                break;
            }
            /* fall through: a short IN is just a shorter reply */
        default:
            if (reset)
                break;
            if (!is_in(x)) {
                s->actual = x->len;
                break;
            }
            size_t want = fz_u8(t->script) + ((b & 0x10) ? 256u : 0u), got;
            const uint8_t *d = fz_bytes(t->script, want, &got);
            if (got > x->len) {
                s->status = ST_EOVERFLOW;
                got = x->len;
            }
            s->data = d;
            s->data_len = got;
            s->actual = got;
            break;
        }
    }
    s->used = true;
    s->seq = t->seq++;
    if (!s->hang)
        uv_timer_start(&t->timer, fire, 0, 0);
    return 0;
}

static int ft_submit(struct eng_transport *pub, struct eng_xfer *x)
{
    return take_event(pub->impl, x, false);
}

static int ft_reset(struct eng_transport *pub, struct eng_xfer *x)
{
    return take_event(pub->impl, x, true);
}

static int ft_cancel(struct eng_transport *pub, struct eng_xfer *x)
{
    struct ft *t = pub->impl;
    struct slot *s = find(t, x);
    if (!s)
        return ST_EINVAL;
    s->cancelled = true;
    uv_timer_start(&t->timer, fire, 0, 0);
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    struct ft *t = h->data;
    eng_transport_close_cb cb = t->close_cb;
    void *ud = t->close_user_data;
    if (cb)
        cb(&t->pub, ud);
    free(t);
}

static void maybe_closed(struct ft *t)
{
    if (!t->closing || t->timer_closing)
        return;
    for (unsigned i = 0; i < FT_SLOTS; i++)
        if (t->slots[i].used)
            return;
    t->timer_closing = true;
    uv_close((uv_handle_t *)&t->timer, timer_closed);
}

static void ft_close_op(struct eng_transport *pub, eng_transport_close_cb cb, void *user_data)
{
    struct ft *t = pub->impl;
    t->closing = true;
    t->close_cb = cb;
    t->close_user_data = user_data;
    bool any = false;
    for (unsigned i = 0; i < FT_SLOTS; i++)
        if (t->slots[i].used) {
            t->slots[i].cancelled = true;
            any = true;
        }
    if (any)
        uv_timer_start(&t->timer, fire, 0, 0);
    else
        maybe_closed(t);
}

static const struct eng_transport_ops ops = {
    .name = "fuzz", .submit = ft_submit, .cancel = ft_cancel, .close = ft_close_op};
static const struct eng_transport_ops ops_reset = {.name = "fuzz",
                                                   .submit = ft_submit,
                                                   .cancel = ft_cancel,
                                                   .close = ft_close_op,
                                                   .reset = ft_reset};

struct ft *ft_new(uv_loop_t *loop, struct fz *script, bool can_reset)
{
    struct ft *t = calloc(1, sizeof(*t));
    if (!t)
        abort();
    t->loop = loop;
    t->script = script;
    t->pub.ops = can_reset ? &ops_reset : &ops;
    t->pub.impl = t;
    strcpy(t->pub.port, "fuzz-1");
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    return t;
}

struct eng_transport *ft_transport(struct ft *t)
{
    return &t->pub;
}

unsigned ft_submits(const struct ft *t)
{
    return t->n_submits;
}

static void closed_flag(struct eng_transport *pub, void *user_data)
{
    (void)pub;
    *(bool *)user_data = true;
}

void ft_close(struct ft *t, bool *closed)
{
    t->pub.ops->close(&t->pub, closed_flag, closed);
}

/* ---- time ---- */

struct earliest {
    uv_timer_t *timer;
    uint64_t due_in;
};

static void find_timer(uv_handle_t *h, void *arg)
{
    struct earliest *e = arg;
    if (h->type != UV_TIMER || !uv_is_active(h) || uv_is_closing(h))
        return;
    uv_timer_t *t = (uv_timer_t *)h;
    uint64_t due = uv_timer_get_due_in(t);
    if (!e->timer || due < e->due_in) {
        e->timer = t;
        e->due_in = due;
    }
}

void ft_run(uv_loop_t *loop)
{
    for (;;) {
        uv_run(loop, UV_RUN_NOWAIT);
        if (!uv_loop_alive(loop))
            return;
        if (uv_backend_timeout(loop) == 0)
            continue; /* more to do now */
        struct earliest e = {NULL, 0};
        uv_walk(loop, find_timer, &e);
        if (!e.timer)
            abort(); /* waiting for something that cannot come: a hang */
        /* Time jumps to the earliest timer, as uv__run_timers() would run it. */
        uv_timer_cb cb = e.timer->timer_cb;
        uint64_t repeat = uv_timer_get_repeat(e.timer);
        uv_timer_stop(e.timer);
        if (repeat)
            uv_timer_start(e.timer, cb, repeat, repeat);
        cb(e.timer);
    }
}
