/*
 * eng_vdt: the in-process transport to a virtual DFU device (eng_vdfu),
 * the control-transfer sibling of eng_vt (vtransport.h).
 *
 * It presents the device as a USB transport would: at creation it reads
 * the model's descriptors and fills the transport's vid/pid, usb_serial,
 * protocol_kind (ENG_PROTO_DFU) and dfu info (eng_dfu_parse_config plus
 * the alt name strings), so the engine sees exactly what the descriptors
 * say. Control transfers complete on the loop (a timer, after
 * `latency_ms`), with the model's clock being uv_now(). A request the
 * model does not answer (ST_EAGAIN) stays pending until cancelled, like a
 * NAKed request on a real bus. The optional reset op is a bus reset: it
 * completes with 0 and the device then re-enumerates.
 *
 * Notifications use eng_vt_notify: ENG_VT_GONE when the device left for
 * good (disconnect fault or eng_vdt_unplug), ENG_VT_REENUMERATE when it
 * left to come back (DETACH with bitWillDetach, a reset, DfuSe leave) —
 * the owner then attaches a new transport to the same model after a
 * while — and ENG_VT_CLOSED when the transport is closed (it frees itself
 * after the close callback; the owner must forget the pointer). The model
 * is borrowed: its owner keeps it.
 */
#ifndef ENG_VIRT_VDFU_TRANSPORT_H
#define ENG_VIRT_VDFU_TRANSPORT_H

#include <uv.h>

#include "engine/transport.h"
#include "engine/virt/vdfu.h"
#include "engine/virt/vtransport.h"

int eng_vdt_new(uv_loop_t *loop, struct eng_vdfu *dev, const char *port, unsigned latency_ms,
                eng_vt_notify notify, void *user_data, struct eng_transport **out);

/* Simulate an unplug: what is in flight ends with ST_ENODEV and the owner
 * is told ENG_VT_GONE (from this call). */
void eng_vdt_unplug(struct eng_transport *t);

#endif
