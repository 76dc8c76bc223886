/*
 * Serving usbfs calls (linux/usbdevice_fs.h) for harness nodes.
 *
 * Every call of every client arrives on umockdev's worker thread; the
 * main thread only touches nodes from timers (pacing, timeouts) and
 * hotplug. Both hold sim.lock while they do.
 *
 * URBs: SUBMITURB resolves the client's struct usbdevfs_urb and buffer
 * (umockdev copies them over its socket) and keeps them; a bulk OUT is
 * handed to the model at once, a bulk IN waits in `pending` until the
 * model has a reply. A complete URB moves to `done`, where REAPURBNDELAY
 * finds it. Readiness: the node is a FIFO that is kept full (not
 * writable) while `done` is empty and drained (writable, POLLOUT) while
 * it is not, which is how the kernel signals a reapable URB
 * (shared/notes/usb-sim.md, pitfall 3).
 *
 * AOSP fastboot instead uses the synchronous USBDEVFS_BULK and
 * USBDEVFS_CONTROL; those are the same URBs with `sync` set, answered by
 * completing the ioctl itself.
 *
 * DFU nodes (eng_vdfu) have endpoint 0 only. Every control URB goes to
 * eng_vdfu_control(): ST_EPIPE completes it with -EPIPE (a STALL),
 * ST_ENODEV with -ENODEV and the node is unplugged for good, ST_EAGAIN
 * (the device NAKs) leaves the URB pending and asks again every
 * DFU_RETRY_US until it answers or the host discards the URB. SETINTERFACE
 * becomes a SET_INTERFACE request to the model; USBDEVFS_RESET is a bus
 * reset (eng_vdfu_bus_reset). After each request and each reset the node
 * re-enumerates when eng_vdfu_take_reenumerate() says so: after a reset
 * at once (the ioctl fails with ENODEV, as the kernel's does when the
 * descriptors changed), after a request shortly after its answer.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/usb/ch9.h>
#include <linux/usbdevice_fs.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/st_error.h"
#include "usbsim.h"

#define CAPS                                                                                       \
    (USBDEVFS_CAP_ZERO_PACKET | USBDEVFS_CAP_BULK_CONTINUATION | USBDEVFS_CAP_NO_PACKET_SIZE_LIM | \
     USBDEVFS_CAP_BULK_SCATTER_GATHER | USBDEVFS_CAP_REAP_AFTER_DISCONNECT)

#define EP_OUT 0x01
#define EP_IN 0x81
/* what the kernel adds per URB to its usbfs memory count (struct urb and
 * friends): with the default 16 MiB only 15 one-MiB URBs fit */
#define URB_OVERHEAD 256
/* a NAKed DFU request is asked again this often (µs) */
#define DFU_RETRY_US 50000
/* a DFU device that decided to re-enumerate leaves this long after its
 * last answer (ms), so the host can reap that answer first */
#define DFU_LEAVE_MS 20

struct sim_urb {
    struct sim *sim;
    uint64_t cost;               /* counted in sim.usbfs_used */
    UMockdevIoctlClient *client; /* ref */
    UMockdevIoctlData *urb;      /* async: the client's struct usbdevfs_urb (ref) */
    UMockdevIoctlData *bufd;     /* async: its buffer (ref) */
    uint8_t *buf;                /* the buffer's bytes, in our copy */
    size_t len;
    unsigned long addr; /* async: the URB's address in the client */
    unsigned char ep;
    bool in, sync;
    bool reply;       /* carries a model reply */
    bool ctl;         /* a DFU control request the model has not answered yet */
    int64_t due;      /* paced OUT completes at this time (µs) */
    int64_t deadline; /* sync IN times out at this time (µs) */
};

static void service(struct sim_node *n);
static int dfu_request(struct sim_node *n, const uint8_t setup[8], uint8_t *data, size_t cap);
static void dfu_gone(struct sim_node *n);

static void urb_free(struct sim_urb *u)
{
    u->sim->usbfs_used -= u->cost;
    if (u->urb)
        g_object_unref(u->urb);
    if (u->bufd)
        g_object_unref(u->bufd);
    g_object_unref(u->client);
    g_free(u);
}

/* ---- readiness ---------------------------------------------------- */

/* Writable FIFO (POLLOUT) exactly while a URB waits to be reaped. */
static void fifo_update(struct sim_node *n)
{
    static const char fill[4096];
    char sink[4096];
    bool want = !g_queue_is_empty(&n->done);
    if (n->fifo < 0 || want == n->ready)
        return;
    if (want)
        while (read(n->fifo, sink, sizeof(sink)) > 0)
            ;
    else
        while (write(n->fifo, fill, sizeof(fill)) > 0)
            ;
    n->ready = want;
}

