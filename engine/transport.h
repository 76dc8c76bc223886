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

#include <stddef.h>
#include <stdint.h>

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
    void *buf;            /* OUT: bytes to send (not modified); IN: room */
    size_t len;           /* OUT: bytes to send; IN: room in buf */
    uint8_t setup[8];     /* CONTROL only */
    eng_xfer_cb cb;
    void *user_data;
    /* Set by the transport before the callback. */
    int status;           /* 0 or a negative st_error code */
    size_t actual;        /* bytes moved */
    /* Owned by the transport while in flight. */
    void *priv;
};

struct eng_transport_ops {
    const char *name; /* "virt", "usb", "tcp" */
    int (*submit)(struct eng_transport *t, struct eng_xfer *x);
    int (*cancel)(struct eng_transport *t, struct eng_xfer *x);
    void (*close)(struct eng_transport *t, eng_transport_close_cb close_cb, void *user_data);
};

struct eng_transport {
    const struct eng_transport_ops *ops;
    void *impl;              /* the transport's own state */
    char port[64];           /* port path ("1-4.2.3"), "tcp:HOST:PORT" or "virt-07" */
    char usb_serial[64];     /* iSerial or equivalent identity, may be empty */
    uint16_t vid, pid;
    unsigned profile;        /* the engine profile this device uses (set by its source) */
};

static inline int eng_transport_submit(struct eng_transport *t, struct eng_xfer *x)
{
    return t->ops->submit(t, x);
}

static inline int eng_transport_cancel(struct eng_transport *t, struct eng_xfer *x)
{
    return t->ops->cancel(t, x);
}

#endif
