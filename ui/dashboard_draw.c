/*
 * What goes where on the dashboard. Everything is drawn from the model and
 * the view on an erased stdscr; ncurses sends only the difference to the
 * terminal, so redrawing all of it is what keeps it simple and flicker-free.
 *
 *   header   station, recipe, RUNNING/PAUSED, uptime; counters, yield, units/h
 *   grid     a tile per slot (or a line per slot), the selected one marked
 *   footer   the last events; the keys (or the quit question)
 *
 * Text from devices (serials, INFO lines, reasons) is shown through put(),
 * which drops control characters and never writes past its width.
 */
#define NCURSES_WIDECHAR 1
#include <curses.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <wchar.h>

#include "ui/dashboard_internal.h"

enum { P_GREEN = 1, P_RED, P_YELLOW, P_CYAN, P_MAGENTA };

struct dc {
    const struct ui_model *m;
    struct ui_view *v;
    const struct ui__screen *sc;
    int64_t now;
    int label_w;
};

void ui__colors_init(struct ui__screen *sc)
{
    short bg = -1;
    if (!sc->color)
        return;
    if (use_default_colors() == ERR)
        bg = COLOR_BLACK;
    init_pair(P_GREEN, COLOR_GREEN, bg);
    init_pair(P_RED, COLOR_RED, bg);
    init_pair(P_YELLOW, COLOR_YELLOW, bg);
    init_pair(P_CYAN, COLOR_CYAN, bg);
    init_pair(P_MAGENTA, COLOR_MAGENTA, bg);
}

static attr_t pair(const struct dc *c, short p)
{
    return c->sc->color ? COLOR_PAIR(p) : A_NORMAL;
}

/* ---- text ---- */

/* One UTF-8 character at s into *wc; returns its length, or 0 when the
 * bytes are not valid UTF-8 (then the caller shows one '?'). */
static int utf8_decode(const unsigned char *s, wchar_t *wc)
{
    unsigned c = s[0];
    int n;
    unsigned v;
    if (c < 0x80) {
        *wc = (wchar_t)c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10ffff)) ||
        (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *wc = (wchar_t)v;
    return n;
}

/*
 * Draw `s` at (y, x) in at most `w` columns with `attr`. With `ellipsis`,
 * text that does not fit ends in "…" (or "~"). Returns the columns used.
 */
static int put_ex(const struct dc *c, int y, int x, int w, attr_t attr, bool ellipsis,
                  const char *s)
{
    wchar_t buf[512];
    int n = 0, cols = 0;
    bool cut = false;
    if (w <= 0 || !s)
        return 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p && n < (int)(sizeof(buf) / sizeof(buf[0])) - 1) {
        wchar_t wc;
        int len = c->sc->utf8 ? utf8_decode(p, &wc) : (*p < 0x80 ? 1 : 0);
        if (len == 0) {
            wc = L'?';
            len = 1;
        } else if (!c->sc->utf8) {
            wc = (wchar_t)*p;
        }
        if (wc < 0x20 || (wc >= 0x7f && wc < 0xa0))
            wc = L'?';
        int cw = c->sc->utf8 ? wcwidth(wc) : 1;
        if (cw < 0) {
            wc = L'?';
            cw = 1;
        }
        if (cols + cw > w) {
            cut = true;
            break;
        }
        buf[n++] = wc;
        cols += cw;
        p += len;
    }
    if (ellipsis && (cut || *p)) {
        /* make room for the mark */
        while (n > 0 && cols + 1 > w) {
            int cw = c->sc->utf8 ? wcwidth(buf[n - 1]) : 1;
            cols -= cw > 0 ? cw : 1;
            n--;
        }
        buf[n++] = c->sc->utf8 ? L'\u2026' : L'~';
        cols++;
    }
    buf[n] = L'\0';
    attrset(attr);
    if (c->sc->utf8) {
        mvaddnwstr(y, x, buf, n);
    } else {
        char nb[512];
        for (int i = 0; i < n; i++)
            nb[i] = (char)buf[i];
        mvaddnstr(y, x, nb, n);
    }
    attrset(A_NORMAL);
    return cols;
}

