/*
 * test_fastboot: the fastboot host driver (engine/fastboot.c).
 *
 * Two kinds of peer: the virtual device model (eng_vfb) behind the
 * in-process transport (eng_vt), for everything a device really says and
 * every fault knob; and a scripted transport defined below, for replies
 * the model never sends (TEXT, malformed DATA, unknown tags, short
 * writes, transfer errors).
 *
 * Each test has its own uv loop and a SIGALRM time limit; driver timeouts
 * are short so that a hang ends as a failed assertion, not a stuck run.
 * Teardown closes the driver and the transport and fails the test if the
 * loop does not come to rest or a handle is left open, and if any
 * operation that started did not call back exactly once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include <xxhash.h>

#include "common/st_error.h"
#include "engine/fastboot.h"
#include "engine/transport.h"
#include "engine/virt/vfb.h"
#include "engine/virt/vtransport.h"

#define ALARM_S 20    /* SIGALRM kills a test that hangs regardless */
#define GUARD_MS 5000 /* a run_until() that takes longer fails */
#define TMO 200       /* driver timeout for most operations, ms */
#define MiB (1024u * 1024u)
#define MAX_INFO 32

struct fx;

/* One operation's completion record. */
struct done {
    struct fx *fx;
    int calls;
    int status;
    int order; /* fx->order when the callback ran */
    char text[400];
};

enum hook_action {
    ACT_NONE,
    ACT_ABORT_NOW,       /* eng_fb_abort() from inside the hook */
    ACT_ABORT_NEXT_TICK, /* eng_fb_abort() from a 0 ms timer started by the hook */
    ACT_CLOSE_NOW,       /* eng_fb_close() from inside the hook */
};

struct sx;

struct fx {
    uv_loop_t loop;
    struct eng_vfb_config cfg;
    struct eng_vfb *dev;
    struct eng_transport *t;
    struct sx *sx; /* t is the scripted transport */
    struct eng_fb *fb;
    size_t chunk;
    void *buf; /* download source, freed in teardown (after the driver) */
    /* closing */
    bool fb_closing, t_closing;
    int fb_closed, t_closed, fb_closed_order;
    /* bookkeeping: operations started (returned 0) and callbacks run */
    int started, finished, order;
    /* eng_vt notifications */
    int n_gone, n_reenum, n_vt_closed;
    /* hooks */
    int n_info;
    char info[MAX_INFO][ENG_FB_REPLY_MAX + 1];
    int n_progress;
    uint64_t last_done, last_total;
    bool progress_ok; /* done strictly increasing and <= total, total fixed */
    enum hook_action on_info, on_progress;
    int abort_status;
    uv_timer_t act_timer;
    bool act_timer_used;
};

/* ---- scripted transport ---------------------------------------------------
 * OUT completes on the next tick with all bytes taken (knobs can shorten
 * or fail one); each IN completes with the next scripted reply after its
 * delay, or waits until cancelled when the script is exhausted. Cancel and
 * close follow the transport contract: callbacks still fire, close_cb runs
 * after the last one, once both timers are closed.
 */

struct sx_reply {
    const char *bytes; /* NULL: the IN ends with `status` and no data */
    size_t len;        /* 0: strlen(bytes) */
    unsigned delay_ms;
    int status;
};

struct sx {
    struct eng_transport pub;
    uv_timer_t out_timer, in_timer;
    int open_handles;
    struct eng_xfer *out, *in;
    bool out_cancel, in_cancel, closing;
    eng_transport_close_cb close_cb;
    void *close_user_data;
    const struct sx_reply *replies;
    unsigned n_replies, next;
    /* knobs (indices are 1-based; 0 = off) */
    bool out_hang;      /* OUT transfers complete only when cancelled */
    unsigned short_out; /* this OUT reports short_actual bytes moved */
    size_t short_actual;
    unsigned fail_out; /* this OUT ends with out_status */
    int out_status;
    unsigned fail_submit; /* this submit() returns submit_rc */
    int submit_rc;
    /* record */
    unsigned n_submits, n_out, n_cancel;
    size_t out_len[16]; /* bytes moved by each OUT (first 16) */
    char first_cmd[ENG_FB_COMMAND_MAX + 1];
    uint8_t data[256];
    size_t data_len; /* bytes of every OUT after the first (first 256 kept) */
};

static void sx_maybe_close(struct sx *s);

static void sx_complete(struct sx *s, struct eng_xfer *x, int status, size_t actual)
{
    x->status = status;
    x->actual = actual;
    x->cb(x);
    sx_maybe_close(s);
}

static void sx_out_fire(uv_timer_t *timer)
{
    struct sx *s = timer->data;
    struct eng_xfer *x = s->out;
    if (!x)
        return;
    s->out = NULL;
    if (s->out_cancel) {
        s->out_cancel = false;
        sx_complete(s, x, ST_ECANCELED, 0);
        return;
    }
    unsigned idx = ++s->n_out;
    size_t actual = x->len;
    int status = 0;
    if (idx == s->short_out)
        actual = s->short_actual;
    if (idx == s->fail_out) {
        status = s->out_status;
        actual = 0;
    }
    if (idx <= 16)
        s->out_len[idx - 1] = actual;
    if (idx == 1) {
        size_t n = actual < ENG_FB_COMMAND_MAX ? actual : ENG_FB_COMMAND_MAX;
        memcpy(s->first_cmd, x->buf, n);
        s->first_cmd[n] = '\0';
    } else {
        for (size_t i = 0; i < actual; i++, s->data_len++)
            if (s->data_len < sizeof(s->data))
                s->data[s->data_len] = ((const uint8_t *)x->buf)[i];
    }
    sx_complete(s, x, status, actual);
}

static void sx_in_fire(uv_timer_t *timer)
{
    struct sx *s = timer->data;
    struct eng_xfer *x = s->in;
    if (!x)
        return;
    s->in = NULL;
    if (s->in_cancel) {
        s->in_cancel = false;
        sx_complete(s, x, ST_ECANCELED, 0);
        return;
    }
    const struct sx_reply *r = &s->replies[s->next++];
    if (!r->bytes) {
        sx_complete(s, x, r->status, 0);
        return;
    }
    size_t len = r->len ? r->len : strlen(r->bytes);
    size_t n = len < x->len ? len : x->len;
    memcpy(x->buf, r->bytes, n);
    sx_complete(s, x, len > x->len ? ST_EOVERFLOW : 0, n);
}

