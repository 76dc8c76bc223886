/*
 * eng_vt: the in-process transport to a virtual fastboot device.
 *
 * It completes transfers on the loop with libuv timers, paced at the
 * device model's MB/s, and behaves like usbfs where it matters: a bulk IN
 * waits until the device has something to say, an unplug completes what
 * is in flight with ST_ENODEV, and cancel still fires the callback.
 *
 * The transport borrows the device model (its owner keeps it) and tells
 * the owner, through `eng_vt_notify`, when the device left by itself or
 * asked to re-enumerate, and when the transport is finally closed (after
 * which the owner must forget the pointer). The transport frees itself
 * after its close callback.
 */
#ifndef ENG_VIRT_VTRANSPORT_H
#define ENG_VIRT_VTRANSPORT_H

#include <uv.h>

#include "engine/transport.h"
#include "engine/virt/vfb.h"

enum eng_vt_note {
    ENG_VT_GONE,         /* the device disconnected (fault or unplug) */
    ENG_VT_REENUMERATE,  /* the device left to come back (reboot-bootloader) */
    ENG_VT_CLOSED,       /* the transport is closed and about to be freed */
};

typedef void (*eng_vt_notify)(struct eng_transport *t, enum eng_vt_note note, void *user_data);

int eng_vt_new(uv_loop_t *loop, struct eng_vfb *dev, const char *port, eng_vt_notify notify,
               void *user_data, struct eng_transport **out);

/* Simulate an unplug: in-flight transfers end with ST_ENODEV and the owner
 * is told ENG_VT_GONE (from this call). */
void eng_vt_unplug(struct eng_transport *t);

#endif
