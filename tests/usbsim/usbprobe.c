/*
 * usbprobe: a small libusb client that proves the harness against the
 * real libusb path before the station uses it. Async API only, one
 * libusb context, every device at once.
 *
 *   usbprobe [--download MIB] [--transfer KIB] [--inflight N] [--cancel]
 *            [--wait-gone] [--reenum] [--hotplug MS] [--timeout MS]
 *            [--send-only CMD] [--plain-claim]
 *
 * Default: getvar:product on every fastboot device. --download also sends
 * MIB of deterministic data in --inflight transfers of --transfer KiB and
 * flashes it to "probe"; --cancel first cancels a pending bulk IN;
 * --wait-gone leaves a bulk IN pending until the device is unplugged;
 * --reenum sends reboot-bootloader and waits for the device to come back
 * on its path; --hotplug also serves devices that arrive within MS;
 * --send-only sends CMD and exits without reading the reply;
 * --plain-claim claims without libusb's automatic kernel-driver detach.
 *
 * Prints one line per event (the tests grep them):
 *   device PATH VID:PID           every device, PATH from libusb_get_port_numbers
 *   reply PATH SERIAL TEXT        the answer to getvar:product
 *   download PATH bytes=N hash=H mbps=X   a download + flash:probe went through
 *   driver PATH active            a kernel driver holds the interface
 *   cancelled PATH                a pending bulk IN was cancelled (DISCARDURB)
 *   gone PATH                     a pending bulk IN ended with NO_DEVICE
 *   arrived PATH VID:PID / left PATH    hotplug
 *   reenumerated PATH VID:PID->VID:PID SERIAL   left and came back on its path
 *   error PATH STEP: REASON
 * Exit status: 0 when every fastboot device did what was asked, 1 when
 * one failed, 2 on a time-out.
 */
#include <inttypes.h>
#include <libusb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_DEVS 64
#define EP_OUT 0x01
#define EP_IN 0x81

enum step {
    S_IDLE,
    S_CANCEL,
    S_GETVAR,
    S_DOWNLOAD,
    S_DATA,
    S_DATA_OKAY,
    S_FLASH,
    S_REBOOT,
    S_WAIT_BACK,
    S_WAIT_GONE,
    S_SENT,
    S_DONE,
    S_FAILED
};

struct opts {
    const char *send_only;
    unsigned download_mib, transfer_kib, inflight;
    bool cancel, wait_gone, reenum, plain_claim;
    unsigned hotplug_ms, timeout_ms;
};

struct dev {
    struct probe *probe;
    libusb_device *dev;
    libusb_device_handle *h;
    char path[32];
    uint16_t vid, pid, old_vid, old_pid;
    char serial[64];
    enum step step;
    bool reenumerated;
    struct libusb_transfer *out, *in;
    unsigned char cmd[64], reply[512];
    /* download */
    struct libusb_transfer **data;
    unsigned char **bufs;
    uint64_t total, queued, acked;
    unsigned busy;
    uint64_t rng;
    XXH3_state_t *hash;
    double t0;
};