static int sx_submit(struct eng_transport *t, struct eng_xfer *x)
{
    struct sx *s = t->impl;
    if (s->closing)
        return ST_ECLOSED;
    if (++s->n_submits == s->fail_submit)
        return s->submit_rc;
    x->status = 0;
    x->actual = 0;
    if (x->type == ENG_XFER_BULK_OUT) {
        if (s->out)
            return ST_EBUSY;
        s->out = x;
        s->out_cancel = false;
        if (!s->out_hang)
            uv_timer_start(&s->out_timer, sx_out_fire, 0, 0);
        return 0;
    }
    if (x->type == ENG_XFER_BULK_IN) {
        if (s->in)
            return ST_EBUSY;
        s->in = x;
        s->in_cancel = false;
        if (s->next < s->n_replies)
            uv_timer_start(&s->in_timer, sx_in_fire, s->replies[s->next].delay_ms, 0);
        return 0;
    }
    return ST_EINVAL;
}

static int sx_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    struct sx *s = t->impl;
    s->n_cancel++;
    if (x == s->out) {
        s->out_cancel = true;
        uv_timer_start(&s->out_timer, sx_out_fire, 0, 0);
        return 0;
    }
    if (x == s->in) {
        s->in_cancel = true;
        uv_timer_start(&s->in_timer, sx_in_fire, 0, 0);
        return 0;
    }
    return ST_EINVAL;
}

static void sx_timer_closed(uv_handle_t *h)
{
    struct sx *s = h->data;
    if (--s->open_handles > 0)
        return;
    if (s->close_cb)
        s->close_cb(&s->pub, s->close_user_data);
    free(s);
}

static void sx_maybe_close(struct sx *s)
{
    if (!s->closing || s->out || s->in || uv_is_closing((uv_handle_t *)&s->out_timer))
        return;
    uv_close((uv_handle_t *)&s->out_timer, sx_timer_closed);
    uv_close((uv_handle_t *)&s->in_timer, sx_timer_closed);
}

static void sx_close(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data)
{
    struct sx *s = t->impl;
    s->closing = true;
    s->close_cb = close_cb;
    s->close_user_data = user_data;
    if (s->out)
        sx_cancel(t, s->out);
    if (s->in)
        sx_cancel(t, s->in);
    sx_maybe_close(s);
}

static const struct eng_transport_ops sx_ops = {
    .name = "script",
    .submit = sx_submit,
    .cancel = sx_cancel,
    .close = sx_close,
};

/* ---- fixture ------------------------------------------------------------- */

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    alarm(ALARM_S);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    snprintf(fx->cfg.serial, sizeof(fx->cfg.serial), "SIM0001");
    fx->chunk = MiB;
    fx->progress_ok = true;
    *state = fx;
    return 0;
}

static void on_guard(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(t->loop);
}

static void on_fb_closed(void *user_data)
{
    struct fx *fx = user_data;
    fx->fb_closed++;
    fx->fb_closed_order = ++fx->order;
}

static void on_t_closed(struct eng_transport *t, void *user_data)
{
    struct fx *fx = user_data;
    (void)t;
    fx->t_closed++;
}

static void close_fb(struct fx *fx)
{
    fx->fb_closing = true;
    eng_fb_close(fx->fb, on_fb_closed, fx);
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    uv_timer_t guard;
    bool expired = false;

    if (fx->fb && !fx->fb_closing)
        close_fb(fx);
    if (fx->t && !fx->t_closing) {
        fx->t_closing = true;
        fx->t->ops->close(fx->t, on_t_closed, fx);
    }
    if (fx->act_timer_used)
        uv_close((uv_handle_t *)&fx->act_timer, NULL);
    /* The guard is unreferenced: uv_run returns as soon as nothing else is
     * active, and a handle that keeps the loop alive trips the guard. */
    assert_int_equal(uv_timer_init(&fx->loop, &guard), 0);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&guard);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&guard, NULL);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_false(expired);
    assert_int_equal(fx->fb_closed, fx->fb ? 1 : 0);
    assert_int_equal(fx->t_closed, fx->t ? 1 : 0);
    if (fx->dev)
        assert_int_equal(fx->n_vt_closed, 1);
    assert_int_equal(fx->finished, fx->started);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    eng_vfb_free(fx->dev);
    free(fx->buf);
    free(fx);
    alarm(0);
    return 0;
}

/* Run the loop until *count reaches want; fail after GUARD_MS. The guard
 * is unreferenced so that UV_RUN_ONCE does not sleep on it once the
 * awaited callback has run and nothing else is pending. */
static void run_until(struct fx *fx, const int *count, int want)
{
    uv_timer_t guard;
    bool expired = false;

    assert_int_equal(uv_timer_init(&fx->loop, &guard), 0);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&guard);
    while (*count < want && !expired)
        uv_run(&fx->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_false(expired);
}

/* ---- hooks and callbacks ------------------------------------------------- */

static void on_done(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    struct done *d = user_data;
    (void)fb;
    d->calls++;
    d->status = status;
    d->order = ++d->fx->order;
    snprintf(d->text, sizeof(d->text), "%s", text ? text : "(null)");
    d->fx->finished++;
}

static void on_act_timer(uv_timer_t *t)
{
    struct fx *fx = t->data;
    eng_fb_abort(fx->fb, fx->abort_status, "aborted by test");
}

/* Run `cb` once after `ms` on the fixture's timer (closed in teardown). */
static void later(struct fx *fx, uv_timer_cb cb, uint64_t ms)
{
    if (!fx->act_timer_used) {
        fx->act_timer_used = true;
        uv_timer_init(&fx->loop, &fx->act_timer);
        fx->act_timer.data = fx;
    }
    uv_timer_start(&fx->act_timer, cb, ms, 0);
}

static void close_fb(struct fx *fx);

static void act(struct fx *fx, enum hook_action a)
{
    if (a == ACT_CLOSE_NOW && !fx->fb_closing)
        close_fb(fx);
    else if (a == ACT_ABORT_NOW)
        eng_fb_abort(fx->fb, fx->abort_status, "aborted by test");
    else if (a == ACT_ABORT_NEXT_TICK && !fx->act_timer_used)
        later(fx, on_act_timer, 0);
}

static void on_info(struct eng_fb *fb, const char *line, void *user_data)
{
    struct fx *fx = user_data;
    (void)fb;
    if (fx->n_info < MAX_INFO)
        snprintf(fx->info[fx->n_info], sizeof(fx->info[0]), "%s", line);
    fx->n_info++;
    act(fx, fx->on_info);
}

