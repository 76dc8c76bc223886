/*
 * libusb inside the libuv loop. Everything libusb reports (hotplug,
 * transfer completions) arrives inside libusb_handle_events*(), which we
 * call from a uv_poll_t callback; work that libusb forbids there (open,
 * close) or that could re-enter it is queued and done right after
 * handle_events returns (process_deferred).
 *
 * DFU interfaces (class FE/01/01 run-time, FE/01/02 DFU mode) use
 * endpoint 0 only: no bulk endpoints are needed, the transport's `dfu`
 * field is filled from the configuration descriptor (rebuilt from
 * libusb's parsed copy, which libusb read from sysfs: no I/O) and the alt
 * names are read like the serial, with asynchronous control transfers.
 * A USB reset (ops->reset, DFU 1.1 §5.1 and §7) is libusb_reset_device(),
 * which blocks, so it runs on libuv's thread pool; the device is not
 * reported gone, closed or freed until that work has returned.
 */
#include "engine/usb.h"
#include "engine/usb_budget.h"

#include <errno.h>
#include <inttypes.h>
#include <libusb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/dfu.h"

#define DEFAULT_BUDGET (16u << 20)
#define DATA_SLICE_NS 2000000u /* image-data completions per pass: see holds_data() */
#define OPEN_RETRY_EVERY_MS 100
#define LANGID_EN_US 0x0409

enum dev_state {
    D_NEW,      /* seen by hotplug; open pending */
    D_SERIAL,   /* open; reading iSerial (and DFU alt names) */
    D_ATTACHED, /* handed to the engine */
    D_DROPPED,  /* not ours (no rule) or failed: waiting to be freed */
};

struct usb_poll {
    struct eng_usb *usb;
    int fd;
    uv_poll_t h;
    bool closing;
    struct usb_poll *next;
};

struct waiter {            /* a transfer waiting for budget */
    struct eng_usb_wait q; /* first: the queue (engine/usb_budget.h) links these */
    struct usbdev *d;
    struct eng_xfer *x;
};

struct usbdev {
    struct eng_transport pub; /* first: the transport handle is the device */
    struct eng_usb *usb;
    libusb_device *dev;
    libusb_device_handle *h;
    enum dev_state state;
    int rule;
    int iface;
    uint8_t ep_in, ep_out;
    uint8_t cls, subclass, protocol; /* the matching interface's class triple */
    bool dfu;                        /* a DFU interface: ep0 only */
    uint8_t iserial;
    uint8_t alt_string[ENG_DFU_MAX_ALTS]; /* DFU: iInterface of each alt */
    unsigned string_step;                 /* 0: iSerial; 1 + n: the name of alt n */
    uint64_t first_try;                   /* uv_now of the first open attempt */
    uint64_t next_try;
    bool serial_pending;   /* the iSerial control transfer is in flight */
    bool cancel_queued[3]; /* a queued (never submitted) transfer was cancelled */
    bool done[3];          /* complete, its callback not yet delivered */
    bool gone;             /* hotplug said it left */
    bool left_reported;
    bool claimed;
    /* transfers: one per kind, reused */
    struct libusb_transfer *lt[3];
    struct eng_xfer *x[3]; /* in flight per kind, or NULL */
    uint8_t *ctl_buf;      /* setup + data for control transfers */
    size_t ctl_cap;
    unsigned char serial_buf[8 + 255];
    /* a USB reset on the thread pool (DFU) */
    struct eng_xfer *reset_x; /* in flight, or NULL */
    uv_work_t reset_work;
    int reset_rc;      /* libusb's answer, written by the worker */
    bool reset_cancel; /* cancelled after the worker took it */
    /* closing (by the engine) */
    bool closing;
    eng_transport_close_cb close_cb;
    void *close_user_data;
    struct usbdev *next;
};

struct eng_usb {
    uv_loop_t *loop;
    struct eng_engine *eng;
    struct eng_usb_options opts;
    libusb_context *ctx;
    libusb_hotplug_callback_handle hotplug;
    bool hotplug_registered;
    struct usb_poll *polls;
    uv_timer_t timer;   /* libusb timeouts (when not on timerfd) and open retries */
    uv_idle_t deferred; /* runs process_deferred outside libusb */
    uv_check_t events;  /* one libusb event pass per loop iteration (on_poll) */
    bool in_events;
    bool in_deferred, deferred_again;
    struct usbdev *devs;
    size_t inflight;
    struct eng_usb_wait *waiting; /* struct waiter: small ones first (usb_budget.h) */
    bool stopping;                /* hotplug off, no new devices */
    bool closing;                 /* handles closing (after the engine closed) */
    unsigned open_handles;
    void (*stop_cb)(struct eng_usb *usb, void *user_data);
    void *stop_user_data;
};

static int translate(int lerr)
{
    switch (lerr) {
    case LIBUSB_SUCCESS:
        return 0;
    case LIBUSB_ERROR_ACCESS:
        return ST_EACCES;
    case LIBUSB_ERROR_NO_DEVICE:
        return ST_ENODEV;
    case LIBUSB_ERROR_NOT_FOUND:
        return ST_ENOENT;
    case LIBUSB_ERROR_BUSY:
        return ST_EBUSY;
    case LIBUSB_ERROR_TIMEOUT:
        return ST_ETIMEDOUT;
    case LIBUSB_ERROR_OVERFLOW:
        return ST_EOVERFLOW;
    case LIBUSB_ERROR_PIPE:
        return ST_EPIPE;
    case LIBUSB_ERROR_NO_MEM:
        return ST_ENOMEM;
    case LIBUSB_ERROR_INVALID_PARAM:
        return ST_EINVAL;
    default:
        return ST_EIO;
    }
}

