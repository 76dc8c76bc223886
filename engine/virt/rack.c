#include "engine/virt/rack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/st_error.h"
#include "engine/virt/vdfu_transport.h"
#include "engine/virt/vtransport.h"

#define MAX_FAULTS_PER_POSITION 4

enum pos_action { ACT_NONE, ACT_PLUG, ACT_REATTACH, ACT_PULL };

struct unit {
    struct eng_vfb *dev;
    struct eng_vdfu *ddev; /* a DFU rack's unit (dev is then NULL) */
    struct pos *pos;
    struct eng_transport *t; /* attached transport, NULL when away */
    unsigned open_transports;
    bool retired;      /* pulled from the rack: free once transports close */
    struct unit *next; /* all units, for eng_rack_free() */
};

struct pos {
    struct eng_rack *rack;
    unsigned number;
    char port[16];
    uv_timer_t timer;
    enum pos_action action;
    struct unit *unit; /* the unit in this position, or NULL */
    unsigned plugged;  /* units plugged here so far */
    unsigned n_faults;
    char faults[MAX_FAULTS_PER_POSITION][80];
};

struct eng_rack {
    uv_loop_t *loop;
    struct eng_engine *eng;
    struct eng_rack_options opts;
    struct pos *pos;
    struct unit *units;
    unsigned plugged;
    uint32_t serial_base;
    bool stopping;
    unsigned open_timers;
    void (*stop_cb)(struct eng_rack *rack, void *user_data);
    void *stop_user_data;
    unsigned random_faults; /* units given a fault by fault_percent */
};

static void unit_maybe_free(struct eng_rack *rack, struct unit *u)
{
    if (!u->retired || u->open_transports > 0)
        return;
    for (struct unit **p = &rack->units; *p; p = &(*p)->next) {
        if (*p == u) {
            *p = u->next;
            break;
        }
    }
    eng_vfb_free(u->dev);
    eng_vdfu_free(u->ddev);
    free(u);
}

static void on_timer(uv_timer_t *timer);

static void on_note(struct eng_transport *t, enum eng_vt_note note, void *user_data)
{
    struct unit *u = user_data;
    struct pos *p = u->pos;
    struct eng_rack *rack = p->rack;
    switch (note) {
    case ENG_VT_GONE:
        if (u->t == t) {
            u->t = NULL;
            eng_engine_device_left(rack->eng, t);
        }
        break;
    case ENG_VT_REENUMERATE:
        if (u->t == t) {
            u->t = NULL;
            eng_engine_device_left(rack->eng, t);
            if (!rack->stopping && p->unit == u) {
                p->action = ACT_REATTACH;
                uv_timer_start(&p->timer, on_timer, rack->opts.reenum_ms, 0);
            }
        }
        break;
    case ENG_VT_CLOSED:
        if (u->t == t)
            u->t = NULL;
        u->open_transports--;
        unit_maybe_free(rack, u);
        break;
    }
}

static int attach(struct eng_rack *rack, struct unit *u)
{
    struct eng_transport *t;
    int rc = u->ddev ? eng_vdt_new(rack->loop, u->ddev, u->pos->port, 0, on_note, u, &t)
                     : eng_vt_new(rack->loop, u->dev, u->pos->port, on_note, u, &t);
    if (rc)
        return rc;
    t->profile = rack->opts.profile;
    u->t = t;
    u->open_transports++;
    eng_engine_device_arrived(rack->eng, t);
    return 0;
}

/* Position `number` (1-based) starts in run-time mode: spread evenly. */
static bool starts_runtime(const struct eng_rack *rack, unsigned number)
{
    double share = rack->opts.runtime_share;
    return (unsigned)(number * share) > (unsigned)((number - 1) * share);
}

static int plug_new_dfu_unit(struct eng_rack *rack, struct pos *p)
{
    struct eng_vdfu_config cfg;
    if (rack->opts.dfu_config)
        cfg = *rack->opts.dfu_config;
    else
        memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.serial, sizeof(cfg.serial), "SIM%06X%04u", rack->serial_base & 0xffffffu,
             rack->plugged + 1);
    if (starts_runtime(rack, p->number))
        cfg.start_runtime = true;
    if (p->plugged == 0)
        for (unsigned i = 0; i < p->n_faults; i++)
            if (eng_vdfu_parse_fault(&cfg, p->faults[i]) != 0)
                return ST_EINVAL;
    struct unit *u = calloc(1, sizeof(*u));
    if (!u)
        return ST_ENOMEM;
    int rc = eng_vdfu_new(&cfg, &u->ddev);
    if (rc) {
        free(u);
        return rc;
    }
    u->pos = p;
    u->next = rack->units;
    rack->units = u;
    p->unit = u;
    p->plugged++;
    rack->plugged++;
    return attach(rack, u);
}