static void on_progress(struct eng_fb *fb, uint64_t done, uint64_t total, void *user_data)
{
    struct fx *fx = user_data;
    (void)fb;
    if (done <= fx->last_done || done > total || (fx->n_progress && total != fx->last_total))
        fx->progress_ok = false;
    fx->n_progress++;
    fx->last_done = done;
    fx->last_total = total;
    act(fx, fx->on_progress);
}

static void on_notify(struct eng_transport *t, enum eng_vt_note note, void *user_data)
{
    struct fx *fx = user_data;
    (void)t;
    if (note == ENG_VT_GONE)
        fx->n_gone++;
    else if (note == ENG_VT_REENUMERATE)
        fx->n_reenum++;
    else if (note == ENG_VT_CLOSED)
        fx->n_vt_closed++;
}

/* ---- helpers ------------------------------------------------------------- */

static void new_driver(struct fx *fx)
{
    struct eng_fb_hooks hooks = {.info = on_info, .progress = on_progress, .user_data = fx};
    assert_int_equal(eng_fb_new(&fx->loop, fx->t, &hooks, fx->chunk, &fx->fb), 0);
}

/* Virtual device from fx->cfg, its transport and a driver. */
static void open_dev(struct fx *fx)
{
    assert_int_equal(eng_vfb_new(&fx->cfg, &fx->dev), 0);
    assert_int_equal(eng_vt_new(&fx->loop, fx->dev, "virt-01", on_notify, fx, &fx->t), 0);
    new_driver(fx);
}

static void open_dev_fault(struct fx *fx, const char *spec)
{
    assert_int_equal(eng_vfb_parse_fault(&fx->cfg, spec), 0);
    open_dev(fx);
}

/* Scripted transport (knobs may be set on the result before the first
 * operation) and a driver. `replies` must be static. */
static struct sx *open_script(struct fx *fx, const struct sx_reply *replies, unsigned n)
{
    struct sx *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->pub.ops = &sx_ops;
    s->pub.impl = s;
    snprintf(s->pub.port, sizeof(s->pub.port), "script");
    s->replies = replies;
    s->n_replies = n;
    uv_timer_init(&fx->loop, &s->out_timer);
    uv_timer_init(&fx->loop, &s->in_timer);
    s->out_timer.data = s;
    s->in_timer.data = s;
    s->open_handles = 2;
    fx->sx = s;
    fx->t = &s->pub;
    new_driver(fx);
    return s;
}

static int start_cmd(struct fx *fx, const char *cmd, unsigned tmo, struct done *d)
{
    memset(d, 0, sizeof(*d));
    d->fx = fx;
    int rc = eng_fb_command(fx->fb, cmd, tmo, on_done, d);
    if (rc == 0)
        fx->started++;
    return rc;
}

static int start_download(struct fx *fx, const void *data, uint64_t len, unsigned tmo,
                          struct done *d)
{
    memset(d, 0, sizeof(*d));
    d->fx = fx;
    int rc = eng_fb_download(fx->fb, data, len, tmo, on_done, d);
    if (rc == 0)
        fx->started++;
    return rc;
}

/* Wait for d's callback; it must have run exactly once, and the driver
 * must be idle again. */
static void wait_done(struct fx *fx, struct done *d)
{
    run_until(fx, &d->calls, 1);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d->calls, 1);
    assert_false(eng_fb_busy(fx->fb));
}

static void run_cmd(struct fx *fx, const char *cmd, unsigned tmo, struct done *d)
{
    assert_int_equal(start_cmd(fx, cmd, tmo, d), 0);
    wait_done(fx, d);
}

/* A buffer of `len` pseudo-random bytes, owned by the fixture. */
static uint8_t *make_buf(struct fx *fx, size_t len)
{
    uint8_t *b = malloc(len);
    uint64_t x = 0x9e3779b97f4a7c15u;
    assert_non_null(b);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[i] = (uint8_t)x;
    }
    free(fx->buf);
    fx->buf = b;
    return b;
}

static void run_download(struct fx *fx, const void *data, uint64_t len, unsigned tmo,
                         struct done *d)
{
    assert_int_equal(start_download(fx, data, len, tmo, d), 0);
    wait_done(fx, d);
}

static const struct eng_vfb_part *find_part(struct fx *fx, const char *name)
{
    unsigned n;
    const struct eng_vfb_part *p = eng_vfb_parts(fx->dev, &n);
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(p[i].name, name))
            return &p[i];
    return NULL;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---- getvar -------------------------------------------------------------- */

static void test_getvar_product(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "simphone");
    assert_int_equal(eng_vfb_command_count(fx->dev), 1);
    assert_int_equal(fx->n_info, 0);
}

static void test_getvar_serialno(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "getvar:serialno", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "SIM0001");
}

static void test_getvar_max_download_size(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->cfg.max_download = 16 * MiB;
    open_dev(fx);
    run_cmd(fx, "getvar:max-download-size", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "0x01000000");
    /* "0x%08x": 0x and exactly eight lower-case hex digits */
    assert_int_equal(strlen(d.text), 10);
    assert_int_equal(strspn(d.text + 2, "0123456789abcdef"), 8);
}

static void test_getvar_max_download_size_default(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx); /* max_download 0 means 256 MiB */
    run_cmd(fx, "getvar:max-download-size", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "0x10000000");
}

static void test_getvar_unknown(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "getvar:no-such-thing", TMO, &d);
    assert_int_equal(d.status, ST_EDEVFAIL);
    assert_string_equal(d.text, "device replied FAIL: GetVar Variable Not found");
}

static void test_getvar_all(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "getvar:all", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "");
    /* product serialno max-download-size version-bootloader version-baseband
     * version is-userspace secure current-slot slot-count */
    assert_int_equal(fx->n_info, 10);
    assert_true(starts_with(fx->info[0], "product:"));
    assert_string_equal(fx->info[0], "product:simphone");
    assert_string_equal(fx->info[1], "serialno:SIM0001");
    assert_string_equal(fx->info[8], "current-slot:a");
    for (int i = 0; i < 10; i++)
        assert_non_null(strchr(fx->info[i], ':'));
}

/* Chained operations: each callback starts the next, as a session does. */
static void chain_next(struct eng_fb *fb, int status, const char *text, void *user_data);

struct chain {
    struct fx *fx;
    const char *const *cmds;
    int n, pos, calls;
    int status[8];
    char text[8][64];
};

static void chain_next(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    struct chain *c = user_data;
    c->calls++;
    c->fx->finished++;
    if (c->pos < 8) {
        c->status[c->pos] = status;
        snprintf(c->text[c->pos], sizeof(c->text[0]), "%s", text);
    }
    if (++c->pos < c->n && eng_fb_command(fb, c->cmds[c->pos], TMO, chain_next, c) == 0)
        c->fx->started++;
}

