/*
 * ui_view: the dashboard's view state (selection, scrolling, which screen
 * is open) and its layout, and the key handler that turns keys into
 * actions. No curses here: the drawing files translate the terminal's keys
 * into UI_KEY_* codes and draw what the view says (STYLE "htop / tmux":
 * input handlers return actions; the station carries them out).
 *
 * Lifecycle: a plain struct, zeroed; ui_view_layout() before each use
 * (every redraw and every key) with the terminal's size and the number of
 * slots, so a resize or a new slot is picked up without bookkeeping.
 */
#ifndef UI_VIEW_H
#define UI_VIEW_H

#include <stdbool.h>

#include "ui/model.h"

/* Keys besides plain characters (which are passed as themselves). */
enum {
    UI_KEY_UP = 0x110000,
    UI_KEY_DOWN,
    UI_KEY_LEFT,
    UI_KEY_RIGHT,
    UI_KEY_ENTER,
    UI_KEY_ESC,
    UI_KEY_PGUP,
    UI_KEY_PGDN,
    UI_KEY_HOME,
    UI_KEY_END,
};

enum ui_action {
    UI_ACTION_NONE,
    UI_ACTION_REDRAW,       /* the view changed: draw it */
    UI_ACTION_PAUSE_TOGGLE, /* pause or resume intake */
    UI_ACTION_QUIT,         /* stop the station (confirmed if sessions ran) */
};

enum ui_screen {
    UI_SCREEN_GRID,
    UI_SCREEN_DETAIL,
    UI_SCREEN_HELP,
    UI_SCREEN_CONFIRM_QUIT,
};

enum ui_layout_kind {
    UI_LAYOUT_TILES, /* one tile of UI_TILE_LINES lines per slot */
    UI_LAYOUT_LINES, /* one line per slot */
    UI_LAYOUT_TOO_SMALL,
};

#define UI_MIN_COLS 40
#define UI_MIN_LINES 10
#define UI_TILE_MIN_W 28 /* cell width, one column of it a gap */
#define UI_TILE_LINES 4
#define UI_LINE_MIN_W 60
#define UI_HEADER_LINES 2

struct ui_layout {
    int cols, lines; /* the terminal */
    enum ui_layout_kind kind;
    int footer_events;  /* event lines above the keys line */
    int grid_y, grid_h; /* rows of the slot area */
    int per_row;        /* slots side by side */
    int cell_w, cell_h; /* a slot's cell, gaps included */
    int rows_visible;   /* rows of cells that fit in grid_h */
    unsigned n_rows;    /* rows of cells for every slot */
};

struct ui_view {
    struct ui_layout lay;
    enum ui_screen screen;
    unsigned sel;     /* selected slot index */
    unsigned top_row; /* first row of cells shown */
    int detail_top;   /* first line of the detail screen shown */
    bool read_only;   /* `station watch`: q quits at once, p does nothing */
};

/* Compute the layout for a cols x lines terminal and n slots, and keep the
 * selection in range and visible. */
void ui_view_layout(struct ui_view *v, int cols, int lines, unsigned n_slots);

/* Handle one key; the view changes itself and says what the caller must do. */
enum ui_action ui_view_key(struct ui_view *v, const struct ui_model *m, int key);

#endif
