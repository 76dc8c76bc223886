/*
 * DFU 1.1 / DfuSe host state machine (engine/dfu.h). One control request
 * is in flight at a time; between requests the driver may wait on its
 * poll timer (bwPollTimeout). Each step names the request it sends and
 * the function that continues when it completes (on_ok), or when the
 * device leaves the bus where that is expected (on_nodev).
 *
 * Spec references: "DFU 1.1" is the USB Device Class Specification for
 * Device Firmware Upgrade, Version 1.1; "AN3156" is ST's "USB DFU
 * protocol used in the STM32 bootloader" (DfuSe commands).
 */
#include "engine/dfu.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/dfu_file.h"

#define DEFAULT_REQUEST_MS 5000
#define DEFAULT_BUSY_MS 5000
#define MAX_RECOVERIES 3

/* bmRequestType (USB 2.0 §9.3.1) */
#define RT_CLASS_OUT 0x21 /* host to device, class, interface */
#define RT_CLASS_IN 0xa1  /* device to host, class, interface */
#define RT_STD_IFACE_OUT 0x01
#define USB_REQ_SET_INTERFACE 11

enum op { OP_NONE, OP_DOWNLOAD, OP_VERIFY, OP_DETACH, OP_LEAVE };
enum where { W_NONE, W_BLOCK, W_ERASE, W_ADDRESS, W_MANIFEST };

struct eng_dfu;
typedef void (*step_fn)(struct eng_dfu *d);

struct eng_dfu {
    uv_loop_t *loop;
    struct eng_transport *t;
    struct eng_dfu_hooks hooks;
    uv_timer_t req_timer, poll_timer, op_timer;
    unsigned open_timers;
    struct eng_xfer xfer;
    bool in_flight;
    uint8_t status[6];
    uint8_t cmd[5];
    uint8_t *scratch; /* one UPLOAD block */
    size_t scratch_cap;
    /* the running operation */
    enum op op;
    unsigned opno; /* bumped by each start: tells a hook's caller the op changed */
    bool starting; /* inside the start call: a failed submit returns, no callback */
    eng_dfu_done_cb cb;
    void *user_data;
    struct eng_dfu_limits lim;
    unsigned alt;
    bool dfuse;
    uint16_t xfer_size;
    const struct eng_dfu_segment *segs;
    unsigned n_segs;
    uint64_t total, done;
    unsigned seg;
    size_t seg_off, chunk;
    unsigned block;  /* data blocks of this operation, from 0 (for messages) */
    unsigned wvalue; /* DfuSe: the next data block's wValue */
    uint32_t *erase; /* DfuSe: sector starts to erase, sorted, unique */
    unsigned n_erase, erase_i;
    uint32_t leave_addr;
    struct eng_dfuse_layout layout;
    bool left;
    /* the request in flight */
    const char *req;
    step_fn on_ok, on_nodev;
    step_fn after_idle; /* once the device is in dfuIDLE */
    step_fn after_sync; /* once a DNLOAD is through (dfuDNLOAD-IDLE) */
    step_fn after_addr; /* once the DfuSe address pointer is set */
    step_fn poll_fn;
    uint64_t busy_since;
    unsigned recoveries;
    enum where where;
    uint32_t where_val;
    char ok_text[160];
    /* ending */
    bool ending;  /* the request in flight was cancelled: finish on its callback */
    bool cleanup; /* a best-effort CLRSTATUS/ABORT is in flight: finish on its callback */
    int end_status;
    char msg[400];
    /* closing */
    bool closing;
    void (*close_cb)(void *user_data);
    void *close_user_data;
};

static void xfer_done(struct eng_xfer *x);

/* ---- names ---- */

const char *eng_dfu_state_name(unsigned state)
{
    static const char *const names[] = {
        "appIDLE",          "appDETACH",   "dfuIDLE",
        "dfuDNLOAD-SYNC",   "dfuDNBUSY",   "dfuDNLOAD-IDLE",
        "dfuMANIFEST-SYNC", "dfuMANIFEST", "dfuMANIFEST-WAIT-RESET",
        "dfuUPLOAD-IDLE",   "dfuERROR",
    };
    return state < sizeof(names) / sizeof(names[0]) ? names[state] : "unknown state";
}

const char *eng_dfu_status_name(unsigned status)
{
    static const char *const names[] = {
        "OK",      "errTARGET", "errFILE",    "errWRITE",      "errERASE",    "errCHECK_ERASED",
        "errPROG", "errVERIFY", "errADDRESS", "errNOTDONE",    "errFIRMWARE", "errVENDOR",
        "errUSBR", "errPOR",    "errUNKNOWN", "errSTALLEDPKT",
    };
    return status < sizeof(names) / sizeof(names[0]) ? names[status] : "unknown status";
}

const char *eng_dfu_request_name(unsigned request)
{
    static const char *const names[] = {"DETACH",    "DNLOAD",   "UPLOAD", "GETSTATUS",
                                        "CLRSTATUS", "GETSTATE", "ABORT"};
    return request < sizeof(names) / sizeof(names[0]) ? names[request] : "unknown request";
}

/* ---- descriptors ---- */

int eng_dfu_parse_config(const uint8_t *desc, size_t len, struct eng_dfu_info *out,
                         uint8_t alt_string[ENG_DFU_MAX_ALTS])
{
    struct eng_dfu_info info;
    uint8_t strings[ENG_DFU_MAX_ALTS];
    memset(&info, 0, sizeof(info));
    memset(strings, 0, sizeof(strings));
    bool in_dfu = false, have_if = false, have_func = false;
    size_t off = 0;
    while (off + 2 <= len) {
        uint8_t bl = desc[off], type = desc[off + 1];
        if (bl < 2 || off + bl > len)
            return ST_EINVAL;
        const uint8_t *p = desc + off;
        if (type == 4 && bl >= 9) { /* INTERFACE */
            bool dfu = p[5] == 0xfe && p[6] == 0x01;
            if (dfu && (!have_if || p[2] == info.interface)) {
                if (!have_if) {
                    info.interface = p[2];
                    info.mode = p[7];
                    have_if = true;
                }
                if (p[3] < ENG_DFU_MAX_ALTS) {
                    strings[p[3]] = p[8];
                    if (p[3] + 1u > info.n_alts)
                        info.n_alts = (uint8_t)(p[3] + 1);
                }
                in_dfu = true;
            } else {
                in_dfu = false;
            }
        } else if (type == 0x21 && bl >= 7 && in_dfu && !have_func) {
            /* DFU functional descriptor, DFU 1.1 §4.1.3 Table 4.2 */
            info.attributes = p[2];
            info.detach_timeout_ms = (uint16_t)(p[3] | p[4] << 8);
            info.transfer_size = (uint16_t)(p[5] | p[6] << 8);
            info.bcd_dfu = bl >= 9 ? (uint16_t)(p[7] | p[8] << 8) : 0x0100;
            have_func = true;
        }
        off += bl;
    }
    if (!have_if || !have_func)
        return ST_EINVAL;
    *out = info;
    if (alt_string)
        memcpy(alt_string, strings, sizeof(strings));
    return 0;
}