static void test_commands_chained_from_callback(void **state)
{
    struct fx *fx = *state;
    static const char *const cmds[] = {"getvar:product", "getvar:current-slot", "set_active:b",
                                       "getvar:current-slot"};
    struct chain c = {.fx = fx, .cmds = cmds, .n = 4};
    open_dev(fx);
    assert_int_equal(eng_fb_command(fx->fb, cmds[0], TMO, chain_next, &c), 0);
    fx->started++;
    run_until(fx, &c.calls, 4);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(c.calls, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(c.status[i], 0);
    assert_string_equal(c.text[0], "simphone");
    assert_string_equal(c.text[1], "a");
    assert_string_equal(c.text[3], "b");
    assert_int_equal(eng_vfb_command_count(fx->dev), 4);
}

/* ---- download and flash -------------------------------------------------- */

static void test_download_flash_boot(void **state)
{
    struct fx *fx = *state;
    struct done d;
    const size_t len = 3 * MiB + 123;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, len);
    run_download(fx, buf, len, 2000, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(fx->n_progress, 4); /* 1 MiB chunks: 3 full + 123 bytes */
    assert_true(fx->progress_ok);
    assert_int_equal(fx->last_done, len);
    assert_int_equal(fx->last_total, len);
    assert_int_equal(eng_vfb_bytes_received(fx->dev), len);
    assert_int_equal(eng_vfb_writes(fx->dev), 0); /* downloaded, not yet written */

    run_cmd(fx, "flash:boot", TMO, &d);
    assert_int_equal(d.status, 0);
    const struct eng_vfb_part *p = find_part(fx, "boot");
    assert_non_null(p);
    assert_int_equal(p->size, len);
    assert_true(p->hash == XXH3_64bits(buf, len));
    assert_false(p->erased);
    assert_int_equal(eng_vfb_writes(fx->dev), 1);
    assert_int_equal(fx->n_info, 0);
}

static void test_download_one_chunk_smaller_than_chunk_size(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 4096);
    run_download(fx, buf, 4096, TMO, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(fx->n_progress, 1);
    assert_int_equal(fx->last_done, 4096);
    run_cmd(fx, "flash:vbmeta", TMO, &d);
    assert_int_equal(d.status, 0);
    const struct eng_vfb_part *p = find_part(fx, "vbmeta");
    assert_non_null(p);
    assert_int_equal(p->size, 4096);
    assert_true(p->hash == XXH3_64bits(buf, 4096));
}

static void test_download_too_large(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->cfg.max_download = MiB;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, MiB + 1);
    run_download(fx, buf, MiB + 1, TMO, &d);
    assert_int_equal(d.status, ST_EDEVFAIL);
    assert_string_equal(d.text, "device replied FAIL: data too large");
    assert_int_equal(fx->n_progress, 0);
    assert_int_equal(eng_vfb_bytes_received(fx->dev), 0);
    assert_int_equal(eng_vfb_writes(fx->dev), 0);
}

static void test_flash_without_download(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "flash:boot", TMO, &d);
    assert_int_equal(d.status, ST_EDEVFAIL);
    assert_string_equal(d.text, "device replied FAIL: no image downloaded");
    assert_int_equal(eng_vfb_writes(fx->dev), 0);
}

static void test_flash_info_lines(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->cfg.info_lines = 3;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 1000);
    run_download(fx, buf, 1000, TMO, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(fx->n_info, 0);
    run_cmd(fx, "flash:boot", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(fx->n_info, 3);
    assert_string_equal(fx->info[0], "writing 'boot' 1/3");
    assert_string_equal(fx->info[2], "writing 'boot' 3/3");
    assert_int_equal(eng_vfb_writes(fx->dev), 1);
}

/* ---- other commands ------------------------------------------------------ */

static void test_erase(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "erase:userdata", TMO, &d);
    assert_int_equal(d.status, 0);
    const struct eng_vfb_part *p = find_part(fx, "userdata");
    assert_non_null(p);
    assert_true(p->erased);
    assert_int_equal(p->size, 0);
    assert_int_equal(eng_vfb_writes(fx->dev), 1);
}

static void test_set_active(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    assert_string_equal(eng_vfb_active_slot(fx->dev), "a");
    run_cmd(fx, "set_active:b", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(eng_vfb_active_slot(fx->dev), "b");
    run_cmd(fx, "set_active:c", TMO, &d);
    assert_int_equal(d.status, ST_EDEVFAIL);
    assert_string_equal(d.text, "device replied FAIL: invalid slot");
    assert_string_equal(eng_vfb_active_slot(fx->dev), "b");
}

static void test_oem(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "oem foo", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "");
    assert_int_equal(fx->n_info, 1);
    assert_string_equal(fx->info[0], "oem: foo");
}

static void test_unknown_command(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "frobnicate", TMO, &d);
    assert_int_equal(d.status, ST_EDEVFAIL);
    assert_string_equal(d.text, "device replied FAIL: unknown command");
}

static void test_reboot_then_silent(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    run_cmd(fx, "reboot", TMO, &d);
    assert_int_equal(d.status, 0);
    /* Booting the OS: fastboot no longer answers. */
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_ETIMEDOUT);
    assert_string_equal(d.text, "no reply within 0.2 s");
    assert_int_equal(fx->n_gone, 0);
}

static void test_reboot_bootloader_reenumerates(void **state)
{
    struct fx *fx = *state;
    struct done d, d2;
    open_dev(fx);
    run_cmd(fx, "reboot-bootloader", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(fx->n_reenum, 1);
    assert_int_equal(fx->n_gone, 0);
    /* The old transport is dead: starting fails and no callback comes. */
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d2), ST_ENODEV);
    assert_false(eng_fb_busy(fx->fb));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d2.calls, 0);
}

/* ---- fault knobs --------------------------------------------------------- */

static void test_fault_fail(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "fail=flash:boot");
    uint8_t *buf = make_buf(fx, 2048);
    run_download(fx, buf, 2048, TMO, &d);
    assert_int_equal(d.status, 0);
    run_cmd(fx, "flash:boot", TMO, &d);
    assert_int_equal(d.status, ST_EDEVFAIL);
    assert_string_equal(d.text, "device replied FAIL: injected fault");
    assert_int_equal(eng_vfb_writes(fx->dev), 0);
    /* Only the matching command fails. */
    run_cmd(fx, "flash:system", TMO, &d);
    assert_int_equal(d.status, 0);
}