static int translate_status(enum libusb_transfer_status st)
{
    switch (st) {
    case LIBUSB_TRANSFER_COMPLETED:
        return 0;
    case LIBUSB_TRANSFER_TIMED_OUT:
        return ST_ETIMEDOUT;
    case LIBUSB_TRANSFER_CANCELLED:
        return ST_ECANCELED;
    case LIBUSB_TRANSFER_STALL:
        return ST_EPIPE;
    case LIBUSB_TRANSFER_NO_DEVICE:
        return ST_ENODEV;
    case LIBUSB_TRANSFER_OVERFLOW:
        return ST_EOVERFLOW;
    default:
        return ST_EIO;
    }
}

static void port_path(libusb_device *dev, char *buf, size_t len)
{
    uint8_t ports[8];
    int n = libusb_get_port_numbers(dev, ports, sizeof(ports));
    int o = snprintf(buf, len, "%u-", libusb_get_bus_number(dev));
    for (int i = 0; i < n && o > 0 && (size_t)o < len; i++)
        o += snprintf(buf + o, len - (size_t)o, i ? ".%u" : "%u", ports[i]);
    if (n <= 0)
        snprintf(buf, len, "%u-0", libusb_get_bus_number(dev));
}

/* ---- the loop side: pollfds, timer, deferred work ---- */

static void process_deferred(struct eng_usb *usb);

static void on_idle(uv_idle_t *h);

/* Run process_deferred on the next loop iteration, outside libusb. */
static void kick(struct eng_usb *usb)
{
    if (!usb->closing)
        uv_idle_start(&usb->deferred, on_idle);
}

static void handle_events(struct eng_usb *usb)
{
    struct timeval zero = {0, 0};
    usb->in_events = true;
    libusb_handle_events_timeout_completed(usb->ctx, &zero, NULL);
    usb->in_events = false;
    process_deferred(usb);
}

static void arm_timer(struct eng_usb *usb);

static void on_events(uv_check_t *h)
{
    struct eng_usb *usb = h->data;
    uv_check_stop(h);
    handle_events(usb);
    arm_timer(usb);
}

/* libusb's descriptors are ready: handle its events once, after the poll
 * phase, however many of them (one per device) were ready. One pass per
 * ready descriptor reaped every device each time, and each pass's
 * callbacks submitted the next transfers that the following pass reaped
 * again: with 16 devices that answer at once (the usbdevfs harness) one
 * loop iteration ran for seconds (B4 in docs/BENCHMARKS.md). */
static void on_poll(uv_poll_t *h, int status, int events)
{
    struct usb_poll *p = h->data;
    (void)status;
    (void)events;
    if (!p->usb->closing)
        uv_check_start(&p->usb->events, on_events);
}

static void on_timer(uv_timer_t *t)
{
    struct eng_usb *usb = t->data;
    handle_events(usb);
    arm_timer(usb);
}

static void on_idle(uv_idle_t *h)
{
    struct eng_usb *usb = h->data;
    uv_idle_stop(h);
    process_deferred(usb);
    arm_timer(usb);
}

/* The timer serves libusb's own timeouts (when it has no timerfd) and the
 * open retries; whichever comes first. */
static void arm_timer(struct eng_usb *usb)
{
    uint64_t now = uv_now(usb->loop);
    uint64_t due = UINT64_MAX;
    struct timeval tv;
    if (!usb->ctx)
        return;
    if (!libusb_pollfds_handle_timeouts(usb->ctx) && libusb_get_next_timeout(usb->ctx, &tv) == 1)
        due = now + (uint64_t)tv.tv_sec * 1000 + (uint64_t)(tv.tv_usec + 999) / 1000;
    for (struct usbdev *d = usb->devs; d; d = d->next)
        if (d->state == D_NEW && !d->gone && d->next_try < due)
            due = d->next_try;
    if (usb->waiting && usb->inflight == 0 && now + 10 < due)
        due = now + 10; /* ENOMEM with nothing in flight: try again soon */
    if (usb->closing)
        return;
    if (due == UINT64_MAX)
        uv_timer_stop(&usb->timer);
    else
        uv_timer_start(&usb->timer, on_timer, due > now ? due - now : 0, 0);
}

static void poll_closed(uv_handle_t *h)
{
    struct usb_poll *p = h->data;
    struct eng_usb *usb = p->usb;
    free(p);
    if (--usb->open_handles == 0 && usb->stop_cb)
        usb->stop_cb(usb, usb->stop_user_data);
}

static void pollfd_added(int fd, short events, void *user_data)
{
    struct eng_usb *usb = user_data;
    struct usb_poll *p = calloc(1, sizeof(*p));
    if (!p)
        return;
    p->usb = usb;
    p->fd = fd;
    if (uv_poll_init(usb->loop, &p->h, fd) != 0) {
        free(p);
        return;
    }
    p->h.data = p;
    usb->open_handles++;
    int ev = ((events & POLLIN) ? UV_READABLE : 0) | ((events & POLLOUT) ? UV_WRITABLE : 0);
    uv_poll_start(&p->h, ev, on_poll);
    p->next = usb->polls;
    usb->polls = p;
}

static void pollfd_removed(int fd, void *user_data)
{
    struct eng_usb *usb = user_data;
    for (struct usb_poll **pp = &usb->polls; *pp; pp = &(*pp)->next) {
        if ((*pp)->fd == fd) {
            struct usb_poll *p = *pp;
            *pp = p->next;
            uv_poll_stop(&p->h);
            uv_close((uv_handle_t *)&p->h, poll_closed);
            return;
        }
    }
}

/* ---- devices ---- */

static struct usbdev *find_dev(struct eng_usb *usb, libusb_device *dev)
{
    for (struct usbdev *d = usb->devs; d; d = d->next)
        if (d->dev == dev)
            return d;
    return NULL;
}