int usbsim_fifo_open(struct sim_node *n)
{
    char dir[sizeof(n->fifo_path)];
    snprintf(dir, sizeof(dir), "%s", n->fifo_path);
    *strrchr(dir, '/') = '\0';
    if (g_mkdir_with_parents(dir, 0755) < 0)
        return -errno;
    unlink(n->fifo_path);
    if (n->port->eacces) {
        /* Root ignores file modes, but not a read-only sysctl: opening it
         * for writing fails with EACCES even for root, which is what an
         * unprivileged user sees without the udev rule. */
        n->fifo = -1;
        return symlink("/proc/sys/kernel/osrelease", n->fifo_path) < 0 ? -errno : 0;
    }
    if (mkfifo(n->fifo_path, 0666) < 0)
        return -errno;
    n->fifo = open(n->fifo_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (n->fifo < 0)
        return -errno;
    (void)fcntl(n->fifo, F_SETPIPE_SZ, 4096);
    n->ready = true; /* an empty FIFO is writable */
    fifo_update(n);
    return 0;
}

/* ---- timers (main thread) ------------------------------------------ */

static gboolean on_timer(gpointer data)
{
    struct sim_node *n = data;
    g_mutex_lock(&n->sim->lock);
    if (n->timer == g_main_current_source()) {
        g_source_unref(n->timer);
        n->timer = NULL;
    }
    service(n);
    g_mutex_unlock(&n->sim->lock);
    return G_SOURCE_REMOVE;
}

static void arm(struct sim_node *n, int64_t due)
{
    if (n->timer && n->timer_due <= due)
        return;
    if (n->timer) {
        g_source_destroy(n->timer);
        g_source_unref(n->timer);
    }
    int64_t now = g_get_monotonic_time();
    guint ms = due > now ? (guint)((due - now + 999) / 1000) : 0;
    n->timer = g_timeout_source_new(ms);
    g_source_set_callback(n->timer, on_timer, n, NULL);
    g_source_attach(n->timer, n->sim->main_ctx);
    n->timer_due = due;
}

/* ---- completion ---------------------------------------------------- */

/* A reply went back to the client: the model may now want to leave. */
static void after_reply(struct sim_node *n)
{
    if (!n->unit || !n->unit->vfb || n->gone || n->leaving || eng_vfb_reply_pending(n->unit->vfb))
        return;
    if (eng_vfb_take_reenumerate(n->unit->vfb)) {
        n->leaving = true;
        usbsim_schedule(n, SIM_REENUMERATE, 20);
    } else if (n->leave_after_reply && !n->port->stay) {
        n->leaving = true;
        usbsim_schedule(n, SIM_UNPLUG, 100);
    }
}

static void urb_finish(struct sim_node *n, struct sim_urb *u, int status, size_t actual)
{
    if (u->sync) {
        if (status == 0)
            umockdev_ioctl_client_complete(u->client, (glong)actual, 0);
        else
            umockdev_ioctl_client_complete(u->client, -1, -status);
        bool reply = u->reply;
        urb_free(u);
        if (reply)
            after_reply(n);
        return;
    }
    struct usbdevfs_urb *k = (struct usbdevfs_urb *)u->urb->data;
    k->status = status;
    k->actual_length = (int)actual;
    g_queue_push_tail(&n->done, u);
}

static void drop_urbs_of_others(struct sim_node *n, GQueue *q, UMockdevIoctlClient *keep)
{
    for (GList *l = q->head, *next; l; l = next) {
        next = l->next;
        struct sim_urb *u = l->data;
        if (u->client == keep)
            continue;
        /* A client that went away without telling us (umockdev 0.17
         * never says "client vanished"): forget its URBs unanswered. */
        g_queue_delete_link(q, l);
        urb_free(u);
    }
}

void usbsim_node_gone_locked(struct sim_node *n)
{
    if (n->gone)
        return;
    n->gone = true;
    struct sim_urb *u;
    while ((u = g_queue_pop_head(&n->pending)))
        urb_finish(n, u, -ENODEV, 0);
    if (n->timer) {
        g_source_destroy(n->timer);
        g_source_unref(n->timer);
        n->timer = NULL;
    }
    fifo_update(n);
}

/* Complete what is due: paced OUTs, IN URBs that can take a reply,
 * timed-out synchronous reads. Lock held. */
static void service(struct sim_node *n)
{
    int64_t now = g_get_monotonic_time(), wake = INT64_MAX;
    for (GList *l = n->pending.head, *next; l; l = next) {
        next = l->next;
        struct sim_urb *u = l->data;
        if (u->ctl) {
            if (u->due > now) {
                wake = MIN(wake, u->due);
                continue;
            }
            int r = dfu_request(n, u->buf, u->buf + 8, u->len - 8);
            if (r == -EAGAIN) {
                u->due = now + DFU_RETRY_US;
                wake = MIN(wake, u->due);
                continue;
            }
            g_queue_delete_link(&n->pending, l);
            urb_finish(n, u, r < 0 ? r : 0, r < 0 ? 0 : (size_t)r);
            if (r == -ENODEV) {
                dfu_gone(n); /* completes (and empties) everything pending */
                wake = INT64_MAX;
                break;
            }
            continue;
        }
        int64_t t = u->in ? u->deadline : u->due;
        if (!t)
            continue;
        if (t > now) {
            wake = MIN(wake, t);
            continue;
        }
        g_queue_delete_link(&n->pending, l);
        if (u->in)
            urb_finish(n, u, -ETIMEDOUT, 0);
        else
            urb_finish(n, u, 0, u->len);
    }
    while (n->unit && n->unit->vfb && !n->gone && eng_vfb_reply_pending(n->unit->vfb)) {
        GList *l = n->pending.head;
        while (l && !((struct sim_urb *)l->data)->in)
            l = l->next;
        if (!l)
            break;
        if (now < n->busy_until) {
            wake = MIN(wake, n->busy_until);
            break;
        }
        struct sim_urb *u = l->data;
        g_queue_delete_link(&n->pending, l);
        uint8_t r[ENG_VFB_REPLY_MAX];
        size_t rl = eng_vfb_host_read(n->unit->vfb, r, sizeof(r));
        size_t cp = MIN(rl, u->len);
        memcpy(u->buf, r, cp);
        u->reply = true;
        if (n->sim->verbose)
            usbsim_log(n->sim, "%s IN %.*s", n->port->path, (int)MIN(cp, 64), (const char *)r);
        /* More than the host asked for is babble: -EOVERFLOW. */
        urb_finish(n, u, rl > u->len ? -EOVERFLOW : 0, cp);
    }
    if (wake != INT64_MAX)
        arm(n, wake);
    fifo_update(n);
}

/* ---- requests ------------------------------------------------------ */

static int copy_out(uint8_t *dst, size_t cap, const void *src, size_t len)
{
    size_t n = MIN(cap, len);
    if (n)
        memcpy(dst, src, n);
    return (int)n;
}

static int string_descriptor(const struct sim_node *n, unsigned index, uint8_t *dst, size_t cap)
{
    uint8_t d[256];
    if (index == 0) {
        const uint8_t langs[4] = {4, USB_DT_STRING, 0x09, 0x04}; /* en-US */
        return copy_out(dst, cap, langs, sizeof(langs));
    }
    const char *s = usbsim_string(n, index);
    if (!s)
        return -EPIPE;
    size_t len = MIN(strlen(s), 126);
    d[0] = (uint8_t)(2 + 2 * len);
    d[1] = USB_DT_STRING;
    for (size_t i = 0; i < len; i++) {
        d[2 + 2 * i] = (uint8_t)s[i];
        d[3 + 2 * i] = 0;
    }
    return copy_out(dst, cap, d, d[0]);
}

/* A control request (USB 2.0 chapter 9.4, hub requests 11.24.2); data
 * is the data stage (cap bytes). Returns the data-stage length or
 * -EPIPE (stall). */
static int control(struct sim_node *n, const uint8_t setup[8], uint8_t *data, size_t cap)
{
    uint8_t type = setup[0], req = setup[1];
    unsigned value = setup[2] | setup[3] << 8;
    unsigned length = setup[6] | setup[7] << 8;
    cap = MIN(cap, length);
    if (n->port->stallctl)
        return -EPIPE;
    if (type == (USB_DIR_IN | USB_TYPE_STANDARD | USB_RECIP_DEVICE)) {
        switch (req) {
        case USB_REQ_GET_DESCRIPTOR:
            switch (value >> 8) {
            case USB_DT_DEVICE:
                return copy_out(data, cap, n->desc, 18);
            case USB_DT_CONFIG:
                if ((value & 0xff) != 0)
                    return -EPIPE;
                return copy_out(data, cap, n->desc + 18, n->desc_len - 18);
            case USB_DT_STRING:
                return string_descriptor(n, value & 0xff, data, cap);
            case USB_DT_DEVICE_QUALIFIER: {
                const uint8_t q[10] = {10,         USB_DT_DEVICE_QUALIFIER,
                                       0x00,       0x02,
                                       n->desc[4], n->desc[5],
                                       n->desc[6], 64,
                                       1,          0};
                return copy_out(data, cap, q, sizeof(q));
            }
            default:
                return -EPIPE;
            }
        case USB_REQ_GET_STATUS: {
            const uint8_t st[2] = {n->port->hub ? 1 : 0, 0}; /* self-powered hubs */
            return copy_out(data, cap, st, sizeof(st));
        }
        case USB_REQ_GET_CONFIGURATION: {
            const uint8_t c = 1;
            return copy_out(data, cap, &c, 1);
        }
        default:
            return -EPIPE;
        }
    }
    if (type == (USB_DIR_OUT | USB_TYPE_STANDARD | USB_RECIP_DEVICE) &&
        req == USB_REQ_SET_CONFIGURATION)
        return 0;
    if (type == (USB_DIR_OUT | USB_TYPE_STANDARD | USB_RECIP_INTERFACE) &&
        req == USB_REQ_SET_INTERFACE)
        return 0;
    if (type == (USB_DIR_IN | USB_TYPE_STANDARD | USB_RECIP_INTERFACE) &&
        req == USB_REQ_GET_INTERFACE) {
        const uint8_t alt = 0;
        return copy_out(data, cap, &alt, 1);
    }
    if (type == (USB_DIR_OUT | USB_TYPE_STANDARD | USB_RECIP_ENDPOINT) &&
        req == USB_REQ_CLEAR_FEATURE)
        return 0;
    if (n->port->hub && type == (USB_DIR_IN | USB_TYPE_CLASS | USB_RECIP_DEVICE) &&
        req == USB_REQ_GET_DESCRIPTOR && (value >> 8) == 0x29) {
        /* hub descriptor: 7 ports, individual power switching */
        const uint8_t h[9] = {9, 0x29, 7, 0x09, 0x00, 50, 100, 0x00, 0xff};
        return copy_out(data, cap, h, sizeof(h));
    }
    if (n->port->hub && req == USB_REQ_GET_STATUS &&
        (type == (USB_DIR_IN | USB_TYPE_CLASS | USB_RECIP_DEVICE) ||
         type == (USB_DIR_IN | USB_TYPE_CLASS | USB_RECIP_OTHER))) {
        const uint8_t st[4] = {0, type & USB_RECIP_OTHER ? 0x01 : 0, 0, 0}; /* port powered */
        return copy_out(data, cap, st, sizeof(st));
    }
    return -EPIPE;
}

/* ---- DFU devices (engine/virt/vdfu.h) ------------------------------- */

static uint64_t now_ms(void)
{
    return (uint64_t)(g_get_monotonic_time() / 1000);
}

/* The model left the bus for good (disconnect fault). Lock held. */
static void dfu_gone(struct sim_node *n)
{
    n->leaving = true;
    usbsim_node_gone_locked(n);
    usbsim_schedule(n, SIM_UNPLUG, 0);
}

/* After a request: a device that decided to re-enumerate (DETACH with
 * bitWillDetach, DfuSe leave) leaves once its answer had time to be
 * reaped, and comes back in its new mode. */
static void dfu_maybe_leave(struct sim_node *n)
{
    if (eng_vdfu_take_reenumerate(n->unit->vdfu) && !n->leaving) {
        n->leaving = true;
        usbsim_schedule(n, SIM_REENUMERATE, DFU_LEAVE_MS);
    }
}

/* One request on endpoint 0 of a DFU node; data is the data stage (cap
 * bytes). Returns the data-stage length, -EPIPE (stall), -EAGAIN (no
 * answer yet: keep it pending) or -ENODEV (the device left for good; the
 * caller completes the URB, then calls dfu_gone()). Lock held. */
static int dfu_request(struct sim_node *n, const uint8_t setup[8], uint8_t *data, size_t cap)
{
    struct eng_vdfu *v = n->unit->vdfu;
    unsigned length = setup[6] | setup[7] << 8;
    size_t actual = 0;
    bool class_req = (setup[0] & 0x60) == 0x20;
    if (length > cap)
        return -EINVAL;
    if (n->port->stallctl)
        return -EPIPE;
    if (class_req && n->plugged_at) {
        struct sim_unit *unit = n->unit;
        if (unit->n_first_cmd < G_N_ELEMENTS(unit->first_cmd_us))
            unit->first_cmd_us[unit->n_first_cmd++] = g_get_monotonic_time() - n->plugged_at;
        n->plugged_at = 0;
    }
    int rc = eng_vdfu_control(v, now_ms(), setup, data, &actual);
    if (class_req && n->sim->verbose)
        usbsim_log(n->sim, "%s DFU %s wValue=%u wLength=%u -> %s actual=%zu state=%s",
                   n->port->path, eng_dfu_request_name(setup[1]), setup[2] | setup[3] << 8, length,
                   rc == 0           ? "ok"
                   : rc == ST_EPIPE  ? "STALL"
                   : rc == ST_EAGAIN ? "NAK"
                                     : "gone",
                   actual, eng_dfu_state_name(eng_vdfu_state(v)));
    switch (rc) {
    case 0:
        dfu_maybe_leave(n);
        return (int)MIN(actual, length);
    case ST_EAGAIN:
        return -EAGAIN;
    case ST_ENODEV:
        return -ENODEV;
    default:
        dfu_maybe_leave(n);
        return -EPIPE;
    }
}

/* USBDEVFS_RESET: a port reset. The model switches mode as DFU 1.1
 * Appendix A says and always re-enumerates; like the kernel when the
 * descriptors changed, the ioctl then fails with ENODEV and the old node
 * is gone. Lock held. */
static void dfu_reset(struct sim_node *n, UMockdevIoctlClient *c)
{
    struct eng_vdfu *v = n->unit->vdfu;
    if (eng_vdfu_gone(v)) {
        umockdev_ioctl_client_complete(c, -1, ENODEV);
        return;
    }
    eng_vdfu_bus_reset(v, now_ms());
    if (n->sim->verbose)
        usbsim_log(n->sim, "%s DFU bus reset -> mode %u", n->port->path, eng_vdfu_mode(v));
    if (!eng_vdfu_take_reenumerate(v)) {
        umockdev_ioctl_client_complete(c, 0, 0);
        return;
    }
    usbsim_node_gone_locked(n);
    if (!n->leaving) {
        n->leaving = true;
        usbsim_schedule(n, SIM_REENUMERATE, 0);
    }
    umockdev_ioctl_client_complete(c, -1, ENODEV);
}

/* USBDEVFS_SETINTERFACE: the kernel sends SET_INTERFACE (USB 2.0 §9.4.10). */
static void dfu_set_interface(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GError *err = NULL;
    UMockdevIoctlData *d =
        umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_setinterface), &err);
    if (!d) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    const struct usbdevfs_setinterface *si = (const struct usbdevfs_setinterface *)d->data;
    const uint8_t setup[8] = {USB_DIR_OUT | USB_TYPE_STANDARD | USB_RECIP_INTERFACE,
                              USB_REQ_SET_INTERFACE,
                              (uint8_t)si->altsetting,
                              (uint8_t)(si->altsetting >> 8),
                              (uint8_t)si->interface,
                              (uint8_t)(si->interface >> 8),
                              0,
                              0};
    g_object_unref(d);
    int r = dfu_request(n, setup, NULL, 0);
    if (r == -ENODEV) {
        umockdev_ioctl_client_complete(c, -1, ENODEV);
        dfu_gone(n);
        return;
    }
    if (r == -EAGAIN)
        r = -ETIMEDOUT;
    /* the kernel refuses an alt the descriptors do not have with EINVAL */
    umockdev_ioctl_client_complete(c, r < 0 ? -1 : 0, r == -EPIPE ? EINVAL : r < 0 ? -r : 0);
}