static void test_fault_silent(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "silent=getvar");
    uint64_t t0 = uv_now(&fx->loop);
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_ETIMEDOUT);
    assert_string_equal(d.text, "no reply within 0.2 s");
    assert_true(uv_now(&fx->loop) - t0 >= TMO - 1);
}

static void test_fault_garbage(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "garbage=getvar");
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_true(starts_with(d.text, "garbage reply"));
    assert_string_equal(d.text, "garbage reply \"\\x01\\x7fZQ\\xff garbage\" (13 bytes)");
}

static void test_fault_oversize(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "oversize=getvar");
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EOVERFLOW);
    assert_string_equal(d.text, "reply longer than 256 bytes");
}

static void test_fault_disconnect(void **state)
{
    struct fx *fx = *state;
    struct done d, d2;
    open_dev_fault(fx, "disconnect=1048576");
    uint8_t *buf = make_buf(fx, 4 * MiB);
    run_download(fx, buf, 4 * MiB, 2000, &d);
    assert_int_equal(d.status, ST_ENODEV);
    assert_string_equal(d.text, "device disconnected after 1048576 of 4194304 bytes");
    assert_int_equal(fx->n_gone, 1);
    assert_int_equal(fx->n_reenum, 0);
    assert_int_equal(eng_vfb_bytes_received(fx->dev), MiB);
    assert_true(eng_vfb_gone(fx->dev));
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d2), ST_ENODEV);
}

static void test_unplug_while_waiting(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "silent=getvar");
    assert_int_equal(start_cmd(fx, "getvar:product", 2000, &d), 0);
    /* Let the command reach the device, then pull the cable. */
    while (eng_vfb_command_count(fx->dev) == 0)
        uv_run(&fx->loop, UV_RUN_NOWAIT); /* ONCE would sleep until the timeout */
    eng_vt_unplug(fx->t);
    assert_int_equal(fx->n_gone, 1);
    wait_done(fx, &d);
    assert_int_equal(d.status, ST_ENODEV);
    assert_string_equal(d.text, "device disconnected");
}

/* ---- timing ------------------------------------------------------------- */

static void test_pacing(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->cfg.pace_mbps = 20;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 2 * MiB);
    uv_update_time(&fx->loop);
    uint64_t t0 = uv_now(&fx->loop);
    run_download(fx, buf, 2 * MiB, 5000, &d);
    assert_int_equal(d.status, 0);
    /* 2 MiB at 20 MB/s is ~105 ms; only a loose lower bound. */
    assert_true(uv_now(&fx->loop) - t0 >= 90);
}

static void test_data_phase_timeout(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->cfg.pace_mbps = 0.5;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, MiB);
    run_download(fx, buf, MiB, 100, &d);
    assert_int_equal(d.status, ST_ETIMEDOUT);
    assert_true(starts_with(d.text, "data phase timed out after"));
    assert_string_equal(d.text, "data phase timed out after 0 of 1048576 bytes (limit 0.1 s)");
}

/* ---- API errors ---------------------------------------------------------- */

static void test_command_too_long(void **state)
{
    struct fx *fx = *state;
    struct done d;
    char cmd[ENG_FB_COMMAND_MAX + 2];
    open_dev(fx);
    memcpy(cmd, "oem ", 4);
    memset(cmd + 4, 'x', sizeof(cmd) - 5);
    cmd[sizeof(cmd) - 1] = '\0'; /* 65 bytes */
    assert_int_equal(start_cmd(fx, cmd, TMO, &d), ST_EINVAL);
    assert_false(eng_fb_busy(fx->fb));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 0);
    assert_int_equal(eng_vfb_command_count(fx->dev), 0);
    /* 64 bytes is the limit, and allowed. */
    cmd[ENG_FB_COMMAND_MAX] = '\0';
    run_cmd(fx, cmd, TMO, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(fx->n_info, 1);
}

static void test_command_empty_or_no_callback(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    assert_int_equal(start_cmd(fx, "", TMO, &d), ST_EINVAL);
    assert_int_equal(eng_fb_command(fx->fb, "getvar:product", TMO, NULL, NULL), ST_EINVAL);
    assert_false(eng_fb_busy(fx->fb));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 0);
    assert_int_equal(eng_vfb_command_count(fx->dev), 0);
}

static void test_busy(void **state)
{
    struct fx *fx = *state;
    struct done d, d2;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 64);
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d), 0);
    assert_true(eng_fb_busy(fx->fb));
    assert_int_equal(start_cmd(fx, "getvar:serialno", TMO, &d2), ST_EBUSY);
    assert_int_equal(start_download(fx, buf, 64, TMO, &d2), ST_EBUSY);
    wait_done(fx, &d);
    assert_int_equal(d2.calls, 0);
    /* The running command was not disturbed. */
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "simphone");
    assert_int_equal(eng_vfb_command_count(fx->dev), 1);
}

/* Regression: a refused command (ST_EBUSY) must leave the running
 * download alone. */
static void test_busy_during_download(void **state)
{
    struct fx *fx = *state;
    struct done d, d2;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 4096);
    assert_int_equal(start_download(fx, buf, 4096, TMO, &d), 0);
    assert_int_equal(start_cmd(fx, "flash:boot", TMO, &d2), ST_EBUSY);
    assert_int_equal(start_download(fx, buf, 4096, TMO, &d2), ST_EBUSY);
    wait_done(fx, &d);
    assert_int_equal(d2.calls, 0);
    assert_string_equal(d.text, "");
    assert_int_equal(d.status, 0);
    assert_int_equal(eng_vfb_bytes_received(fx->dev), 4096);
}

static void test_download_bad_args(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 16);
    assert_int_equal(start_download(fx, buf, 0, TMO, &d), ST_EINVAL);
    assert_int_equal(start_download(fx, NULL, 16, TMO, &d), ST_EINVAL);
    assert_int_equal(start_download(fx, buf, UINT64_C(0x100000000), TMO, &d), ST_EINVAL);
    assert_int_equal(eng_fb_download(fx->fb, buf, 16, TMO, NULL, NULL), ST_EINVAL);
    assert_false(eng_fb_busy(fx->fb));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 0);
    assert_int_equal(eng_vfb_command_count(fx->dev), 0);
    /* The driver is still usable. */
    run_download(fx, buf, 16, TMO, &d);
    assert_int_equal(d.status, 0);
}

static void test_command_after_close_refused(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    close_fb(fx);
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d), ST_ECLOSED);
    run_until(fx, &fx->fb_closed, 1);
    assert_int_equal(d.calls, 0);
}

