/*
 * eng_rack: a simulated rack of virtual fastboot devices for the demo,
 * training and tests (`station run --simulate N`).
 *
 * Position i (1-based) is port "virt-NN". At start every position gets a
 * unit, `plug_interval_ms` apart. When the station shows a result, the
 * simulated operator (eng_rack_result_shown) pulls the unit after
 * `replug_ms` and plugs a fresh one, until `max_units` have been plugged.
 * Faults given with eng_rack_add_fault() apply to the first unit plugged
 * into that position.
 *
 * With `dfu` set the rack serves virtual DFU devices (eng_vdfu, through
 * the in-process control transport of vdfu_transport.h) built from
 * `dfu_config`; the share `runtime_share` of positions plugs units in
 * run-time mode, which need a detach (the recipe's `detach` step). A DFU
 * unit that detaches or resets re-enumerates after `reenum_ms` on the
 * same port, as a rebooting fastboot device does.
 *
 * Lifecycle: eng_rack_new(), eng_rack_add_fault()..., eng_rack_start();
 * at shutdown eng_rack_stop() (no more plugging), then close the engine
 * (which closes the transports), then eng_rack_free().
 */
#ifndef ENG_VIRT_RACK_H
#define ENG_VIRT_RACK_H

#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"
#include "engine/virt/vdfu.h"
#include "engine/virt/vfb.h"

struct eng_rack;

struct eng_rack_options {
    unsigned count;            /* positions */
    double pace_mbps;          /* per device; 0 = unpaced */
    uint64_t max_download;     /* 0: the model's default (256 MiB) */
    unsigned plug_interval_ms; /* between the first plugs */
    unsigned replug_ms;        /* operator delay after a result; 0 = never replug */
    unsigned max_units;        /* stop plugging after this many; 0 = no limit */
    unsigned reenum_ms;        /* time a rebooting device is away; default 300 */
    unsigned info_lines;       /* INFO lines per flash */
    bool ab_slots;             /* devices have A/B partitions */
    bool keep_data;            /* devices keep partition bytes (tests) */
    bool no_hash;              /* devices skip hashing what they receive */
    const char *product;       /* getvar product; NULL = "simphone" */
    uint32_t seed;             /* serial numbers */
    unsigned profile;          /* engine profile of the rack's devices */
    double fault_percent;      /* 0..100: this share of fastboot units, picked from the
                                  seed, each get one fault: a write refused, a
                                  pull mid-download, a garbage or oversized reply,
                                  silence (in turn) */
    unsigned flap_position;    /* a loose connector: every unit plugged here is pulled
                                  flap_ms after it arrived, then a fresh one follows;
                                  0 = none */
    unsigned flap_ms;
    /* DFU racks (see above); the fastboot fields above then do not apply. */
    bool dfu;
    const struct eng_vdfu_config *dfu_config; /* copied per unit (serial and mode set
                                                 per unit); NULL = the model's defaults */
    double runtime_share;                     /* 0..1 of positions start in run-time mode */
};

int eng_rack_new(uv_loop_t *loop, struct eng_engine *eng, const struct eng_rack_options *opts,
                 struct eng_rack **out);

/* "N:KIND=ARG" or (position, "KIND=ARG"); see eng_vfb_parse_fault(), or
 * eng_vdfu_parse_fault() for a DFU rack. */
int eng_rack_add_fault(struct eng_rack *rack, unsigned position, const char *spec);
int eng_rack_add_fault_spec(struct eng_rack *rack, const char *spec);

int eng_rack_start(struct eng_rack *rack);

/* The station showed the result for `port`: the operator acts on it. */
void eng_rack_result_shown(struct eng_rack *rack, const char *port);

/* Units plugged so far. */
unsigned eng_rack_units_plugged(const struct eng_rack *rack);

/* The unit now (or last) at position (1-based), or NULL. */
struct eng_vfb *eng_rack_device(struct eng_rack *rack, unsigned position);
/* The same for a DFU rack. */
struct eng_vdfu *eng_rack_dfu_device(struct eng_rack *rack, unsigned position);

void eng_rack_stop(struct eng_rack *rack, void (*cb)(struct eng_rack *rack, void *user_data),
                   void *user_data);
void eng_rack_free(struct eng_rack *rack);

#endif
