/*
 * fuzz_transport: an eng_transport whose device is the fuzz input.
 *
 * Each submitted transfer (and each reset) takes one event off the input
 * when it is submitted; its first byte `b` says what happens:
 *   b >> 5 in 0..3  it completes: OUT with every byte taken, IN and
 *                   CONTROL-IN with the next byte's count of data bytes
 *                   (plus 256 when b & 0x10), cut to what the input still
 *                   holds; more than the transfer's room ends ST_EOVERFLOW
 *                   with the room filled, as libusb reports it
 *   4               a short OUT: the next two bytes, modulo len + 1, say
 *                   how many bytes moved (IN: as 0..3)
 *   5               it ends with an error status (ENODEV, EPIPE, ...)
 *   6               submit() itself fails with an error code
 *   7               it never completes: only cancel() ends it
 * An input that has run out reads as a device that has gone (ST_ENODEV).
 *
 * Completions follow the transport contract (engine/transport.h): on the
 * loop thread, from a 0 ms timer, never inside submit(); cancel() makes
 * the callback fire with ST_ECANCELED; close() cancels what is in flight
 * and calls back after the last transfer callback.
 *
 * The transport checks the driver's side of the contract too and aborts
 * (a finding) when a driver submits a transfer that is already in flight.
 */
#ifndef FUZZ_TRANSPORT_H
#define FUZZ_TRANSPORT_H

#include <stdbool.h>
#include <uv.h>

#include "engine/transport.h"
#include "fuzz_util.h"

struct ft;

/* A transport on `loop` reading events from `script` (borrowed). */
struct ft *ft_new(uv_loop_t *loop, struct fz *script, bool can_reset);
struct eng_transport *ft_transport(struct ft *t);
/* Transfers submitted so far (resets included). */
unsigned ft_submits(const struct ft *t);
/* Close (eng_transport close); *closed becomes true once it is freed. */
void ft_close(struct ft *t, bool *closed);

/*
 * Run `loop` until no handle is active, in virtual time: whenever nothing
 * is ready and the loop would sleep, the earliest timer fires at once (a
 * driver's time limit, a DFU poll wait), as if that much time had passed.
 * A silent device thus costs no real time, and a run does not depend on
 * how fast the machine is. Aborts when the loop would wait with no timer
 * (an operation that can never end).
 */
void ft_run(uv_loop_t *loop);

#endif