static int LIBUSB_CALL on_hotplug(libusb_context *ctx, libusb_device *dev,
                                  libusb_hotplug_event event, void *user_data)
{
    struct eng_usb *usb = user_data;
    if (event == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED) {
        if (find_dev(usb, dev) || usb->stopping)
            return 0;
        struct usbdev *d = calloc(1, sizeof(*d));
        if (!d)
            return 0;
        d->usb = usb;
        d->dev = libusb_ref_device(dev);
        d->state = D_NEW;
        d->rule = -1;
        d->iface = -1;
        port_path(dev, d->pub.port, sizeof(d->pub.port));
        d->next = usb->devs;
        usb->devs = d;
    } else {
        /* Several records may exist for one libusb_device while an old
         * transport closes; mark them all. */
        for (struct usbdev *d = usb->devs; d; d = d->next)
            if (d->dev == dev)
                d->gone = true;
    }
    kick(usb);
    return 0;
}

/* Which rule (and interface) a device matches; -1 when none. */
static int match(struct eng_usb *usb, struct usbdev *d, struct libusb_device_descriptor *dd)
{
    struct libusb_config_descriptor *cfg = NULL;
    int found = -1;
    if (libusb_get_active_config_descriptor(d->dev, &cfg) != 0 &&
        libusb_get_config_descriptor(d->dev, 0, &cfg) != 0)
        return -2;
    for (uint8_t i = 0; i < cfg->bNumInterfaces && found < 0; i++) {
        const struct libusb_interface *itf = &cfg->interface[i];
        for (int a = 0; a < itf->num_altsetting && found < 0; a++) {
            const struct libusb_interface_descriptor *id = &itf->altsetting[a];
            for (unsigned r = 0; r < usb->opts.n_rules; r++) {
                const struct eng_usb_rule *rl = &usb->opts.rules[r];
                if (id->bInterfaceClass != rl->cls || id->bInterfaceSubClass != rl->subclass ||
                    id->bInterfaceProtocol != rl->protocol)
                    continue;
                if ((rl->vid && rl->vid != dd->idVendor) || (rl->pid && rl->pid != dd->idProduct))
                    continue;
                found = (int)r;
                d->iface = id->bInterfaceNumber;
                d->cls = id->bInterfaceClass;
                d->subclass = id->bInterfaceSubClass;
                d->protocol = id->bInterfaceProtocol;
                d->dfu = id->bInterfaceClass == 0xfe && id->bInterfaceSubClass == 0x01;
                for (uint8_t e = 0; e < id->bNumEndpoints; e++) {
                    const struct libusb_endpoint_descriptor *ep = &id->endpoint[e];
                    if ((ep->bmAttributes & 3) != LIBUSB_TRANSFER_TYPE_BULK)
                        continue;
                    if (ep->bEndpointAddress & LIBUSB_ENDPOINT_IN)
                        d->ep_in = ep->bEndpointAddress;
                    else
                        d->ep_out = ep->bEndpointAddress;
                }
                break;
            }
        }
    }
    libusb_free_config_descriptor(cfg);
    return found;
}

/* Give up on a device: say why (if it is ours), and let process_deferred
 * release and close it (libusb_close must not run inside libusb's event
 * handling, where transfer callbacks are). */
static void drop(struct usbdev *d, const char *why)
{
    if (why)
        eng_engine_device_error(d->usb->eng, d->pub.port, why);
    d->state = D_DROPPED;
    kick(d->usb);
}

static void attach(struct usbdev *d);
static void LIBUSB_CALL xfer_done(struct libusb_transfer *lt);

/* A string descriptor (bLength, bDescriptorType 3, UTF-16LE) as ASCII;
 * what is not printable ASCII becomes '?'. */
static void decode_string(const struct libusb_transfer *lt, char *dst, size_t cap)
{
    const unsigned char *p = libusb_control_transfer_get_data((struct libusb_transfer *)lt);
    int n = lt->actual_length;
    size_t o = 0;
    if (n >= 2 && p[1] == LIBUSB_DT_STRING) {
        int len = p[0] < n ? p[0] : n;
        for (int i = 2; i + 1 < len && o + 1 < cap; i += 2)
            dst[o++] = p[i + 1] == 0 && p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    }
    dst[o] = '\0';
}

static void LIBUSB_CALL string_done(struct libusb_transfer *lt);

/* Read the next string the device needs before it is handed over
 * (iSerial, then each DFU alt's iInterface), or attach it when none is
 * left. 0, or a libusb error from the submission. */
static int read_next_string(struct usbdev *d)
{
    unsigned n_alts = d->dfu ? d->pub.dfu.n_alts : 0;
    for (; d->string_step <= n_alts; d->string_step++) {
        uint8_t index = d->string_step == 0 ? d->iserial : d->alt_string[d->string_step - 1];
        if (!index)
            continue;
        /* USB 2.0 §9.4.3 GET_DESCRIPTOR(STRING), asynchronous: no blocking call on the loop. */
        libusb_fill_control_setup(d->serial_buf, LIBUSB_ENDPOINT_IN | LIBUSB_REQUEST_TYPE_STANDARD,
                                  LIBUSB_REQUEST_GET_DESCRIPTOR,
                                  (uint16_t)(LIBUSB_DT_STRING << 8 | index), /* wValue */
                                  LANGID_EN_US, 255);                        /* wIndex, wLength */
        libusb_fill_control_transfer(d->lt[2], d->h, d->serial_buf, string_done, d, 2000);
        d->state = D_SERIAL;
        int rc = libusb_submit_transfer(d->lt[2]);
        d->serial_pending = rc == 0;
        return rc;
    }
    attach(d);
    return 0;
}

