#include "ui/view.h"

#include <string.h>

static unsigned div_up(unsigned a, unsigned b)
{
    return (a + b - 1) / b;
}

static void keep_visible(struct ui_view *v, unsigned n_slots)
{
    struct ui_layout *l = &v->lay;
    if (n_slots == 0 || v->sel >= n_slots)
        v->sel = n_slots ? n_slots - 1 : 0;
    if (l->kind == UI_LAYOUT_TOO_SMALL || l->per_row <= 0 || l->rows_visible <= 0) {
        v->top_row = 0;
        return;
    }
    unsigned row = v->sel / (unsigned)l->per_row;
    unsigned vis = (unsigned)l->rows_visible;
    if (row < v->top_row)
        v->top_row = row;
    if (row >= v->top_row + vis)
        v->top_row = row - vis + 1;
    if (v->top_row + vis > l->n_rows)
        v->top_row = l->n_rows > vis ? l->n_rows - vis : 0;
}

void ui_view_layout(struct ui_view *v, int cols, int lines, unsigned n_slots)
{
    struct ui_layout *l = &v->lay;
    unsigned n = n_slots ? n_slots : 1;
    memset(l, 0, sizeof(*l));
    l->cols = cols;
    l->lines = lines;
    if (cols < UI_MIN_COLS || lines < UI_MIN_LINES) {
        l->kind = UI_LAYOUT_TOO_SMALL;
        keep_visible(v, n_slots);
        return;
    }
    l->footer_events = lines >= 36 ? 3 : lines >= 20 ? 2 : 1;
    l->grid_y = UI_HEADER_LINES;
    l->grid_h = lines - UI_HEADER_LINES - l->footer_events - 1;

    /* Tiles when every slot fits as a tile, else one line per slot
     * (several side by side on a wide terminal), scrolling if need be. */
    unsigned per_row = (unsigned)cols / UI_TILE_MIN_W;
    if (per_row > n)
        per_row = n;
    unsigned rows = div_up(n, per_row);
    if (per_row >= 1 && rows * UI_TILE_LINES <= (unsigned)l->grid_h) {
        l->kind = UI_LAYOUT_TILES;
        l->cell_w = cols / (int)per_row;
        if (l->cell_w > 48)
            l->cell_w = 48;
        l->cell_h =
            rows * (UI_TILE_LINES + 1) <= (unsigned)l->grid_h ? UI_TILE_LINES + 1 : UI_TILE_LINES;
    } else {
        per_row = (unsigned)cols / UI_LINE_MIN_W;
        if (per_row < 1)
            per_row = 1;
        if (per_row > n)
            per_row = n;
        rows = div_up(n, per_row);
        l->kind = UI_LAYOUT_LINES;
        l->cell_w = cols / (int)per_row;
        l->cell_h = 1;
    }
    l->per_row = (int)per_row;
    l->n_rows = rows;
    l->rows_visible = l->grid_h / l->cell_h;
    keep_visible(v, n_slots);
}

static enum ui_action move(struct ui_view *v, unsigned n, long delta)
{
    if (n == 0)
        return UI_ACTION_NONE;
    long to = (long)v->sel + delta;
    if (to < 0)
        to = delta < -1 ? 0 : (long)v->sel;
    if (to >= (long)n)
        to = delta > 1 ? (long)n - 1 : (long)v->sel;
    if ((unsigned)to == v->sel)
        return UI_ACTION_NONE;
    v->sel = (unsigned)to;
    keep_visible(v, n);
    return UI_ACTION_REDRAW;
}

static enum ui_action ask_quit(struct ui_view *v, const struct ui_model *m)
{
    if (m->stopping)
        return UI_ACTION_NONE;
    if (m->in_progress == 0)
        return UI_ACTION_QUIT;
    v->screen = UI_SCREEN_CONFIRM_QUIT;
    return UI_ACTION_REDRAW;
}

static enum ui_action grid_key(struct ui_view *v, const struct ui_model *m, int key)
{
    unsigned n = m->n_slots;
    long row = v->lay.per_row > 0 ? v->lay.per_row : 1;
    long page = row * (v->lay.rows_visible > 1 ? v->lay.rows_visible : 1);
    switch (key) {
    case UI_KEY_UP:
    case 'k':
        return v->sel >= (unsigned)row ? move(v, n, -row) : UI_ACTION_NONE;
    case UI_KEY_DOWN:
    case 'j':
        return v->sel + (unsigned)row < n ? move(v, n, row) : UI_ACTION_NONE;
    case UI_KEY_LEFT:
    case 'h':
        return move(v, n, -1);
    case UI_KEY_RIGHT:
    case 'l':
        return move(v, n, 1);
    case UI_KEY_PGUP:
        return move(v, n, -page);
    case UI_KEY_PGDN:
        return move(v, n, page);
    case UI_KEY_HOME:
    case 'g':
        return move(v, n, -(long)v->sel);
    case UI_KEY_END:
    case 'G':
        return move(v, n, (long)n - 1 - (long)v->sel);
    case UI_KEY_ENTER:
        if (n == 0)
            return UI_ACTION_NONE;
        v->screen = UI_SCREEN_DETAIL;
        v->detail_top = 0;
        return UI_ACTION_REDRAW;
    default:
        return UI_ACTION_NONE;
    }
}

static enum ui_action detail_key(struct ui_view *v, const struct ui_model *m, int key)
{
    switch (key) {
    case UI_KEY_ESC:
    case UI_KEY_ENTER:
        v->screen = UI_SCREEN_GRID;
        return UI_ACTION_REDRAW;
    case UI_KEY_UP:
    case 'k':
        if (v->detail_top == 0)
            return UI_ACTION_NONE;
        v->detail_top--;
        return UI_ACTION_REDRAW;
    case UI_KEY_DOWN:
    case 'j':
        /* the drawing code clamps it to the content */
        v->detail_top++;
        return UI_ACTION_REDRAW;
    case UI_KEY_LEFT:
    case 'h':
        v->detail_top = 0;
        return move(v, m->n_slots, -1);
    case UI_KEY_RIGHT:
    case 'l':
        v->detail_top = 0;
        return move(v, m->n_slots, 1);
    default:
        return UI_ACTION_NONE;
    }
}

enum ui_action ui_view_key(struct ui_view *v, const struct ui_model *m, int key)
{
    switch (v->screen) {
    case UI_SCREEN_CONFIRM_QUIT:
        if (key == 'y' || key == 'Y') {
            v->screen = UI_SCREEN_GRID;
            return m->stopping ? UI_ACTION_REDRAW : UI_ACTION_QUIT;
        }
        if (key == 'n' || key == 'N' || key == UI_KEY_ESC || key == 'q') {
            v->screen = UI_SCREEN_GRID;
            return UI_ACTION_REDRAW;
        }
        return UI_ACTION_NONE;
    case UI_SCREEN_HELP:
        v->screen = UI_SCREEN_GRID;
        return UI_ACTION_REDRAW;
    case UI_SCREEN_DETAIL:
    case UI_SCREEN_GRID:
        break;
    }
    switch (key) {
    case 'q':
    case 'Q':
        /* a watcher's quit ends only the watcher: nothing to confirm */
        return v->read_only ? UI_ACTION_QUIT : ask_quit(v, m);
    case 'p':
    case 'P':
        return v->read_only ? UI_ACTION_NONE : UI_ACTION_PAUSE_TOGGLE;
    case '?':
        v->screen = UI_SCREEN_HELP;
        return UI_ACTION_REDRAW;
    default:
        break;
    }
    return v->screen == UI_SCREEN_DETAIL ? detail_key(v, m, key) : grid_key(v, m, key);
}