/* ---- abort and close ----------------------------------------------------- */

static void test_abort_during_paced_download(void **state)
{
    struct fx *fx = *state;
    struct done d;
    char want[128];
    fx->cfg.pace_mbps = 20;
    fx->on_progress = ACT_ABORT_NEXT_TICK; /* after the first chunk, mid-second */
    fx->abort_status = ST_ENODEV;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 4 * MiB);
    run_download(fx, buf, 4 * MiB, 5000, &d);
    assert_int_equal(d.status, ST_ENODEV);
    assert_int_equal(fx->n_progress, 1);
    snprintf(want, sizeof(want), "device disconnected after %" PRIu64 " of 4194304 bytes",
             fx->last_done);
    assert_string_equal(d.text, want);
    assert_string_equal(d.text, "device disconnected after 1048576 of 4194304 bytes");
    assert_int_equal(eng_vfb_bytes_received(fx->dev), MiB); /* chunk 2 was cancelled */
}

static void test_abort_with_reason(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "silent=getvar");
    eng_fb_abort(fx->fb, ST_ECANCELED, "idle: no-op");
    assert_false(eng_fb_busy(fx->fb));
    assert_int_equal(start_cmd(fx, "getvar:product", 2000, &d), 0);
    eng_fb_abort(fx->fb, ST_ECANCELED, "station stopped");
    eng_fb_abort(fx->fb, ST_EIO, "second abort is ignored");
    wait_done(fx, &d);
    assert_int_equal(d.status, ST_ECANCELED);
    assert_string_equal(d.text, "station stopped");
}

static void test_abort_null_reason(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "silent=getvar");
    assert_int_equal(start_cmd(fx, "getvar:product", 2000, &d), 0);
    eng_fb_abort(fx->fb, ST_EIO, NULL);
    wait_done(fx, &d);
    assert_int_equal(d.status, ST_EIO);
    assert_string_equal(d.text, st_strerror(ST_EIO));
}

static void test_close_while_sending_command(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev(fx);
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d), 0);
    close_fb(fx); /* the command OUT is still in flight */
    run_until(fx, &fx->fb_closed, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, ST_ECANCELED);
    assert_true(d.order < fx->fb_closed_order);
}

static void on_close_timer(uv_timer_t *t)
{
    struct fx *fx = t->data;
    close_fb(fx);
}

static void test_close_while_waiting_reply(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "silent=getvar");
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d), 0);
    later(fx, on_close_timer, 30);
    run_until(fx, &fx->fb_closed, 1);
    assert_int_equal(eng_vfb_command_count(fx->dev), 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, ST_ECANCELED);
    assert_string_equal(d.text, "cancelled");
    assert_true(d.order < fx->fb_closed_order);
}

static void close_in_callback(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    struct done *d = user_data;
    on_done(fb, status, text, user_data);
    close_fb(d->fx);
}

static void test_close_from_done_callback(void **state)
{
    struct fx *fx = *state;
    struct done d = {.fx = fx};
    open_dev(fx);
    assert_int_equal(eng_fb_command(fx->fb, "getvar:product", TMO, close_in_callback, &d), 0);
    fx->started++;
    run_until(fx, &fx->fb_closed, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "simphone");
}

/* Regression: closing while an abort is in flight keeps the abort's
 * status and reason. */
static void test_close_after_abort_keeps_reason(void **state)
{
    struct fx *fx = *state;
    struct done d;
    open_dev_fault(fx, "silent=getvar");
    assert_int_equal(start_cmd(fx, "getvar:product", 2000, &d), 0);
    eng_fb_abort(fx->fb, ST_ENODEV, "device disconnected");
    close_fb(fx);
    run_until(fx, &fx->fb_closed, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, ST_ENODEV);
    assert_string_equal(d.text, "device disconnected");
}

/* Regression: a hook (progress, INFO) that aborts or closes the driver
 * ends the operation there; the driver must not carry on after it. */
static void test_abort_from_info_hook(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->on_info = ACT_ABORT_NOW;
    fx->abort_status = ST_ECANCELED;
    open_dev(fx);
    assert_int_equal(start_cmd(fx, "getvar:all", TMO, &d), 0);
    run_until(fx, &d.calls, 1);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, ST_ECANCELED);
    assert_string_equal(d.text, "aborted by test");
    assert_false(eng_fb_busy(fx->fb));
    assert_int_equal(fx->n_info, 1);
}

static void test_abort_from_progress_hook(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->on_progress = ACT_ABORT_NOW;
    fx->abort_status = ST_ENODEV;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 2 * MiB);
    run_download(fx, buf, 2 * MiB, 2000, &d);
    assert_int_equal(d.status, ST_ENODEV);
    assert_string_equal(d.text, "device disconnected after 1048576 of 2097152 bytes");
    assert_int_equal(fx->n_progress, 1);
    assert_int_equal(eng_vfb_bytes_received(fx->dev), MiB);
}

static void test_close_from_progress_hook(void **state)
{
    struct fx *fx = *state;
    struct done d;
    fx->on_progress = ACT_CLOSE_NOW;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, 2 * MiB);
    assert_int_equal(start_download(fx, buf, 2 * MiB, 2000, &d), 0);
    run_until(fx, &fx->fb_closed, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, ST_ECANCELED);
    assert_true(d.order < fx->fb_closed_order);
    assert_int_equal(eng_vfb_bytes_received(fx->dev), MiB);
}

/* ---- ranges (eng_fb_download_iov) ----------------------------------------- */

static void test_download_iov_flash(void **state)
{
    struct fx *fx = *state;
    struct done d;
    const size_t a = MiB + MiB / 2, c = 700 * 1024 + 5;
    open_dev(fx);
    uint8_t *buf = make_buf(fx, a + c);
    /* an empty range in the middle is skipped */
    const struct eng_iov iov[] = {{buf, a}, {buf + a, 0}, {buf + a, c}};
    memset(&d, 0, sizeof(d));
    d.fx = fx;
    assert_int_equal(eng_fb_download_iov(fx->fb, iov, 3, a + c, 2000, on_done, &d), 0);
    fx->started++;
    wait_done(fx, &d);
    assert_int_equal(d.status, 0);
    /* a transfer never spans two ranges: 1 MiB + 0.5 MiB, then 700 KiB + 5 */
    assert_int_equal(fx->n_progress, 3);
    assert_true(fx->progress_ok);
    assert_int_equal(fx->last_done, a + c);
    run_cmd(fx, "flash:system", TMO, &d);
    assert_int_equal(d.status, 0);
    const struct eng_vfb_part *p = find_part(fx, "system");
    assert_non_null(p);
    assert_int_equal(p->size, a + c);
    assert_true(p->hash == XXH3_64bits(buf, a + c));
}