/* ---- lifetime ---- */

static void timer_closed(uv_handle_t *h)
{
    struct eng_dfu *d = h->data;
    if (--d->open_timers > 0)
        return;
    void (*cb)(void *) = d->close_cb;
    void *ud = d->close_user_data;
    free(d->scratch);
    free(d->erase);
    free(d);
    if (cb)
        cb(ud);
}

static void close_timers(struct eng_dfu *d)
{
    if (uv_is_closing((uv_handle_t *)&d->req_timer))
        return;
    uv_close((uv_handle_t *)&d->req_timer, timer_closed);
    uv_close((uv_handle_t *)&d->poll_timer, timer_closed);
    uv_close((uv_handle_t *)&d->op_timer, timer_closed);
}

int eng_dfu_new(uv_loop_t *loop, struct eng_transport *t, const struct eng_dfu_hooks *hooks,
                struct eng_dfu **out)
{
    struct eng_dfu *d = calloc(1, sizeof(*d));
    if (!d)
        return ST_ENOMEM;
    d->loop = loop;
    d->t = t;
    if (hooks)
        d->hooks = *hooks;
    uv_timer_init(loop, &d->req_timer);
    uv_timer_init(loop, &d->poll_timer);
    uv_timer_init(loop, &d->op_timer);
    d->req_timer.data = d->poll_timer.data = d->op_timer.data = d;
    d->open_timers = 3;
    *out = d;
    return 0;
}

/* ---- ending an operation ---- */

static void finish(struct eng_dfu *d, int status, const char *text)
{
    char copy[sizeof(d->msg)];
    assert(!d->in_flight);
    uv_timer_stop(&d->req_timer);
    uv_timer_stop(&d->poll_timer);
    uv_timer_stop(&d->op_timer);
    snprintf(copy, sizeof(copy), "%s", text);
    eng_dfu_done_cb cb = d->cb;
    void *ud = d->user_data;
    d->op = OP_NONE;
    d->cb = NULL;
    d->ending = d->cleanup = false;
    d->segs = NULL;
    free(d->erase);
    d->erase = NULL;
    if (cb)
        cb(d, status, copy, ud);
    if (d->closing && d->op == OP_NONE)
        close_timers(d);
}

static const char *op_name(const struct eng_dfu *d)
{
    switch (d->op) {
    case OP_DOWNLOAD:
        return "download";
    case OP_VERIFY:
        return "verify";
    case OP_DETACH:
        return "detach";
    case OP_LEAVE:
        return "leave";
    default:
        return "dfu";
    }
}