static bool is_dfu(const struct sim_node *n)
{
    return n->unit && n->unit->vdfu;
}

/* Hand an OUT transfer to the model. Returns the URB status. */
static int do_out(struct sim_node *n, struct sim_urb *u)
{
    struct eng_vfb *v = n->unit->vfb;
    if (u->len == 0)
        return 0; /* a zero-length packet ends a transfer; it is no command */
    bool command = !eng_vfb_in_data_phase(v);
    size_t taken = 0;
    if (n->plugged_at) {
        struct sim_unit *unit = n->unit;
        if (unit->n_first_cmd < G_N_ELEMENTS(unit->first_cmd_us))
            unit->first_cmd_us[unit->n_first_cmd++] = g_get_monotonic_time() - n->plugged_at;
        n->plugged_at = 0;
    }
    if (command && n->sim->verbose)
        usbsim_log(n->sim, "%s OUT %.*s", n->port->path, (int)MIN(u->len, 64), (char *)u->buf);
    int r = eng_vfb_host_write(v, u->buf, u->len, &taken);
    if (r == ST_ENODEV) {
        /* The disconnect fault: the device drops off the bus in the middle
         * of this transfer, which ends as if it had been unplugged. */
        u->len = taken;
        return -ENODEV;
    }
    if (command && ((u->len == 6 && !memcmp(u->buf, "reboot", 6)) ||
                    (u->len == 8 && !memcmp(u->buf, "continue", 8))))
        n->leave_after_reply = true;
    double pace = n->port->cfg.pace_mbps;
    if (pace > 0) {
        int64_t now = g_get_monotonic_time();
        int64_t start = MAX(now, n->busy_until);
        n->busy_until = start + (int64_t)((double)u->len / pace); /* bytes / (MB/s) = µs */
        if (n->busy_until > now)
            u->due = n->busy_until;
    }
    return 0;
}