static void LIBUSB_CALL string_done(struct libusb_transfer *lt)
{
    struct usbdev *d = lt->user_data;
    char msg[200];
    unsigned step = d->string_step;
    d->serial_pending = false;
    if (d->state != D_SERIAL || d->usb->stopping) {
        drop(d, NULL);
        kick(d->usb);
        return;
    }
    if (lt->status == LIBUSB_TRANSFER_NO_DEVICE || d->gone) {
        drop(d, NULL);
        kick(d->usb);
        return;
    }
    if (step == 0 && lt->status != LIBUSB_TRANSFER_COMPLETED) {
        snprintf(msg, sizeof(msg), "%04x:%04x: reading the serial number failed: %s", d->pub.vid,
                 d->pub.pid, st_strerror(translate_status(lt->status)));
        drop(d, msg);
        kick(d->usb);
        return;
    }
    if (step == 0)
        decode_string(lt, d->pub.usb_serial, sizeof(d->pub.usb_serial));
    else if (lt->status == LIBUSB_TRANSFER_COMPLETED)
        decode_string(lt, d->pub.dfu.alt_names[step - 1], ENG_DFU_ALT_NAME_MAX);
    /* An alt name the device will not give stays "": only a DfuSe alt
     * needs its name (the memory layout), and planning says so then. */
    d->string_step++;
    int rc = read_next_string(d);
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "cannot read a string descriptor: %s", libusb_error_name(rc));
        drop(d, msg);
        kick(d->usb);
    }
}

/* The configuration descriptor as the device sends it, rebuilt from
 * libusb's parsed copy (USB 2.0 §9.6.3-9.6.6; class descriptors such as
 * DFU's functional descriptor are kept in `extra` in their place).
 * Returns the length, or 0 when it does not fit in `cap`. */
static size_t rebuild_config(const struct libusb_config_descriptor *cfg, uint8_t *buf, size_t cap)
{
    size_t o = 0;
#define PUT(ptr, len)                                                                              \
    do {                                                                                           \
        if (o + (size_t)(len) > cap)                                                               \
            return 0;                                                                              \
        if (len)                                                                                   \
            memcpy(buf + o, (ptr), (size_t)(len));                                                 \
        o += (size_t)(len);                                                                        \
    } while (0)
    const uint8_t head[9] = {9,
                             LIBUSB_DT_CONFIG,
                             0,
                             0,
                             cfg->bNumInterfaces,
                             cfg->bConfigurationValue,
                             cfg->iConfiguration,
                             cfg->bmAttributes,
                             cfg->MaxPower};
    PUT(head, 9);
    PUT(cfg->extra, cfg->extra_length);
    for (uint8_t i = 0; i < cfg->bNumInterfaces; i++) {
        const struct libusb_interface *itf = &cfg->interface[i];
        for (int a = 0; a < itf->num_altsetting; a++) {
            const struct libusb_interface_descriptor *id = &itf->altsetting[a];
            const uint8_t ifd[9] = {9,
                                    LIBUSB_DT_INTERFACE,
                                    id->bInterfaceNumber,
                                    id->bAlternateSetting,
                                    id->bNumEndpoints,
                                    id->bInterfaceClass,
                                    id->bInterfaceSubClass,
                                    id->bInterfaceProtocol,
                                    id->iInterface};
            PUT(ifd, 9);
            PUT(id->extra, id->extra_length);
            for (uint8_t e = 0; e < id->bNumEndpoints; e++) {
                const struct libusb_endpoint_descriptor *ep = &id->endpoint[e];
                const uint8_t epd[7] = {7,
                                        LIBUSB_DT_ENDPOINT,
                                        ep->bEndpointAddress,
                                        ep->bmAttributes,
                                        (uint8_t)ep->wMaxPacketSize,
                                        (uint8_t)(ep->wMaxPacketSize >> 8),
                                        ep->bInterval};
                PUT(epd, 7);
                PUT(ep->extra, ep->extra_length);
            }
        }
    }
#undef PUT
    buf[2] = (uint8_t)o;
    buf[3] = (uint8_t)(o >> 8);
    return o;
}

/* DFU: fill pub.dfu and the alt string indices from the configuration
 * that matched. 0, or -1 when it has no usable DFU interface. */
static int read_dfu_info(struct usbdev *d, const struct libusb_device_descriptor *dd)
{
    struct libusb_config_descriptor *cfg = NULL;
    uint8_t *buf = malloc(65535);
    int rc = -1;
    if (!buf)
        return -1;
    if (libusb_get_active_config_descriptor(d->dev, &cfg) != 0 &&
        libusb_get_config_descriptor(d->dev, 0, &cfg) != 0)
        goto out_free_buf;
    size_t len = rebuild_config(cfg, buf, 65535);
    if (len && eng_dfu_parse_config(buf, len, &d->pub.dfu, d->alt_string) == 0) {
        d->pub.dfu.bcd_device = dd->bcdDevice;
        d->iface = d->pub.dfu.interface;
        d->pub.protocol_kind = ENG_PROTO_DFU;
        rc = 0;
    }
    libusb_free_config_descriptor(cfg);
out_free_buf:
    free(buf);
    return rc;
}