/* The faults fault_percent hands out, in turn. */
static const char *const random_faults[] = {
    "fail=flash:system",       "disconnect=524288", "garbage=getvar:serialno",
    "oversize=getvar:product", "silent=flash:boot",
};

/* fault_percent: whether unit number `unit` (1-based, rack-wide) gets a
 * fault. A hash of the rack's serial base and the unit number, so a run
 * with --seed picks the same units every time. */
static bool draws_fault(const struct eng_rack *rack, unsigned unit)
{
    uint64_t z = ((uint64_t)rack->serial_base << 32 | unit) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z % 1000000) < rack->opts.fault_percent * 10000.0;
}

static int plug_new_unit(struct eng_rack *rack, struct pos *p)
{
    if (rack->opts.dfu)
        return plug_new_dfu_unit(rack, p);
    struct eng_vfb_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.serial, sizeof(cfg.serial), "SIM%06X%04u", rack->serial_base & 0xffffffu,
             rack->plugged + 1);
    cfg.max_download = rack->opts.max_download;
    cfg.pace_mbps = rack->opts.pace_mbps;
    cfg.info_lines = rack->opts.info_lines;
    cfg.ab_slots = rack->opts.ab_slots;
    cfg.keep_data = rack->opts.keep_data;
    cfg.no_hash = rack->opts.no_hash;
    if (rack->opts.product)
        snprintf(cfg.product, sizeof(cfg.product), "%s", rack->opts.product);
    if (p->plugged == 0)
        for (unsigned i = 0; i < p->n_faults; i++)
            if (eng_vfb_parse_fault(&cfg, p->faults[i]) != 0)
                return ST_EINVAL;
    if (rack->opts.fault_percent > 0 && draws_fault(rack, rack->plugged + 1)) {
        unsigned kinds = sizeof(random_faults) / sizeof(random_faults[0]);
        if (eng_vfb_parse_fault(&cfg, random_faults[rack->random_faults++ % kinds]) != 0)
            return ST_EINVAL;
    }
    struct unit *u = calloc(1, sizeof(*u));
    if (!u)
        return ST_ENOMEM;
    int rc = eng_vfb_new(&cfg, &u->dev);
    if (rc) {
        free(u);
        return rc;
    }
    u->pos = p;
    u->next = rack->units;
    rack->units = u;
    p->unit = u;
    p->plugged++;
    rack->plugged++;
    return attach(rack, u);
}

static bool may_plug(const struct eng_rack *rack)
{
    return !rack->stopping && (rack->opts.max_units == 0 || rack->plugged < rack->opts.max_units);
}

static void pull_unit(struct eng_rack *rack, struct pos *p)
{
    struct unit *u = p->unit;
    if (!u)
        return;
    p->unit = NULL;
    u->retired = true;
    if (u->t && u->ddev)
        eng_vdt_unplug(u->t);
    else if (u->t)
        eng_vt_unplug(u->t); /* GONE: the engine hears the device left */
    unit_maybe_free(rack, u);
}

static void on_timer(uv_timer_t *timer)
{
    struct pos *p = timer->data;
    struct eng_rack *rack = p->rack;
    enum pos_action act = p->action;
    p->action = ACT_NONE;
    switch (act) {
    case ACT_PLUG:
        if (may_plug(rack) && !p->unit)
            plug_new_unit(rack, p);
        if (p->unit && p->number == rack->opts.flap_position) {
            p->action = ACT_PULL; /* whatever its session is doing */
            uv_timer_start(&p->timer, on_timer, rack->opts.flap_ms, 0);
        }
        break;
    case ACT_REATTACH:
        if (p->unit && !p->unit->t && !rack->stopping)
            attach(rack, p->unit);
        break;
    case ACT_PULL:
        pull_unit(rack, p);
        if (may_plug(rack)) {
            p->action = ACT_PLUG;
            uv_timer_start(&p->timer, on_timer, rack->opts.replug_ms / 2 + 1, 0);
        }
        break;
    case ACT_NONE:
        break;
    }
}