/* Queue a bulk transfer (async or sync) on the node. */
static void bulk(struct sim_node *n, struct sim_urb *u)
{
    if (u->in) {
        g_queue_push_tail(&n->pending, u);
        return;
    }
    int st = do_out(n, u);
    if (st == -ENODEV) {
        urb_finish(n, u, -ENODEV, u->len);
        n->leaving = true;
        usbsim_node_gone_locked(n);
        usbsim_schedule(n, SIM_UNPLUG, 0);
        return;
    }
    if (u->due)
        g_queue_push_tail(&n->pending, u);
    else
        urb_finish(n, u, 0, u->len);
}

static bool endpoint_ok(const struct sim_node *n, unsigned char ep)
{
    return n->unit && n->unit->vfb && (ep == EP_OUT || ep == EP_IN);
}

/* Count len bytes against the usbfs limit; false when they do not fit
 * (the call then fails with ENOMEM, which a host must treat as "wait"). */
static bool charge(struct sim_node *n, struct sim_urb *u, size_t len)
{
    struct sim *s = n->sim;
    uint64_t cost = (uint64_t)len + URB_OVERHEAD;
    if (s->usbfs_limit && s->usbfs_used + cost > s->usbfs_limit)
        return false;
    s->usbfs_used += cost;
    u->cost = cost;
    return true;
}