static void try_open(struct usbdev *d)
{
    struct eng_usb *usb = d->usb;
    struct libusb_device_descriptor dd;
    char msg[300];
    uint64_t now = uv_now(usb->loop);
    if (!d->first_try)
        d->first_try = now ? now : 1;
    if (libusb_get_device_descriptor(d->dev, &dd) != 0) {
        snprintf(msg, sizeof(msg), "unreadable device descriptor");
        drop(d, msg);
        return;
    }
    d->pub.vid = dd.idVendor;
    d->pub.pid = dd.idProduct;
    d->iserial = dd.iSerialNumber;
    d->rule = match(usb, d, &dd);
    if (d->rule == -1) {
        d->state = D_DROPPED; /* not a device of ours */
        return;
    }
    if (d->rule == -2 || (!d->dfu && (!d->ep_in || !d->ep_out))) {
        snprintf(msg, sizeof(msg), "%04x:%04x: broken or incomplete USB descriptors", dd.idVendor,
                 dd.idProduct);
        drop(d, msg);
        return;
    }
    if (d->dfu && read_dfu_info(d, &dd) != 0) {
        snprintf(msg, sizeof(msg),
                 "%04x:%04x: DFU interface without a usable DFU functional descriptor", dd.idVendor,
                 dd.idProduct);
        drop(d, msg);
        return;
    }
    d->pub.profile = usb->opts.rules[d->rule].profile;
    int rc = libusb_open(d->dev, &d->h);
    if (rc == LIBUSB_ERROR_NO_DEVICE) {
        drop(d, NULL);
        return;
    }
    if (rc != 0) {
        d->h = NULL;
        if (now - d->first_try < usb->opts.open_retry_ms) {
            d->next_try = now + OPEN_RETRY_EVERY_MS; /* udev may still be setting permissions */
            return;
        }
        if (rc == LIBUSB_ERROR_ACCESS)
            snprintf(msg, sizeof(msg),
                     "%04x:%04x: permission denied opening the device; install the "
                     "station's udev rules (/usr/lib/udev/rules.d/70-station.rules, from udev/ "
                     "in the source), add the station's user to their group, then replug",
                     dd.idVendor, dd.idProduct);
        else
            snprintf(msg, sizeof(msg), "%04x:%04x: cannot open the device: %s", dd.idVendor,
                     dd.idProduct, libusb_error_name(rc));
        drop(d, msg);
        return;
    }
    /* Never leave the interface to a kernel driver (mass storage, serial). */
    libusb_set_auto_detach_kernel_driver(d->h, 1);
    rc = libusb_claim_interface(d->h, d->iface);
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "%04x:%04x: cannot claim interface %d: %s%s", dd.idVendor,
                 dd.idProduct, d->iface, libusb_error_name(rc),
                 rc == LIBUSB_ERROR_BUSY ? " (another program is using the device)" : "");
        drop(d, msg);
        return;
    }
    d->claimed = true;
    for (int i = 0; i < 3; i++) {
        d->lt[i] = libusb_alloc_transfer(0);
        if (!d->lt[i]) {
            drop(d, "out of memory");
            return;
        }
    }
    d->string_step = 0;
    rc = read_next_string(d);
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "cannot read the serial number: %s", libusb_error_name(rc));
        drop(d, msg);
    }
}

static void free_dev(struct eng_usb *usb, struct usbdev *d)
{
    for (struct usbdev **pp = &usb->devs; *pp; pp = &(*pp)->next) {
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    }
    if (d->h) {
        if (d->claimed)
            libusb_release_interface(d->h, d->iface);
        libusb_close(d->h);
    }
    for (int i = 0; i < 3; i++)
        if (d->lt[i])
            libusb_free_transfer(d->lt[i]);
    libusb_unref_device(d->dev);
    free(d->ctl_buf);
    free(d);
}

static bool transfers_in_flight(const struct usbdev *d)
{
    return d->x[0] || d->x[1] || d->x[2] || d->reset_x;
}

/* A successful image-data OUT transfer of a device still there and open. */
static bool is_data(const struct usbdev *d, int k)
{
    const struct eng_xfer *x = d->x[k];
    return k == 0 && x && x->status == 0 && !eng_usb_small(x->len) && !d->gone && !d->closing;
}

/*
 * Delivering a completed image-data transfer makes its driver submit the
 * next one right away (a copy of up to 1 MiB into usbfs; under the
 * usbdevfs harness, a round trip that moves the data). A pass delivers
 * them for DATA_SLICE_NS at most, at least one, and leaves the rest for
 * the next loop iteration, starting with them: with every device
 * answering at once a loop iteration otherwise took 100 ms and more, and
 * a device just plugged in waited for several of them for its first
 * command (B4 in docs/BENCHMARKS.md). Real buses complete far fewer
 * transfers per iteration than one slice holds.
 */
static bool holds_data(const struct usbdev *d, int k, bool data_delivered, uint64_t slice_end)
{
    return data_delivered && is_data(d, k) && uv_hrtime() >= slice_end;
}

/* Make `d` the head of the device list, keeping the order around. */
static void rotate_to(struct eng_usb *usb, struct usbdev *d)
{
    if (usb->devs == d)
        return;
    struct usbdev **pp = &usb->devs, *tail = d;
    while (*pp && *pp != d)
        pp = &(*pp)->next;
    if (!*pp)
        return; /* freed meanwhile */
    while (tail->next)
        tail = tail->next;
    tail->next = usb->devs;
    usb->devs = d;
    *pp = NULL;
}

static void process_deferred(struct eng_usb *usb)
{
    if (usb->in_events)
        return;
    if (usb->in_deferred) {
        usb->deferred_again = true; /* a callback below asked for another pass */
        return;
    }
    usb->in_deferred = true;
    const uint64_t slice_end = uv_hrtime() + DATA_SLICE_NS;
    bool data_delivered = false;
    struct usbdev *first_held = NULL;
again:
    usb->deferred_again = false;
    struct usbdev *d = usb->devs, *next;
    for (; d; d = next) {
        next = d->next;
        switch (d->state) {
        case D_NEW:
            if (d->gone || usb->stopping)
                d->state = D_DROPPED;
            else if (uv_now(usb->loop) >= d->next_try)
                try_open(d);
            break;
        case D_ATTACHED:
            for (int k = 0; k < 3; k++) {
                if (d->done[k]) {
                    if (holds_data(d, k, data_delivered, slice_end)) {
                        if (!first_held)
                            first_held = d;
                        continue;
                    }
                    struct eng_xfer *x = d->x[k];
                    data_delivered = data_delivered || is_data(d, k);
                    d->done[k] = false;
                    d->x[k] = NULL;
                    /* the loop time the callback's timers start from */
                    uv_update_time(usb->loop);
                    x->cb(x);
                }
                if (d->cancel_queued[k] && d->x[k]) {
                    struct eng_xfer *x = d->x[k];
                    d->cancel_queued[k] = false;
                    d->x[k] = NULL;
                    x->status = ST_ECANCELED;
                    x->actual = 0;
                    x->cb(x);
                }
            }
            /* A reset's callback comes before the departure it causes. */
            if (d->gone && !d->left_reported && !d->reset_x) {
                d->left_reported = true;
                eng_engine_device_left(usb->eng, &d->pub);
            }
            if (d->closing && !transfers_in_flight(d)) {
                eng_transport_close_cb cb = d->close_cb;
                void *ud = d->close_user_data;
                d->state = D_DROPPED;
                if (cb)
                    cb(&d->pub, ud);
            }
            break;
        default:
            break;
        }
        if (d->state == D_DROPPED && !transfers_in_flight(d) && !d->serial_pending)
            free_dev(usb, d);
    }
    if (usb->deferred_again)
        goto again;
    usb->in_deferred = false;
    if (first_held) {
        /* next pass: the held ones first, then the others in turn */
        rotate_to(usb, first_held);
        kick(usb);
    }
}

