/*
 * Shared by ui/dashboard.c (terminal, loop handles, keys) and
 * ui/dashboard_draw.c (what goes where on the screen). Not public.
 */
#ifndef UI_DASHBOARD_INTERNAL_H
#define UI_DASHBOARD_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "ui/model.h"
#include "ui/view.h"

struct ui__screen {
    bool utf8;  /* the locale's codeset is UTF-8: line drawing and blocks */
    bool color; /* has_colors(): pairs set up by ui__colors_init() */
};

/* Colour pairs; call once after start_color(). */
void ui__colors_init(struct ui__screen *sc);

/* Draw everything on stdscr (already erased) for the terminal size in
 * v->lay; the caller refreshes. */
void ui__draw(const struct ui_model *m, struct ui_view *v, const struct ui__screen *sc,
              int64_t now_ms);

#endif