static int put(const struct dc *c, int y, int x, int w, attr_t attr, const char *s)
{
    return put_ex(c, y, x, w, attr, true, s);
}

static int putf(const struct dc *c, int y, int x, int w, attr_t attr, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int putf(const struct dc *c, int y, int x, int w, attr_t attr, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return put(c, y, x, w, attr, buf);
}

/* Display width of a plain ASCII/UTF-8 string, as put() would draw it. */
static int width_of(const struct dc *c, const char *s)
{
    int cols = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        wchar_t wc;
        int len = c->sc->utf8 ? utf8_decode(p, &wc) : 1;
        int cw = len && c->sc->utf8 ? wcwidth(wc) : 1;
        cols += cw > 0 ? cw : 1;
        p += len ? len : 1;
    }
    return cols;
}

/* Right-align `s` so it ends at column x_end (exclusive). */
static void put_right(const struct dc *c, int y, int x_end, int w, attr_t attr, const char *s)
{
    int sw = width_of(c, s);
    if (sw > w)
        sw = w;
    put(c, y, x_end - sw, sw, attr, s);
}

/* A clock: "m:ss" or "h:mm:ss". */
static void fmt_clock(char *buf, size_t n, int64_t ms)
{
    int64_t s = ms / 1000;
    if (s >= 3600)
        snprintf(buf, n, "%d:%02d:%02d", (int)(s / 3600), (int)(s / 60 % 60), (int)(s % 60));
    else
        snprintf(buf, n, "%d:%02d", (int)(s / 60), (int)(s % 60));
}

/* A session's time: "12.3s" under a minute, then a clock. */
static void fmt_duration(char *buf, size_t n, int64_t ms)
{
    if (ms < 60000)
        snprintf(buf, n, "%.1fs", (double)ms / 1000.0);
    else
        fmt_clock(buf, n, ms);
}

static void fmt_rate(char *buf, size_t n, double bps)
{
    if (bps <= 0)
        buf[0] = '\0';
    else
        snprintf(buf, n, "%.1f MB/s", bps / 1e6);
}

/* Split `s` for a first line of at most w columns at a space; returns the
 * byte length of the first line; *rest points at the second. */
static size_t wrap(const char *s, int w, const char **rest)
{
    size_t len = strlen(s);
    if ((int)len <= w) {
        *rest = s + len;
        return len;
    }
    size_t cut = (size_t)w;
    while (cut > 0 && s[cut] != ' ')
        cut--;
    if (cut == 0) {
        cut = (size_t)w;
        while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80)
            cut--;
        *rest = s + cut;
        return cut;
    }
    *rest = s + cut + 1;
    return cut;
}

/* ---- pieces ---- */

static attr_t state_attr(const struct dc *c, enum ui_slot_state st)
{
    bool col = c->sc->color;
    switch (st) {
    case UI_SLOT_PASS:
        return col ? pair(c, P_GREEN) | A_REVERSE | A_BOLD : A_BOLD;
    case UI_SLOT_FAIL:
        return col ? pair(c, P_RED) | A_REVERSE | A_BOLD : A_REVERSE | A_BOLD;
    case UI_SLOT_WORKING:
    case UI_SLOT_SAVING:
        return pair(c, P_YELLOW) | A_BOLD;
    case UI_SLOT_WAITING:
        return col ? pair(c, P_CYAN) | A_REVERSE | A_BOLD : A_UNDERLINE | A_BOLD;
    case UI_SLOT_ABORTED:
        return pair(c, P_MAGENTA) | A_BOLD;
    case UI_SLOT_PRESENT:
        return A_NORMAL;
    case UI_SLOT_SKIPPED:
        return pair(c, P_CYAN) | A_BOLD;
    case UI_SLOT_EMPTY:
    default:
        return A_DIM;
    }
}

static const char *state_word(enum ui_slot_state st)
{
    return st == UI_SLOT_EMPTY ? "empty" : ui_slot_state_name(st);
}