/* ---- the transport ---- */

static int kind_of(const struct eng_xfer *x)
{
    return x->type == ENG_XFER_BULK_OUT ? 0 : x->type == ENG_XFER_BULK_IN ? 1 : 2;
}

static int really_submit(struct usbdev *d, struct eng_xfer *x)
{
    int k = kind_of(x);
    struct libusb_transfer *lt = d->lt[k];
    if (k == 2) {
        if (d->ctl_cap < 8 + x->len) {
            uint8_t *n = realloc(d->ctl_buf, 8 + x->len);
            if (!n)
                return ST_ENOMEM;
            d->ctl_buf = n;
            d->ctl_cap = 8 + x->len;
        }
        memcpy(d->ctl_buf, x->setup, 8);
        if (!(x->setup[0] & LIBUSB_ENDPOINT_IN) && x->len)
            memcpy(d->ctl_buf + 8, x->buf, x->len);
        else if (x->len)
            memset(d->ctl_buf + 8, 0, x->len); /* usbfs copies the whole buffer in */
        libusb_fill_control_transfer(lt, d->h, d->ctl_buf, xfer_done, d, 0);
    } else {
        libusb_fill_bulk_transfer(lt, d->h, k == 0 ? d->ep_out : d->ep_in, x->buf, (int)x->len,
                                  xfer_done, d, 0);
    }
    int rc = libusb_submit_transfer(lt);
    if (rc != 0)
        return translate(rc);
    d->x[k] = x;
    d->usb->inflight += x->len;
    return 0;
}

static void submit_waiting(struct eng_usb *usb)
{
    while (usb->waiting) {
        struct waiter *w = (struct waiter *)usb->waiting;
        if (!eng_usb_budget_fits(usb->opts.inflight_budget, usb->inflight, w->x->len))
            return;
        int rc = really_submit(w->d, w->x);
        if (rc == ST_ENOMEM)
            return; /* usbfs is full: wait for a completion */
        usb->waiting = w->q.next;
        if (rc) {
            /* delivered by process_deferred(), like every completion */
            struct eng_xfer *x = w->x;
            x->status = rc;
            x->actual = 0;
            w->d->done[kind_of(x)] = true;
            free(w);
            kick(usb);
            continue;
        }
        free(w);
    }
}

/*
 * libusb calls this from inside libusb_handle_events*(). The driver's
 * callback is not called from here but from process_deferred(), right
 * after handle_events returns: libusb reaps every URB that is ready in
 * one pass and a callback usually submits the next request; a device
 * that answers at once (a DFU GETSTATUS, the usbdevfs harness) would
 * then keep one handle_events call going for a whole download, and the
 * loop would serve no timer, no other fd and no thread-pool completion
 * meanwhile. The transfer keeps its slot (d->x[k]) until delivered, so
 * close waits for it.
 */
static void LIBUSB_CALL xfer_done(struct libusb_transfer *lt)
{
    struct usbdev *d = lt->user_data;
    int k = lt == d->lt[0] ? 0 : lt == d->lt[1] ? 1 : 2;
    struct eng_xfer *x = d->x[k];
    if (!x || d->done[k])
        return;
    d->usb->inflight -= x->len;
    x->status = translate_status(lt->status);
    x->actual = (size_t)lt->actual_length;
    if (k == 2 && x->status == 0 && (x->setup[0] & LIBUSB_ENDPOINT_IN))
        memcpy(x->buf, d->ctl_buf + 8, x->actual < x->len ? x->actual : x->len);
    if (x->status == ST_ENODEV)
        d->gone = true;
    d->done[k] = true;
    kick(d->usb);
    submit_waiting(d->usb);
}

static int usb_submit(struct eng_transport *t, struct eng_xfer *x)
{
    struct usbdev *d = (struct usbdev *)t;
    struct eng_usb *usb = d->usb;
    if (d->closing)
        return ST_ECLOSED;
    if (d->gone)
        return ST_ENODEV;
    if (d->x[kind_of(x)] || d->reset_x)
        return ST_EBUSY; /* one per kind; nothing while the device resets */
    if (x->len > 0x7fffffff)
        return ST_EINVAL;
    x->status = 0;
    x->actual = 0;
    if (!eng_usb_must_queue(usb->waiting, x->len) &&
        eng_usb_budget_fits(usb->opts.inflight_budget, usb->inflight, x->len)) {
        int rc = really_submit(d, x);
        if (rc != ST_ENOMEM)
            return rc;
    }
    /* Over budget, or usbfs said ENOMEM: wait for bytes in flight to drain. */
    struct waiter *w = calloc(1, sizeof(*w));
    if (!w)
        return ST_ENOMEM;
    w->d = d;
    w->x = x;
    w->q.len = x->len;
    eng_usb_wait_push(&usb->waiting, &w->q);
    d->x[kind_of(x)] = x; /* reserved: the callback will come */
    arm_timer(usb);
    return 0;
}

static bool unqueue(struct eng_usb *usb, struct eng_xfer *x)
{
    for (struct eng_usb_wait **pp = &usb->waiting; *pp; pp = &(*pp)->next) {
        struct waiter *w = (struct waiter *)*pp;
        if (w->x == x) {
            *pp = w->q.next;
            free(w);
            return true;
        }
    }
    return false;
}

