/*
 * What a node looks like from outside: its descriptors (USB 2.0 spec
 * chapter 9.6) and the sysfs/udev records umockdev turns into
 * /sys/bus/usb/devices entries. libusb 1.0.26 needs the attributes listed
 * in shared/notes/usb-sim.md; lsusb -t also reads the interface entries;
 * AOSP fastboot reads busnum, devnum and serial from sysfs.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "usbsim.h"

#define DT_DEVICE 1
#define DT_CONFIG 2
#define DT_INTERFACE 4
#define DT_ENDPOINT 5

static size_t put_device(uint8_t *d, uint8_t cls, uint8_t proto, uint16_t vid, uint16_t pid,
                         uint16_t bcd, uint8_t iserial)
{
    /* clang-format off */
    const uint8_t dev[18] = {
        18, DT_DEVICE, 0x00, 0x02, /* bcdUSB 2.00 */
        cls, 0x00, proto,           /* bDeviceClass, bDeviceSubClass, bDeviceProtocol */
        64,                         /* bMaxPacketSize0 */
        vid & 0xff, vid >> 8, pid & 0xff, pid >> 8, bcd & 0xff, bcd >> 8,
        1, 2, iserial,              /* iManufacturer, iProduct, iSerialNumber */
        1,                          /* bNumConfigurations */
    };
    /* clang-format on */
    memcpy(d, dev, sizeof(dev));
    return sizeof(dev);
}

void usbsim_build_descriptors(struct sim_node *n)
{
    const struct sim_port *p = n->port;
    uint8_t *d = n->desc;
    size_t len;
    if (p->hub) {
        bool root = p->depth == 0;
        len = put_device(d, 0x09, 0x01, n->vid, n->pid, root ? 0x0601 : 0x0100, root ? 3 : 0);
        /* clang-format off */
        const uint8_t cfg[25] = {
            9, DT_CONFIG, 25, 0, 1, 1, 0, 0xe0, 0,       /* self-powered, wakeup */
            9, DT_INTERFACE, 0, 0, 1, 0x09, 0x00, 0x00, 0, /* hub class */
            7, DT_ENDPOINT, 0x81, 0x03, 0x01, 0x00, 0x0c, /* interrupt IN, 1 byte, 2^11 µframes */
        };
        /* clang-format on */
        memcpy(d + len, cfg, sizeof(cfg));
        n->desc_len = len + sizeof(cfg);
        return;
    }
    if (n->unit->vdfu) {
        /* DFU: whatever the model presents in its current mode (run-time
         * or DFU), so a re-enumeration shows the new PID and interface. */
        const struct eng_vdfu *v = n->unit->vdfu;
        len = eng_vdfu_descriptor(v, 1, 0, d, SIM_DESC_MAX);
        size_t cl = eng_vdfu_descriptor(v, 2, 0, d + len, SIM_DESC_MAX - len);
        g_assert(len == 18 && len + cl <= SIM_DESC_MAX);
        n->desc_len = len + cl;
        n->vid = (uint16_t)(d[8] | d[9] << 8);
        n->pid = (uint16_t)(d[10] | d[11] << 8);
        return;
    }
    len = put_device(d, 0x00, 0x00, n->vid, n->pid, 0x0100, 3);
    /* Fastboot interface: class FF/42/03, one bulk OUT and one bulk IN
     * endpoint with 512-byte packets (high speed). */
    /* clang-format off */
    const uint8_t cfg[32] = {
        9, DT_CONFIG, 32, 0, 1, 1, 0, 0x80, 250,          /* bus-powered, 500 mA */
        9, DT_INTERFACE, 0, 0, 2, 0xff, 0x42, 0x03, 4,
        7, DT_ENDPOINT, 0x01, 0x02, 0x00, 0x02, 0,
        7, DT_ENDPOINT, 0x81, 0x02, 0x00, 0x02, 0,
    };
    /* clang-format on */
    memcpy(d + len, cfg, sizeof(cfg));
    n->desc_len = len + sizeof(cfg);
    if (p->baddesc) {
        /* The first endpoint descriptor claims bLength 5 (< 7): the device
         * descriptor and the configuration header are fine, so the device
         * enumerates, but parsing the configuration fails (libusb:
         * "invalid endpoint bLength", LIBUSB_ERROR_IO). */
        uint8_t *ep = d + len + 18;
        ep[0] = 5;
        memmove(ep + 5, ep + 7, 7);
        n->desc_len -= 2;
        d[len + 2] = 30;
    }
}

