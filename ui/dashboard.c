/*
 * The dashboard's terminal and loop side: ncurses set-up, keys from a
 * uv_poll_t, SIGWINCH from a uv_signal_t, and the redraw timer that draws
 * at most once per period and only when something changed (the model's
 * dirty flag, a key that changed the view, a resize; or a second passed,
 * for the clocks). What is drawn is in dashboard_draw.c.
 */
#define NCURSES_WIDECHAR 1
#include "ui/dashboard.h"

#include <curses.h>
#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "common/st_error.h"
#include "ui/dashboard_internal.h"

struct ui_dash {
    uv_loop_t *loop;
    struct ui_model *model;
    struct ui_view view;
    struct ui__screen sc;
    SCREEN *screen;
    FILE *in, *out;
    int in_fd; /* our own descriptor for the keys, or -1 */
    uv_timer_t timer;
    uv_poll_t poll;
    uv_signal_t winch;
    bool polling, watching_winch;
    unsigned idle_wakeups; /* readable without a key: hung-up input */
    bool view_dirty, resized;
    int64_t last_draw_ms;
    unsigned long redraws;
    unsigned redraw_ms;
    ui_dash_action_cb on_action;
    void *user_data;
    int closing; /* handles still closing */
    void (*close_cb)(struct ui_dash *d, void *user_data);
    void *close_data;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void draw(struct ui_dash *d, int64_t now)
{
    if (d->resized) {
        /* a full repaint once after a resize; never clear() per frame */
        clearok(curscr, TRUE);
        d->resized = false;
    }
    ui_view_layout(&d->view, COLS, LINES, d->model->n_slots);
    werase(stdscr);
    ui__draw(d->model, &d->view, &d->sc, now);
    wnoutrefresh(stdscr);
    doupdate();
    d->redraws++;
    d->last_draw_ms = now;
    d->view_dirty = false;
}

bool ui_dash_redraw(struct ui_dash *d)
{
    int64_t now = wall_ms();
    bool dirty = ui_model_take_dirty(d->model);
    if (!dirty && !d->view_dirty && !d->resized && now - d->last_draw_ms < 1000)
        return false;
    draw(d, now);
    return true;
}

static void on_tick(uv_timer_t *t)
{
    ui_dash_redraw(t->data);
}

static int translate(int ch)
{
    switch (ch) {
    case KEY_UP:
        return UI_KEY_UP;
    case KEY_DOWN:
        return UI_KEY_DOWN;
    case KEY_LEFT:
        return UI_KEY_LEFT;
    case KEY_RIGHT:
        return UI_KEY_RIGHT;
    case KEY_ENTER:
    case '\r':
    case '\n':
        return UI_KEY_ENTER;
    case 27:
        return UI_KEY_ESC;
    case KEY_PPAGE:
        return UI_KEY_PGUP;
    case KEY_NPAGE:
        return UI_KEY_PGDN;
    case KEY_HOME:
        return UI_KEY_HOME;
    case KEY_END:
        return UI_KEY_END;
    default:
        return ch > 0 && ch < 0x7f ? ch : 0;
    }
}

static void stop_keys(struct ui_dash *d)
{
    if (d->polling) {
        uv_poll_stop(&d->poll);
        d->polling = false;
    }
}

static void on_keys(uv_poll_t *h, int status, int events)
{
    struct ui_dash *d = h->data;
    int ch, n = 0;
    if (status < 0) {
        stop_keys(d);
        return;
    }
    /* Everything pending now; ncurses never waits (nodelay, escdelay 0). */
    while (n < 256 && (ch = wgetch(stdscr)) != ERR) {
        n++;
        if (ch == KEY_RESIZE) {
            d->resized = true;
            continue;
        }
        int key = translate(ch);
        if (!key)
            continue;
        enum ui_action a = ui_view_key(&d->view, d->model, key);
        if (a == UI_ACTION_REDRAW)
            d->view_dirty = true;
        else if (a != UI_ACTION_NONE && d->on_action && !d->closing)
            d->on_action(a, d->user_data);
    }
    /* A hung-up terminal stays readable with nothing to read. */
    if (n == 0 && ((events & UV_DISCONNECT) || ++d->idle_wakeups > 64))
        stop_keys(d);
    else if (n)
        d->idle_wakeups = 0;
    if (d->view_dirty && !d->closing)
        ui_dash_redraw(d);
}

static void on_winch(uv_signal_t *h, int signum)
{
    struct ui_dash *d = h->data;
    struct winsize ws;
    if (ioctl(fileno(d->out), TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0)
        resizeterm(ws.ws_row, ws.ws_col);
    d->resized = true;
}

/* Ctrl-S is a key like any other while the dashboard runs. With the
 * terminal's output flow control on (IXON, the default), Ctrl-S stopped
 * the terminal's output: the loop then waited in its next write to the
 * terminal and every slot froze until Ctrl-Q (tests/test_dashboard.c).
 * ncurses keeps this as the program's mode and restores the shell's at
 * the end. */
static void no_flow_control(int fd)
{
    struct termios tio;
    if (fd < 0 || !isatty(fd) || tcgetattr(fd, &tio) != 0)
        return;
    tio.c_iflag &= ~(tcflag_t)IXON;
    if (tcsetattr(fd, TCSANOW, &tio) == 0)
        def_prog_mode();
}

/* A descriptor of our own for the keys: the terminal reopened, so that
 * the O_NONBLOCK that uv_poll_init() sets does not reach stdout through a
 * shared open file description (what libuv does for uv_tty_t too). */
static int open_keys(int in_fd)
{
    char name[256];
    if (in_fd < 0)
        return -1;
    if (isatty(in_fd) && ttyname_r(in_fd, name, sizeof(name)) == 0) {
        int fd = open(name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0)
            return fd;
    }
    return fcntl(in_fd, F_DUPFD_CLOEXEC, 3);
}

int ui_dash_new(uv_loop_t *loop, struct ui_model *model, const struct ui_dash_options *opts,
                ui_dash_action_cb on_action, void *user_data, struct ui_dash **out)
{
    struct ui_dash *d = calloc(1, sizeof(*d));
    if (!d)
        return ST_ENOMEM;
    d->loop = loop;
    d->model = model;
    d->on_action = on_action;
    d->user_data = user_data;
    d->out = opts->out ? opts->out : stdout;
    d->redraw_ms = opts->redraw_ms ? opts->redraw_ms : 100;
    d->view.read_only = opts->read_only;

    /* Line drawing only where the locale says UTF-8; numbers stay "C". */
    setlocale(LC_ALL, "");
    setlocale(LC_NUMERIC, "C");
    const char *cs = nl_langinfo(CODESET);
    d->sc.utf8 = cs && !strcmp(cs, "UTF-8");

    d->in_fd = open_keys(opts->in_fd);
    d->in = d->in_fd >= 0 ? fdopen(d->in_fd, "r") : fopen("/dev/null", "r");
    if (!d->in) {
        if (d->in_fd >= 0)
            close(d->in_fd);
        free(d);
        return ST_EIO;
    }
    fflush(d->out);
    d->screen = newterm(opts->term, d->out, d->in);
    if (!d->screen) {
        fclose(d->in);
        free(d);
        return ST_EIO;
    }
    set_term(d->screen);
    if (opts->cols > 0 && opts->lines > 0)
        resizeterm(opts->lines, opts->cols);
    cbreak(); /* not raw(): Ctrl-C still stops the station through SIGINT */
    noecho();
    nonl();
    no_flow_control(fileno(d->out));
    intrflush(stdscr, FALSE);
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(0); /* a lone Esc must not make the loop wait */
    leaveok(stdscr, TRUE);
    curs_set(0);
    /* ncurses flushes its output after every cursor move until the screen
     * has been through endwin() and back: a frame with 64 slots went to
     * the terminal as 170 writes of 20 bytes (1,700 a second). Once round
     * that trip, a frame is one write. Nothing is drawn yet. */
    endwin();
    doupdate();
    d->sc.color = has_colors();
    if (d->sc.color && start_color() == ERR)
        d->sc.color = false;
    ui__colors_init(&d->sc);

    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, on_tick, d->redraw_ms, d->redraw_ms);
    if (d->in_fd >= 0 && uv_poll_init(loop, &d->poll, d->in_fd) == 0) {
        d->poll.data = d;
        d->polling = uv_poll_start(&d->poll, UV_READABLE | UV_DISCONNECT, on_keys) == 0;
        if (!d->polling)
            uv_close((uv_handle_t *)&d->poll, NULL);
    } else {
        /* not pollable (a regular file): no keys */
        d->poll.data = NULL;
    }
    if (!opts->no_signals) {
        uv_signal_init(loop, &d->winch);
        d->winch.data = d;
        uv_signal_start(&d->winch, on_winch, SIGWINCH);
        d->watching_winch = true;
    }
    d->view_dirty = true;
    draw(d, wall_ms());
    *out = d;
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct ui_dash *d = h->data;
    if (--d->closing == 0 && d->close_cb)
        d->close_cb(d, d->close_data);
}

void ui_dash_close(struct ui_dash *d, void (*cb)(struct ui_dash *d, void *user_data),
                   void *user_data)
{
    if (d->closing)
        return;
    d->close_cb = cb;
    d->close_data = user_data;
    d->closing = 1;
    uv_close((uv_handle_t *)&d->timer, on_handle_closed);
    if (d->poll.data && !uv_is_closing((uv_handle_t *)&d->poll)) {
        d->closing++;
        uv_close((uv_handle_t *)&d->poll, on_handle_closed);
    }
    d->polling = false;
    if (d->watching_winch) {
        d->closing++;
        uv_close((uv_handle_t *)&d->winch, on_handle_closed);
    }
}

void ui_dash_free(struct ui_dash *d)
{
    if (!d)
        return;
    set_term(d->screen);
    endwin();
    delscreen(d->screen);
    fclose(d->in);
    free(d);
}

unsigned long ui_dash_redraws(const struct ui_dash *d)
{
    return d->redraws;
}

bool ui_dash_utf8(const struct ui_dash *d)
{
    return d->sc.utf8;
}

bool ui_dash_color(const struct ui_dash *d)
{
    return d->sc.color;
}
