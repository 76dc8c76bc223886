/*
 * ui_model: what the screen shows, kept from engine events; no drawing.
 *
 * The headless printer and the dashboard both read it. A slot shows a
 * final result only once the station reports that the session's record is
 * committed (ui_model_committed), never on the engine's word alone.
 */
#ifndef UI_MODEL_H
#define UI_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/engine.h"

enum ui_slot_state {
    UI_SLOT_EMPTY,
    UI_SLOT_WAITING,  /* device present, intake paused */
    UI_SLOT_WORKING,
    UI_SLOT_SAVING,   /* result known, record not yet committed */
    UI_SLOT_PASS,
    UI_SLOT_FAIL,
    UI_SLOT_ABORTED,
};

struct ui_slot {
    char name[64];
    char port[64];
    char serial[64];
    char step[96];
    char reason[256];
    enum ui_slot_state state;
    unsigned step_index, step_count;
    uint64_t bytes_done, bytes_total;
    int last_pct_bucket;      /* headless prints progress at 25 % steps */
    int64_t started_ms;
};

struct ui_model {
    struct ui_slot *slots;
    unsigned n_slots, cap_slots;
    unsigned passed, failed, aborted, in_progress;
    bool db_error;
};

void ui_model_init(struct ui_model *m);
void ui_model_free(struct ui_model *m);

/* Update from an engine event; returns the slot it concerns (or NULL). */
struct ui_slot *ui_model_event(struct ui_model *m, const struct eng_event *ev);

/* The record of a session on `slot` is committed with `result`. */
struct ui_slot *ui_model_committed(struct ui_model *m, const char *slot, enum eng_result result,
                                   const char *reason);

const char *ui_slot_state_name(enum ui_slot_state s);

#endif
