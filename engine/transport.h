/*
 * eng_transport: how protocol drivers move bytes, whatever carries them.
 *
 * A transport is one open device (a libusb handle, a TCP connection, an
 * in-process virtual device). Drivers fill a struct eng_xfer and submit
 * it; the transport completes it later on the loop thread. The contract
 * follows libusb's asynchronous API:
 *   - submit() returns 0 and the callback runs exactly once later (also
 *     after cancel(), with status ST_ECANCELED), or it returns a negative
 *     code and the callback never runs;
 *   - a transfer in flight belongs to the transport: the driver touches
 *     none of its fields until the callback;
 *   - cancel() is asynchronous: the callback still fires.
 *   - close() cancels what is in flight, and its callback runs after the
 *     last transfer callback; only then may the transport be forgotten.
 */
#ifndef ENG_TRANSPORT_H
#define ENG_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/st_error.h"

struct eng_transport;
struct eng_xfer;

enum eng_xfer_type {
    ENG_XFER_BULK_OUT, /* host to device */
    ENG_XFER_BULK_IN,  /* device to host; completes with one message */
    ENG_XFER_CONTROL,  /* setup[8] then data of wLength bytes */
};

typedef void (*eng_xfer_cb)(struct eng_xfer *xfer);
/* Runs once the transport is closed; `t` is freed right after it returns. */
typedef void (*eng_transport_close_cb)(struct eng_transport *t, void *user_data);

struct eng_xfer {
    /* Set by the driver before submit. */
    enum eng_xfer_type type;
    void *buf;        /* OUT: bytes to send (not modified); IN: room */
    size_t len;       /* OUT: bytes to send; IN: room in buf */
    uint8_t setup[8]; /* CONTROL only */
    /* OUT, optional: the same bytes are also in the open file `file_fd`
     * at `file_off` (buf points into the image's read-only mapping). A
     * transport that can send from a file (TCP: sendfile) may take them
     * from there instead and copy nothing; the others ignore it. */
    bool from_file;
    int file_fd;
    uint64_t file_off;
    eng_xfer_cb cb;
    void *user_data;
    /* Set by the transport before the callback. */
    int status;    /* 0 or a negative st_error code */
    size_t actual; /* bytes moved */
    /* Owned by the transport while in flight. */
    void *priv;
};

struct eng_transport_ops {
    const char *name; /* "virt", "usb", "tcp" */
    int (*submit)(struct eng_transport *t, struct eng_xfer *x);
    int (*cancel)(struct eng_transport *t, struct eng_xfer *x);
    void (*close)(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data);
    /*
     * Optional (NULL: the transport cannot do it). A USB port reset, as
     * DFU needs after DETACH when bitWillDetach is clear (DFU 1.1 §5.1)
     * and in dfuMANIFEST-WAIT-RESET (§7). `x` carries only cb and
     * user_data (type, buf, len and setup are ignored); it follows the
     * submit() contract (one callback, cancel() still fires it) and ends
     * with 0 or ST_ENODEV once the reset is done. The device then leaves
     * and re-enumerates: the transport reports it gone as for any
     * unplug, after the callback. (libusb: libusb_reset_device(), which
     * is synchronous, so off the loop thread.)
     */
    int (*reset)(struct eng_transport *t, struct eng_xfer *x);
};

/* Which protocol driver a device needs; set by the transport that found it. */
enum eng_protocol_kind {
    ENG_PROTO_FASTBOOT = 0,
    ENG_PROTO_DFU = 1,
};

#define ENG_DFU_MAX_ALTS 8
#define ENG_DFU_ALT_NAME_MAX 128

/* bmAttributes of the DFU functional descriptor (DFU 1.1 §4.1.3, Table 4.2) */
#define ENG_DFU_ATTR_CAN_DNLOAD 0x01
#define ENG_DFU_ATTR_CAN_UPLOAD 0x02
#define ENG_DFU_ATTR_MANIFEST_TOLERANT 0x04
#define ENG_DFU_ATTR_WILL_DETACH 0x08

/*
 * A DFU device as its descriptors describe it (DFU 1.1 §4.1 run-time and
 * §4.2 DFU-mode descriptor sets), filled by the transport before the
 * device is handed to the engine; all zero for other devices. The DFU
 * driver (engine/dfu.h) reads it; a device that re-enumerates (detach,
 * reset) arrives on a new transport with fresh values.
 */
struct eng_dfu_info {
    uint8_t mode;               /* bInterfaceProtocol: 1 run-time, 2 DFU mode */
    uint8_t interface;          /* bInterfaceNumber: wIndex of every DFU request */
    uint8_t attributes;         /* bmAttributes: ENG_DFU_ATTR_* */
    uint16_t detach_timeout_ms; /* wDetachTimeOut */
    uint16_t transfer_size;     /* wTransferSize: bytes per DNLOAD/UPLOAD block */
    uint16_t bcd_dfu;           /* bcdDFUVersion: 0x0110, DfuSe 0x011A */
    uint16_t bcd_device;        /* bcdDevice of the device descriptor */
    uint8_t n_alts;             /* alternate settings of the DFU interface (DFU mode) */
    char alt_names[ENG_DFU_MAX_ALTS][ENG_DFU_ALT_NAME_MAX]; /* iInterface strings or "" */
};

struct eng_transport {
    const struct eng_transport_ops *ops;
    void *impl;          /* the transport's own state */
    char port[64];       /* port path ("1-4.2.3"), "tcp:HOST:PORT" or "virt-07" */
    char usb_serial[64]; /* iSerial or equivalent identity, may be empty */
    uint16_t vid, pid;
    unsigned profile;        /* the engine profile this device uses (set by its source) */
    uint8_t protocol_kind;   /* enum eng_protocol_kind; 0 (fastboot) unless set */
    struct eng_dfu_info dfu; /* protocol_kind == ENG_PROTO_DFU only */
};

static inline int eng_transport_submit(struct eng_transport *t, struct eng_xfer *x)
{
    return t->ops->submit(t, x);
}

/* ST_EINVAL (and no callback) when the transport cannot reset. */
static inline int eng_transport_reset(struct eng_transport *t, struct eng_xfer *x)
{
    return t->ops->reset ? t->ops->reset(t, x) : ST_EINVAL;
}

static inline int eng_transport_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    return t->ops->cancel(t, x);
}

#endif