/* A bar of w columns at pct percent. */
static void bar(const struct dc *c, int y, int x, int w, int pct, attr_t attr)
{
    if (w < 3)
        return;
    if (c->sc->utf8) {
        static const wchar_t *const part = L" \u258f\u258e\u258d\u258c\u258b\u258a\u2589";
        wchar_t buf[256];
        if (w > 255)
            w = 255;
        int eighths = w * 8 * pct / 100, i = 0;
        for (; i < eighths / 8 && i < w; i++)
            buf[i] = L'\u2588';
        if (i < w && eighths % 8)
            buf[i++] = part[eighths % 8];
        int filled = i;
        for (; i < w; i++)
            buf[i] = L'\u2591';
        attrset(attr);
        mvaddnwstr(y, x, buf, filled);
        attrset(A_DIM);
        mvaddnwstr(y, x + filled, buf + filled, w - filled);
        attrset(A_NORMAL);
    } else {
        char buf[256];
        int inner = (w > 255 ? 255 : w) - 2, k = inner * pct / 100;
        buf[0] = '[';
        memset(buf + 1, '#', (size_t)k);
        memset(buf + 1 + k, '.', (size_t)(inner - k));
        buf[inner + 1] = ']';
        mvaddnstr(y, x, buf, inner + 2);
    }
}

static bool shows_progress(enum ui_slot_state st)
{
    return st == UI_SLOT_WORKING || st == UI_SLOT_SAVING || st == UI_SLOT_PASS;
}

static const char *slot_text(const struct ui_slot *s)
{
    switch (s->state) {
    case UI_SLOT_FAIL:
    case UI_SLOT_ABORTED:
    case UI_SLOT_SKIPPED:
        return ui_slot_short_reason(s);
    case UI_SLOT_WAITING:
        return "waiting: intake paused";
    case UI_SLOT_PRESENT:
        return "device present";
    default:
        return "";
    }
}

/* A tile: w columns x UI_TILE_LINES lines.
 *   virt-03                 FAIL
 *   device replied FAIL: injected
 *   fault
 *   0:01           SIM1A2B3C0003     */
static void tile(const struct dc *c, int y, int x, int w, const struct ui_slot *s, bool sel)
{
    char t[64], r[32];
    const char *mark = sel ? (c->sc->utf8 ? "\u25b6" : ">") : " ";
    put(c, y, x, 1, A_BOLD, mark);
    const char *word = state_word(s->state);
    int ww = (int)strlen(word) + 2;
    put(c, y, x + 1, w - 1 - ww - 1, sel ? A_REVERSE | A_BOLD : A_BOLD, s->name);
    putf(c, y, x + w - ww, ww, state_attr(c, s->state), " %s ", word);

    if (shows_progress(s->state)) {
        int pct = ui_slot_percent(s);
        bar(c, y + 1, x + 1, w - 6, pct, pair(c, s->state == UI_SLOT_PASS ? P_GREEN : P_YELLOW));
        putf(c, y + 1, x + w - 5, 5, A_NORMAL, "%4d%%", pct);
        const char *step = s->state == UI_SLOT_PASS     ? "done"
                           : s->state == UI_SLOT_SAVING ? "saving record"
                                                        : s->step;
        fmt_rate(r, sizeof(r), s->state == UI_SLOT_WORKING ? s->rate_bps : ui_slot_average_bps(s));
        int rw = r[0] ? (int)strlen(r) + 1 : 0;
        put(c, y + 2, x + 1, w - 1 - rw, A_NORMAL, step);
        put_right(c, y + 2, x + w, rw, A_NORMAL, r);
    } else {
        const char *rest, *text = slot_text(s);
        size_t first = wrap(text, w - 1, &rest);
        char line[256];
        snprintf(line, sizeof(line), "%.*s", (int)first, text);
        attr_t a = s->state == UI_SLOT_FAIL ? pair(c, P_RED) | A_BOLD : A_NORMAL;
        put(c, y + 1, x + 1, w - 1, a, line);
        put(c, y + 2, x + 1, w - 1, a, rest);
    }
    t[0] = '\0';
    if (s->started_ms)
        fmt_duration(t, sizeof(t), ui_slot_elapsed_ms(s, c->now));
    int tw = put(c, y + 3, x + 1, 9, A_NORMAL, t);
    if (s->serial[0]) {
        int room = w - 1 - tw - 1;
        int sw = width_of(c, s->serial);
        put(c, y + 3, x + w - (sw < room ? sw : room), room, A_DIM, s->serial);
    }
}