const char *usbsim_string(const struct sim_node *n, unsigned index)
{
    const struct sim_port *p = n->port;
    if (p->hub) {
        switch (index) {
        case 1:
            return p->depth == 0 ? "usbsim root hub" : "usbsim";
        case 2:
            return p->depth == 0 ? "xHCI Host Controller" : "USB2.0 Hub";
        case 3:
            return p->depth == 0 ? "usbsim-root" : NULL;
        default:
            return NULL;
        }
    }
    if (n->unit->vdfu) {
        const struct eng_vdfu_config *dc = eng_vdfu_config(n->unit->vdfu);
        switch (index) {
        case 1:
            return dc->manufacturer;
        case 2:
            return dc->product;
        case 3:
            return dc->serial[0] ? dc->serial : NULL;
        default:
            if (eng_vdfu_mode(n->unit->vdfu) == 2 && index >= 4 && index - 4 < dc->n_alts)
                return dc->alts[index - 4].name;
            return NULL;
        }
    }
    const struct eng_vfb_config *cfg = eng_vfb_config(n->unit->vfb);
    switch (index) {
    case 1:
        return "usbsim";
    case 2:
        return cfg->product;
    case 3:
        return cfg->usb_serial[0] ? cfg->usb_serial : cfg->serial;
    case 4:
        return "fastboot";
    default:
        return NULL;
    }
}

static void hex(GString *s, const uint8_t *b, size_t len)
{
    for (size_t i = 0; i < len; i++)
        g_string_append_printf(s, "%02X", b[i]);
}

/* A sysfs attribute value: printable, no backslash (the record format
 * escapes \ and newlines), ending in a newline like the kernel's. */
static void attr(GString *s, const char *name, const char *value)
{
    g_string_append_printf(s, "A: %s=", name);
    for (const char *c = value; *c; c++)
        g_string_append_c(s, (*c >= 0x20 && *c < 0x7f && *c != '\\') ? *c : '_');
    g_string_append(s, "\\n\n");
}

static const char *root_of(const struct sim_node *n, char *buf, size_t len)
{
    snprintf(buf, len, "/devices/pci0000:00/0000:00:%02x.0/usb%u", 0x10 + n->busnum, n->busnum);
    return buf;
}

static void interface_record(GString *s, const struct sim_node *n, const char *ifname)
{
    const uint8_t *ifd = n->desc + 18 + 9;
    char buf[32];
    g_string_append_printf(s, "P: %s\n", n->ifpath + 4);
    g_string_append(s, "E: SUBSYSTEM=usb\nE: DEVTYPE=usb_interface\n");
    g_string_append_printf(s, "E: PRODUCT=%x/%x/100\nE: INTERFACE=%u/%u/%u\n", n->vid, n->pid,
                           ifd[5], ifd[6], ifd[7]);
    snprintf(buf, sizeof(buf), "%02x", ifd[5]);
    attr(s, "bInterfaceClass", buf);
    snprintf(buf, sizeof(buf), "%02x", ifd[6]);
    attr(s, "bInterfaceSubClass", buf);
    snprintf(buf, sizeof(buf), "%02x", ifd[7]);
    attr(s, "bInterfaceProtocol", buf);
    attr(s, "bInterfaceNumber", "00");
    attr(s, "bAlternateSetting", " 0");
    snprintf(buf, sizeof(buf), "%02x", ifd[4]);
    attr(s, "bNumEndpoints", buf);
    if (ifname)
        attr(s, "interface", ifname);
    if (n->port->hub)
        g_string_append(s, "L: driver=../../../../../../bus/usb/drivers/hub\n");
    g_string_append(s, "\n");
}

static void device_record(GString *s, const struct sim_node *n)
{
    const struct sim_port *p = n->port;
    const uint8_t *dd = n->desc;
    char buf[64];
    unsigned minor = (n->busnum - 1) * 128 + (n->devnum - 1);
    g_string_append_printf(s, "P: %s\n", n->syspath + 4);
    g_string_append(s, "E: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nE: DRIVER=usb\n");
    g_string_append_printf(s, "E: DEVNAME=%s\nE: BUSNUM=%03u\nE: DEVNUM=%03u\n", n->devnode,
                           n->busnum, n->devnum);
    g_string_append_printf(s, "E: MAJOR=189\nE: MINOR=%u\n", minor);
    g_string_append_printf(s, "E: PRODUCT=%x/%x/%x\nE: TYPE=%u/%u/%u\n", n->vid, n->pid,
                           dd[12] | dd[13] << 8, dd[4], dd[5], dd[6]);
    snprintf(buf, sizeof(buf), "%u", n->busnum);
    attr(s, "busnum", buf);
    snprintf(buf, sizeof(buf), "%u", n->devnum);
    attr(s, "devnum", buf);
    if (p->depth > 0) {
        /* devpath: the port path without the bus ("1.4.2") */
        attr(s, "devpath", strchr(p->path, '-') + 1);
    } else {
        attr(s, "devpath", "0");
    }
    snprintf(buf, sizeof(buf), "189:%u", minor);
    attr(s, "dev", buf);
    attr(s, "speed", "480");
    attr(s, "version", " 2.00");
    attr(s, "maxchild", p->hub ? (p->depth == 0 ? "16" : "7") : "0");
    attr(s, "bConfigurationValue", "1");
    snprintf(buf, sizeof(buf), "%02x", dd[4]);
    attr(s, "bDeviceClass", buf);
    attr(s, "bDeviceSubClass", "00");
    snprintf(buf, sizeof(buf), "%02x", dd[6]);
    attr(s, "bDeviceProtocol", buf);
    attr(s, "bMaxPacketSize0", "64");
    attr(s, "bNumConfigurations", "1");
    attr(s, "bNumInterfaces", " 1");
    snprintf(buf, sizeof(buf), "%02x", n->desc[18 + 7]);
    attr(s, "bmAttributes", buf);
    snprintf(buf, sizeof(buf), "%umA", n->desc[18 + 8] * 2);
    attr(s, "bMaxPower", buf);
    snprintf(buf, sizeof(buf), "%04x", n->vid);
    attr(s, "idVendor", buf);
    snprintf(buf, sizeof(buf), "%04x", n->pid);
    attr(s, "idProduct", buf);
    snprintf(buf, sizeof(buf), "%04x", dd[12] | dd[13] << 8);
    attr(s, "bcdDevice", buf);
    for (unsigned i = 1; i <= 3; i++) {
        static const char *const names[] = {NULL, "manufacturer", "product", "serial"};
        const char *v = usbsim_string(n, i);
        if (v && (i != 3 || dd[16]))
            attr(s, names[i], v);
    }
    attr(s, "authorized", "1");
    attr(s, "removable", p->depth == 0 ? "unknown" : "removable");
    attr(s, "quirks", "0x0");
    attr(s, "urbnum", "0");
    attr(s, "ltm_capable", "no");
    attr(s, "rx_lanes", "1");
    attr(s, "tx_lanes", "1");
    attr(s, "configuration", "");
    g_string_append(s, "H: descriptors=");
    hex(s, n->desc, n->desc_len);
    g_string_append(s, "\n\n");
}