static void test_download_iov_bad_args(void **state)
{
    struct fx *fx = *state;
    struct done d = {.fx = fx};
    static const char bytes[] = "abcdefgh";
    const struct eng_iov iov[] = {{bytes, 3}, {bytes + 3, 5}};
    open_dev(fx);
    /* total must equal the sum of the ranges, and be 1 .. 4 GiB - 1 */
    assert_int_equal(eng_fb_download_iov(fx->fb, iov, 2, 7, TMO, on_done, &d), ST_EINVAL);
    assert_int_equal(eng_fb_download_iov(fx->fb, iov, 2, 9, TMO, on_done, &d), ST_EINVAL);
    assert_int_equal(eng_fb_download_iov(fx->fb, iov, 0, 0, TMO, on_done, &d), ST_EINVAL);
    assert_int_equal(eng_fb_download_iov(fx->fb, NULL, 0, 8, TMO, on_done, &d), ST_EINVAL);
    assert_int_equal(eng_fb_download_iov(fx->fb, iov, 2, 8, TMO, NULL, NULL), ST_EINVAL);
    assert_false(eng_fb_busy(fx->fb));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 0);
    assert_int_equal(eng_vfb_command_count(fx->dev), 0);
}

/* ---- scripted transport: replies the model never sends ------------------- */

/* clang-format off */
#define R(s) {(s), 0, 0, 0}
/* clang-format on */
#define N_(a) (unsigned)(sizeof(a) / sizeof((a)[0]))

static void test_script_text_then_okay(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("TEXTsome text"), R("OKAY")};
    open_script(fx, r, N_(r));
    run_cmd(fx, "oem hello", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "");
    assert_int_equal(fx->n_info, 1);
    assert_string_equal(fx->info[0], "some text");
    assert_string_equal(fx->sx->first_cmd, "oem hello");
}

static void test_script_download_ok(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA00000020"), R("OKAY")};
    fx->chunk = 10; /* 10 + 10 + 10 + 2 */
    struct sx *s = open_script(fx, r, N_(r));
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(s->first_cmd, "download:00000020");
    assert_int_equal(s->n_out, 5);
    assert_int_equal(s->data_len, 32);
    assert_memory_equal(s->data, buf, 32);
    assert_int_equal(fx->n_progress, 4);
    assert_true(fx->progress_ok);
}

static void test_script_download_iov_boundaries(void **state)
{
    struct fx *fx = *state;
    struct done d = {.fx = fx};
    static const struct sx_reply r[] = {R("DATA00000008"), R("OKAY")};
    static const char bytes[] = "abcdefgh";
    const struct eng_iov iov[] = {{bytes, 3}, {bytes, 0}, {bytes + 3, 5}};
    fx->chunk = 4;
    struct sx *s = open_script(fx, r, N_(r));
    assert_int_equal(eng_fb_download_iov(fx->fb, iov, 3, 8, TMO, on_done, &d), 0);
    fx->started++;
    wait_done(fx, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(s->first_cmd, "download:00000008");
    assert_int_equal(s->n_out, 4); /* command, "abc", "defg", "h" */
    assert_int_equal(s->out_len[1], 3);
    assert_int_equal(s->out_len[2], 4);
    assert_int_equal(s->out_len[3], 1);
    assert_int_equal(s->data_len, 8);
    assert_memory_equal(s->data, "abcdefgh", 8);
}

static void test_script_data_wrong_size(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA00000010")};
    open_script(fx, r, N_(r));
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "device asked for 16 bytes, not 32");
    assert_int_equal(fx->sx->data_len, 0);
}

static void test_script_data_malformed(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA12")};
    open_script(fx, r, N_(r));
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_true(starts_with(d.text, "malformed DATA reply"));
    assert_string_equal(d.text, "malformed DATA reply \"DATA12\"");
    assert_int_equal(fx->sx->data_len, 0);
}

static void test_script_data_not_hex(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA0000002g")};
    open_script(fx, r, N_(r));
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "malformed DATA reply \"DATA0000002g\"");
}

static void test_script_okay_to_download(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OKAY")};
    open_script(fx, r, N_(r));
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "device replied OKAY to download:00000020 instead of DATA");
    assert_int_equal(fx->n_progress, 0);
}

static void test_script_unknown_reply(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("WHAT")};
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "unknown reply \"WHAT\"");
}

static void test_script_short_reply(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OK")};
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_true(starts_with(d.text, "garbage reply"));
    assert_string_equal(d.text, "garbage reply \"OK\" (2 bytes)");
}

static void test_script_empty_reply(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {{"", 0, 0, 0}};
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "garbage reply \"\" (0 bytes)");
}

static void test_script_reply_with_nul(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {{"OKAYab\0cd", 9, 0, 0}};
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "garbage reply \"OKAYab\\x00cd\" (9 bytes)");
}

static void test_script_data_to_plain_command(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA00000004")};
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_true(starts_with(d.text, "unexpected DATA reply to "));
    assert_string_equal(d.text, "unexpected DATA reply to getvar:product");
}

static void test_script_second_data_after_download(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA00000004"), R("DATA00000004")};
    struct sx *s = open_script(fx, r, N_(r));
    uint8_t *buf = make_buf(fx, 4);
    run_download(fx, buf, 4, TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "unexpected DATA reply to download:00000004");
    assert_int_equal(s->data_len, 4);
}

static void test_script_short_command_write(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OKAY")};
    struct sx *s = open_script(fx, r, N_(r));
    s->short_out = 1;
    s->short_actual = 3;
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_true(starts_with(d.text, "short write of command"));
    assert_string_equal(d.text, "short write of command (3 of 14 bytes)");
    assert_int_equal(s->next, 0); /* no reply was read */
}

static void test_script_short_data_write(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA00000020"), R("OKAY")};
    fx->chunk = 16;
    struct sx *s = open_script(fx, r, N_(r));
    s->short_out = 2; /* the first data chunk */
    s->short_actual = 5;
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, ST_EPROTO);
    assert_string_equal(d.text, "short transfer after 5 of 32 bytes");
    assert_int_equal(fx->n_progress, 1);
    assert_int_equal(fx->last_done, 5);
}