static struct sim_urb *urb_new(struct sim_node *n, UMockdevIoctlClient *c, unsigned char ep)
{
    struct sim_urb *u = g_new0(struct sim_urb, 1);
    u->sim = n->sim;
    u->client = g_object_ref(c);
    u->ep = ep;
    u->in = (ep & USB_DIR_IN) != 0;
    return u;
}

static void submit_urb(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GError *err = NULL;
    UMockdevIoctlData *ud = umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_urb), &err);
    if (!ud) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    struct usbdevfs_urb *k = (struct usbdevfs_urb *)ud->data;
    if (k->buffer_length < 0 || (k->type == USBDEVFS_URB_TYPE_CONTROL && k->buffer_length < 8)) {
        g_object_unref(ud);
        umockdev_ioctl_client_complete(c, -1, EINVAL);
        return;
    }
    UMockdevIoctlData *bd = NULL;
    if (k->buffer_length > 0) {
        bd = umockdev_ioctl_data_resolve(ud, offsetof(struct usbdevfs_urb, buffer),
                                         (gsize)k->buffer_length, &err);
        if (!bd) {
            g_clear_error(&err);
            g_object_unref(ud);
            umockdev_ioctl_client_complete(c, -1, EFAULT);
            return;
        }
    }
    struct sim_urb *u = urb_new(n, c, k->endpoint);
    u->urb = ud;
    u->bufd = bd;
    u->buf = bd ? bd->data : NULL;
    u->len = (size_t)k->buffer_length;
    u->addr = ud->client_addr;
    if (!charge(n, u, u->len)) {
        urb_free(u);
        umockdev_ioctl_client_complete(c, -1, ENOMEM);
        return;
    }

    switch (k->type) {
    case USBDEVFS_URB_TYPE_CONTROL: {
        if (is_dfu(n)) {
            const uint8_t *st = u->buf;
            if ((size_t)(st[6] | st[7] << 8) > u->len - 8) {
                /* the kernel checks wLength against the buffer at submission */
                urb_free(u);
                umockdev_ioctl_client_complete(c, -1, EINVAL);
                return;
            }
            umockdev_ioctl_client_complete(c, 0, 0);
            int r = dfu_request(n, u->buf, u->buf + 8, u->len - 8);
            if (r == -EAGAIN) {
                u->ctl = true;
                u->due = g_get_monotonic_time() + DFU_RETRY_US;
                g_queue_push_tail(&n->pending, u);
                break;
            }
            urb_finish(n, u, r < 0 ? r : 0, r < 0 ? 0 : (size_t)r);
            if (r == -ENODEV)
                dfu_gone(n);
            break;
        }
        int r = control(n, u->buf, u->buf + 8, u->len - 8);
        umockdev_ioctl_client_complete(c, 0, 0);
        urb_finish(n, u, r < 0 ? r : 0, r < 0 ? 0 : (size_t)r);
        break;
    }
    case USBDEVFS_URB_TYPE_BULK:
    case USBDEVFS_URB_TYPE_INTERRUPT:
        if (!endpoint_ok(n, k->endpoint)) {
            urb_free(u);
            umockdev_ioctl_client_complete(c, -1, ENOENT);
            return;
        }
        umockdev_ioctl_client_complete(c, 0, 0);
        bulk(n, u);
        break;
    default:
        urb_free(u);
        umockdev_ioctl_client_complete(c, -1, EINVAL);
        return;
    }
    service(n);
}