/* One line per slot:
 *   >virt-01  WORKING  [####....]  62% flash:system   3.9 MB/s  0:01  SIM1A2B3C0001 */
static void line(const struct dc *c, int y, int x, int w, const struct ui_slot *s, bool sel)
{
    char t[32], r[32];
    int col = x;
    const char *mark = sel ? (c->sc->utf8 ? "\u25b6" : ">") : " ";
    put(c, y, col, 1, A_BOLD, mark);
    col += 1;
    put(c, y, col, c->label_w, sel ? A_REVERSE | A_BOLD : A_BOLD, s->name);
    col += c->label_w + 1;
    putf(c, y, col, 9, state_attr(c, s->state), " %-7s ", state_word(s->state));
    col += 10;
    int end = x + w;
    int serial_w = s->serial[0] && end - col >= 40 ? width_of(c, s->serial) : 0;
    if (serial_w > 16)
        serial_w = 16;
    int right = serial_w ? end - serial_w - 1 : end;
    if (serial_w)
        put(c, y, end - serial_w, serial_w, A_DIM, s->serial);
    if (shows_progress(s->state)) {
        int pct = ui_slot_percent(s);
        int bw = (right - col) / 5;
        bw = bw < 6 ? 6 : bw > 20 ? 20 : bw;
        if (col + bw + 5 > right)
            return;
        bar(c, y, col, bw, pct, pair(c, s->state == UI_SLOT_PASS ? P_GREEN : P_YELLOW));
        col += bw;
        putf(c, y, col, 5, A_NORMAL, "%4d%%", pct);
        col += 6;
        t[0] = '\0';
        if (s->started_ms)
            fmt_duration(t, sizeof(t), ui_slot_elapsed_ms(s, c->now));
        fmt_rate(r, sizeof(r), s->state == UI_SLOT_WORKING ? s->rate_bps : ui_slot_average_bps(s));
        int tail = 9 + 1 + 7; /* rate, elapsed */
        const char *step = s->state == UI_SLOT_PASS     ? "done"
                           : s->state == UI_SLOT_SAVING ? "saving"
                                                        : s->step;
        if (right - col >= tail + 6) {
            put(c, y, col, right - col - tail - 1, A_NORMAL, step);
            put_right(c, y, right - 8, 9, A_NORMAL, r);
            put_right(c, y, right - 1, 7, A_NORMAL, t);
        } else {
            put(c, y, col, right - col - 1, A_NORMAL, step);
        }
    } else {
        attr_t a = s->state == UI_SLOT_FAIL ? pair(c, P_RED) | A_BOLD : A_NORMAL;
        put(c, y, col, right - col - 1, a, slot_text(s));
    }
}

