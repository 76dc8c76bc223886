/*
 * The engine: slots keyed by port, image loading, the event callback and
 * an orderly shutdown. Sessions live in session.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <sys/time.h>

#include "common/st_error.h"
#include "engine/engine_internal.h"

int64_t eng_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

const char *eng_result_name(enum eng_result r)
{
    switch (r) {
    case ENG_RESULT_PASS:
        return "PASS";
    case ENG_RESULT_FAIL:
        return "FAIL";
    case ENG_RESULT_ABORTED:
        return "ABORTED";
    case ENG_RESULT_SKIPPED:
        return "SKIPPED";
    default:
        return "NONE";
    }
}

void eng__emit(struct eng_engine *eng, struct eng_event *ev)
{
    if (!ev->t_ms)
        ev->t_ms = eng_now_ms();
    if (eng->cb)
        eng->cb(ev, eng->user_data);
}

static void emit_slot(struct eng_engine *eng, struct eng_slot *slot, enum eng_event_type type)
{
    struct eng_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.slot = slot->name;
    ev.port = slot->port;
    ev.usb_serial = slot->t ? slot->t->usb_serial : "";
    ev.serial = ev.usb_serial;
    ev.product = "";
    ev.step = "";
    eng__emit(eng, &ev);
}

static void maybe_closed(struct eng_engine *eng)
{
    if (!eng->closing || eng->pending > 0 || eng->active > 0 || !eng->close_cb)
        return;
    void (*cb)(struct eng_engine *, void *) = eng->close_cb;
    eng->close_cb = NULL;
    cb(eng, eng->close_user_data);
}

void eng__pending_done(struct eng_engine *eng)
{
    eng->pending--;
    maybe_closed(eng);
}

int eng_engine_new(uv_loop_t *loop, const struct eng_options *opts, eng_event_cb cb,
                   void *user_data, struct eng_engine **out)
{
    if (sodium_init() < 0)
        return ST_EINTERNAL;
    struct eng_engine *eng = calloc(1, sizeof(*eng));
    if (!eng)
        return ST_ENOMEM;
    eng->loop = loop;
    if (opts)
        eng->opts = *opts;
    if (!eng->opts.reply_timeout_ms)
        eng->opts.reply_timeout_ms = 5000;
    if (!eng->opts.min_rate_bps)
        eng->opts.min_rate_bps = 1000000;
    if (!eng->opts.reenum_timeout_ms)
        eng->opts.reenum_timeout_ms = 10000;
    if (!eng->opts.chunk_size)
        eng->opts.chunk_size = 1u << 20;
    eng->next_session_id = eng->opts.first_session_id > 0 ? eng->opts.first_session_id : 1;
    eng->cb = cb;
    eng->user_data = user_data;
    *out = eng;
    return 0;
}

/* ---- slots ---- */

/* The slot a port belongs to: named by the configuration (several ports,
 * e.g. the USB2 and USB3 paths of one socket, may share a slot), or after
 * the port itself. The slot remembers the port it last saw. */
static struct eng_slot *slot_for_port(struct eng_engine *eng, const char *port, bool create)
{
    const char *name = eng->opts.slot_name ? eng->opts.slot_name(port, eng->user_data) : NULL;
    if (!name || !name[0])
        name = port;
    for (unsigned i = 0; i < eng->n_slots; i++) {
        if (!strcmp(eng->slots[i]->name, name)) {
            if (create && !eng->slots[i]->t)
                snprintf(eng->slots[i]->port, sizeof(eng->slots[i]->port), "%s", port);
            return eng->slots[i];
        }
    }
    if (!create)
        return NULL;
    if (eng->n_slots == eng->cap_slots) {
        unsigned cap = eng->cap_slots ? eng->cap_slots * 2 : 16;
        struct eng_slot **n = realloc(eng->slots, cap * sizeof(*n));
        if (!n)
            return NULL;
        eng->slots = n;
        eng->cap_slots = cap;
    }
    struct eng_slot *slot = calloc(1, sizeof(*slot));
    if (!slot)
        return NULL;
    snprintf(slot->name, sizeof(slot->name), "%s", name);
    snprintf(slot->port, sizeof(slot->port), "%s", port);
    eng->slots[eng->n_slots++] = slot;
    return slot;
}

static void transport_close_done(struct eng_transport *t, void *user_data)
{
    eng__pending_done(user_data);
}

void eng__close_transport(struct eng_engine *eng, struct eng_slot *slot)
{
    struct eng_transport *t = slot->t;
    if (!t)
        return;
    slot->t = NULL;
    slot->present = false;
    eng->pending++;
    t->ops->close(t, transport_close_done, eng);
}

static void try_start(struct eng_engine *eng, struct eng_slot *slot)
{
    if (!slot->t || !slot->present || slot->session || slot->latched != ENG_RESULT_NONE)
        return;
    struct eng_profile *prof = eng__profile_for(eng, slot->t);
    if (!prof || !prof->loaded || eng->closing)
        return;
    if (eng->paused) {
        emit_slot(eng, slot, ENG_EV_WAITING);
        return;
    }
    if (eng->opts.max_sessions && eng->active >= eng->opts.max_sessions)
        return; /* started when a running session ends */
    int rc = eng__session_start(eng, slot, prof);
    if (rc) {
        /* Out of memory for one session: the device waits for a replug. */
        slot->latched = ENG_RESULT_FAIL;
    }
}

