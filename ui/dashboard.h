/*
 * ui_dash: the ncurses dashboard. A rack view of every slot (tiles or one
 * line per slot, whichever fits), a header with the counters, a footer
 * with the last events and the keys; a detail screen per slot.
 *
 * It draws a struct ui_model that the station keeps up to date, at most
 * once per redraw period (default 100 ms, so 10 redraws a second) and only
 * when the model or the view is dirty (or once a second for the clocks).
 * Keys arrive through the loop (uv_poll_t on the input fd), resizes through
 * libuv's SIGWINCH watcher; nothing here blocks the loop. Keys that concern
 * the station (pause, quit) are returned as actions through `on_action`.
 *
 * Only ui/dashboard.c and ui/dashboard_draw.c include curses.
 *
 * Lifecycle: ui_dash_new() takes over the terminal (and calls
 * setlocale(LC_ALL, "") so that UTF-8 terminals get line drawing;
 * LC_NUMERIC stays "C"); ui_dash_close() stops its handles, after whose
 * callback (or once the loop has run) ui_dash_free() gives the terminal
 * back (endwin) and frees it.
 */
#ifndef UI_DASHBOARD_H
#define UI_DASHBOARD_H

#include <stdbool.h>
#include <stdio.h>
#include <uv.h>

#include "ui/model.h"
#include "ui/view.h"

struct ui_dash;

struct ui_dash_options {
    int in_fd;          /* keys; -1 for none */
    FILE *out;          /* the terminal; NULL = stdout */
    const char *term;   /* terminal type; NULL = $TERM */
    int cols, lines;    /* force a size (a fake terminal); 0 = ask the terminal */
    unsigned redraw_ms; /* 0 = 100 */
    bool no_signals;    /* do not watch SIGWINCH (several dashboards in one process) */
    bool read_only;     /* `station watch`: no pause key; q quits the watcher at once */
};

/* Called on the loop thread with UI_ACTION_PAUSE_TOGGLE or UI_ACTION_QUIT
 * (only UI_ACTION_QUIT when read_only). */
typedef void (*ui_dash_action_cb)(enum ui_action action, void *user_data);

/* Take over the terminal and start drawing `model` (which must outlive the
 * dashboard). 0 and *out, or a negative st_error code (ST_EIO when the
 * terminal cannot be set up); on failure the terminal is left as it was. */
int ui_dash_new(uv_loop_t *loop, struct ui_model *model, const struct ui_dash_options *opts,
                ui_dash_action_cb on_action, void *user_data, struct ui_dash **out);

/* Stop the timer and the key and signal watchers; `cb` (may be NULL) runs
 * once they are closed. The screen stays as last drawn until free. */
void ui_dash_close(struct ui_dash *d, void (*cb)(struct ui_dash *d, void *user_data),
                   void *user_data);

/* Give the terminal back and free. Only after ui_dash_close() has called
 * back (or the loop has run to its end); NULL is accepted. */
void ui_dash_free(struct ui_dash *d);

/* Draw now if dirty (the timer does this on its own). Returns whether it drew. */
bool ui_dash_redraw(struct ui_dash *d);

/* Redraws so far. */
unsigned long ui_dash_redraws(const struct ui_dash *d);

/* Whether it draws with UTF-8 line drawing / with colour. */
bool ui_dash_utf8(const struct ui_dash *d);
bool ui_dash_color(const struct ui_dash *d);

#endif