static int usb_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    struct usbdev *d = (struct usbdev *)t;
    if (x == d->reset_x) {
        /* Not started: the work is dropped and reset_after() reports it
         * cancelled. Started: it cannot be stopped; it ends cancelled. */
        if (uv_cancel((uv_req_t *)&d->reset_work) != 0)
            d->reset_cancel = true;
        return 0;
    }
    int k = kind_of(x);
    if (d->x[k] != x)
        return ST_EINVAL;
    if (unqueue(d->usb, x)) {
        /* Never submitted: complete it from the deferred pass, not from here. */
        d->cancel_queued[k] = true;
        kick(d->usb);
        return 0;
    }
    int rc = libusb_cancel_transfer(d->lt[k]);
    return rc == 0 || rc == LIBUSB_ERROR_NOT_FOUND ? 0 : translate(rc);
}

/* ---- USB reset (DFU), on the thread pool ---- */

/* Worker thread: libusb_reset_device() blocks for the reset and the
 * re-claim. The loop thread keeps handling libusb events meanwhile and
 * touches nothing of this device's handle but reset_x. */
static void reset_work(uv_work_t *w)
{
    struct usbdev *d = w->data;
    d->reset_rc = libusb_reset_device(d->h);
}

static void reset_after(uv_work_t *w, int status)
{
    struct usbdev *d = w->data;
    struct eng_xfer *x = d->reset_x;
    d->reset_x = NULL;
    x->actual = 0;
    if (status == UV_ECANCELED || d->reset_cancel)
        x->status = ST_ECANCELED;
    else if (d->reset_rc == 0)
        x->status = 0;
    else if (d->reset_rc == LIBUSB_ERROR_NOT_FOUND || d->reset_rc == LIBUSB_ERROR_NO_DEVICE)
        /* The device came back different (another mode): it re-enumerates;
         * the old handle is dead, which is what a DFU reset is for. */
        x->status = ST_ENODEV;
    else
        x->status = translate(d->reset_rc);
    d->reset_cancel = false;
    x->cb(x);
    kick(d->usb); /* a departure or a close may wait for this */
}

static int usb_reset(struct eng_transport *t, struct eng_xfer *x)
{
    struct usbdev *d = (struct usbdev *)t;
    if (d->closing)
        return ST_ECLOSED;
    if (d->gone)
        return ST_ENODEV;
    if (d->reset_x || d->x[0] || d->x[1] || d->x[2])
        return ST_EBUSY; /* never reset under a transfer in flight */
    d->reset_work.data = d;
    d->reset_cancel = false;
    d->reset_rc = 0;
    int rc = uv_queue_work(d->usb->loop, &d->reset_work, reset_work, reset_after);
    if (rc != 0)
        return ST_EIO;
    x->status = 0;
    x->actual = 0;
    d->reset_x = x;
    return 0;
}

static void usb_close(struct eng_transport *t, eng_transport_close_cb cb, void *user_data)
{
    struct usbdev *d = (struct usbdev *)t;
    d->closing = true;
    d->close_cb = cb;
    d->close_user_data = user_data;
    for (int k = 0; k < 3; k++)
        if (d->x[k])
            usb_cancel(t, d->x[k]);
    if (d->reset_x)
        usb_cancel(t, d->reset_x);
    kick(d->usb);
}

static const struct eng_transport_ops usb_ops = {
    .name = "usb",
    .submit = usb_submit,
    .cancel = usb_cancel,
    .close = usb_close,
    .reset = usb_reset,
};

static void attach(struct usbdev *d)
{
    d->state = D_ATTACHED;
    d->pub.ops = &usb_ops;
    d->pub.impl = d;
    eng_engine_device_arrived(d->usb->eng, &d->pub);
}

/* ---- lifecycle ---- */

static void handle_closed(uv_handle_t *h)
{
    struct eng_usb *usb = h->data;
    if (--usb->open_handles == 0 && usb->stop_cb)
        usb->stop_cb(usb, usb->stop_user_data);
}

int eng_usb_new(uv_loop_t *loop, struct eng_engine *eng, const struct eng_usb_options *opts,
                struct eng_usb **out, char *err, size_t errlen)
{
    struct eng_usb *usb = calloc(1, sizeof(*usb));
    if (!usb)
        return ST_ENOMEM;
    usb->loop = loop;
    usb->eng = eng;
    if (opts)
        usb->opts = *opts;
    if (!usb->opts.open_retry_ms)
        usb->opts.open_retry_ms = 2000;
    if (!usb->opts.inflight_budget)
        usb->opts.inflight_budget = DEFAULT_BUDGET;
    int rc = libusb_init(&usb->ctx);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start libusb: %s", libusb_error_name(rc));
        free(usb);
        return translate(rc);
    }
    uv_timer_init(loop, &usb->timer);
    uv_idle_init(loop, &usb->deferred);
    uv_check_init(loop, &usb->events);
    usb->timer.data = usb->deferred.data = usb->events.data = usb;
    usb->open_handles = 3;
    const struct libusb_pollfd **fds = libusb_get_pollfds(usb->ctx);
    for (int i = 0; fds && fds[i]; i++)
        pollfd_added(fds[i]->fd, fds[i]->events, usb);
    libusb_free_pollfds(fds);
    libusb_set_pollfd_notifiers(usb->ctx, pollfd_added, pollfd_removed, usb);
    *out = usb;
    return 0;
}

int eng_usb_start(struct eng_usb *usb)
{
    if (!libusb_has_capability(LIBUSB_CAP_HAS_HOTPLUG))
        return ST_EINVAL;
    int rc = libusb_hotplug_register_callback(
        usb->ctx, LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT,
        LIBUSB_HOTPLUG_ENUMERATE, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
        LIBUSB_HOTPLUG_MATCH_ANY, on_hotplug, usb, &usb->hotplug);
    if (rc != 0)
        return translate(rc);
    usb->hotplug_registered = true;
    kick(usb);
    return 0;
}