static void reap_urb(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GList *l = n->done.head;
    while (l && ((struct sim_urb *)l->data)->client != c)
        l = l->next;
    if (!l) {
        umockdev_ioctl_client_complete(c, -1, n->gone ? ENODEV : EAGAIN);
        return;
    }
    GError *err = NULL;
    UMockdevIoctlData *ptr = umockdev_ioctl_data_resolve(arg, 0, sizeof(void *), &err);
    if (!ptr) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    struct sim_urb *u = l->data;
    g_queue_delete_link(&n->done, l);
    umockdev_ioctl_data_set_ptr(ptr, 0, u->urb);
    umockdev_ioctl_client_complete(c, 0, 0);
    g_object_unref(ptr);
    bool reply = u->reply;
    urb_free(u);
    if (reply)
        after_reply(n);
    fifo_update(n);
}

static void discard_urb(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    /* The argument is the URB's address itself, not a pointer to it. */
    unsigned long addr = *(unsigned long *)arg->data;
    for (GList *l = n->pending.head; l; l = l->next) {
        struct sim_urb *u = l->data;
        if (u->sync || u->client != c || u->addr != addr)
            continue;
        g_queue_delete_link(&n->pending, l);
        urb_finish(n, u, -ENOENT, 0);
        umockdev_ioctl_client_complete(c, 0, 0);
        fifo_update(n);
        return;
    }
    umockdev_ioctl_client_complete(c, -1, EINVAL); /* already complete */
}

static void sync_bulk(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GError *err = NULL;
    UMockdevIoctlData *bt =
        umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_bulktransfer), &err);
    if (!bt) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    struct usbdevfs_bulktransfer *b = (struct usbdevfs_bulktransfer *)bt->data;
    unsigned char ep = (unsigned char)b->ep;
    if (!endpoint_ok(n, ep)) {
        g_object_unref(bt);
        umockdev_ioctl_client_complete(c, -1, ENOENT);
        return;
    }
    struct sim_urb *u = urb_new(n, c, ep);
    u->sync = true;
    u->len = b->len;
    if (!charge(n, u, u->len)) {
        g_object_unref(bt);
        urb_free(u);
        umockdev_ioctl_client_complete(c, -1, ENOMEM);
        return;
    }
    if (b->len) {
        UMockdevIoctlData *d = umockdev_ioctl_data_resolve(
            bt, offsetof(struct usbdevfs_bulktransfer, data), b->len, &err);
        if (!d) {
            g_clear_error(&err);
            g_object_unref(bt);
            urb_free(u);
            umockdev_ioctl_client_complete(c, -1, EFAULT);
            return;
        }
        u->buf = d->data; /* stays alive as a child of the ioctl argument */
        g_object_unref(d);
    }
    if (u->in && b->timeout)
        u->deadline = g_get_monotonic_time() + (int64_t)b->timeout * 1000;
    g_object_unref(bt);
    bulk(n, u);
    service(n);
}

