/*
 * eng_usb: real USB devices through libusb, driven from the station's one
 * libuv loop (ARCHITECTURE rule 1: libusb's pollfds each get a uv_poll_t,
 * events are handled with a zero timeout when an fd is ready; no libusb
 * thread).
 *
 * Lifecycle: eng_usb_new() creates the libusb context and hooks it into
 * the loop; eng_usb_start() registers hotplug (devices already present
 * arrive too). An arriving device whose interface matches a rule (class
 * triple, optionally VID:PID) is opened outside the hotplug callback,
 * retried for a short window (udev may still be setting permissions), its
 * kernel driver detached from the interface we claim, its iSerial read
 * with an asynchronous control transfer, and then handed to the engine as
 * an eng_transport named by its port path ("1-4.2.3"). A device that
 * cannot be opened or read is reported with eng_engine_device_error()
 * (EACCES names the udev rules). At shutdown: eng_usb_stop() (no new
 * devices), then close the engine (it closes every transport; libusb
 * events still flow meanwhile), then eng_usb_close() closes our handles,
 * and after its callback eng_usb_free() releases libusb.
 *
 * Transfers: asynchronous bulk and control; one global in-flight byte
 * budget (usbfs allows 16 MiB by default for the whole system) with
 * LIBUSB_ERROR_NO_MEM treated as "wait", never as failure; commands,
 * replies and control requests wait ahead of image data and have a part
 * of the budget kept for them (engine/usb_budget.h).
 */
#ifndef ENG_USB_H
#define ENG_USB_H

#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"

#define ENG_USB_MAX_RULES 16

struct eng_usb_rule {
    uint8_t cls, subclass, protocol; /* interface class triple */
    uint16_t vid, pid;               /* 0 = any */
    unsigned profile;                /* engine profile for matching devices */
};

struct eng_usb_options {
    unsigned n_rules;
    struct eng_usb_rule rules[ENG_USB_MAX_RULES];
    unsigned open_retry_ms; /* keep retrying a failing open this long; default 2000 */
    size_t inflight_budget; /* bytes in flight for all devices; default 16 MiB */
};

struct eng_usb;

/* 0 and *out, or a negative code (ST_EIO with libusb's name in err). */
int eng_usb_new(uv_loop_t *loop, struct eng_engine *eng, const struct eng_usb_options *opts,
                struct eng_usb **out, char *err, size_t errlen);
int eng_usb_start(struct eng_usb *usb);

/* Stop hotplug and pending opens. Transports already given to the engine
 * stay usable until the engine closes them. */
void eng_usb_stop(struct eng_usb *usb);

/* After the engine closed: close the poll, timer and idle handles; `cb`
 * runs once they are closed. */
void eng_usb_close(struct eng_usb *usb, void (*cb)(struct eng_usb *usb, void *user_data),
                   void *user_data);

/* After eng_usb_close's callback. */
void eng_usb_free(struct eng_usb *usb);

/* One attached device, for `station ports`. */
struct eng_usb_port {
    char port[64];
    uint16_t vid, pid;
    uint8_t cls, subclass, protocol; /* the matching interface, or the first one */
    char serial[64];
    const char *speed; /* "high", "super", ... */
    int rule;          /* index of the matching rule, or -1 */
    char note[128];    /* why a field is missing, e.g. permission denied */
};

/* List attached devices synchronously (not on a running loop: this is
 * for the `station ports` command). Returns the count (up to max) or a
 * negative code. */
int eng_usb_list(const struct eng_usb_options *opts, struct eng_usb_port *out, unsigned max,
                 char *err, size_t errlen);

#endif