int usbsim_sysfs_add(struct sim_node *n, char *err, size_t errlen)
{
    struct sim *s = n->sim;
    const struct sim_port *p = n->port;
    char root[96];
    GError *gerr = NULL;

    root_of(n, root, sizeof(root));
    if (p->depth == 0)
        snprintf(n->syspath, sizeof(n->syspath), "/sys%s", root);
    else
        snprintf(n->syspath, sizeof(n->syspath), "/sys%s/%s", root, p->path);
    if (p->depth == 0)
        snprintf(n->ifpath, sizeof(n->ifpath), "%s/%u-0:1.0", n->syspath, n->busnum);
    else
        snprintf(n->ifpath, sizeof(n->ifpath), "%s/%s:1.0", n->syspath, p->path);
    snprintf(n->devnode, sizeof(n->devnode), "/dev/bus/usb/%03u/%03u", n->busnum, n->devnum);
    snprintf(n->fifo_path, sizeof(n->fifo_path), "%s%s", s->root, n->devnode);

    /* The node exists and its handler listens before udev says "add". */
    int r = usbsim_fifo_open(n);
    if (r < 0) {
        snprintf(err, errlen, "cannot create node %s: %s", n->fifo_path, strerror(-r));
        return -1;
    }
    n->handler = umockdev_ioctl_base_new();
    usbsim_usbfs_attach(n);
    if (!umockdev_testbed_attach_ioctl(s->tb, n->devnode, n->handler, &gerr)) {
        snprintf(err, errlen, "attach_ioctl %s: %s", n->devnode, gerr->message);
        g_error_free(gerr);
        return -1;
    }

    GString *rec = g_string_new(NULL);
    /* sysfs "interface": the iInterface string of the current alt setting */
    interface_record(rec, n, p->hub ? NULL : n->unit->vdfu ? usbsim_string(n, 4) : "fastboot");
    device_record(rec, n);
    bool ok = umockdev_testbed_add_from_string(s->tb, rec->str, &gerr);
    g_string_free(rec, TRUE);
    if (!ok) {
        snprintf(err, errlen, "add_from_string %s: %s", p->path, gerr->message);
        g_error_free(gerr);
        return -1;
    }
    g_mutex_lock(&s->lock);
    n->plugged_at = g_get_monotonic_time();
    g_mutex_unlock(&s->lock);
    return 0;
}

void usbsim_sysfs_remove(struct sim_node *n)
{
    struct sim *s = n->sim;
    GError *gerr = NULL;
    /* Interface first, like the kernel; the device's "remove" is what
     * libusb acts on. */
    umockdev_testbed_uevent(s->tb, n->ifpath, "remove");
    umockdev_testbed_uevent(s->tb, n->syspath, "remove");
    umockdev_testbed_remove_device(s->tb, n->ifpath);
    umockdev_testbed_remove_device(s->tb, n->syspath);
    /* remove_device unlinks the node; clients that still have it open
     * keep talking to the handler, which answers ENODEV. */
    if (!umockdev_testbed_detach_ioctl(s->tb, n->devnode, &gerr)) {
        usbsim_log(s, "detach_ioctl %s: %s", n->devnode, gerr->message);
        g_error_free(gerr);
    }
}