static void sync_control(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GError *err = NULL;
    UMockdevIoctlData *ct =
        umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_ctrltransfer), &err);
    if (!ct) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    struct usbdevfs_ctrltransfer *t = (struct usbdevfs_ctrltransfer *)ct->data;
    uint8_t setup[8] = {t->bRequestType,  t->bRequest,    t->wValue & 0xff,  t->wValue >> 8,
                        t->wIndex & 0xff, t->wIndex >> 8, t->wLength & 0xff, t->wLength >> 8};
    UMockdevIoctlData *d = NULL;
    if (t->wLength) {
        d = umockdev_ioctl_data_resolve(ct, offsetof(struct usbdevfs_ctrltransfer, data),
                                        t->wLength, &err);
        if (!d) {
            g_clear_error(&err);
            g_object_unref(ct);
            umockdev_ioctl_client_complete(c, -1, EFAULT);
            return;
        }
    }
    int r;
    if (is_dfu(n)) {
        /* A synchronous request the device NAKs ends with the ioctl's timeout. */
        r = dfu_request(n, setup, d ? d->data : NULL, d ? t->wLength : 0);
        if (r == -EAGAIN)
            r = -ETIMEDOUT;
    } else {
        r = control(n, setup, d ? d->data : NULL, d ? t->wLength : 0);
    }
    if (d)
        g_object_unref(d);
    g_object_unref(ct);
    if (r < 0)
        umockdev_ioctl_client_complete(c, -1, -r);
    else
        umockdev_ioctl_client_complete(c, r, 0);
    if (r == -ENODEV && is_dfu(n) && !n->gone)
        dfu_gone(n);
}

/* A new claimant is a new session: whatever an earlier client left (a
 * killed fastboot, a station that crashed) must not leak into it. */
static void claim(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GError *err = NULL;
    UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(unsigned int), &err);
    if (!d) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    unsigned int ifno = *(unsigned int *)d->data;
    g_object_unref(d);
    if (ifno != 0) {
        umockdev_ioctl_client_complete(c, -1, ENOENT);
        return;
    }
    if (n->driver_bound) {
        /* DISCONNECT_CLAIM detaches the driver first (libusb's auto
         * detach); a plain claim fails like the kernel's. */
        if (umockdev_ioctl_client_get_request(c) != USBDEVFS_DISCONNECT_CLAIM) {
            umockdev_ioctl_client_complete(c, -1, EBUSY);
            return;
        }
        n->driver_bound = false;
    }
    if (n->owner != c) {
        drop_urbs_of_others(n, &n->pending, c);
        drop_urbs_of_others(n, &n->done, c);
        if (n->unit && n->unit->vfb)
            eng_vfb_reset_link(n->unit->vfb);
        n->busy_until = 0;
        if (n->owner)
            g_object_unref(n->owner);
        n->owner = g_object_ref(c);
        fifo_update(n);
    }
    umockdev_ioctl_client_complete(c, 0, 0);
}

static void fill_u32(UMockdevIoctlClient *c, UMockdevIoctlData *arg, uint32_t v)
{
    GError *err = NULL;
    UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(v), &err);
    if (!d) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    memcpy(d->data, &v, sizeof(v));
    g_object_unref(d);
    umockdev_ioctl_client_complete(c, 0, 0);
}

/* The interface's kernel driver (driver= knob): GETDRIVER names it,
 * USBDEVFS_IOCTL(DISCONNECT) detaches it, and no driver is ENODATA. */
static void get_driver(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    if (!n->driver_bound) {
        umockdev_ioctl_client_complete(c, -1, ENODATA);
        return;
    }
    GError *err = NULL;
    UMockdevIoctlData *d =
        umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_getdriver), &err);
    if (!d) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    struct usbdevfs_getdriver *g = (struct usbdevfs_getdriver *)d->data;
    snprintf(g->driver, sizeof(g->driver), "%s", n->port->driver);
    g_object_unref(d);
    umockdev_ioctl_client_complete(c, 0, 0);
}

static void driver_ioctl(struct sim_node *n, UMockdevIoctlClient *c, UMockdevIoctlData *arg)
{
    GError *err = NULL;
    UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_ioctl), &err);
    if (!d) {
        g_clear_error(&err);
        umockdev_ioctl_client_complete(c, -1, EFAULT);
        return;
    }
    int code = ((struct usbdevfs_ioctl *)d->data)->ioctl_code;
    g_object_unref(d);
    if (code == (int)USBDEVFS_DISCONNECT) {
        bool was = n->driver_bound;
        n->driver_bound = false;
        umockdev_ioctl_client_complete(c, was ? 0 : -1, was ? 0 : ENODATA);
    } else if (code == (int)USBDEVFS_CONNECT) {
        n->driver_bound = n->port->driver[0] != '\0';
        umockdev_ioctl_client_complete(c, n->driver_bound ? 1 : 0, 0);
    } else {
        umockdev_ioctl_client_complete(c, -1, ENOTTY);
    }
}

