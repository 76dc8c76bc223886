/*
 * ui_headless: the station's output when there is no dashboard: one line
 * per event, for a log file, a pipe or the journal.
 *
 * Text (the default):
 *   2026-11-22T01:30:00.123Z virt-03 SIM1A2B3C0003 flash:system 50%
 *   2026-11-22T01:30:00.456Z virt-03 SIM1A2B3C0003 PASS 1.21s 5242880 bytes
 *
 * JSON Lines (UI_LOG_JSON, `--log-format json`): the same lines as one
 * object each, with "t" (the same UTC time), "t_ms" (Unix ms) and "event"
 * first, then the fields of the text line by name:
 *   {"t":"...","t_ms":...,"event":"progress","slot":"virt-03","serial":"SIM...","step":"flash:system","pct":50}
 *   {"t":"...","t_ms":...,"event":"result","slot":"virt-03","serial":"SIM...","result":"PASS",
 *    "duration_ms":1210,"bytes":5242880}
 * Events: arrived, waiting, session_begin, progress, info, step_end,
 * session_end, left, result, note. An unknown serial is null.
 *
 * Progress is printed at 25 % steps; results only once committed.
 * Every function accepts a NULL printer and then does nothing (the station
 * has none while the dashboard runs).
 */
#ifndef UI_HEADLESS_H
#define UI_HEADLESS_H

#include <stdio.h>

#include "engine/engine.h"
#include "ui/model.h"

struct ui_headless;

enum ui_log_format {
    UI_LOG_TEXT,
    UI_LOG_JSON,
};

int ui_headless_new(FILE *out, struct ui_model *model, struct ui_headless **out_h);
void ui_headless_free(struct ui_headless *h);

void ui_headless_set_format(struct ui_headless *h, enum ui_log_format format);

/* Print what `ev` changed (the model must already be updated). */
void ui_headless_event(struct ui_headless *h, const struct eng_event *ev);

/* Print the committed result of a session. */
void ui_headless_result(struct ui_headless *h, const char *slot, const char *serial,
                        enum eng_result result, const char *reason, int64_t duration_ms,
                        uint64_t bytes);

/* A station-level message ("DB ERROR: ...", "ready: 2 images"). */
void ui_headless_note(struct ui_headless *h, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
