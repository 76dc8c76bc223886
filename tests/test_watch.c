/*
 * `station watch`: the model snapshots (ui/remote.c), the station's side
 * of the socket (station/publish.c) in process on a private loop, and the
 * real binaries in tmux: a station on the virtual rack and watchers in
 * other tmux sessions of the same size on a private server socket, read
 * with `tmux capture-pane -p` and driven with `tmux send-keys` (the
 * helpers follow tests/test_dashboard.c).
 *
 * In process:
 *  - a snapshot decodes to a model that encodes to the same bytes, and
 *    draws the same (INFO and notes rings included);
 *  - every truncation, a bad magic or version, an impossible count and
 *    random bytes are refused and leave the model alone;
 *  - a watcher that never reads is given at most one snapshot at a time
 *    (the rest are skipped, the loop never waits) and is disconnected once
 *    stalled; one that hangs up or writes to the station is dropped; the
 *    others carry on; every handle closes;
 *  - the socket has mode 0660; a live station's socket is refused, a stale
 *    one replaced, anything else at the path left alone.
 * In tmux:
 *  - two watchers show the same slot tiles and events as the station;
 *  - kill -9 of a watcher in the middle of a run changes nothing;
 *  - a watcher's p and q do not pause or stop the station; q ends the
 *    watcher alone (exit 0).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "common/st_error.h"
#include "station/publish.h"
#include "ui/model.h"
#include "ui/remote.h"
#include "helpers.h"

#define T0 1795000000000LL

/* ---- fixtures ---- */

struct fx {
    char dir[256];
    char db[300];
    char sock[300];
    char tmux_sock[64];
    bool started;
};

