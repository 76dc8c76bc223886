/*
 * ui_model: what the screen shows, kept from engine events; no drawing,
 * no curses (STYLE "htop / tmux": the model knows nothing of terminals).
 *
 * The headless printer and the dashboard both read it. A slot shows a
 * final result only once the station reports that the session's record is
 * committed (ui_model_committed), never on the engine's word alone; the
 * header counters are counted there too, so they equal the database's.
 *
 * Lifecycle: ui_model_init(), then ui_model_event() for every engine event
 * and ui_model_committed() from the database's commit callback, on the
 * loop thread; ui_model_free() at the end. Every setter marks the model
 * dirty; the one place that redraws takes the flag (ui_model_take_dirty).
 *
 * Memory is bounded per slot: the last UI_STEPS_MAX steps and the last
 * UI_INFO_MAX INFO lines of the slot's current (or last) session, and the
 * last UI_NOTES_MAX station-wide events.
 */
#ifndef UI_MODEL_H
#define UI_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/engine.h"

#define UI_STEPS_MAX 16
#define UI_INFO_MAX 12
#define UI_NOTES_MAX 32
#define UI_TEXT_MAX 96
#define UI_UPH_MINUTES 60

enum ui_slot_state {
    UI_SLOT_EMPTY,
    UI_SLOT_WAITING, /* device present, intake paused */
    UI_SLOT_WORKING,
    UI_SLOT_SAVING, /* result known, record not yet committed */
    UI_SLOT_PASS,
    UI_SLOT_FAIL,
    UI_SLOT_ABORTED,
    UI_SLOT_PRESENT, /* device present, no session yet (images still loading) */
    UI_SLOT_SKIPPED, /* committed as neither PASS, FAIL nor ABORTED (serial already done) */
};

/* One step of a slot's session, for the detail view. */
struct ui_step {
    char name[40];
    int64_t started_ms;
    int64_t ended_ms;       /* 0 while the step runs */
    enum eng_result result; /* ENG_RESULT_NONE while it runs */
    uint64_t bytes;
    char detail[UI_TEXT_MAX]; /* reply or failure detail */
};

struct ui_slot {
    char name[64];
    char port[64];
    char serial[64];
    char step[96];
    char failed_step[48];
    char reason[256]; /* full failure reason (FAIL / ABORTED) */
    enum ui_slot_state state;
    int64_t session_id;
    unsigned step_index, step_count;
    uint64_t bytes_done, bytes_total; /* within the current transfer */
    uint64_t bytes_before;            /* bytes of this session's finished steps */
    uint64_t session_total;           /* the recipe's image bytes: 100 % */
    uint64_t session_bytes;           /* bytes written when the session ended */
    double rate_bps;                  /* current transfer rate, 0 when not transferring */
    int64_t rate_t_ms;                /* last rate sample */
    uint64_t rate_bytes;
    int last_pct_bucket; /* headless prints progress at 25 % steps */
    int64_t started_ms;  /* session start, 0 when none yet */
    int64_t ended_ms;    /* session end, 0 while it runs */
    struct ui_step steps[UI_STEPS_MAX];
    unsigned n_steps;       /* entries used in steps[] */
    unsigned steps_dropped; /* older steps no longer kept */
    char info[UI_INFO_MAX][UI_TEXT_MAX];
    unsigned n_info; /* INFO lines seen this session (ring index) */
};

enum ui_note_kind {
    UI_NOTE_INFO,
    UI_NOTE_PASS,
    UI_NOTE_FAIL,
    UI_NOTE_WARN,
    UI_NOTE_ERROR,
};

struct ui_note {
    int64_t t_ms;
    enum ui_note_kind kind;
    char text[160];
};

struct ui_model {
    struct ui_slot *slots; /* sorted by name (natural order: virt-2 < virt-10) */
    unsigned n_slots, cap_slots;
    /* committed results since start: equal to the database's */
    unsigned passed, failed, aborted, skipped;
    unsigned in_progress; /* sessions begun and not yet ended */
    bool db_error, paused, stopping;
    bool dirty;
    char station[64], recipe[64], recipe_version[32];
    int64_t started_ms;
    /* results today (local calendar day) */
    int day_key;
    unsigned today_passed, today_failed;
    /* finished units per minute over the last hour */
    int64_t minute_key[UI_UPH_MINUTES];
    unsigned minute_count[UI_UPH_MINUTES];
    /* recent events, a ring */
    struct ui_note notes[UI_NOTES_MAX];
    unsigned n_notes; /* notes ever added */
};

void ui_model_init(struct ui_model *m);
void ui_model_free(struct ui_model *m);

/* Header identity; `now_ms` starts the uptime. Strings are copied. */
void ui_model_set_station(struct ui_model *m, const char *station, const char *recipe,
                          const char *version, int64_t now_ms);

/* Update from an engine event; returns the slot it concerns (or NULL).
 * The pointer is valid until the next call that may add a slot. */
struct ui_slot *ui_model_event(struct ui_model *m, const struct eng_event *ev);

/* The record of a session on `slot` is committed with `result` at `t_ms`:
 * the slot shows it and the counters count it. */
struct ui_slot *ui_model_committed(struct ui_model *m, const char *slot, enum eng_result result,
                                   const char *reason, int64_t t_ms);

void ui_model_set_paused(struct ui_model *m, bool paused);
void ui_model_set_stopping(struct ui_model *m);
void ui_model_set_db_error(struct ui_model *m);

/* Add a line to the recent-events ring (the dashboard's footer). */
void ui_model_note(struct ui_model *m, int64_t t_ms, enum ui_note_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The i-th most recent note (0 = newest), or NULL. */
const struct ui_note *ui_model_recent(const struct ui_model *m, unsigned i);

/* Returns whether anything changed since the last call, and clears it. */
bool ui_model_take_dirty(struct ui_model *m);

struct ui_slot *ui_model_find(struct ui_model *m, const char *name);

/* Passed / (passed + failed) today in percent; false when nothing today. */
bool ui_model_yield_today(const struct ui_model *m, int64_t now_ms, double *pct);

/* Finished units (PASS or FAIL) per hour over the last hour; while the
 * station has run for less than an hour the rate is extrapolated from its
 * uptime (at least one minute). */
double ui_model_units_per_hour(const struct ui_model *m, int64_t now_ms);

/* Session progress 0..100 by bytes (by steps when the recipe has none). */
int ui_slot_percent(const struct ui_slot *s);

/* Session time: running, or frozen at the end; 0 when none. */
int64_t ui_slot_elapsed_ms(const struct ui_slot *s, int64_t now_ms);

/* Average rate of the ended session, bytes per second. */
double ui_slot_average_bps(const struct ui_slot *s);

/* The failure reason without the step and phase prefixes
 * ("flash:system: flash: device replied FAIL: x" -> "device replied FAIL: x"). */
const char *ui_slot_short_reason(const struct ui_slot *s);

/* The i-th kept INFO line (0 = oldest kept) and how many are kept. */
unsigned ui_slot_info_count(const struct ui_slot *s);
const char *ui_slot_info_line(const struct ui_slot *s, unsigned i);

const char *ui_slot_state_name(enum ui_slot_state s);

#endif
