/*
 * ui_headless: the station's output when there is no dashboard: one line
 * per event, for a log file, a pipe or the journal.
 *
 *   2026-11-22T01:30:00.123Z virt-03 SIM1A2B3C0003 flash:system 50%
 *   2026-11-22T01:30:00.456Z virt-03 SIM1A2B3C0003 PASS 1.21s 5242880 bytes
 *
 * Progress is printed at 25 % steps; results only once committed.
 */
#ifndef UI_HEADLESS_H
#define UI_HEADLESS_H

#include <stdio.h>

#include "engine/engine.h"
#include "ui/model.h"

struct ui_headless;

int ui_headless_new(FILE *out, struct ui_model *model, struct ui_headless **out_h);
void ui_headless_free(struct ui_headless *h);

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