struct probe {
    libusb_context *ctx;
    struct opts o;
    struct dev devs[MAX_DEVS];
    unsigned ndev;
    libusb_device *arrivals[MAX_DEVS], *departures[MAX_DEVS];
    unsigned narrivals, ndepartures;
    int failures;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void port_path(libusb_device *d, char *buf, size_t len)
{
    uint8_t ports[8];
    int n = libusb_get_port_numbers(d, ports, sizeof(ports));
    int off = snprintf(buf, len, n > 0 ? "%u-" : "usb%u", libusb_get_bus_number(d));
    for (int i = 0; i < n && off < (int)len; i++)
        off += snprintf(buf + off, len - (size_t)off, i ? ".%u" : "%u", ports[i]);
}

static void fail(struct dev *d, const char *step, const char *why)
{
    printf("error %s %s: %s\n", d->path, step, why);
    if (d->step != S_FAILED)
        d->probe->failures++;
    d->step = S_FAILED;
}

static const char *status_name(enum libusb_transfer_status st)
{
    switch (st) {
    case LIBUSB_TRANSFER_COMPLETED:
        return "completed";
    case LIBUSB_TRANSFER_ERROR:
        return "error";
    case LIBUSB_TRANSFER_TIMED_OUT:
        return "timed_out";
    case LIBUSB_TRANSFER_CANCELLED:
        return "cancelled";
    case LIBUSB_TRANSFER_STALL:
        return "stall";
    case LIBUSB_TRANSFER_NO_DEVICE:
        return "no_device";
    case LIBUSB_TRANSFER_OVERFLOW:
        return "overflow";
    }
    return "?";
}

static void on_transfer(struct libusb_transfer *t);

static void submit_in(struct dev *d)
{
    libusb_fill_bulk_transfer(d->in, d->h, EP_IN, d->reply, sizeof(d->reply), on_transfer, d, 0);
    int r = libusb_submit_transfer(d->in);
    if (r < 0)
        fail(d, "submit IN", libusb_error_name(r));
}

static void send_cmd(struct dev *d, enum step step, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void send_cmd(struct dev *d, enum step step, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf((char *)d->cmd, sizeof(d->cmd), fmt, ap);
    va_end(ap);
    d->step = step;
    libusb_fill_bulk_transfer(d->out, d->h, EP_OUT, d->cmd, len, on_transfer, d, 0);
    int r = libusb_submit_transfer(d->out);
    if (r < 0)
        fail(d, "submit OUT", libusb_error_name(r));
}

static uint64_t next_rand(uint64_t *s)
{
    /* xorshift64*: cheap, deterministic test data */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

static void on_data(struct libusb_transfer *t);

static void queue_data(struct dev *d, unsigned slot)
{
    size_t chunk = (size_t)d->probe->o.transfer_kib << 10;
    uint64_t left = d->total - d->queued;
    size_t len = left < chunk ? (size_t)left : chunk;
    unsigned char *b = d->bufs[slot];
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = next_rand(&d->rng);
        memcpy(b + i, &v, len - i < 8 ? len - i : 8);
    }
    XXH3_64bits_update(d->hash, b, len);
    d->queued += len;
    libusb_fill_bulk_transfer(d->data[slot], d->h, EP_OUT, b, (int)len, on_data, d, 0);
    d->data[slot]->user_data = d;
    int r = libusb_submit_transfer(d->data[slot]);
    if (r < 0) {
        fail(d, "submit data", libusb_error_name(r));
        return;
    }
    d->busy++;
}

static void on_data(struct libusb_transfer *t)
{
    struct dev *d = t->user_data;
    d->busy--;
    if (t->status != LIBUSB_TRANSFER_COMPLETED || t->actual_length != t->length) {
        if (d->step != S_FAILED)
            fail(d, "data", status_name(t->status));
        return;
    }
    d->acked += (uint64_t)t->actual_length;
    if (d->step != S_DATA)
        return;
    if (d->queued < d->total) {
        unsigned slot = 0;
        while (d->data[slot] != t)
            slot++;
        queue_data(d, slot);
    } else if (d->busy == 0) {
        d->step = S_DATA_OKAY;
        submit_in(d);
    }
}

static void start_data(struct dev *d)
{
    struct opts *o = &d->probe->o;
    d->data = calloc(o->inflight, sizeof(*d->data));
    d->bufs = calloc(o->inflight, sizeof(*d->bufs));
    d->hash = XXH3_createState();
    XXH3_64bits_reset(d->hash);
    d->rng = 0x9E3779B97F4A7C15ull;
    d->step = S_DATA;
    d->t0 = now_s();
    for (unsigned i = 0; i < o->inflight; i++) {
        d->data[i] = libusb_alloc_transfer(0);
        d->bufs[i] = malloc((size_t)o->transfer_kib << 10);
    }
    for (unsigned i = 0; i < o->inflight && d->queued < d->total && d->step == S_DATA; i++)
        queue_data(d, i);
}

static void after_getvar(struct dev *d)
{
    struct opts *o = &d->probe->o;
    if (o->download_mib) {
        d->total = (uint64_t)o->download_mib << 20;
        send_cmd(d, S_DOWNLOAD, "download:%08" PRIx64, d->total);
    } else if (o->reenum && !d->reenumerated) {
        send_cmd(d, S_REBOOT, "reboot-bootloader");
    } else {
        d->step = S_DONE;
    }
}

static void on_reply(struct dev *d, const char *r, int len)
{
    if (len >= 4 && !memcmp(r, "INFO", 4)) {
        submit_in(d);
        return;
    }
    switch (d->step) {
    case S_GETVAR:
        printf("reply %s %s %.*s\n", d->path, d->serial, len, r);
        if (len < 4 || memcmp(r, "OKAY", 4))
            fail(d, "getvar", "not OKAY");
        else if (d->reenumerated) {
            printf("reenumerated %s %04x:%04x->%04x:%04x %s\n", d->path, d->old_vid, d->old_pid,
                   d->vid, d->pid, d->serial);
            d->step = S_DONE;
        } else
            after_getvar(d);
        break;
    case S_DOWNLOAD:
        if (len != 12 || memcmp(r, "DATA", 4))
            fail(d, "download", "no DATA reply");
        else
            start_data(d);
        break;
    case S_DATA_OKAY:
        if (len < 4 || memcmp(r, "OKAY", 4))
            fail(d, "data", "not OKAY after the data");
        else
            send_cmd(d, S_FLASH, "flash:probe");
        break;
    case S_FLASH: {
        double s = now_s() - d->t0;
        if (len < 4 || memcmp(r, "OKAY", 4)) {
            fail(d, "flash", "not OKAY");
            break;
        }
        printf("download %s bytes=%" PRIu64 " hash=%016" PRIx64 " mbps=%.1f\n", d->path, d->total,
               (uint64_t)XXH3_64bits_digest(d->hash), (double)d->total / 1e6 / s);
        d->step = S_DONE;
        break;
    }
    case S_REBOOT:
        if (len < 4 || memcmp(r, "OKAY", 4))
            fail(d, "reboot-bootloader", "not OKAY");
        else
            d->step = S_WAIT_BACK;
        break;
    default:
        fail(d, "reply", "unexpected reply");
    }
}

static void on_transfer(struct libusb_transfer *t)
{
    struct dev *d = t->user_data;
    if (d->step == S_FAILED)
        return;
    if (t == d->out) {
        if (t->status != LIBUSB_TRANSFER_COMPLETED)
            fail(d, (char *)d->cmd, status_name(t->status));
        else if (d->step == S_SENT)
            d->step = S_DONE; /* --send-only: leave the reply unread */
        else
            submit_in(d);
        return;
    }
    /* IN */
    if (d->step == S_CANCEL) {
        if (t->status == LIBUSB_TRANSFER_CANCELLED) {
            printf("cancelled %s\n", d->path);
            send_cmd(d, S_GETVAR, "getvar:product");
        } else {
            fail(d, "cancel", status_name(t->status));
        }
        return;
    }
    if (d->step == S_WAIT_GONE) {
        if (t->status == LIBUSB_TRANSFER_NO_DEVICE) {
            printf("gone %s\n", d->path);
            d->step = S_DONE;
        } else {
            fail(d, "wait-gone", status_name(t->status));
        }
        return;
    }
    if (t->status != LIBUSB_TRANSFER_COMPLETED) {
        fail(d, "reply", status_name(t->status));
        return;
    }
    on_reply(d, (const char *)d->reply, t->actual_length);
}

static bool is_fastboot(struct dev *d)
{
    struct libusb_config_descriptor *cfg;
    int r = libusb_get_active_config_descriptor(d->dev, &cfg);
    if (r < 0) {
        fail(d, "config", libusb_error_name(r));
        return false;
    }
    bool yes = false;
    for (int i = 0; i < cfg->bNumInterfaces && !yes; i++) {
        const struct libusb_interface_descriptor *a = &cfg->interface[i].altsetting[0];
        yes = a->bInterfaceClass == 0xff && a->bInterfaceSubClass == 0x42 &&
              a->bInterfaceProtocol == 0x03;
    }
    libusb_free_config_descriptor(cfg);
    return yes;
}

static void start(struct dev *d)
{
    struct libusb_device_descriptor dd;
    libusb_get_device_descriptor(d->dev, &dd);
    int r = libusb_open(d->dev, &d->h);
    if (r < 0) {
        fail(d, "open", libusb_error_name(r));
        return;
    }
    r = libusb_get_string_descriptor_ascii(d->h, dd.iSerialNumber, (unsigned char *)d->serial,
                                           sizeof(d->serial));
    if (r < 0) {
        fail(d, "serial", libusb_error_name(r));
        return;
    }
    if (libusb_kernel_driver_active(d->h, 0) == 1)
        printf("driver %s active\n", d->path);
    if (!d->probe->o.plain_claim)
        libusb_set_auto_detach_kernel_driver(d->h, 1);
    r = libusb_claim_interface(d->h, 0);
    if (r < 0) {
        fail(d, "claim", libusb_error_name(r));
        return;
    }
    d->out = libusb_alloc_transfer(0);
    d->in = libusb_alloc_transfer(0);
    libusb_fill_bulk_transfer(d->out, d->h, EP_OUT, d->cmd, 0, on_transfer, d, 0);
    libusb_fill_bulk_transfer(d->in, d->h, EP_IN, d->reply, sizeof(d->reply), on_transfer, d, 0);
    if (d->probe->o.wait_gone) {
        d->step = S_WAIT_GONE;
        submit_in(d);
    } else if (d->probe->o.send_only) {
        send_cmd(d, S_SENT, "%s", d->probe->o.send_only);
    } else if (d->probe->o.cancel) {
        d->step = S_CANCEL;
        submit_in(d);
    } else {
        send_cmd(d, S_GETVAR, "getvar:product");
    }
}

static struct dev *add_device(struct probe *p, libusb_device *ud, bool announce)
{
    struct libusb_device_descriptor dd;
    char path[32];
    libusb_get_device_descriptor(ud, &dd);
    port_path(ud, path, sizeof(path));
    printf("%s %s %04x:%04x\n", announce ? "arrived" : "device", path, dd.idVendor, dd.idProduct);
    if (dd.bDeviceClass == LIBUSB_CLASS_HUB)
        return NULL;
    /* a device that comes back on its path continues as the same one */
    struct dev *d = NULL;
    for (unsigned i = 0; i < p->ndev; i++)
        if (!strcmp(p->devs[i].path, path) && p->devs[i].step == S_WAIT_BACK)
            d = &p->devs[i];
    if (!d) {
        if (p->ndev == MAX_DEVS)
            return NULL;
        d = &p->devs[p->ndev++];
        memset(d, 0, sizeof(*d));
        d->probe = p;
        snprintf(d->path, sizeof(d->path), "%s", path);
    } else {
        d->reenumerated = true;
        d->old_vid = d->vid;
        d->old_pid = d->pid;
    }
    d->dev = libusb_ref_device(ud);
    d->vid = dd.idVendor;
    d->pid = dd.idProduct;
    if (!is_fastboot(d))
        return NULL;
    start(d);
    return d;
}

static int LIBUSB_CALL on_hotplug(libusb_context *ctx, libusb_device *ud, libusb_hotplug_event ev,
                                  void *data)
{
    struct probe *p = data;
    if (ev == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED) {
        /* opening is not for the callback: do it from the loop */
        if (p->narrivals < MAX_DEVS)
            p->arrivals[p->narrivals++] = libusb_ref_device(ud);
        return 0;
    }
    char path[32];
    port_path(ud, path, sizeof(path));
    printf("left %s\n", path);
    if (p->ndepartures < MAX_DEVS)
        p->departures[p->ndepartures++] = libusb_ref_device(ud);
    return 0;
}

/* A device that left: a re-enumerating one gives up its old handle. */
static void departed(struct probe *p, libusb_device *ud)
{
    for (unsigned i = 0; i < p->ndev; i++) {
        struct dev *d = &p->devs[i];
        if (d->dev != ud || !d->h || d->step != S_WAIT_BACK)
            continue;
        libusb_close(d->h);
        d->h = NULL;
        libusb_unref_device(d->dev);
        d->dev = NULL;
    }
}

static bool finished(struct probe *p)
{
    for (unsigned i = 0; i < p->ndev; i++)
        if (p->devs[i].step != S_DONE && p->devs[i].step != S_FAILED && p->devs[i].step != S_IDLE)
            return false;
    return true;
}

static unsigned uopt(const char *v)
{
    char *end;
    unsigned long n = strtoul(v ? v : "", &end, 10);
    if (!v || end == v || *end) {
        fprintf(stderr, "usbprobe: bad number '%s'\n", v ? v : "");
        exit(2);
    }
    return (unsigned)n;
}

int main(int argc, char **argv)
{
    static struct probe p;
    p.o.transfer_kib = 1024;
    p.o.inflight = 2;
    p.o.timeout_ms = 20000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--download"))
            p.o.download_mib = uopt(v), i++;
        else if (!strcmp(a, "--transfer"))
            p.o.transfer_kib = uopt(v), i++;
        else if (!strcmp(a, "--inflight"))
            p.o.inflight = uopt(v), i++;
        else if (!strcmp(a, "--hotplug"))
            p.o.hotplug_ms = uopt(v), i++;
        else if (!strcmp(a, "--timeout"))
            p.o.timeout_ms = uopt(v), i++;
        else if (!strcmp(a, "--send-only"))
            p.o.send_only = v, i++;
        else if (!strcmp(a, "--cancel"))
            p.o.cancel = true;
        else if (!strcmp(a, "--wait-gone"))
            p.o.wait_gone = true;
        else if (!strcmp(a, "--plain-claim"))
            p.o.plain_claim = true;
        else if (!strcmp(a, "--reenum"))
            p.o.reenum = true;
        else {
            fprintf(stderr, "usbprobe: unknown option %s\n", a);
            return 2;
        }
    }
    if (!p.o.inflight || !p.o.transfer_kib)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int r = libusb_init(&p.ctx);
    if (r < 0) {
        printf("error - init: %s\n", libusb_error_name(r));
        return 1;
    }
    bool hotplug = p.o.hotplug_ms || p.o.reenum || p.o.wait_gone;
    libusb_hotplug_callback_handle hh;
    if (hotplug) {
        r = libusb_hotplug_register_callback(
            p.ctx, LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT, 0,
            LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
            on_hotplug, &p, &hh);
        if (r < 0) {
            printf("error - hotplug: %s\n", libusb_error_name(r));
            return 1;
        }
    }
    libusb_device **list;
    ssize_t n = libusb_get_device_list(p.ctx, &list);
    for (ssize_t i = 0; i < n; i++)
        add_device(&p, list[i], false);
    libusb_free_device_list(list, 1);

    double t_end = now_s() + p.o.timeout_ms / 1000.0;
    double t_hotplug = now_s() + p.o.hotplug_ms / 1000.0;
    if (p.o.cancel) {
        /* let the INs sit in the harness, then cancel them */
        struct timeval tv = {0, 100000};
        libusb_handle_events_timeout_completed(p.ctx, &tv, NULL);
        for (unsigned i = 0; i < p.ndev; i++)
            if (p.devs[i].step == S_CANCEL)
                libusb_cancel_transfer(p.devs[i].in);
    }
    int status = 0;
    for (;;) {
        bool waiting_hotplug = p.o.hotplug_ms && now_s() < t_hotplug;
        if (finished(&p) && !waiting_hotplug)
            break;
        if (now_s() > t_end) {
            printf("timeout\n");
            status = 2;
            break;
        }
        struct timeval tv = {0, 50000};
        libusb_handle_events_timeout_completed(p.ctx, &tv, NULL);
        while (p.ndepartures) {
            libusb_device *ud = p.departures[--p.ndepartures];
            departed(&p, ud);
            libusb_unref_device(ud);
        }
        while (p.narrivals) {
            libusb_device *ud = p.arrivals[--p.narrivals];
            add_device(&p, ud, true);
            libusb_unref_device(ud);
        }
    }
    if (!status && p.failures)
        status = 1;
    /* Leave without tidying: a harness test, not a leak check. */
    fflush(stdout);
    _exit(status);
}