static void test_script_command_write_error(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OKAY")};
    struct sx *s = open_script(fx, r, N_(r));
    s->fail_out = 1;
    s->out_status = ST_EPIPE;
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EPIPE);
    assert_string_equal(d.text, "cannot send command: endpoint stalled");
}

static void test_script_data_write_error(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("DATA00000020")};
    fx->chunk = 16;
    struct sx *s = open_script(fx, r, N_(r));
    s->fail_out = 3; /* the second data chunk */
    s->out_status = ST_EIO;
    uint8_t *buf = make_buf(fx, 32);
    run_download(fx, buf, 32, TMO, &d);
    assert_int_equal(d.status, ST_EIO);
    assert_string_equal(d.text, "cannot transfer: input/output error");
}

static void test_script_reply_nodev(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {{NULL, 0, 0, ST_ENODEV}};
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_ENODEV);
    assert_string_equal(d.text, "device disconnected");
}

static void test_script_reply_overflow(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static char big[ENG_FB_REPLY_MAX + 2];
    static struct sx_reply r[] = {{big, sizeof(big) - 1, 0, 0}};
    memcpy(big, "OKAY", 4);
    memset(big + 4, 'y', sizeof(big) - 5);
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EOVERFLOW);
    assert_string_equal(d.text, "reply longer than 256 bytes");
}

static void test_script_reply_max_length(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static char full[ENG_FB_REPLY_MAX + 1];
    static struct sx_reply r[] = {{full, ENG_FB_REPLY_MAX, 0, 0}};
    memcpy(full, "OKAY", 4);
    memset(full + 4, 'z', ENG_FB_REPLY_MAX - 4);
    open_script(fx, r, N_(r));
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(strlen(d.text), ENG_FB_REPLY_MAX - 4);
}

static void test_script_submit_fails_at_start(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OKAY")};
    struct sx *s = open_script(fx, r, N_(r));
    s->fail_submit = 1;
    s->submit_rc = ST_EIO;
    assert_int_equal(start_cmd(fx, "getvar:product", TMO, &d), ST_EIO);
    assert_false(eng_fb_busy(fx->fb));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 0);
    /* Nothing was left behind: the next command works. */
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, 0);
}

static void test_script_submit_fails_midway(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OKAY")};
    struct sx *s = open_script(fx, r, N_(r));
    s->fail_submit = 2; /* the IN for the reply */
    s->submit_rc = ST_EIO;
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_EIO);
    assert_string_equal(d.text, "cannot read reply: input/output error");
}

static void test_script_command_not_taken(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("OKAY")};
    struct sx *s = open_script(fx, r, N_(r));
    s->out_hang = true;
    run_cmd(fx, "getvar:product", TMO, &d);
    assert_int_equal(d.status, ST_ETIMEDOUT);
    assert_string_equal(d.text, "command not taken within 0.2 s");
    assert_int_equal(s->n_cancel, 1);
}

/* INFO lines are signs of life: each restarts the reply timeout, so three
 * replies 150 ms apart fit a 300 ms limit. */
static void test_script_info_extends_timeout(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {
        {"INFOerasing", 0, 150, 0}, {"INFOwriting", 0, 150, 0}, {"OKAYdone", 0, 150, 0}};
    open_script(fx, r, N_(r));
    uv_update_time(&fx->loop);
    uint64_t t0 = uv_now(&fx->loop);
    run_cmd(fx, "flash:boot", 300, &d);
    assert_int_equal(d.status, 0);
    assert_string_equal(d.text, "done");
    assert_int_equal(fx->n_info, 2);
    assert_true(uv_now(&fx->loop) - t0 >= 400);
}

static void test_script_silence_after_info(void **state)
{
    struct fx *fx = *state;
    struct done d;
    static const struct sx_reply r[] = {R("INFOworking")};
    open_script(fx, r, N_(r));
    run_cmd(fx, "oem slow", TMO, &d);
    assert_int_equal(d.status, ST_ETIMEDOUT);
    assert_string_equal(d.text, "no reply within 0.2 s");
    assert_int_equal(fx->n_info, 1);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

/* An optional argument selects tests by name (cmocka's glob filter). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        T(test_getvar_product),
        T(test_getvar_serialno),
        T(test_getvar_max_download_size),
        T(test_getvar_max_download_size_default),
        T(test_getvar_unknown),
        T(test_getvar_all),
        T(test_commands_chained_from_callback),
        T(test_download_flash_boot),
        T(test_download_one_chunk_smaller_than_chunk_size),
        T(test_download_too_large),
        T(test_flash_without_download),
        T(test_flash_info_lines),
        T(test_erase),
        T(test_set_active),
        T(test_oem),
        T(test_unknown_command),
        T(test_reboot_then_silent),
        T(test_reboot_bootloader_reenumerates),
        T(test_fault_fail),
        T(test_fault_silent),
        T(test_fault_garbage),
        T(test_fault_oversize),
        T(test_fault_disconnect),
        T(test_unplug_while_waiting),
        T(test_pacing),
        T(test_data_phase_timeout),
        T(test_command_too_long),
        T(test_command_empty_or_no_callback),
        T(test_busy),
        T(test_busy_during_download),
        T(test_download_bad_args),
        T(test_command_after_close_refused),
        T(test_abort_during_paced_download),
        T(test_abort_with_reason),
        T(test_abort_null_reason),
        T(test_close_while_sending_command),
        T(test_close_while_waiting_reply),
        T(test_close_from_done_callback),
        T(test_close_after_abort_keeps_reason),
        T(test_abort_from_info_hook),
        T(test_abort_from_progress_hook),
        T(test_close_from_progress_hook),
        T(test_download_iov_flash),
        T(test_download_iov_bad_args),
        T(test_script_text_then_okay),
        T(test_script_download_ok),
        T(test_script_download_iov_boundaries),
        T(test_script_data_wrong_size),
        T(test_script_data_malformed),
        T(test_script_data_not_hex),
        T(test_script_okay_to_download),
        T(test_script_unknown_reply),
        T(test_script_short_reply),
        T(test_script_empty_reply),
        T(test_script_reply_with_nul),
        T(test_script_data_to_plain_command),
        T(test_script_second_data_after_download),
        T(test_script_short_command_write),
        T(test_script_short_data_write),
        T(test_script_command_write_error),
        T(test_script_data_write_error),
        T(test_script_reply_nodev),
        T(test_script_reply_overflow),
        T(test_script_reply_max_length),
        T(test_script_submit_fails_at_start),
        T(test_script_submit_fails_midway),
        T(test_script_command_not_taken),
        T(test_script_info_extends_timeout),
        T(test_script_silence_after_info),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