static void header(const struct dc *c)
{
    const struct ui_model *m = c->m;
    int cols = c->v->lay.cols;
    char up[32], buf[256];
    const char *bar_sep = c->sc->utf8 ? " \u2502 " : " | ";
    attr_t hdr = A_REVERSE;

    attrset(hdr);
    mvhline(0, 0, ' ', cols);
    attrset(A_NORMAL);
    fmt_clock(up, sizeof(up), m->started_ms ? c->now - m->started_ms : 0);
    int x = put(c, 0, 0, cols, hdr | A_BOLD, " station ");
    x += put(c, 0, x, cols - x, hdr | A_BOLD, m->station);
    snprintf(buf, sizeof(buf), "%s%s %s%s", bar_sep, m->recipe, m->recipe_version, bar_sep);
    x += put(c, 0, x, cols - x, hdr, buf);
    const char *mode = m->stopping ? "STOPPING" : m->paused ? "PAUSED" : "RUNNING";
    attr_t ma = m->stopping ? pair(c, P_MAGENTA) | A_BOLD
                : m->paused ? pair(c, P_YELLOW) | A_BOLD
                            : (c->sc->color ? pair(c, P_GREEN) | A_BOLD : hdr | A_BOLD);
    x += putf(c, 0, x, cols - x, ma, " %s ", mode);
    if (m->db_error)
        x += put(c, 0, x, cols - x, c->sc->color ? pair(c, P_RED) | A_BOLD : A_BOLD | A_UNDERLINE,
                 " DB ERROR ");
    if (c->v->read_only)
        x += put(c, 0, x, cols - x, hdr, " (watching, read-only)");
    snprintf(buf, sizeof(buf), "%sup %s ", bar_sep, up);
    put(c, 0, x, cols - x, hdr, buf);

    /* counters: the header counts are those the database committed */
    x = 1;
    x += put(c, 1, x, cols - x, A_NORMAL, "passed ");
    x += putf(c, 1, x, cols - x, pair(c, P_GREEN) | A_BOLD, "%u", m->passed);
    x += put(c, 1, x, cols - x, A_NORMAL, "  failed ");
    x += putf(c, 1, x, cols - x, m->failed ? pair(c, P_RED) | A_BOLD : A_BOLD, "%u", m->failed);
    x += putf(c, 1, x, cols - x, A_NORMAL, "  aborted %u", m->aborted);
    if (m->skipped)
        x += putf(c, 1, x, cols - x, A_NORMAL, "  skipped %u", m->skipped);
    x += putf(c, 1, x, cols - x, A_NORMAL, "  in progress %u", m->in_progress);
    double y;
    bool narrow = cols < 100;
    const char *yl = narrow ? "yield" : "yield today";
    if (ui_model_yield_today(m, c->now, &y))
        snprintf(buf, sizeof(buf), "%s%s %.1f%%", bar_sep, yl, y);
    else
        snprintf(buf, sizeof(buf), "%s%s -", bar_sep, yl);
    x += put(c, 1, x, cols - x, A_NORMAL, buf);
    snprintf(buf, sizeof(buf), "%s%.0f %s", bar_sep, ui_model_units_per_hour(m, c->now),
             narrow ? "/h" : "units/h");
    put(c, 1, x, cols - x, A_NORMAL, buf);
}

static void footer(const struct dc *c, const char *keys, attr_t keys_attr)
{
    const struct ui_layout *l = &c->v->lay;
    int n = l->footer_events;
    for (int i = 0; i < n; i++) {
        const struct ui_note *note = ui_model_recent(c->m, (unsigned)(n - 1 - i));
        int y = l->lines - 1 - n + i;
        if (!note)
            continue;
        time_t secs = (time_t)(note->t_ms / 1000);
        struct tm tm;
        char hhmmss[16] = "";
        if (localtime_r(&secs, &tm))
            strftime(hhmmss, sizeof(hhmmss), "%H:%M:%S", &tm);
        attr_t a = note->kind == UI_NOTE_PASS   ? pair(c, P_GREEN)
                   : note->kind == UI_NOTE_FAIL ? pair(c, P_RED)
                   : note->kind == UI_NOTE_WARN ? pair(c, P_YELLOW)
                   : note->kind == UI_NOTE_ERROR
                       ? (c->sc->color ? pair(c, P_RED) | A_REVERSE : A_REVERSE)
                       : A_NORMAL;
        int x = put(c, y, 1, 9, A_DIM, hhmmss) + 2;
        put(c, y, x, l->cols - x, a, note->text);
    }
    attrset(keys_attr);
    mvhline(l->lines - 1, 0, ' ', l->cols);
    attrset(A_NORMAL);
    put(c, l->lines - 1, 0, l->cols, keys_attr, keys);
}

