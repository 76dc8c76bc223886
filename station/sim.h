/*
 * st_sim: virtual fastboot devices (engine/virt/vfb) served over TCP, so
 * that the real AOSP `fastboot -s tcp:HOST:PORT` client and the station's
 * own TCP transport can flash them (`station sim`).
 *
 * Device i (1-based) listens on port + i - 1. One client at a time per
 * device: a second connection waits, accepted only when the first one
 * closes. Per connection: the client sends "FB01", the device answers
 * "FB01"; then each 8-byte big-endian length + payload frame is, in
 * command state, one command for the model, and in the data phase of a
 * download, data (any framing). Every reply the model queues is sent as
 * its own frame. A closed connection resets the model's link (queued
 * replies and a half-done download go) but keeps its storage: the real
 * client opens one connection per command line.
 *
 * Leaving and coming back, as real devices do:
 *   - after "reboot" or "continue" the connection is closed once the OKAY
 *     is sent, and so is the listening socket (connections are refused):
 *     after `offline_ms` a fresh unit (new model, new serial, no faults)
 *     listens on the same port;
 *   - the "disconnect" fault drops the connection at once; a fresh unit
 *     comes back the same way;
 *   - after "reboot-bootloader" the connection is closed once the OKAY is
 *     sent and the same unit (state kept) listens again after `reenum_ms`.
 *
 * Faults "N:KIND=ARG" are those of eng_vfb_parse_fault() plus
 * "N:fail-at=K:CMD" (only the K-th command starting with CMD gets
 * "FAIL injected fault": a failure in the middle of a split). They apply
 * to the first unit on device N only.
 *
 * `dump_dir` is for tests: after every flash or erase the partition's
 * content goes to DIR/devN/<partition>.img and the counters to
 * DIR/devN/stats ("writes=K bytes=B"); with `dump_downloads` every
 * download's payload also goes to DIR/devN/download-K.bin. This file I/O
 * runs on the loop thread (it blocks it): never use it for timing.
 *
 * Lifecycle: st_sim_new() (binds every port, or fails and binds none),
 * st_sim_stop() (closes every socket and timer; the callback runs when
 * nothing is open), st_sim_free(). Loop thread only.
 */
#ifndef ST_SIM_H
#define ST_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "engine/virt/vfb.h"

#define ST_SIM_MAX_FAULTS 64
#define ST_SIM_MAX_DEVICES 256

struct st_sim;

struct st_sim_options {
    const char *host;                      /* numeric address or "localhost"; default 127.0.0.1 */
    uint16_t port;                         /* first port */
    unsigned count;                        /* devices; default 1 */
    bool any_address;                      /* allow a HOST that is not loopback */
    const char *faults[ST_SIM_MAX_FAULTS]; /* "N:KIND=ARG" */
    unsigned n_faults;
    double pace_mbps;      /* read at most this fast per device; 0 = unpaced */
    uint64_t max_download; /* the devices' max-download-size; 0 = the model's default */
    bool ab_slots;
    const char *product;  /* default: the model's ("simphone") */
    unsigned info_lines;  /* INFO lines per flash */
    bool keep_data;       /* keep partition bytes (implied by dump_dir) */
    bool no_hash;         /* devices skip hashing what they receive (benchmarks) */
    const char *dump_dir; /* tests only (see above); NULL = none */
    bool dump_downloads;
    unsigned offline_ms; /* away after reboot/disconnect; default 3000 */
    unsigned reenum_ms;  /* away after reboot-bootloader; default 300 */
    FILE *log;           /* one line per connection event; NULL = quiet */
};

/*
 * Validate `opts`, create the devices and listen on every port. Returns 0
 * and *out, or a negative code with a message naming the option in `err`:
 * ST_EINVAL (bad option or fault), ST_EACCES (HOST not loopback without
 * any_address), ST_EBUSY (a port is taken), or another code from bind.
 */
int st_sim_new(uv_loop_t *loop, const struct st_sim_options *opts, struct st_sim **out, char *err,
               size_t errlen);

/* The unit on device `n` (1-based): the current one, or while the device is
 * away the one that left (freed when a fresh unit replaces it). NULL for
 * a bad `n`. */
struct eng_vfb *st_sim_device(struct st_sim *sim, unsigned n);

/* Connections accepted on device `n` so far. */
unsigned st_sim_connections(const struct st_sim *sim, unsigned n);

void st_sim_stop(struct st_sim *sim, void (*cb)(struct st_sim *sim, void *user_data),
                 void *user_data);
void st_sim_free(struct st_sim *sim);

#endif