static gboolean on_ioctl(UMockdevIoctlBase *h, UMockdevIoctlClient *c, gpointer data)
{
    struct sim_node *n = data;
    gulong req = umockdev_ioctl_client_get_request(c);
    UMockdevIoctlData *arg = umockdev_ioctl_client_get_arg(c);
    g_mutex_lock(&n->sim->lock);
    if (n->port->eacces) {
        umockdev_ioctl_client_complete(c, -1, EACCES);
        goto out;
    }
    if (n->gone && req != USBDEVFS_REAPURBNDELAY && req != USBDEVFS_DISCARDURB) {
        umockdev_ioctl_client_complete(c, -1, ENODEV);
        goto out;
    }
    switch (req) {
    case USBDEVFS_GET_CAPABILITIES:
        fill_u32(c, arg, CAPS);
        break;
    case USBDEVFS_SUBMITURB:
        submit_urb(n, c, arg);
        break;
    case USBDEVFS_REAPURBNDELAY:
        reap_urb(n, c, arg);
        break;
    case USBDEVFS_DISCARDURB:
        discard_urb(n, c, arg);
        break;
    case USBDEVFS_BULK:
        sync_bulk(n, c, arg);
        break;
    case USBDEVFS_CONTROL:
        sync_control(n, c, arg);
        break;
    case USBDEVFS_CLAIMINTERFACE:
    case USBDEVFS_DISCONNECT_CLAIM: /* struct usbdevfs_disconnect_claim starts with the interface */
        claim(n, c, arg);
        break;
    case USBDEVFS_CONNECTINFO: {
        GError *err = NULL;
        UMockdevIoctlData *d =
            umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_connectinfo), &err);
        if (!d) {
            g_clear_error(&err);
            umockdev_ioctl_client_complete(c, -1, EFAULT);
            break;
        }
        struct usbdevfs_connectinfo *ci = (struct usbdevfs_connectinfo *)d->data;
        ci->devnum = n->devnum;
        ci->slow = 0;
        g_object_unref(d);
        umockdev_ioctl_client_complete(c, 0, 0);
        break;
    }
    case USBDEVFS_GETDRIVER:
        get_driver(n, c, arg);
        break;
    case USBDEVFS_IOCTL:
        driver_ioctl(n, c, arg);
        break;
    case USBDEVFS_GET_SPEED:
        umockdev_ioctl_client_complete(c, USB_SPEED_HIGH, 0);
        break;
    case USBDEVFS_SETINTERFACE:
        if (is_dfu(n))
            dfu_set_interface(n, c, arg);
        else
            umockdev_ioctl_client_complete(c, 0, 0);
        break;
    case USBDEVFS_RESET:
        if (is_dfu(n))
            dfu_reset(n, c);
        else
            umockdev_ioctl_client_complete(c, 0, 0);
        break;
    case USBDEVFS_RELEASEINTERFACE:
    case USBDEVFS_SETCONFIGURATION:
    case USBDEVFS_CLEAR_HALT:
    case USBDEVFS_RESETEP:
    case USBDEVFS_DISCONNECT:
    case USBDEVFS_CONNECT:
    case USBDEVFS_DROP_PRIVILEGES:
        umockdev_ioctl_client_complete(c, 0, 0);
        break;
    default:
        if (n->sim->verbose)
            usbsim_log(n->sim, "%s: unhandled ioctl 0x%lx", n->devnode, req);
        umockdev_ioctl_client_complete(c, -1, ENOTTY);
        break;
    }
out:
    g_mutex_unlock(&n->sim->lock);
    return TRUE;
}

/* AOSP fastboot reads the descriptors from the node, like usbfs offers. */
static gboolean on_read(UMockdevIoctlBase *h, UMockdevIoctlClient *c, gpointer data)
{
    struct sim_node *n = data;
    UMockdevIoctlData *arg = umockdev_ioctl_client_get_arg(c);
    g_mutex_lock(&n->sim->lock);
    if (n->port->eacces || n->gone) {
        umockdev_ioctl_client_complete(c, -1, n->gone ? ENODEV : EACCES);
    } else {
        size_t off = GPOINTER_TO_SIZE(g_object_get_data(G_OBJECT(c), "usbsim-offset"));
        size_t cp = off < n->desc_len ? MIN((size_t)arg->data_len, n->desc_len - off) : 0;
        memcpy(arg->data, n->desc + off, cp);
        g_object_set_data(G_OBJECT(c), "usbsim-offset", GSIZE_TO_POINTER(off + cp));
        umockdev_ioctl_client_complete(c, (glong)cp, 0);
    }
    g_mutex_unlock(&n->sim->lock);
    return TRUE;
}

static gboolean on_write(UMockdevIoctlBase *h, UMockdevIoctlClient *c, gpointer data)
{
    umockdev_ioctl_client_complete(c, -1, EINVAL);
    return TRUE;
}

void usbsim_usbfs_attach(struct sim_node *n)
{
    g_signal_connect(n->handler, "handle-ioctl", G_CALLBACK(on_ioctl), n);
    g_signal_connect(n->handler, "handle-read", G_CALLBACK(on_read), n);
    g_signal_connect(n->handler, "handle-write", G_CALLBACK(on_write), n);
}