/* A centred box of text lines over the grid. */
static void box_lines(const struct dc *c, const char *const *text, int n, attr_t attr)
{
    const struct ui_layout *l = &c->v->lay;
    int w = 0;
    for (int i = 0; i < n; i++)
        if (width_of(c, text[i]) > w)
            w = width_of(c, text[i]);
    w += 4;
    if (w > l->cols)
        w = l->cols;
    int h = n + 2;
    int y0 = l->grid_y + (l->grid_h - h) / 2, x0 = (l->cols - w) / 2;
    if (y0 < l->grid_y)
        y0 = l->grid_y;
    const char *h_line = c->sc->utf8 ? "\u2500" : "-";
    for (int y = 0; y < h && y0 + y < l->lines - 1; y++) {
        attrset(attr);
        mvhline(y0 + y, x0, ' ', w);
        attrset(A_NORMAL);
        if (y == 0 || y == h - 1) {
            char edge[1024];
            size_t k = 0;
            const char *l_c = c->sc->utf8 ? (y ? "\u2514" : "\u250c") : "+";
            const char *r_c = c->sc->utf8 ? (y ? "\u2518" : "\u2510") : "+";
            k += (size_t)snprintf(edge + k, sizeof(edge) - k, "%s", l_c);
            for (int i = 0; i < w - 2 && k + 4 < sizeof(edge); i++)
                k += (size_t)snprintf(edge + k, sizeof(edge) - k, "%s", h_line);
            snprintf(edge + k, sizeof(edge) - k, "%s", r_c);
            put_ex(c, y0 + y, x0, w, attr, false, edge);
        } else {
            const char *v_line = c->sc->utf8 ? "\u2502" : "|";
            put(c, y0 + y, x0, 1, attr, v_line);
            put(c, y0 + y, x0 + 2, w - 4, attr, text[y - 1]);
            put(c, y0 + y, x0 + w - 1, 1, attr, v_line);
        }
    }
}

/* ---- screens ---- */

static void grid(const struct dc *c)
{
    const struct ui_layout *l = &c->v->lay;
    const struct ui_model *m = c->m;
    if (m->n_slots == 0) {
        put(c, l->grid_y + 1, 2, l->cols - 2, A_DIM, "no device yet");
        return;
    }
    for (unsigned row = c->v->top_row;
         row < c->v->top_row + (unsigned)l->rows_visible && row < l->n_rows; row++) {
        for (int k = 0; k < l->per_row; k++) {
            unsigned i = row * (unsigned)l->per_row + (unsigned)k;
            if (i >= m->n_slots)
                break;
            int y = l->grid_y + (int)(row - c->v->top_row) * l->cell_h;
            int x = k * l->cell_w;
            if (l->kind == UI_LAYOUT_TILES)
                tile(c, y, x, l->cell_w - 1, &m->slots[i], i == c->v->sel);
            else
                line(c, y, x, l->cell_w - 1, &m->slots[i], i == c->v->sel);
        }
    }
}

#define DETAIL_LINES 96

struct dline {
    attr_t attr;
    char text[256];
};