void eng_usb_stop(struct eng_usb *usb)
{
    usb->stopping = true;
    if (usb->hotplug_registered) {
        libusb_hotplug_deregister_callback(usb->ctx, usb->hotplug);
        usb->hotplug_registered = false;
    }
    /* Devices not handed to the engine go now; attached ones when the engine closes them. */
    for (struct usbdev *d = usb->devs; d; d = d->next) {
        if (d->state == D_NEW)
            d->state = D_DROPPED;
        else if (d->state == D_SERIAL && d->serial_pending)
            libusb_cancel_transfer(d->lt[2]);
    }
    kick(usb);
}

void eng_usb_close(struct eng_usb *usb, void (*cb)(struct eng_usb *usb, void *user_data),
                   void *user_data)
{
    eng_usb_stop(usb);
    process_deferred(usb);
    usb->closing = true;
    usb->stop_cb = cb;
    usb->stop_user_data = user_data;
    /* libusb keeps its fds until libusb_exit; we stop watching them now. */
    libusb_set_pollfd_notifiers(usb->ctx, NULL, NULL, NULL);
    while (usb->polls) {
        struct usb_poll *p = usb->polls;
        usb->polls = p->next;
        uv_poll_stop(&p->h);
        uv_close((uv_handle_t *)&p->h, poll_closed);
    }
    uv_timer_stop(&usb->timer);
    uv_idle_stop(&usb->deferred);
    uv_check_stop(&usb->events);
    uv_close((uv_handle_t *)&usb->timer, handle_closed);
    uv_close((uv_handle_t *)&usb->deferred, handle_closed);
    uv_close((uv_handle_t *)&usb->events, handle_closed);
}

void eng_usb_free(struct eng_usb *usb)
{
    if (!usb)
        return;
    while (usb->devs)
        free_dev(usb, usb->devs);
    while (usb->waiting) {
        struct eng_usb_wait *w = usb->waiting;
        usb->waiting = w->next;
        free(w); /* the struct waiter it begins */
    }
    if (usb->ctx)
        libusb_exit(usb->ctx);
    free(usb);
}

/* ---- `station ports`: a synchronous listing, off any loop ---- */

static const char *speed_name(int speed)
{
    switch (speed) {
    case LIBUSB_SPEED_LOW:
        return "low";
    case LIBUSB_SPEED_FULL:
        return "full";
    case LIBUSB_SPEED_HIGH:
        return "high";
    case LIBUSB_SPEED_SUPER:
        return "super";
    default:
        return "unknown";
    }
}

static void first_interface(libusb_device *dev, struct eng_usb_port *p)
{
    struct libusb_config_descriptor *cfg = NULL;
    if (libusb_get_active_config_descriptor(dev, &cfg) != 0 &&
        libusb_get_config_descriptor(dev, 0, &cfg) != 0)
        return;
    if (cfg->bNumInterfaces && cfg->interface[0].num_altsetting) {
        const struct libusb_interface_descriptor *id = &cfg->interface[0].altsetting[0];
        p->cls = id->bInterfaceClass;
        p->subclass = id->bInterfaceSubClass;
        p->protocol = id->bInterfaceProtocol;
    }
    libusb_free_config_descriptor(cfg);
}

int eng_usb_list(const struct eng_usb_options *opts, struct eng_usb_port *out, unsigned max,
                 char *err, size_t errlen)
{
    libusb_context *ctx;
    libusb_device **list;
    int rc = libusb_init(&ctx);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start libusb: %s", libusb_error_name(rc));
        return translate(rc);
    }
    ssize_t n = libusb_get_device_list(ctx, &list);
    if (n < 0) {
        snprintf(err, errlen, "cannot list USB devices: %s", libusb_error_name((int)n));
        libusb_exit(ctx);
        return translate((int)n);
    }
    struct eng_usb usb = {.opts = *opts};
    unsigned count = 0;
    for (ssize_t i = 0; i < n && count < max; i++) {
        libusb_device *dev = list[i];
        struct libusb_device_descriptor dd;
        if (libusb_get_device_descriptor(dev, &dd) != 0 || dd.bDeviceClass == LIBUSB_CLASS_HUB)
            continue;
        struct eng_usb_port *p = &out[count++];
        struct usbdev probe = {.dev = dev, .iface = -1};
        memset(p, 0, sizeof(*p));
        port_path(dev, p->port, sizeof(p->port));
        p->vid = dd.idVendor;
        p->pid = dd.idProduct;
        p->speed = speed_name(libusb_get_device_speed(dev));
        p->rule = match(&usb, &probe, &dd);
        if (p->rule >= 0) {
            const struct eng_usb_rule *r = &opts->rules[p->rule];
            p->cls = r->cls;
            p->subclass = r->subclass;
            p->protocol = r->protocol;
        } else {
            if (p->rule == -2)
                snprintf(p->note, sizeof(p->note), "broken descriptors");
            p->rule = -1;
            first_interface(dev, p);
        }
        if (dd.iSerialNumber) {
            libusb_device_handle *h;
            rc = libusb_open(dev, &h);
            if (rc == 0) {
                unsigned char buf[64];
                int len =
                    libusb_get_string_descriptor_ascii(h, dd.iSerialNumber, buf, sizeof(buf) - 1);
                if (len > 0)
                    snprintf(p->serial, sizeof(p->serial), "%.*s", len, (const char *)buf);
                libusb_close(h);
            } else if (!p->note[0]) {
                snprintf(p->note, sizeof(p->note), "%s",
                         rc == LIBUSB_ERROR_ACCESS ? "permission denied: install the udev rules"
                                                   : libusb_error_name(rc));
            }
        }
    }
    libusb_free_device_list(list, 1);
    libusb_exit(ctx);
    return (int)count;
}