static int setup(void **state)
{
    static unsigned counter;
    struct fx *fx = calloc(1, sizeof(*fx));
    th_tmpdir("watch", fx->dir, sizeof(fx->dir));
    th_path(fx->db, sizeof(fx->db), fx->dir, "t.db");
    th_path(fx->sock, sizeof(fx->sock), fx->dir, "t.db.sock");
    snprintf(fx->tmux_sock, sizeof(fx->tmux_sock), "stwatch%d_%u", (int)getpid(), counter++);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (fx->started)
        th_tmux(fx->tmux_sock, "kill-server", NULL);
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

/* Run argv with stdio on /dev/null; at most limit_s; the exit status. */
static int run_argv(char *const argv[], int limit_s)
{
    return th_run((const char *const *)argv, NULL, NULL, NULL, limit_s);
}

/* ---- a model with something of everything ---- */

static const struct eng_image_info images[] = {
    {"boot", "(demo)", "", 1u << 20, false},
    {"system", "(demo)", "", 4u << 20, false},
};

static struct eng_event ev_of(enum eng_event_type type, const char *slot, int64_t t)
{
    struct eng_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.t_ms = t;
    ev.slot = slot;
    ev.port = slot;
    ev.serial = "";
    ev.usb_serial = "";
    return ev;
}

/* Slot i: PASS, FAIL, working with INFO lines, or plugged, by i % 4. */
static void fill_slot(struct ui_model *m, unsigned i, int64_t t)
{
    char slot[32], serial[32], info[64];
    snprintf(slot, sizeof(slot), "virt-%02u", i + 1);
    snprintf(serial, sizeof(serial), "SIM%08u", i + 1);
    struct eng_event ev = ev_of(ENG_EV_ARRIVED, slot, t);
    ev.serial = serial;
    ui_model_event(m, &ev);
    if (i % 4 == 3)
        return;
    ev = ev_of(ENG_EV_SESSION_BEGIN, slot, t);
    ev.session_id = i + 1;
    ev.session_started_ms = t;
    ev.step_count = 20;
    ev.n_images = 2;
    ev.images = images;
    ui_model_event(m, &ev);
    /* more steps than the model keeps, and more INFO lines */
    for (unsigned k = 0; k < UI_STEPS_MAX + 3; k++) {
        ev = ev_of(ENG_EV_STEP_BEGIN, slot, t + k * 10);
        ev.step = k % 2 ? "flash:system" : "getvar:product";
        ev.step_index = k;
        ev.step_count = 20;
        ev.step_started_ms = t + k * 10;
        ui_model_event(m, &ev);
        for (unsigned j = 0; j < 2; j++) {
            snprintf(info, sizeof(info), "step %u line %u \xc3\xa9t\xc3\xa9", k, j);
            ev = ev_of(ENG_EV_INFO, slot, t + k * 10 + 1);
            ev.text = info;
            ui_model_event(m, &ev);
        }
        ev = ev_of(ENG_EV_PROGRESS, slot, t + k * 10 + 5);
        ev.bytes_done = 1000 * k;
        ev.bytes_total = 100000;
        ui_model_event(m, &ev);
        if (i % 4 == 2 && k == UI_STEPS_MAX + 2)
            break; /* still working */
        ev = ev_of(ENG_EV_STEP_END, slot, t + k * 10 + 9);
        ev.result = ENG_RESULT_PASS;
        ev.bytes_done = 1000;
        ev.text = "OKAY";
        ui_model_event(m, &ev);
    }
    if (i % 4 == 2)
        return;
    ev = ev_of(ENG_EV_SESSION_END, slot, t + 500);
    ev.result = i % 4 ? ENG_RESULT_FAIL : ENG_RESULT_PASS;
    ev.failed_step = i % 4 ? "flash:system" : NULL;
    ev.text = i % 4 ? "flash:system: flash: device replied FAIL: injected fault" : NULL;
    ev.session_started_ms = t;
    ev.session_bytes = 5u << 20;
    ev.serial = serial;
    ui_model_event(m, &ev);
    ui_model_committed(m, slot, ev.result, ev.text, t + 510);
}

static void make_model(struct ui_model *m, unsigned slots)
{
    ui_model_init(m);
    ui_model_set_station(m, "line1", "demo-phone", "1.0", T0);
    for (unsigned i = 0; i < slots; i++)
        fill_slot(m, i, T0 + 1000 * i);
    for (unsigned i = 0; i < UI_NOTES_MAX + 5; i++)
        ui_model_note(m, T0 + i, (enum ui_note_kind)(i % 5), "note %u", i);
    ui_model_set_paused(m, true);
}

static void encode(const struct ui_model *m, uint8_t **buf, size_t *len)
{
    assert_int_equal(ui_remote_encode(m, buf, len), 0);
    assert_true(*len > UI_REMOTE_HEADER);
    assert_int_equal(ui_remote_frame_len(*buf), *len - UI_REMOTE_HEADER);
}

/* ---- snapshots ---- */

static void test_snapshot_round_trip(void **state)
{
    struct ui_model a, b;
    uint8_t *buf, *buf2;
    size_t len, len2;
    make_model(&a, 12);
    encode(&a, &buf, &len);
    ui_model_init(&b);
    assert_int_equal(ui_remote_decode(buf + UI_REMOTE_HEADER, len - UI_REMOTE_HEADER, &b), 0);
    assert_true(b.dirty);
    /* what the dashboard reads is all there */
    assert_string_equal(b.station, "line1");
    assert_string_equal(b.recipe_version, "1.0");
    assert_int_equal(b.n_slots, 12);
    assert_int_equal(b.passed, a.passed);
    assert_int_equal(b.failed, a.failed);
    assert_int_equal(b.in_progress, a.in_progress);
    assert_true(b.paused);
    assert_false(b.stopping);
    for (unsigned i = 0; i < 12; i++) {
        const struct ui_slot *x = &a.slots[i], *y = &b.slots[i];
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->state, y->state);
        assert_string_equal(x->serial, y->serial);
        assert_string_equal(x->reason, y->reason);
        assert_int_equal(ui_slot_percent(x), ui_slot_percent(y));
        assert_int_equal(x->n_steps, y->n_steps);
        assert_int_equal(x->steps_dropped, y->steps_dropped);
        assert_int_equal(ui_slot_info_count(x), ui_slot_info_count(y));
        for (unsigned k = 0; k < ui_slot_info_count(x); k++)
            assert_string_equal(ui_slot_info_line(x, k), ui_slot_info_line(y, k));
        assert_string_equal(ui_slot_short_reason(x), ui_slot_short_reason(y));
    }
    for (unsigned i = 0; i < UI_NOTES_MAX + 2; i++) {
        const struct ui_note *x = ui_model_recent(&a, i), *y = ui_model_recent(&b, i);
        assert_true((x == NULL) == (y == NULL));
        if (x)
            assert_string_equal(x->text, y->text);
    }
    assert_true(ui_model_units_per_hour(&a, T0 + 60000) == ui_model_units_per_hour(&b, T0 + 60000));
    /* and nothing else: the decoded model encodes to the same bytes */
    encode(&b, &buf2, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(buf, buf2, len);
    free(buf);
    free(buf2);
    ui_model_free(&a);
    ui_model_free(&b);
}

static void test_snapshot_refuses_garbage(void **state)
{
    struct ui_model a, b;
    uint8_t *buf;
    size_t len;
    make_model(&a, 5);
    encode(&a, &buf, &len);
    uint8_t *p = buf + UI_REMOTE_HEADER;
    size_t n = len - UI_REMOTE_HEADER;
    ui_model_init(&b);
    ui_model_set_station(&b, "before", "", "", 0);
    /* every truncation */
    for (size_t k = 0; k < n; k++)
        assert_int_equal(ui_remote_decode(p, k, &b), ST_EPROTO);
    /* trailing bytes */
    uint8_t *longer = malloc(n + 1);
    memcpy(longer, p, n);
    longer[n] = 0;
    assert_int_equal(ui_remote_decode(longer, n + 1, &b), ST_EPROTO);
    free(longer);
    /* magic, version */
    p[0] ^= 1;
    assert_int_equal(ui_remote_decode(p, n, &b), ST_EPROTO);
    p[0] ^= 1;
    p[4]++;
    assert_int_equal(ui_remote_decode(p, n, &b), ST_EPROTO);
    p[4]--;
    /* random bytes after a good header, and random everything */
    srand(7);
    uint8_t *junk = malloc(n);
    for (int round = 0; round < 2000; round++) {
        memcpy(junk, p, n);
        size_t from = round % 2 ? 0 : 5;
        for (size_t k = from; k < n; k++)
            if (rand() % 64 == 0)
                junk[k] = (uint8_t)rand();
        int rc = ui_remote_decode(junk, n, &b);
        assert_true(rc == 0 || rc == ST_EPROTO);
        if (rc == 0) {
            /* whatever decodes must be drawable: strings end, enums in range */
            for (unsigned i = 0; i < b.n_slots; i++) {
                assert_true(b.slots[i].state <= UI_SLOT_SKIPPED);
                assert_true(strlen(b.slots[i].name) < sizeof(b.slots[i].name));
                assert_true(b.slots[i].n_steps <= UI_STEPS_MAX);
            }
            ui_model_set_station(&b, "before", "", "", 0);
        }
    }
    free(junk);
    /* the model is untouched by a refusal */
    assert_string_equal(b.station, "before");
    /* a slot count the payload cannot hold allocates nothing */
    uint8_t small[] = {'S', 'T', 'W', 'M', 1};
    assert_int_equal(ui_remote_decode(small, sizeof(small), &b), ST_EPROTO);
    free(buf);
    ui_model_free(&a);
    ui_model_free(&b);
}

/* ---- the publisher, in process ---- */

struct pub_fx {
    uv_loop_t loop;
    struct ui_model model;
    struct st_publisher *pub;
    uv_timer_t change, stop, gap;
    int64_t last_gap_ms, max_gap_ms;
    unsigned changes;
    bool closed;
};

static void on_change(uv_timer_t *t)
{
    struct pub_fx *p = t->data;
    ui_model_note(&p->model, T0 + p->changes, UI_NOTE_INFO, "change %u", p->changes);
    p->changes++;
}

/* How long the loop went without running a 5 ms timer: it never blocks. */
static void on_gap(uv_timer_t *t)
{
    struct pub_fx *p = t->data;
    int64_t now = th_now_ms();
    if (p->last_gap_ms && now - p->last_gap_ms > p->max_gap_ms)
        p->max_gap_ms = now - p->last_gap_ms;
    p->last_gap_ms = now;
}

static void on_pub_closed(struct st_publisher *pub, void *user_data)
{
    struct pub_fx *p = user_data;
    p->closed = true;
}

static void on_stop(uv_timer_t *t)
{
    struct pub_fx *p = t->data;
    uv_close((uv_handle_t *)&p->change, NULL);
    uv_close((uv_handle_t *)&p->gap, NULL);
    uv_close((uv_handle_t *)&p->stop, NULL);
    st_publisher_close(p->pub, on_pub_closed, p);
}

static void pub_start(struct pub_fx *p, const char *path, unsigned slots,
                      const struct st_publisher_options *o)
{
    char err[512];
    memset(p, 0, sizeof(*p));
    assert_int_equal(uv_loop_init(&p->loop), 0);
    make_model(&p->model, slots);
    int rc = st_publisher_new(&p->loop, &p->model, path, o, &p->pub, err, sizeof(err));
    if (rc)
        fail_msg("st_publisher_new: %s", err);
    uv_timer_init(&p->loop, &p->change);
    uv_timer_init(&p->loop, &p->stop);
    uv_timer_init(&p->loop, &p->gap);
    p->change.data = p->stop.data = p->gap.data = p;
    uv_timer_start(&p->change, on_change, 5, 5);
    uv_timer_start(&p->gap, on_gap, 5, 5);
}

/* Run the loop for ms, then close everything and check that it all closed. */
static void pub_run(struct pub_fx *p, unsigned ms)
{
    uv_timer_start(&p->stop, on_stop, ms, 0);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    assert_true(p->closed);
    assert_int_equal(uv_loop_close(&p->loop), 0);
}

static void pub_free(struct pub_fx *p)
{
    st_publisher_free(p->pub);
    ui_model_free(&p->model);
}

static void set_path(struct sockaddr_un *sa, const char *path)
{
    assert_true(strlen(path) < sizeof(sa->sun_path));
    memcpy(sa->sun_path, path, strlen(path) + 1);
}

static int dial(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    set_path(&sa, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Read what is there now without waiting; the bytes read, -1 at EOF. */
static long drain(int fd)
{
    char buf[65536];
    long total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            total += n;
            continue;
        }
        if (n == 0)
            return total ? total : -1;
        return total;
    }
}

/* A watcher in the test's own thread: run the station's loop and read
 * without blocking, in turns, for `ms`; decode every whole frame into m.
 * Returns the frames decoded. (Blocking on a frame whose tail is still in
 * the loop's write queue would wait forever.) */
struct client {
    int fd;
    uint8_t *buf;
    size_t len, cap;
};

static unsigned pump(struct pub_fx *p, struct client *c, struct ui_model *m, int ms)
{
    unsigned frames = 0;
    for (int64_t until = th_now_ms() + ms; th_now_ms() < until;) {
        uv_run(&p->loop, UV_RUN_NOWAIT);
        if (c->cap - c->len < 65536) {
            c->cap = c->len + 65536;
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (n > 0)
            c->len += (size_t)n;
        size_t off = 0;
        while (c->len - off >= UI_REMOTE_HEADER) {
            uint32_t f = ui_remote_frame_len(c->buf + off);
            if (c->len - off - UI_REMOTE_HEADER < f)
                break;
            assert_int_equal(ui_remote_decode(c->buf + off + UI_REMOTE_HEADER, f, m), 0);
            frames++;
            off += UI_REMOTE_HEADER + f;
        }
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
        if (n <= 0)
            th_sleep_ms(1);
    }
    return frames;
}

static void test_publisher_stalled_watcher(void **state)
{
    struct fx *fx = *state;
    struct pub_fx p;
    struct st_publisher_options o = {.period_ms = 10, .stall_ms = 600};
    /* ~100 slots: snapshots of a few hundred kilobytes fill the socket fast */
    pub_start(&p, fx->sock, 100, &o);
    int stalled = dial(fx->sock);
    int good = dial(fx->sock);
    /* run in slices; the good watcher reads between them */
    long got = 0;
    uv_timer_start(&p.stop, on_stop, 2000, 0);
    int64_t until = th_now_ms() + 5000;
    while (!p.closed && th_now_ms() < until) {
        uv_run(&p.loop, UV_RUN_NOWAIT);
        long n = drain(good);
        if (n > 0)
            got += n;
        th_sleep_ms(1);
    }
    uv_run(&p.loop, UV_RUN_DEFAULT);
    assert_true(p.closed);
    assert_int_equal(uv_loop_close(&p.loop), 0);

    struct st_publisher_stats s;
    st_publisher_stats(p.pub, &s);
    assert_int_equal(s.accepted, 2);
    assert_int_equal(s.stalled, 1);  /* the one that never read */
    assert_true(s.skipped > 0);      /* it was not queued snapshot after snapshot */
    assert_true(got > 0);            /* the reader got its snapshots meanwhile */
    assert_true(p.max_gap_ms < 250); /* and the loop never waited for anyone */
    /* the stalled one finds what the kernel buffered, then the end */
    long left = 0, n;
    while ((n = drain(stalled)) > 0)
        left += n;
    assert_true(left > 0);
    assert_int_equal(drain(stalled), -1);
    close(stalled);
    close(good);
    pub_free(&p);
}

static void test_publisher_watchers_come_and_go(void **state)
{
    struct fx *fx = *state;
    struct pub_fx p;
    struct st_publisher_options o = {.period_ms = 10, .max_watchers = 3};
    struct ui_model m;
    struct client a = {0}, c = {0};
    pub_start(&p, fx->sock, 8, &o);
    ui_model_init(&m);
    a.fd = dial(fx->sock);
    int b = dial(fx->sock);
    c.fd = dial(fx->sock);
    /* a: snapshots, decoded */
    assert_true(pump(&p, &a, &m, 100) > 0);
    assert_int_equal(m.n_slots, 8);
    assert_string_equal(m.station, "line1");
    /* a fourth is one too many: closed at once */
    int d = dial(fx->sock);
    pump(&p, &a, &m, 50);
    /* a goes abruptly, unread data and all */
    close(a.fd);
    /* b writes to the station: watchers only read, so it is dropped */
    assert_int_equal(write(b, "p", 1), 1);
    pump(&p, &c, &m, 100);
    struct st_publisher_stats s;
    st_publisher_stats(p.pub, &s);
    assert_int_equal(s.accepted, 3);
    assert_int_equal(s.refused, 1);
    assert_int_equal(s.gone, 2);
    assert_int_equal(s.watchers, 1);
    /* c carries on and sees the changes as they come */
    unsigned before = p.changes;
    assert_true(pump(&p, &c, &m, 100) > 0);
    assert_true(p.changes > before);
    const struct ui_note *last = ui_model_recent(&m, 0);
    assert_non_null(last);
    unsigned k;
    assert_int_equal(sscanf(last->text, "change %u", &k), 1);
    assert_true(k >= before);
    /* d was closed by the station, b too (after the snapshots it had) */
    assert_int_equal(drain(d), -1);
    while (drain(b) > 0)
        ;
    assert_int_equal(drain(b), -1);
    /* the station closes: c gets the last state, then the end */
    pub_run(&p, 10);
    while (drain(c.fd) > 0)
        ;
    assert_int_equal(drain(c.fd), -1);
    close(b);
    close(c.fd);
    close(d);
    free(a.buf);
    free(c.buf);
    /* the path goes with the station */
    assert_int_equal(access(fx->sock, F_OK), -1);
    ui_model_free(&m);
    pub_free(&p);
}

static void test_publisher_socket_path(void **state)
{
    struct fx *fx = *state;
    struct pub_fx p;
    struct st_publisher *other = NULL;
    struct stat st;
    char err[512], path[512];
    pub_start(&p, fx->sock, 2, NULL);
    /* group only */
    assert_int_equal(lstat(fx->sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0660);
    /* a second station on the same path is refused; the first keeps it */
    assert_int_equal(st_publisher_new(&p.loop, &p.model, fx->sock, NULL, &other, err, sizeof(err)),
                     ST_EBUSY);
    assert_null(other);
    assert_non_null(strstr(err, "another station is listening"));
    pub_run(&p, 10);
    pub_free(&p);
    assert_int_equal(access(fx->sock, F_OK), -1);

    /* a stale socket (its station died) is replaced */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    set_path(&sa, fx->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    pub_start(&p, fx->sock, 2, NULL);
    close(dial(fx->sock));
    pub_run(&p, 10);
    pub_free(&p);

    /* anything else at the path is left alone */
    FILE *f = fopen(fx->sock, "w");
    fputs("not a socket", f);
    fclose(f);
    uv_loop_t loop;
    struct ui_model m;
    ui_model_init(&m);
    uv_loop_init(&loop);
    assert_int_equal(st_publisher_new(&loop, &m, fx->sock, NULL, &other, err, sizeof(err)),
                     ST_EINVAL);
    assert_non_null(strstr(err, "not a socket"));
    assert_int_equal(lstat(fx->sock, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    /* a path too long for a Unix socket */
    memset(path, 'x', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    assert_int_equal(st_publisher_new(&loop, &m, path, NULL, &other, err, sizeof(err)), ST_ERANGE);
    assert_int_equal(st_publisher_default_path(path, err, sizeof(err)), ST_ERANGE);
    assert_int_equal(st_publisher_default_path("/var/lib/station/station.db", path, sizeof(path)),
                     0);
    assert_string_equal(path, "/var/lib/station/station.db.sock");
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    ui_model_free(&m);
}

/* ---- the binaries in tmux ---- */

/* A detached session `name` of 120x40 running `cmd`. */
static void session(struct fx *fx, const char *name, const char *cmd)
{
    if (!th_have("tmux"))
        fail_msg("tmux is not installed (scripts/setup.sh installs it)");
    fx->started = true;
    assert_int_equal(
        th_tmux(fx->tmux_sock, "new-session", "-d", "-x", "120", "-y", "40", "-s", name, cmd, NULL),
        0);
}

static char *capture(struct fx *fx, const char *name)
{
    return th_tmux_capture(fx->tmux_sock, name, false);
}

static void keys(struct fx *fx, const char *name, const char *k)
{
    th_tmux_keys(fx->tmux_sock, name, k);
}

typedef bool (*screen_pred)(const char *screen, const void *arg);

static char *wait_for(struct fx *fx, const char *name, int limit_ms, screen_pred ok,
                      const void *arg, const char *what)
{
    int64_t deadline = th_now_ms() + limit_ms;
    char *s = NULL;
    for (;;) {
        free(s);
        s = capture(fx, name);
        if (ok(s, arg))
            return s;
        if (th_now_ms() > deadline)
            break;
        th_sleep_ms(50);
    }
    fprintf(stderr, "---- %s while waiting for %s ----\n%s\n---- end of screen ----\n", name, what,
            s);
    fail_msg("timed out waiting for %s on %s (the screen is above)", what, name);
    return NULL;
}

static bool has_text(const char *s, const void *arg)
{
    return strstr(s, arg) != NULL;
}

static bool all_passed(const char *s, const void *arg)
{
    struct th_counts c;
    return th_header_counts(s, &c) && c.passed == *(const unsigned *)arg && c.in_progress == 0 &&
           !strstr(s, "SAVING") && !strstr(s, "WORKING");
}

/* A percentage strictly between 0 and 100 below the header. */
static bool progress_shown(const char *s, const void *arg)
{
    char line[1024];
    for (int n = 2; th_screen_line(s, n, line, sizeof(line)); n++) {
        for (char *p = line; (p = strchr(p, '%')); p++) {
            char *q = p;
            while (q > line && q[-1] >= '0' && q[-1] <= '9')
                q--;
            int v = atoi(q);
            if (q < p && v > 0 && v < 100 && !strstr(line, "yield"))
                return true;
        }
    }
    return false;
}

/* Mid-run, normally; on a slow machine the run may be over already. */
static bool progress_or_done(const char *s, const void *arg)
{
    return progress_shown(s, NULL) || all_passed(s, arg);
}

/* The screen from line 1 (counters) to the last event, without the header
 * (uptime, "watching") and the keys line: the slot tiles and the events. */
static void body(const char *s, char *out, size_t size)
{
    char line[1024];
    out[0] = '\0';
    for (int n = 1; n < 39 && th_screen_line(s, n, line, sizeof(line)); n++) {
        if (n == 1) {
            /* units/h depends on the second it was drawn: counters only */
            char *bar = strstr(line, "in progress");
            if (bar)
                bar[strcspn(bar, "\xe2|")] = '\0';
        }
        snprintf(out + strlen(out), size - strlen(out), "%s\n", line);
    }
}

static bool same_body_as(const char *s, const void *arg)
{
    char mine[16384];
    body(s, mine, sizeof(mine));
    return !strcmp(mine, arg);
}

static pid_t pane_pid(struct fx *fx, const char *name)
{
    char *out;
    th_sh_out(&out, "tmux -L %s -f /dev/null display -p -t %s '#{pane_pid}'", fx->tmux_sock, name);
    pid_t pid = (pid_t)atoi(out);
    free(out);
    assert_true(pid > 0);
    return pid;
}

static int read_rc(struct fx *fx, const char *file, int limit_ms)
{
    char path[400];
    int rc = -1;
    snprintf(path, sizeof(path), "%s/%s", fx->dir, file);
    for (int64_t deadline = th_now_ms() + limit_ms; th_now_ms() < deadline; th_sleep_ms(50)) {
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        int ok = fscanf(f, "%d", &rc);
        fclose(f);
        if (ok == 1)
            return rc;
    }
    fail_msg("%s did not appear", path);
    return -1;
}

static void watcher(struct fx *fx, const char *name, bool exec_it)
{
    char cmd[1024];
    if (exec_it) /* the pane's pid is the watcher's */
        snprintf(cmd, sizeof(cmd), "exec env LC_ALL=C.UTF-8 '%s' watch --socket '%s'", STATION_BIN,
                 fx->sock);
    else
        snprintf(cmd, sizeof(cmd),
                 "env LC_ALL=C.UTF-8 timeout --foreground 200 '%s' watch --socket '%s'; "
                 "echo $? > '%s/%s.rc'; sleep 120",
                 STATION_BIN, fx->sock, fx->dir, name);
    session(fx, name, cmd);
}

static void test_watchers_show_the_station(void **state)
{
    struct fx *fx = *state;
    char cmd[2048], expect[16384];
    unsigned eight = 8;
    /* replug far away: once all eight pass, the screen holds still */
    snprintf(cmd, sizeof(cmd),
             "env LC_ALL=C.UTF-8 timeout --foreground 240 '%s' run --simulate 8 --pace 2 "
             "--system-mib 8 --replug-ms 3600000 --db '%s' --socket '%s'; "
             "echo $? > '%s/station.rc'; sleep 120",
             STATION_BIN, fx->db, fx->sock, fx->dir);
    session(fx, "st", cmd);
    free(wait_for(fx, "st", 15000, has_text, "virt-08", "the station's slots"));

    /* two watchers that stay, one that will be killed mid-run */
    watcher(fx, "w1", false);
    watcher(fx, "w2", false);
    watcher(fx, "wk", true);
    free(wait_for(fx, "w1", 10000, has_text, "(watching, read-only)", "w1 attached"));
    free(wait_for(fx, "wk", 10000, progress_or_done, &eight, "progress on the watcher to kill"));
    pid_t victim = pane_pid(fx, "wk");
    assert_int_equal(kill(victim, SIGKILL), 0);

    /* the station finishes the run as if nothing happened */
    char *st = wait_for(fx, "st", 30000, all_passed, &eight, "eight PASS on the station");
    free(st);
    /* let every screen catch up (a watcher is at most a snapshot behind) */
    th_sleep_ms(600);
    st = capture(fx, "st");
    assert_true(all_passed(st, &eight));
    assert_non_null(strstr(st, "RUNNING"));
    body(st, expect, sizeof(expect));
    free(st);
    /* the watchers show the same slot tiles, counters and events */
    free(wait_for(fx, "w1", 5000, same_body_as, expect, "w1 equal to the station's screen"));
    free(wait_for(fx, "w2", 5000, same_body_as, expect, "w2 equal to the station's screen"));
    assert_int_equal(th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 8);

    /* a watcher's p pauses nothing */
    keys(fx, "w1", "p");
    keys(fx, "w1", "P");
    th_sleep_ms(800);
    st = capture(fx, "st");
    assert_non_null(strstr(st, "RUNNING"));
    assert_null(strstr(st, "PAUSED"));
    assert_null(strstr(st, "intake paused"));
    free(st);
    /* its help says so; its detail view is its own */
    keys(fx, "w1", "?");
    free(wait_for(fx, "w1", 5000, has_text, "stop watching (the station carries on)", "help"));
    keys(fx, "w1", "Escape");
    keys(fx, "w1", "Enter");
    free(wait_for(fx, "w1", 5000, has_text, "PASS: record committed", "w1's detail view"));
    st = capture(fx, "st");
    assert_null(strstr(st, "PASS: record committed"));
    free(st);
    keys(fx, "w1", "Escape");

    /* q ends the watcher, exit 0, and only it */
    keys(fx, "w1", "q");
    assert_int_equal(read_rc(fx, "w1.rc", 10000), 0);
    th_sleep_ms(500);
    st = capture(fx, "st");
    assert_non_null(strstr(st, "RUNNING"));
    assert_null(strstr(st, "STOPPING"));
    free(st);
    char rc_path[400];
    snprintf(rc_path, sizeof(rc_path), "%s/station.rc", fx->dir);
    assert_int_equal(access(rc_path, F_OK), -1);
    /* w2 is still served */
    free(wait_for(fx, "w2", 5000, same_body_as, expect, "w2 still equal after the others left"));

    /* the station's own q: nothing runs, so it stops at once; w2 sees it go */
    keys(fx, "st", "q");
    assert_int_equal(read_rc(fx, "station.rc", 20000), 0);
    free(wait_for(fx, "w2", 5000, has_text, "the station closed the connection",
                  "w2 told of the stop"));
    assert_int_equal(access(fx->sock, F_OK), -1);
    assert_int_equal(th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 8);
    keys(fx, "w2", "q");
    assert_int_equal(read_rc(fx, "w2.rc", 10000), 0);
}

static void test_watch_without_station(void **state)
{
    struct fx *fx = *state;
    char bin[] = STATION_BIN;
    char *help[] = {bin, "watch", "--help", NULL};
    assert_int_equal(run_argv(help, 10), 0);
    char *bad[] = {bin, "watch", "--bogus", NULL};
    assert_int_equal(run_argv(bad, 10), 2);
    /* nobody listens: a plain message before the terminal is touched */
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "env LC_ALL=C.UTF-8 '%s' watch --socket '%s' 2> '%s/err'; echo $? > '%s/nobody.rc'; "
             "sleep 120",
             STATION_BIN, fx->sock, fx->dir, fx->dir);
    session(fx, "nobody", cmd);
    assert_int_equal(read_rc(fx, "nobody.rc", 10000), 2);
    assert_int_equal(th_sh("grep -q 'no station is running at' '%s/err'", fx->dir), 0);
    /* a run whose --socket cannot be made is a usage error */
    char *busy[] = {bin,
                    "run",
                    "--simulate",
                    "1",
                    "--exit-after",
                    "1",
                    "--headless",
                    "--db",
                    fx->db,
                    "--socket",
                    "/nonexistent-dir/x.sock",
                    NULL};
    assert_int_equal(run_argv(busy, 30), 2);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_round_trip),
        cmocka_unit_test(test_snapshot_refuses_garbage),
        cmocka_unit_test_setup_teardown(test_publisher_stalled_watcher, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publisher_watchers_come_and_go, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publisher_socket_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_without_station, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watchers_show_the_station, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