int eng_rack_new(uv_loop_t *loop, struct eng_engine *eng, const struct eng_rack_options *opts,
                 struct eng_rack **out)
{
    if (opts->count == 0 || opts->count > 999)
        return ST_EINVAL;
    struct eng_rack *rack = calloc(1, sizeof(*rack));
    if (!rack)
        return ST_ENOMEM;
    rack->pos = calloc(opts->count, sizeof(*rack->pos));
    if (!rack->pos) {
        free(rack);
        return ST_ENOMEM;
    }
    rack->loop = loop;
    rack->eng = eng;
    rack->opts = *opts;
    if (!rack->opts.reenum_ms)
        rack->opts.reenum_ms = 300;
    rack->serial_base = opts->seed ? opts->seed : (uint32_t)(uv_hrtime() ^ (uint64_t)getpid());
    for (unsigned i = 0; i < opts->count; i++) {
        struct pos *p = &rack->pos[i];
        p->rack = rack;
        p->number = i + 1;
        snprintf(p->port, sizeof(p->port), "virt-%02u", i + 1);
        uv_timer_init(loop, &p->timer);
        p->timer.data = p;
    }
    rack->open_timers = opts->count;
    *out = rack;
    return 0;
}

int eng_rack_add_fault(struct eng_rack *rack, unsigned position, const char *spec)
{
    struct eng_vfb_config probe;
    struct eng_vdfu_config dprobe;
    memset(&probe, 0, sizeof(probe));
    memset(&dprobe, 0, sizeof(dprobe));
    if (position < 1 || position > rack->opts.count)
        return ST_ERANGE;
    int bad =
        rack->opts.dfu ? eng_vdfu_parse_fault(&dprobe, spec) : eng_vfb_parse_fault(&probe, spec);
    if (bad != 0 || strlen(spec) >= 80)
        return ST_EINVAL;
    struct pos *p = &rack->pos[position - 1];
    if (p->n_faults == MAX_FAULTS_PER_POSITION)
        return ST_ERANGE;
    snprintf(p->faults[p->n_faults++], sizeof(p->faults[0]), "%s", spec);
    return 0;
}

int eng_rack_add_fault_spec(struct eng_rack *rack, const char *spec)
{
    char *end;
    unsigned long n = strtoul(spec, &end, 10);
    if (end == spec || *end != ':')
        return ST_EINVAL;
    return eng_rack_add_fault(rack, (unsigned)n, end + 1);
}

int eng_rack_start(struct eng_rack *rack)
{
    for (unsigned i = 0; i < rack->opts.count; i++) {
        struct pos *p = &rack->pos[i];
        p->action = ACT_PLUG;
        uv_timer_start(&p->timer, on_timer, (uint64_t)i * rack->opts.plug_interval_ms, 0);
    }
    return 0;
}

void eng_rack_result_shown(struct eng_rack *rack, const char *port)
{
    if (rack->stopping || rack->opts.replug_ms == 0)
        return;
    for (unsigned i = 0; i < rack->opts.count; i++) {
        struct pos *p = &rack->pos[i];
        if (strcmp(p->port, port) != 0)
            continue;
        if (p->action == ACT_NONE) {
            p->action = ACT_PULL;
            uv_timer_start(&p->timer, on_timer, rack->opts.replug_ms, 0);
        }
        return;
    }
}

unsigned eng_rack_units_plugged(const struct eng_rack *rack)
{
    return rack->plugged;
}

struct eng_vfb *eng_rack_device(struct eng_rack *rack, unsigned position)
{
    if (position < 1 || position > rack->opts.count)
        return NULL;
    struct pos *p = &rack->pos[position - 1];
    if (p->unit)
        return p->unit->dev;
    /* the last unit that was here, if it still exists */
    for (struct unit *u = rack->units; u; u = u->next)
        if (u->pos == p)
            return u->dev;
    return NULL;
}

struct eng_vdfu *eng_rack_dfu_device(struct eng_rack *rack, unsigned position)
{
    if (position < 1 || position > rack->opts.count)
        return NULL;
    struct pos *p = &rack->pos[position - 1];
    if (p->unit)
        return p->unit->ddev;
    for (struct unit *u = rack->units; u; u = u->next)
        if (u->pos == p)
            return u->ddev;
    return NULL;
}

static void timer_closed(uv_handle_t *h)
{
    struct pos *p = h->data;
    struct eng_rack *rack = p->rack;
    if (--rack->open_timers == 0 && rack->stop_cb)
        rack->stop_cb(rack, rack->stop_user_data);
}

void eng_rack_stop(struct eng_rack *rack, void (*cb)(struct eng_rack *rack, void *user_data),
                   void *user_data)
{
    rack->stopping = true;
    rack->stop_cb = cb;
    rack->stop_user_data = user_data;
    for (unsigned i = 0; i < rack->opts.count; i++)
        uv_close((uv_handle_t *)&rack->pos[i].timer, timer_closed);
}

void eng_rack_free(struct eng_rack *rack)
{
    if (!rack)
        return;
    struct unit *u = rack->units;
    while (u) {
        struct unit *next = u->next;
        eng_vfb_free(u->dev);
        eng_vdfu_free(u->ddev);
        free(u);
        u = next;
    }
    free(rack->pos);
    free(rack);
}