/* "download alt 0 block 37: " and friends. */
static size_t prefix(const struct eng_dfu *d, char *buf, size_t cap)
{
    int n;
    if (d->op == OP_DETACH)
        n = snprintf(buf, cap, "detach: ");
    else if (d->where == W_BLOCK)
        n = snprintf(buf, cap, "%s alt %u block %u: ", op_name(d), d->alt, d->where_val);
    else if (d->where == W_ERASE)
        n = snprintf(buf, cap, "%s alt %u erase 0x%08x: ", op_name(d), d->alt, d->where_val);
    else if (d->where == W_ADDRESS)
        n = snprintf(buf, cap, "%s alt %u set address 0x%08x: ", op_name(d), d->alt, d->where_val);
    else if (d->where == W_MANIFEST)
        n = snprintf(buf, cap, "%s alt %u manifestation: ", op_name(d), d->alt);
    else
        n = snprintf(buf, cap, "%s alt %u: ", op_name(d), d->alt);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

static void vset_msg(struct eng_dfu *d, const char *fmt, va_list ap)
{
    size_t n = prefix(d, d->msg, sizeof(d->msg));
    vsnprintf(d->msg + n, sizeof(d->msg) - n, fmt, ap);
}

static void set_msg(struct eng_dfu *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_msg(struct eng_dfu *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset_msg(d, fmt, ap);
    va_end(ap);
}

static void fail_now(struct eng_dfu *d, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_now(struct eng_dfu *d, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset_msg(d, fmt, ap);
    va_end(ap);
    finish(d, status, d->msg);
}

static void succeed(struct eng_dfu *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void succeed(struct eng_dfu *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof(d->msg), fmt, ap);
    va_end(ap);
    finish(d, 0, d->msg);
}

/* Stop: cancel the request in flight and finish from its callback, or
 * finish now when only the poll timer runs. */
static void end_with(struct eng_dfu *d, int status)
{
    if (d->op == OP_NONE)
        return;
    if (!d->in_flight) {
        finish(d, status, d->msg);
        return;
    }
    if (d->ending)
        return;
    d->ending = true;
    d->cleanup = false;
    d->end_status = status;
    uv_timer_stop(&d->req_timer);
    uv_timer_stop(&d->op_timer);
    eng_transport_cancel(d->t, &d->xfer); /* its callback still comes */
}

/* ---- requests ---- */

static void on_req_timeout(uv_timer_t *timer)
{
    struct eng_dfu *d = timer->data;
    set_msg(d, "no answer to %s within %g s", d->req, d->lim.request_ms / 1000.0);
    end_with(d, ST_ETIMEDOUT);
}

static void on_op_timeout(uv_timer_t *timer)
{
    struct eng_dfu *d = timer->data;
    enum where w = d->where;
    d->where = W_NONE;
    set_msg(d, "not finished within %g s (%" PRIu64 " of %" PRIu64 " bytes)",
            d->lim.total_ms / 1000.0, d->done, d->total);
    d->where = w;
    end_with(d, ST_ETIMEDOUT);
}

static void request_failed(struct eng_dfu *d, int status);

/* Send one control request on endpoint 0 to the DFU interface; wIndex is
 * always bInterfaceNumber. Returns the submit error, already handled
 * (except inside a start call, where the caller returns it). */
static int ctrl_nodev(struct eng_dfu *d, const char *name, uint8_t bmRequestType, uint8_t bRequest,
                      uint16_t wValue, void *data, uint16_t wLength, step_fn on_ok,
                      step_fn on_nodev)
{
    struct eng_xfer *x = &d->xfer;
    memset(x, 0, sizeof(*x));
    x->type = ENG_XFER_CONTROL;
    x->setup[0] = bmRequestType;
    x->setup[1] = bRequest;
    x->setup[2] = (uint8_t)wValue;
    x->setup[3] = (uint8_t)(wValue >> 8);
    x->setup[4] = d->t->dfu.interface; /* wIndex */
    x->setup[5] = 0;
    x->setup[6] = (uint8_t)wLength;
    x->setup[7] = (uint8_t)(wLength >> 8);
    x->buf = data;
    x->len = wLength;
    x->cb = xfer_done;
    x->user_data = d;
    d->req = name;
    d->on_ok = on_ok;
    d->on_nodev = on_nodev;
    int rc = eng_transport_submit(d->t, x);
    if (rc) {
        if (!d->starting)
            request_failed(d, rc);
        return rc;
    }
    d->in_flight = true;
    uv_timer_start(&d->req_timer, on_req_timeout, d->lim.request_ms, 0);
    return 0;
}

static int ctrl(struct eng_dfu *d, const char *name, uint8_t bmRequestType, uint8_t bRequest,
                uint16_t wValue, void *data, uint16_t wLength, step_fn on_ok)
{
    return ctrl_nodev(d, name, bmRequestType, bRequest, wValue, data, wLength, on_ok, NULL);
}

/* DFU 1.1 §6.1.2 DFU_GETSTATUS: 6 bytes back (bStatus, bwPollTimeout, bState, iString). */
static void getstatus_nodev(struct eng_dfu *d, step_fn on_ok, step_fn on_nodev)
{
    ctrl_nodev(d, "GETSTATUS", RT_CLASS_IN, ENG_DFU_GETSTATUS, 0 /* wValue */, d->status,
               6 /* wLength */, on_ok, on_nodev);
}

static void getstatus(struct eng_dfu *d, step_fn on_ok)
{
    getstatus_nodev(d, on_ok, NULL);
}

static unsigned st_status(const struct eng_dfu *d)
{
    return d->status[0];
}

static unsigned st_state(const struct eng_dfu *d)
{
    return d->status[4];
}

static unsigned st_poll(const struct eng_dfu *d)
{
    return (unsigned)(d->status[1] | d->status[2] << 8 | d->status[3] << 16);
}

static bool got_status(struct eng_dfu *d)
{
    if (d->xfer.actual < 6) {
        fail_now(d, ST_EPROTO, "GETSTATUS answered %zu bytes, not 6", d->xfer.actual);
        return false;
    }
    if (st_status(d) > ENG_DFU_ERR_STALLEDPKT || st_state(d) > ENG_DFU_ERROR) {
        /* DFU 1.1 §6.1.2 defines no such values: the answer is garbage */
        fail_now(d, ST_EPROTO, "GETSTATUS answered garbage (bStatus 0x%02x, bState 0x%02x)",
                 st_status(d), st_state(d));
        return false;
    }
    return true;
}

/* A best-effort request (CLRSTATUS from dfuERROR, ABORT from an upload)
 * so the device is left clean; the operation ends with `status` and the
 * message already set, whatever that request does. */
static void fail_clean(struct eng_dfu *d, int status, uint8_t bRequest, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_clean(struct eng_dfu *d, int status, uint8_t bRequest, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset_msg(d, fmt, ap);
    va_end(ap);
    d->end_status = status;
    d->cleanup = true;
    /* DFU 1.1 §6.1.3 DFU_CLRSTATUS or §6.1.4 DFU_ABORT: no data. Should
     * the submit fail, request_failed() sees `cleanup` and finishes. */
    ctrl(d, eng_dfu_request_name(bRequest), RT_CLASS_OUT, bRequest, 0 /* wValue */, NULL,
         0 /* wLength */, NULL);
}

static void request_failed(struct eng_dfu *d, int status)
{
    if (d->cleanup) {
        d->cleanup = false;
        finish(d, d->end_status, d->msg);
        return;
    }
    if (status == ST_ENODEV && d->on_nodev) {
        d->on_nodev(d);
        return;
    }
    if (status == ST_ENODEV)
        fail_now(d, ST_ENODEV, "device disconnected");
    else if (status == ST_EPIPE)
        /* A stall leaves a DFU-mode device in dfuERROR (errSTALLEDPKT). */
        fail_clean(d, ST_EPIPE, ENG_DFU_CLRSTATUS, "device stalled %s", d->req);
    else
        fail_now(d, status, "%s failed: %s", d->req, st_strerror(status));
}

static void xfer_done(struct eng_xfer *x)
{
    struct eng_dfu *d = x->user_data;
    d->in_flight = false;
    uv_timer_stop(&d->req_timer);
    if (d->ending) {
        d->ending = false;
        if (d->end_status == ST_ENODEV && d->on_nodev) {
            d->on_nodev(d);
            return;
        }
        finish(d, d->end_status, d->msg);
        return;
    }
    if (d->cleanup) {
        d->cleanup = false;
        finish(d, d->end_status, d->msg);
        return;
    }
    if (x->status) {
        request_failed(d, x->status);
        return;
    }
    d->on_ok(d);
}

static void on_poll(uv_timer_t *timer)
{
    struct eng_dfu *d = timer->data;
    d->poll_fn(d);
}

/* The device said "ask again in bwPollTimeout ms" (dfuDNBUSY, dfuMANIFEST):
 * wait on the timer, within the busy limit. */
static void wait_busy(struct eng_dfu *d, step_fn again)
{
    uint64_t elapsed = uv_now(d->loop) - d->busy_since;
    unsigned poll = st_poll(d);
    if (poll > d->lim.busy_ms) {
        fail_now(d, ST_ETIMEDOUT, "device asks to stay %g s in %s, beyond the %g s limit",
                 poll / 1000.0, eng_dfu_state_name(st_state(d)), d->lim.busy_ms / 1000.0);
        return;
    }
    if (elapsed + poll > d->lim.busy_ms) {
        fail_now(d, ST_ETIMEDOUT, "device stays in %s beyond %g s", eng_dfu_state_name(st_state(d)),
                 d->lim.busy_ms / 1000.0);
        return;
    }
    d->poll_fn = again;
    uv_timer_start(&d->poll_timer, on_poll, poll, 0);
}

static void progress(struct eng_dfu *d)
{
    if (d->hooks.progress)
        d->hooks.progress(d, d->done, d->total, d->hooks.user_data);
}

/* The hook may have ended or replaced the operation. */
static bool still_running(const struct eng_dfu *d, unsigned opno)
{
    return d->op != OP_NONE && d->opno == opno && !d->ending;
}

/* ---- USB reset (dfuMANIFEST-WAIT-RESET, DETACH without bitWillDetach) ---- */

static void reset_done(struct eng_dfu *d)
{
    d->left = true;
    succeed(d, "%s", d->ok_text);
}

static void do_reset(struct eng_dfu *d)
{
    struct eng_xfer *x = &d->xfer;
    memset(x, 0, sizeof(*x));
    x->cb = xfer_done;
    x->user_data = d;
    d->req = "USB reset";
    d->on_ok = reset_done;
    d->on_nodev = reset_done;
    int rc = eng_transport_reset(d->t, x);
    if (rc == ST_ENODEV) {
        reset_done(d);
        return;
    }
    if (rc) {
        fail_now(d, rc, "the device needs a USB reset and the %s transport cannot do one: %s",
                 d->t->ops->name, st_strerror(rc));
        return;
    }
    d->in_flight = true;
    uv_timer_start(&d->req_timer, on_req_timeout, d->lim.request_ms, 0);
}

/* ---- getting to dfuIDLE (DFU 1.1 Appendix A) ---- */

static void prep_status(struct eng_dfu *d);

static void prep_again(struct eng_dfu *d)
{
    getstatus(d, prep_status);
}

static void prep_status(struct eng_dfu *d)
{
    if (!got_status(d))
        return;
    unsigned state = st_state(d);
    switch (state) {
    case ENG_DFU_IDLE:
        d->after_idle(d);
        return;
    case ENG_DFU_ERROR:
        if (d->recoveries++ >= MAX_RECOVERIES)
            break;
        /* DFU 1.1 §6.1.3 DFU_CLRSTATUS: dfuERROR back to dfuIDLE */
        ctrl(d, "CLRSTATUS", RT_CLASS_OUT, ENG_DFU_CLRSTATUS, 0 /* wValue */, NULL, 0 /* wLength */,
             prep_again);
        return;
    case ENG_DFU_DNLOAD_SYNC:
    case ENG_DFU_DNLOAD_IDLE:
    case ENG_DFU_MANIFEST_SYNC:
    case ENG_DFU_UPLOAD_IDLE:
        if (d->recoveries++ >= MAX_RECOVERIES)
            break;
        /* DFU 1.1 §6.1.4 DFU_ABORT: back to dfuIDLE */
        ctrl(d, "ABORT", RT_CLASS_OUT, ENG_DFU_ABORT, 0 /* wValue */, NULL, 0 /* wLength */,
             prep_again);
        return;
    case ENG_DFU_DNBUSY:
    case ENG_DFU_MANIFEST:
        wait_busy(d, prep_again);
        return;
    default:
        break;
    }
    fail_now(d, ST_EPROTO, "device is in %s (%s), cannot get it to dfuIDLE",
             eng_dfu_state_name(state), eng_dfu_status_name(st_status(d)));
}

static void prep_alt_set(struct eng_dfu *d)
{
    d->busy_since = uv_now(d->loop);
    getstatus(d, prep_status);
}

/* The first request of a download/verify/leave: select the alternate
 * setting (USB 2.0 §9.4.10 SET_INTERFACE; DFU 1.1 §4.2.3: one alt per
 * memory), then bring the device to dfuIDLE, then `after_idle`. */
static int prep(struct eng_dfu *d)
{
    return ctrl(d, "SET_INTERFACE", RT_STD_IFACE_OUT, USB_REQ_SET_INTERFACE,
                (uint16_t)d->alt /* wValue: alternate setting */, NULL, 0 /* wLength */,
                prep_alt_set);
}

/* ---- DNLOAD and its GETSTATUS loop ---- */

static void sync_status(struct eng_dfu *d);

static void sync_again(struct eng_dfu *d)
{
    getstatus(d, sync_status);
}

static void sync_status(struct eng_dfu *d)
{
    if (!got_status(d))
        return;
    unsigned state = st_state(d), status = st_status(d);
    if (status != ENG_DFU_OK || state == ENG_DFU_ERROR) {
        fail_clean(d, ST_EDEVFAIL, ENG_DFU_CLRSTATUS, "%s",
                   eng_dfu_status_name(status != ENG_DFU_OK ? status : ENG_DFU_ERR_UNKNOWN));
        return;
    }
    switch (state) {
    case ENG_DFU_DNLOAD_IDLE:
        d->after_sync(d);
        return;
    case ENG_DFU_DNBUSY:
    case ENG_DFU_DNLOAD_SYNC:
        wait_busy(d, sync_again);
        return;
    default:
        fail_clean(d, ST_EPROTO, ENG_DFU_ABORT, "unexpected state %s after DNLOAD",
                   eng_dfu_state_name(state));
    }
}

static void dnload_sent(struct eng_dfu *d)
{
    if (d->xfer.actual != d->xfer.len) {
        fail_now(d, ST_EPROTO, "DNLOAD took %zu of %zu bytes", d->xfer.actual, d->xfer.len);
        return;
    }
    d->busy_since = uv_now(d->loop);
    getstatus(d, sync_status);
}

/* DFU 1.1 §6.1.1 DFU_DNLOAD: wValue is the block number (DfuSe: 0 for a
 * command, >= 2 for data), the data stage carries the block. */
static void dnload(struct eng_dfu *d, uint16_t wValue, const void *data, uint16_t wLength,
                   step_fn after_sync)
{
    d->after_sync = after_sync;
    ctrl(d, "DNLOAD", RT_CLASS_OUT, ENG_DFU_DNLOAD, wValue /* wValue */, (void *)data,
         wLength /* wLength */, dnload_sent);
}

/* ---- manifestation (DFU 1.1 §7) ---- */

static void man_status(struct eng_dfu *d);

static void man_gone(struct eng_dfu *d)
{
    d->where = W_NONE; /* the messages below say "manifestation" */
    if (d->t->dfu.attributes & ENG_DFU_ATTR_MANIFEST_TOLERANT) {
        fail_now(d, ST_ENODEV, "device disconnected during manifestation");
        return;
    }
    d->left = true;
    succeed(d, "%" PRIu64 " bytes in %u blocks; the device reset itself after manifestation",
            d->total, d->block);
}

static void man_again(struct eng_dfu *d)
{
    getstatus_nodev(d, man_status, man_gone);
}

static void man_status(struct eng_dfu *d)
{
    if (!got_status(d))
        return;
    unsigned state = st_state(d), status = st_status(d);
    if (status != ENG_DFU_OK || state == ENG_DFU_ERROR) {
        d->where = W_NONE;
        fail_clean(d, ST_EDEVFAIL, ENG_DFU_CLRSTATUS, "manifestation failed: %s",
                   eng_dfu_status_name(status != ENG_DFU_OK ? status : ENG_DFU_ERR_UNKNOWN));
        return;
    }
    switch (state) {
    case ENG_DFU_IDLE: /* bitManifestationTolerant: back in dfuIDLE */
        succeed(d, "%" PRIu64 " bytes in %u blocks, manifested", d->total, d->block);
        return;
    case ENG_DFU_MANIFEST_WAIT_RESET:
        snprintf(d->ok_text, sizeof(d->ok_text),
                 "%" PRIu64 " bytes in %u blocks, manifested; device reset", d->total, d->block);
        do_reset(d);
        return;
    case ENG_DFU_MANIFEST_SYNC:
    case ENG_DFU_MANIFEST:
    case ENG_DFU_DNBUSY:
        wait_busy(d, man_again);
        return;
    default:
        d->where = W_NONE;
        fail_now(d, ST_EPROTO, "unexpected state %s during manifestation",
                 eng_dfu_state_name(state));
    }
}

static void man_sent(struct eng_dfu *d)
{
    d->busy_since = uv_now(d->loop);
    getstatus_nodev(d, man_status, man_gone);
}

/* ---- plain DFU download ---- */

static void plain_next(struct eng_dfu *d);

static void plain_block_done(struct eng_dfu *d)
{
    unsigned opno = d->opno;
    d->seg_off += d->chunk;
    d->done += d->chunk;
    d->block++;
    progress(d);
    if (still_running(d, opno))
        plain_next(d);
}

static void plain_next(struct eng_dfu *d)
{
    const struct eng_dfu_segment *s = &d->segs[0];
    if (d->seg_off == s->len) {
        /* DFU 1.1 §6.1.1.1: a zero-length DNLOAD ends the download and
         * starts manifestation. */
        d->where = W_MANIFEST;
        ctrl_nodev(d, "DNLOAD", RT_CLASS_OUT, ENG_DFU_DNLOAD, (uint16_t)d->block /* wValue */, NULL,
                   0 /* wLength */, man_sent, man_gone);
        return;
    }
    size_t left = s->len - d->seg_off;
    d->chunk = left < d->xfer_size ? left : d->xfer_size;
    d->where = W_BLOCK;
    d->where_val = d->block;
    dnload(d, (uint16_t)d->block, s->data + d->seg_off, (uint16_t)d->chunk, plain_block_done);
}

/* ---- DfuSe download (AN3156) ---- */

static void dfuse_block_next(struct eng_dfu *d);
static void dfuse_seg_begin(struct eng_dfu *d);

static void addr_set(struct eng_dfu *d)
{
    d->wvalue = 2;
    d->after_addr(d);
}

/* AN3156 Set Address Pointer: DNLOAD wValue 0, 0x21 + address (LE). */
static void dfuse_set_address(struct eng_dfu *d, uint32_t addr, step_fn then)
{
    d->cmd[0] = 0x21;
    d->cmd[1] = (uint8_t)addr;
    d->cmd[2] = (uint8_t)(addr >> 8);
    d->cmd[3] = (uint8_t)(addr >> 16);
    d->cmd[4] = (uint8_t)(addr >> 24);
    d->where = W_ADDRESS;
    d->where_val = addr;
    d->after_addr = then;
    dnload(d, 0 /* wValue: command */, d->cmd, 5, addr_set);
}

static void dfuse_erase_next(struct eng_dfu *d);

static void erase_done(struct eng_dfu *d)
{
    d->erase_i++;
    dfuse_erase_next(d);
}

/* AN3156 Erase: DNLOAD wValue 0, 0x41 + the address of a page. */
static void dfuse_erase_next(struct eng_dfu *d)
{
    if (d->erase_i == d->n_erase) {
        d->seg = 0;
        dfuse_seg_begin(d);
        return;
    }
    uint32_t addr = d->erase[d->erase_i];
    d->cmd[0] = 0x41;
    d->cmd[1] = (uint8_t)addr;
    d->cmd[2] = (uint8_t)(addr >> 8);
    d->cmd[3] = (uint8_t)(addr >> 16);
    d->cmd[4] = (uint8_t)(addr >> 24);
    d->where = W_ERASE;
    d->where_val = addr;
    dnload(d, 0 /* wValue: command */, d->cmd, 5, erase_done);
}

static void dfuse_dl_done(struct eng_dfu *d)
{
    succeed(d, "%" PRIu64 " bytes in %u blocks, %u pages erased", d->total, d->block, d->n_erase);
}

static void dfuse_seg_begin(struct eng_dfu *d)
{
    if (d->seg == d->n_segs) {
        /* DFU 1.1 §6.1.4 DFU_ABORT: from dfuDNLOAD-IDLE back to dfuIDLE,
         * without manifestation (which a DfuSe device takes as "leave"). */
        d->where = W_NONE;
        ctrl(d, "ABORT", RT_CLASS_OUT, ENG_DFU_ABORT, 0 /* wValue */, NULL, 0 /* wLength */,
             dfuse_dl_done);
        return;
    }
    d->seg_off = 0;
    dfuse_set_address(d, d->segs[d->seg].address, dfuse_block_next);
}

static void dfuse_block_done(struct eng_dfu *d)
{
    unsigned opno = d->opno;
    d->seg_off += d->chunk;
    d->done += d->chunk;
    d->block++;
    d->wvalue++;
    progress(d);
    if (still_running(d, opno))
        dfuse_block_next(d);
}

static void dfuse_block_next(struct eng_dfu *d)
{
    const struct eng_dfu_segment *s = &d->segs[d->seg];
    if (d->seg_off == s->len) {
        d->seg++;
        dfuse_seg_begin(d);
        return;
    }
    if (d->wvalue > 0xffff) { /* wValue ran out: point at where we are */
        dfuse_set_address(d, s->address + (uint32_t)d->seg_off, dfuse_block_next);
        return;
    }
    size_t left = s->len - d->seg_off;
    d->chunk = left < d->xfer_size ? left : d->xfer_size;
    d->where = W_BLOCK;
    d->where_val = d->block;
    /* AN3156: lands at pointer + (wValue - 2) * wTransferSize */
    dnload(d, (uint16_t)d->wvalue, s->data + d->seg_off, (uint16_t)d->chunk, dfuse_block_done);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Every sector the segments touch, each once; fails with a message when a
 * segment leaves the layout or touches memory that cannot be written. */
static bool plan_erase(struct eng_dfu *d)
{
    size_t cap = 0;
    for (unsigned i = 0; i < d->n_segs; i++) {
        const struct eng_dfu_segment *s = &d->segs[i];
        uint64_t a = s->address, end = (uint64_t)s->address + s->len;
        while (a < end) {
            uint32_t start, size;
            uint8_t type;
            if (!eng_dfuse_layout_find(&d->layout, (uint32_t)a, &start, &size, &type)) {
                fail_now(d, ST_EINVAL, "0x%08" PRIx64 " is outside the memory of \"%s\"", a,
                         d->t->dfu.alt_names[d->alt]);
                return false;
            }
            if (!(type & ENG_DFUSE_WRITEABLE)) {
                fail_now(d, ST_EINVAL, "0x%08x is not writeable in \"%s\"", start,
                         d->t->dfu.alt_names[d->alt]);
                return false;
            }
            if (type & ENG_DFUSE_ERASABLE) {
                if (d->n_erase == cap) {
                    cap = cap ? cap * 2 : 16;
                    uint32_t *n = realloc(d->erase, cap * sizeof(*n));
                    if (!n) {
                        fail_now(d, ST_ENOMEM, "out of memory");
                        return false;
                    }
                    d->erase = n;
                }
                d->erase[d->n_erase++] = start;
            }
            a = (uint64_t)start + size;
        }
    }
    if (d->n_erase > 1) {
        qsort(d->erase, d->n_erase, sizeof(*d->erase), cmp_u32);
        unsigned o = 1;
        for (unsigned i = 1; i < d->n_erase; i++)
            if (d->erase[i] != d->erase[o - 1])
                d->erase[o++] = d->erase[i];
        d->n_erase = o;
    }
    return true;
}

static void download_idle(struct eng_dfu *d)
{
    d->block = 0;
    d->seg = 0;
    d->seg_off = 0;
    if (!d->dfuse) {
        plain_next(d);
        return;
    }
    /* Erase everything first: two segments in one sector must not erase
     * each other's bytes. */
    if (!plan_erase(d))
        return;
    d->erase_i = 0;
    dfuse_erase_next(d);
}

/* ---- verification by UPLOAD (DFU 1.1 §6.2) ---- */

/* Compare what came back with the image; false (operation ended) on a difference. */
static bool compare(struct eng_dfu *d, const struct eng_dfu_segment *s, size_t off, size_t n,
                    uint64_t image_off)
{
    size_t have = off < s->len ? s->len - off : 0;
    if (n > have)
        n = have;
    if (memcmp(d->scratch, s->data + off, n) == 0)
        return true;
    size_t i = 0;
    while (d->scratch[i] == s->data[off + i])
        i++;
    d->where = W_NONE;
    if (d->dfuse)
        fail_clean(d, ST_EIO, ENG_DFU_ABORT,
                   "byte %" PRIu64 " differs (address 0x%08x: image 0x%02x, device 0x%02x)",
                   image_off + i, s->address + (uint32_t)(off + i), s->data[off + i],
                   d->scratch[i]);
    else
        fail_clean(d, ST_EIO, ENG_DFU_ABORT,
                   "byte %" PRIu64 " differs (image 0x%02x, device 0x%02x)", image_off + i,
                   s->data[off + i], d->scratch[i]);
    return false;
}

static void verified(struct eng_dfu *d)
{
    succeed(d, "%" PRIu64 " bytes match", d->total);
}

static void plain_up_next(struct eng_dfu *d);

static void plain_up_got(struct eng_dfu *d)
{
    const struct eng_dfu_segment *s = &d->segs[0];
    size_t n = d->xfer.actual;
    if (!compare(d, s, d->seg_off, n, d->seg_off))
        return;
    d->seg_off += n;
    d->done = d->seg_off < s->len ? d->seg_off : s->len;
    unsigned opno = d->opno;
    progress(d);
    if (!still_running(d, opno))
        return;
    if (n < d->xfer_size) { /* a short block ends the upload (§6.2) */
        if (d->seg_off < s->len) {
            d->where = W_NONE;
            fail_now(d, ST_EIO, "device returned %zu of %zu bytes", d->seg_off, s->len);
            return;
        }
        verified(d);
        return;
    }
    if (d->seg_off >= s->len) {
        /* Enough read: DFU 1.1 §6.1.4 DFU_ABORT ends the upload early. */
        d->where = W_NONE;
        ctrl(d, "ABORT", RT_CLASS_OUT, ENG_DFU_ABORT, 0 /* wValue */, NULL, 0 /* wLength */,
             verified);
        return;
    }
    d->block++;
    plain_up_next(d);
}

/* DFU 1.1 §6.2.1 DFU_UPLOAD: wValue is the block number, wLength the room. */
static void plain_up_next(struct eng_dfu *d)
{
    d->where = W_BLOCK;
    d->where_val = d->block;
    ctrl(d, "UPLOAD", RT_CLASS_IN, ENG_DFU_UPLOAD, (uint16_t)d->block /* wValue */, d->scratch,
         d->xfer_size /* wLength */, plain_up_got);
}

static void dfuse_up_next(struct eng_dfu *d);
static void dfuse_vseg_begin(struct eng_dfu *d);

static void dfuse_vseg_advance(struct eng_dfu *d)
{
    d->seg++;
    dfuse_vseg_begin(d);
}

static void dfuse_up_got(struct eng_dfu *d)
{
    const struct eng_dfu_segment *s = &d->segs[d->seg];
    if (d->xfer.actual != d->chunk) {
        fail_clean(d, ST_EIO, ENG_DFU_ABORT, "device returned %zu of %zu bytes at 0x%08x",
                   d->xfer.actual, d->chunk, s->address + (uint32_t)d->seg_off);
        return;
    }
    uint64_t image_off = 0;
    for (unsigned i = 0; i < d->seg; i++)
        image_off += d->segs[i].len;
    if (!compare(d, s, d->seg_off, d->chunk, image_off + d->seg_off))
        return;
    d->seg_off += d->chunk;
    d->done += d->chunk;
    d->block++;
    d->wvalue++;
    unsigned opno = d->opno;
    progress(d);
    if (still_running(d, opno))
        dfuse_up_next(d);
}

/* UPLOAD needs dfuIDLE: the set-address DNLOAD left dfuDNLOAD-IDLE. */
static void dfuse_abort_then_upload(struct eng_dfu *d)
{
    /* DFU 1.1 §6.1.4 DFU_ABORT */
    ctrl(d, "ABORT", RT_CLASS_OUT, ENG_DFU_ABORT, 0 /* wValue */, NULL, 0 /* wLength */,
         dfuse_up_next);
}

static void dfuse_readdress(struct eng_dfu *d)
{
    const struct eng_dfu_segment *s = &d->segs[d->seg];
    dfuse_set_address(d, s->address + (uint32_t)d->seg_off, dfuse_abort_then_upload);
}

static void dfuse_up_next(struct eng_dfu *d)
{
    const struct eng_dfu_segment *s = &d->segs[d->seg];
    if (d->seg_off == s->len) {
        /* DFU 1.1 §6.1.4 DFU_ABORT: end this read before the next address */
        d->where = W_NONE;
        ctrl(d, "ABORT", RT_CLASS_OUT, ENG_DFU_ABORT, 0 /* wValue */, NULL, 0 /* wLength */,
             dfuse_vseg_advance);
        return;
    }
    if (d->wvalue > 0xffff) {
        d->where = W_NONE;
        /* DFU 1.1 §6.1.4 DFU_ABORT: from dfuUPLOAD-IDLE so DNLOAD is allowed */
        ctrl(d, "ABORT", RT_CLASS_OUT, ENG_DFU_ABORT, 0 /* wValue */, NULL, 0 /* wLength */,
             dfuse_readdress);
        return;
    }
    size_t left = s->len - d->seg_off;
    d->chunk = left < d->xfer_size ? left : d->xfer_size;
    d->where = W_BLOCK;
    d->where_val = d->block;
    /* DFU 1.1 §6.2.1 DFU_UPLOAD; AN3156: reads pointer + (wValue - 2) * wTransferSize */
    ctrl(d, "UPLOAD", RT_CLASS_IN, ENG_DFU_UPLOAD, (uint16_t)d->wvalue /* wValue */, d->scratch,
         (uint16_t)d->chunk /* wLength */, dfuse_up_got);
}

static void dfuse_vseg_begin(struct eng_dfu *d)
{
    if (d->seg == d->n_segs) {
        verified(d);
        return;
    }
    d->seg_off = 0;
    dfuse_set_address(d, d->segs[d->seg].address, dfuse_abort_then_upload);
}

static void verify_idle(struct eng_dfu *d)
{
    d->block = 0;
    d->seg = 0;
    d->seg_off = 0;
    if (d->dfuse)
        dfuse_vseg_begin(d);
    else
        plain_up_next(d);
}

/* ---- detach (DFU 1.1 §5.1) ---- */

static void detach_left(struct eng_dfu *d)
{
    d->left = true;
    succeed(d, "detached; the device left the bus");
}

static void detach_sent(struct eng_dfu *d)
{
    if (d->t->dfu.attributes & ENG_DFU_ATTR_WILL_DETACH) {
        d->left = true;
        succeed(d, "detached; the device re-enumerates by itself (bitWillDetach)");
        return;
    }
    /* bitWillDetach clear: the host resets the device within wDetachTimeOut. */
    snprintf(d->ok_text, sizeof(d->ok_text), "detached and reset");
    do_reset(d);
}

static void detach_in_dfu(struct eng_dfu *d)
{
    if (!got_status(d))
        return;
    succeed(d, "already in DFU mode (%s)", eng_dfu_state_name(st_state(d)));
}

/* ---- DfuSe leave ---- */

static void leave_status(struct eng_dfu *d)
{
    if (!got_status(d))
        return;
    if (st_status(d) != ENG_DFU_OK || st_state(d) == ENG_DFU_ERROR) {
        fail_clean(d, ST_EDEVFAIL, ENG_DFU_CLRSTATUS, "%s", eng_dfu_status_name(st_status(d)));
        return;
    }
    d->left = true;
    succeed(d, "left DFU mode at 0x%08x (%s)", d->leave_addr, eng_dfu_state_name(st_state(d)));
}

static void leave_gone(struct eng_dfu *d)
{
    d->left = true;
    succeed(d, "left DFU mode at 0x%08x", d->leave_addr);
}

static void leave_sent(struct eng_dfu *d)
{
    getstatus_nodev(d, leave_status, leave_gone);
}

static void leave_addr_set(struct eng_dfu *d)
{
    d->where = W_NONE;
    /* AN3156 Leave DFU mode: a zero-length DNLOAD after Set Address Pointer */
    ctrl_nodev(d, "DNLOAD", RT_CLASS_OUT, ENG_DFU_DNLOAD, 2 /* wValue */, NULL, 0 /* wLength */,
               leave_sent, leave_gone);
}

static void leave_idle(struct eng_dfu *d)
{
    dfuse_set_address(d, d->leave_addr, leave_addr_set);
}

/* ---- starting an operation ---- */

static int begin(struct eng_dfu *d, enum op op, unsigned alt, const struct eng_dfu_limits *lim,
                 eng_dfu_done_cb cb, void *user_data)
{
    if (d->closing)
        return ST_ECLOSED;
    if (d->op != OP_NONE)
        return ST_EBUSY;
    if (!cb)
        return ST_EINVAL;
    const struct eng_dfu_info *info = &d->t->dfu;
    if (op != OP_DETACH) {
        if (alt >= info->n_alts || alt >= ENG_DFU_MAX_ALTS)
            return ST_EINVAL;
        if (info->transfer_size == 0)
            return ST_EINVAL;
    }
    d->op = op;
    d->opno++;
    d->cb = cb;
    d->user_data = user_data;
    d->lim.request_ms = lim && lim->request_ms ? lim->request_ms : DEFAULT_REQUEST_MS;
    d->lim.busy_ms = lim && lim->busy_ms ? lim->busy_ms : DEFAULT_BUSY_MS;
    d->lim.total_ms = lim ? lim->total_ms : 0;
    d->alt = alt;
    d->dfuse = info->bcd_dfu == ENG_DFU_BCD_DFUSE;
    d->xfer_size = info->transfer_size;
    d->left = false;
    d->ending = d->cleanup = false;
    d->where = W_NONE;
    d->recoveries = 0;
    d->total = d->done = 0;
    d->n_erase = d->erase_i = 0;
    d->msg[0] = '\0';
    d->ok_text[0] = '\0';
    return 0;
}

static void undo_begin(struct eng_dfu *d)
{
    d->op = OP_NONE;
    d->cb = NULL;
    d->segs = NULL;
}

static int start_first(struct eng_dfu *d, int (*first)(struct eng_dfu *d))
{
    d->starting = true;
    int rc = first(d);
    d->starting = false;
    if (rc) {
        undo_begin(d);
        return rc;
    }
    if (d->lim.total_ms)
        uv_timer_start(&d->op_timer, on_op_timeout, d->lim.total_ms, 0);
    return 0;
}

static int data_op(struct eng_dfu *d, enum op op, unsigned alt, const struct eng_dfu_segment *segs,
                   unsigned n, const struct eng_dfu_limits *lim, eng_dfu_done_cb cb,
                   void *user_data)
{
    if (!segs || n == 0)
        return ST_EINVAL;
    uint64_t total = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!segs[i].data || segs[i].len == 0)
            return ST_EINVAL;
        total += segs[i].len;
    }
    int rc = begin(d, op, alt, lim, cb, user_data);
    if (rc)
        return rc;
    const struct eng_dfu_info *info = &d->t->dfu;
    uint8_t need = op == OP_DOWNLOAD ? ENG_DFU_ATTR_CAN_DNLOAD : ENG_DFU_ATTR_CAN_UPLOAD;
    if (info->mode != 2 || !(info->attributes & need) || (!d->dfuse && n != 1)) {
        undo_begin(d);
        return ST_EINVAL;
    }
    if (d->dfuse && eng_dfuse_layout_parse(info->alt_names[alt], &d->layout) != 0) {
        undo_begin(d);
        return ST_EINVAL;
    }
    if (op == OP_VERIFY && d->scratch_cap < d->xfer_size) {
        uint8_t *b = realloc(d->scratch, d->xfer_size);
        if (!b) {
            undo_begin(d);
            return ST_ENOMEM;
        }
        d->scratch = b;
        d->scratch_cap = d->xfer_size;
    }
    d->segs = segs;
    d->n_segs = n;
    d->total = total;
    d->after_idle = op == OP_DOWNLOAD ? download_idle : verify_idle;
    return start_first(d, prep);
}

int eng_dfu_download(struct eng_dfu *d, unsigned alt, const struct eng_dfu_segment *segs,
                     unsigned n, const struct eng_dfu_limits *lim, eng_dfu_done_cb cb,
                     void *user_data)
{
    return data_op(d, OP_DOWNLOAD, alt, segs, n, lim, cb, user_data);
}

int eng_dfu_verify(struct eng_dfu *d, unsigned alt, const struct eng_dfu_segment *segs, unsigned n,
                   const struct eng_dfu_limits *lim, eng_dfu_done_cb cb, void *user_data)
{
    return data_op(d, OP_VERIFY, alt, segs, n, lim, cb, user_data);
}

static int detach_first(struct eng_dfu *d)
{
    const struct eng_dfu_info *info = &d->t->dfu;
    if (info->mode == 2)
        return ctrl(d, "GETSTATUS", RT_CLASS_IN, ENG_DFU_GETSTATUS, 0 /* wValue */, d->status,
                    6 /* wLength */, detach_in_dfu);
    /* DFU 1.1 §5.1 DFU_DETACH: wValue is how long the device waits for
     * the reset (ms), no data stage. */
    uint16_t timeout = info->detach_timeout_ms ? info->detach_timeout_ms : 1000;
    return ctrl_nodev(d, "DETACH", RT_CLASS_OUT, ENG_DFU_DETACH, timeout /* wValue */, NULL,
                      0 /* wLength */, detach_sent, detach_left);
}

int eng_dfu_detach(struct eng_dfu *d, const struct eng_dfu_limits *lim, eng_dfu_done_cb cb,
                   void *user_data)
{
    int rc = begin(d, OP_DETACH, 0, lim, cb, user_data);
    if (rc)
        return rc;
    if (d->t->dfu.mode != 1 && d->t->dfu.mode != 2) {
        undo_begin(d);
        return ST_EINVAL;
    }
    return start_first(d, detach_first);
}

int eng_dfu_leave(struct eng_dfu *d, unsigned alt, uint32_t address,
                  const struct eng_dfu_limits *lim, eng_dfu_done_cb cb, void *user_data)
{
    int rc = begin(d, OP_LEAVE, alt, lim, cb, user_data);
    if (rc)
        return rc;
    if (!d->dfuse || d->t->dfu.mode != 2) {
        undo_begin(d);
        return ST_EINVAL;
    }
    d->leave_addr = address;
    d->after_idle = leave_idle;
    return start_first(d, prep);
}

bool eng_dfu_device_left(const struct eng_dfu *d)
{
    return d->left;
}

void eng_dfu_abort(struct eng_dfu *d, int status, const char *reason)
{
    /* A best-effort cleanup in flight finishes by itself, with the
     * failure it was sent for. */
    if (d->op == OP_NONE || d->ending || d->cleanup)
        return;
    if (status == ST_ENODEV && d->on_nodev) {
        /* The device left where it may: finish as on_nodev says. */
        if (!d->in_flight) {
            uv_timer_stop(&d->poll_timer);
            d->on_nodev(d);
            return;
        }
        d->ending = true;
        d->end_status = ST_ENODEV;
        uv_timer_stop(&d->req_timer);
        uv_timer_stop(&d->op_timer);
        eng_transport_cancel(d->t, &d->xfer);
        return;
    }
    if (status == ST_ENODEV && !reason)
        reason = "device disconnected";
    set_msg(d, "%s", reason ? reason : st_strerror(status));
    end_with(d, status);
}

bool eng_dfu_busy(const struct eng_dfu *d)
{
    return d->op != OP_NONE;
}

void eng_dfu_close(struct eng_dfu *d, void (*cb)(void *user_data), void *user_data)
{
    assert(!d->closing);
    d->closing = true;
    d->close_cb = cb;
    d->close_user_data = user_data;
    if (d->op != OP_NONE) {
        if (!d->ending && !d->cleanup) {
            set_msg(d, "cancelled");
            end_with(d, ST_ECANCELED);
        }
        return; /* finish() closes the timers */
    }
    close_timers(d);
}