void eng__start_waiting(struct eng_engine *eng)
{
    for (unsigned i = 0; i < eng->n_slots; i++)
        try_start(eng, eng->slots[i]);
}

void eng_engine_device_arrived(struct eng_engine *eng, struct eng_transport *t)
{
    if (eng->closing) {
        eng->pending++;
        t->ops->close(t, transport_close_done, eng);
        return;
    }
    struct eng_slot *slot = slot_for_port(eng, t->port, true);
    if (!slot) {
        eng->pending++;
        t->ops->close(t, transport_close_done, eng);
        return;
    }
    if (slot->t) {
        /* A new device on a port whose old one never said goodbye. */
        struct eng_transport *old = slot->t;
        eng_engine_device_left(eng, old);
        if (slot->t == old) {
            /* Still used by a session that is ending: the new device waits
             * its turn (eng__session_freed hands it over). One waits at most;
             * an older waiting one is superseded. */
            if (slot->queued) {
                eng->pending++;
                slot->queued->ops->close(slot->queued, transport_close_done, eng);
            }
            slot->queued = t;
            return;
        }
    }
    slot->t = t;
    slot->present = true;
    if (slot->session && eng__session_waits_for_device(slot->session)) {
        eng__session_device_back(slot->session);
        return;
    }
    slot->latched = ENG_RESULT_NONE;
    emit_slot(eng, slot, ENG_EV_ARRIVED);
    try_start(eng, slot);
}

void eng_engine_device_left(struct eng_engine *eng, struct eng_transport *t)
{
    struct eng_slot *slot = NULL;
    for (unsigned i = 0; i < eng->n_slots; i++)
        if (eng->slots[i]->t == t)
            slot = eng->slots[i];
    if (!slot || !slot->present)
        return;
    slot->present = false;
    if (slot->session) {
        /* The session closes the transport when it is done with it. */
        eng__session_device_left(slot->session);
        return;
    }
    eng__close_transport(eng, slot);
    slot->latched = ENG_RESULT_NONE;
    emit_slot(eng, slot, ENG_EV_LEFT);
}

void eng__session_freed(struct eng_engine *eng, struct eng_slot *slot, enum eng_result result)
{
    bool was_full = eng->opts.max_sessions && eng->active >= eng->opts.max_sessions;
    slot->session = NULL;
    slot->latched = result;
    eng->active--;
    if (!slot->present || eng->closing) {
        bool had = slot->t != NULL;
        eng__close_transport(eng, slot);
        if (had && !eng->closing) {
            slot->latched = ENG_RESULT_NONE;
            emit_slot(eng, slot, ENG_EV_LEFT);
        }
    }
    if (slot->queued) {
        struct eng_transport *next = slot->queued;
        slot->queued = NULL;
        if (eng->closing) {
            eng->pending++;
            next->ops->close(next, transport_close_done, eng);
        } else {
            eng_engine_device_arrived(eng, next);
        }
    }
    if (was_full && !eng->closing)
        eng__start_waiting(eng); /* a place is free for a waiting device */
    maybe_closed(eng);
}

void eng_engine_device_error(struct eng_engine *eng, const char *port, const char *message)
{
    struct eng_slot *slot = slot_for_port(eng, port, true);
    struct eng_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = ENG_EV_DEVICE_ERROR;
    ev.slot = slot ? slot->name : port;
    ev.port = port;
    ev.usb_serial = ev.serial = ev.product = ev.step = "";
    ev.text = message;
    ev.result = ENG_RESULT_FAIL;
    eng__emit(eng, &ev);
}

void eng_engine_pause(struct eng_engine *eng, bool paused)
{
    eng->paused = paused;
    if (!paused)
        eng__start_waiting(eng);
}

unsigned eng_engine_active_sessions(const struct eng_engine *eng)
{
    return eng->active;
}

/* ---- shutdown ---- */

void eng_engine_close(struct eng_engine *eng, void (*cb)(struct eng_engine *eng, void *user_data),
                      void *user_data)
{
    eng->closing = true;
    eng->close_cb = cb;
    eng->close_user_data = user_data;
    eng->pending++; /* hold: nothing completes while we walk the slots */
    for (unsigned i = 0; i < eng->n_slots; i++) {
        struct eng_slot *slot = eng->slots[i];
        if (slot->session)
            eng__session_abort(slot->session); /* its queued device goes when it ends */
        else
            eng__close_transport(eng, slot);
    }
    eng__pending_done(eng);
}

void eng_engine_free(struct eng_engine *eng)
{
    if (!eng)
        return;
    for (unsigned i = 0; i < eng->n_profiles; i++)
        eng__profile_unref(eng->profiles[i]);
    for (unsigned i = 0; i < eng->n_slots; i++)
        free(eng->slots[i]);
    free(eng->slots);
    free(eng);
}