static int add(struct dline *d, int n, attr_t attr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int add(struct dline *d, int n, attr_t attr, const char *fmt, ...)
{
    va_list ap;
    if (n >= DETAIL_LINES)
        return n;
    d[n].attr = attr;
    va_start(ap, fmt);
    vsnprintf(d[n].text, sizeof(d[n].text), fmt, ap);
    va_end(ap);
    return n + 1;
}

/* Add `text` wrapped to w columns, indented. */
static int add_wrapped(struct dline *d, int n, attr_t attr, int w, const char *text)
{
    const char *rest = text;
    while (*rest && n < DETAIL_LINES) {
        const char *next;
        size_t k = wrap(rest, w - 4, &next);
        n = add(d, n, attr, "  %.*s", (int)k, rest);
        rest = next;
    }
    return n;
}

static void detail(const struct dc *c)
{
    const struct ui_layout *l = &c->v->lay;
    struct dline d[DETAIL_LINES];
    const struct ui_slot *s = &c->m->slots[c->v->sel];
    char t[32], r[32];
    int n = 0;

    t[0] = '\0';
    if (s->started_ms)
        fmt_duration(t, sizeof(t), ui_slot_elapsed_ms(s, c->now));
    n = add(d, n, A_BOLD, "%s  %s   serial %s   port %s", s->name, ui_slot_state_name(s->state),
            s->serial[0] ? s->serial : "-", s->port[0] ? s->port : "-");
    if (s->session_id)
        n = add(d, n, A_NORMAL, "session %lld   time %s   %d%%   %.1f MB written",
                (long long)s->session_id, t, ui_slot_percent(s),
                (double)(s->bytes_before + s->bytes_done) / 1e6);
    else
        n = add(d, n, A_DIM, "no session on this slot yet");
    n = add(d, n, A_NORMAL, "%s", "");
    if (s->n_steps) {
        n = add(d, n, A_BOLD | A_UNDERLINE, " %-3s %-24s %-8s %8s  %s", "#", "step", "result",
                "time", "detail");
        if (s->steps_dropped)
            n = add(d, n, A_DIM, " ... %u earlier step(s)", s->steps_dropped);
        for (unsigned i = 0; i < s->n_steps; i++) {
            const struct ui_step *st = &s->steps[i];
            int64_t end = st->ended_ms ? st->ended_ms : c->now;
            const char *res = st->ended_ms ? eng_result_name(st->result) : "running";
            attr_t a = st->result == ENG_RESULT_FAIL      ? pair(c, P_RED) | A_BOLD
                       : st->result == ENG_RESULT_ABORTED ? pair(c, P_MAGENTA)
                       : !st->ended_ms                    ? pair(c, P_YELLOW)
                                                          : A_NORMAL;
            n = add(d, n, a, " %-3u %-24s %-8s %7.2fs  %s", s->steps_dropped + i + 1, st->name, res,
                    (double)(end - st->started_ms) / 1000.0, st->detail);
        }
        n = add(d, n, A_NORMAL, "%s", "");
    }
    unsigned ni = ui_slot_info_count(s);
    if (ni) {
        n = add(d, n, A_BOLD | A_UNDERLINE, " INFO (last %u of %u)", ni, s->n_info);
        for (unsigned i = 0; i < ni; i++)
            n = add(d, n, A_NORMAL, "  %s", ui_slot_info_line(s, i));
        n = add(d, n, A_NORMAL, "%s", "");
    }
    if (s->reason[0]) {
        n = add(d, n, pair(c, P_RED) | A_BOLD | A_UNDERLINE, " Error%s%s",
                s->failed_step[0] ? " in " : "", s->failed_step);
        n = add_wrapped(d, n, pair(c, P_RED) | A_BOLD, l->cols, s->reason);
    } else if (s->state == UI_SLOT_PASS) {
        fmt_rate(r, sizeof(r), ui_slot_average_bps(s));
        n = add(d, n, pair(c, P_GREEN) | A_BOLD, " PASS: record committed   %s", r);
    }

    if (c->v->detail_top > n - l->grid_h)
        c->v->detail_top = n - l->grid_h > 0 ? n - l->grid_h : 0;
    for (int i = 0; i < l->grid_h && c->v->detail_top + i < n; i++) {
        const struct dline *dl = &d[c->v->detail_top + i];
        put(c, l->grid_y + i, 1, l->cols - 2, dl->attr, dl->text);
    }
}

static void help(const struct dc *c)
{
    bool u = c->sc->utf8;
    bool ro = c->v->read_only;
    const char *text[] = {
        "Keys",
        u ? "\u2190\u2191\u2193\u2192 or h j k l   move the selection"
          : "arrows or h j k l   move the selection",
        "PgUp PgDn Home End  scroll",
        "Enter               open the slot's detail (Esc or Enter closes)",
        ro ? "p                   (only at the station: this view is read-only)"
           : "p                   pause / resume intake (new devices wait)",
        ro ? "q                   stop watching (the station carries on)"
           : "q                   quit (asks while sessions run; they are recorded ABORTED)",
        "?                   this help",
        "",
        "States",
        "PASS / FAIL         result committed to the database; pull the unit",
        "WORKING / SAVING    flashing / result being recorded",
        "WAITING             device present, intake paused",
        "",
        "any key closes this help",
    };
    box_lines(c, text, (int)(sizeof(text) / sizeof(text[0])), A_NORMAL);
}

void ui__draw(const struct ui_model *m, struct ui_view *v, const struct ui__screen *sc,
              int64_t now_ms)
{
    struct dc c = {.m = m, .v = v, .sc = sc, .now = now_ms, .label_w = 4};
    const struct ui_layout *l = &v->lay;
    char keys[256];
    bool u = sc->utf8;

    if (l->kind == UI_LAYOUT_TOO_SMALL) {
        putf(&c, 0, 0, l->cols, A_BOLD, "terminal too small (%dx%d); need %dx%d", l->cols, l->lines,
             UI_MIN_COLS, UI_MIN_LINES);
        if (l->lines > 1)
            putf(&c, 1, 0, l->cols, A_NORMAL, "passed %u failed %u in progress %u", m->passed,
                 m->failed, m->in_progress);
        return;
    }
    for (unsigned i = 0; i < m->n_slots; i++) {
        int w = width_of(&c, m->slots[i].name);
        if (w > c.label_w)
            c.label_w = w > 16 ? 16 : w;
    }
    header(&c);
    attr_t keys_attr = A_REVERSE;
    if (v->screen == UI_SCREEN_DETAIL && m->n_slots) {
        detail(&c);
        if (v->read_only)
            snprintf(keys, sizeof(keys), " Esc/Enter close  %s scroll  %s slot  q quit  ? help",
                     u ? "\u2191\u2193" : "j/k", u ? "\u2190\u2192" : "h/l");
        else
            snprintf(keys, sizeof(keys),
                     " Esc/Enter close  %s scroll  %s slot  p %s  q quit  ? help",
                     u ? "\u2191\u2193" : "j/k", u ? "\u2190\u2192" : "h/l",
                     m->paused ? "resume" : "pause");
    } else {
        grid(&c);
        unsigned first = v->top_row * (unsigned)(l->per_row > 0 ? l->per_row : 1);
        unsigned last = first + (unsigned)(l->rows_visible * l->per_row);
        if (last > m->n_slots)
            last = m->n_slots;
        char range[64] = "";
        if (first > 0 || last < m->n_slots)
            snprintf(range, sizeof(range), "  slots %u-%u of %u", first + 1, last, m->n_slots);
        if (v->read_only)
            snprintf(keys, sizeof(keys), " %s select  Enter detail  q quit watching  ? help%s",
                     u ? "\u2190\u2191\u2193\u2192/hjkl" : "arrows/hjkl", range);
        else
            snprintf(keys, sizeof(keys), " %s select  Enter detail  p %s  q quit  ? help%s",
                     u ? "\u2190\u2191\u2193\u2192/hjkl" : "arrows/hjkl",
                     m->paused ? "resume" : "pause", range);
    }
    if (v->screen == UI_SCREEN_HELP) {
        help(&c);
    } else if (v->screen == UI_SCREEN_CONFIRM_QUIT) {
        char q[128];
        snprintf(q, sizeof(q), "%u session(s) running.", m->in_progress);
        const char *text[] = {q, "Quit and record them ABORTED?  y / n"};
        attr_t a = sc->color ? pair(&c, P_YELLOW) | A_REVERSE | A_BOLD : A_REVERSE | A_BOLD;
        box_lines(&c, text, 2, a);
        snprintf(keys, sizeof(keys), " Quit? %u session(s) running will be recorded ABORTED  y / n",
                 m->in_progress);
        keys_attr = a;
    }
    footer(&c, keys, keys_attr);
}
