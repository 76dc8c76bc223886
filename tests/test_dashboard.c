/*
 * Integration: the real station binary with its dashboard, inside a
 * detached tmux session of a fixed size on a private server socket. The
 * screen is read with `tmux capture-pane -p`, keys are sent with
 * `tmux send-keys`; every wait polls the pane against a deadline. Also the
 * headless output on a terminal (--headless) and --log-format json.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

struct fx {
    char dir[256];
    char db[300];
    char rc[300];
    char out[300];
    char sock[64];
    bool started;
};

static int setup(void **state)
{
    static unsigned counter;
    struct fx *fx = calloc(1, sizeof(*fx));
    th_tmpdir("dash", fx->dir, sizeof(fx->dir));
    th_path(fx->db, sizeof(fx->db), fx->dir, "t.db");
    th_path(fx->rc, sizeof(fx->rc), fx->dir, "rc");
    th_path(fx->out, sizeof(fx->out), fx->dir, "out.txt");
    snprintf(fx->sock, sizeof(fx->sock), "stdash%d_%u", (int)getpid(), counter++);
    *state = fx;
    return 0;
}

/* Run argv (NULL-terminated) with stdout to `out_path` (or /dev/null) and
 * stderr to /dev/null; wait at most limit_s; returns the exit status. */
static int run_argv(char *const argv[], const char *out_path, int limit_s)
{
    return th_run((const char *const *)argv, out_path, NULL, NULL, limit_s);
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (fx->started)
        th_tmux(fx->sock, "kill-server", NULL);
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

/* Start `env ENV station ARGS; echo $? > rc` in a cols x lines pane; the
 * pane stays (showing what was printed last) until the teardown. Should
 * this process die without its teardown, nothing outlives it by long. */
static void start(struct fx *fx, int cols, int lines, const char *env, const char *args)
{
    char cmd[2048], x[16], y[16];
    if (!th_have("tmux"))
        fail_msg("tmux is not installed (scripts/setup.sh installs it)");
    snprintf(cmd, sizeof(cmd),
             "env %s timeout --foreground 240 '%s' %s --db '%s'; echo $? > '%s'; sleep 120", env,
             STATION_BIN, args, fx->db, fx->rc);
    snprintf(x, sizeof(x), "%d", cols);
    snprintf(y, sizeof(y), "%d", lines);
    fx->started = true;
    assert_int_equal(
        th_tmux(fx->sock, "new-session", "-d", "-x", x, "-y", y, "-s", "st", cmd, NULL), 0);
}

static char *capture_ex(struct fx *fx, bool escapes)
{
    return th_tmux_capture(fx->sock, "st", escapes);
}

static char *capture(struct fx *fx)
{
    return capture_ex(fx, false);
}

static void keys(struct fx *fx, const char *k)
{
    th_tmux_keys(fx->sock, "st", k);
}

typedef bool (*screen_pred)(struct fx *fx, const char *screen, const void *arg);

/* Poll the pane until `ok`; returns the screen that satisfied it. */
static char *wait_for(struct fx *fx, int limit_ms, screen_pred ok, const void *arg,
                      const char *what)
{
    int64_t deadline = th_now_ms() + limit_ms;
    char *s = NULL;
    for (;;) {
        free(s);
        s = capture(fx);
        if (ok(fx, s, arg))
            return s;
        if (th_now_ms() > deadline)
            break;
        th_sleep_ms(50);
    }
    /* cmocka cuts long messages: the screen goes to stderr whole */
    fprintf(stderr, "---- screen while waiting for %s ----\n%s\n---- end of screen ----\n", what,
            s);
    fail_msg("timed out waiting for %s (the screen is above)", what);
    return NULL;
}

static bool has_all(struct fx *fx, const char *s, const void *arg)
{
    for (const char *const *w = arg; *w; w++)
        if (!strstr(s, *w))
            return false;
    return true;
}

static char *wait_text(struct fx *fx, int limit_ms, const char *const *words)
{
    char what[512] = "";
    for (const char *const *w = words; *w; w++)
        snprintf(what + strlen(what), sizeof(what) - strlen(what), "\"%s\" ", *w);
    return wait_for(fx, limit_ms, has_all, words, what);
}

/* ---- reading the screen ---- */

/* Columns of a UTF-8 line: everything the dashboard draws is one column wide. */
static int columns(const char *s, size_t bytes)
{
    int c = 0;
    for (size_t i = 0; i < bytes && s[i]; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

/* Byte offset of column `col` in a UTF-8 line. */
static size_t offset_of(const char *s, int col)
{
    size_t i = 0;
    int c = 0;
    while (s[i] && c < col) {
        i++;
        while (((unsigned char)s[i] & 0xc0) == 0x80)
            i++;
        c++;
    }
    return i;
}

/* The text of the tile whose label is `label`: w columns from the label's
 * marker column, h lines, joined by '\n'. Empty when not on screen. */
static void tile_text(const char *screen, const char *label, int w, int h, char *out, size_t size)
{
    char line[1024];
    out[0] = '\0';
    for (int n = 0; th_screen_line(screen, n, line, sizeof(line)); n++) {
        char *at = strstr(line, label);
        if (!at)
            continue;
        int col = columns(line, (size_t)(at - line)) - 1;
        for (int k = 0; k < h; k++) {
            char l2[1024];
            if (!th_screen_line(screen, n + k, l2, sizeof(l2)))
                break;
            size_t a = offset_of(l2, col), b = offset_of(l2, col + w);
            snprintf(out + strlen(out), size - strlen(out), "%.*s\n", (int)(b - a), l2 + a);
        }
        return;
    }
}

static bool tile_has(const char *screen, const char *label, const char *w1, const char *w2)
{
    char t[2048];
    tile_text(screen, label, 30, 4, t, sizeof(t));
    return strstr(t, w1) && (!w2 || strstr(t, w2));
}

static bool all_labels(struct fx *fx, const char *s, const void *arg)
{
    char label[16];
    for (int i = 1; i <= *(const int *)arg; i++) {
        snprintf(label, sizeof(label), "virt-%02d", i);
        if (!strstr(s, label))
            return false;
    }
    return true;
}

/* A percentage strictly between 0 and 100 below the header. */
static bool progress_shown(struct fx *fx, const char *s, const void *arg)
{
    char line[1024];
    for (int n = 2; th_screen_line(s, n, line, sizeof(line)); n++) {
        if (!strstr(line, "%") || strstr(line, "yield"))
            continue;
        for (char *p = line; (p = strchr(p, '%')); p++) {
            char *q = p;
            while (q > line && q[-1] >= '0' && q[-1] <= '9')
                q--;
            int v = atoi(q);
            if (q < p && v > 0 && v < 100)
                return true;
        }
    }
    return false;
}

static bool results_shown(struct fx *fx, const char *s, const void *arg)
{
    return tile_has(s, "virt-03", "FAIL", "injected") &&
           tile_has(s, "virt-05", "FAIL", "disconnected") && tile_has(s, "virt-01", "PASS", "100%");
}

static bool idle(struct fx *fx, const char *s, const void *arg)
{
    struct th_counts c;
    return th_header_counts(s, &c) && c.in_progress == 0 && !strstr(s, "SAVING") &&
           c.passed + c.failed > 0;
}

/* The header's committed counts equal the database's (the header counts in
 * the commit callback, so it may trail the file by a callback: poll). */
static bool counts_match_db(struct fx *fx, const char *s, const void *arg)
{
    struct th_counts c;
    if (!th_header_counts(s, &c))
        return false;
    return c.passed == th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='PASS'") &&
           c.failed == th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='FAIL'") &&
           c.aborted == th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='ABORTED'");
}

/* After a resize to 80x24: one line per slot, each label once, nothing left
 * of the tiles, the keys on the last line. */
static bool clean_80x24(struct fx *fx, const char *s, const void *arg)
{
    char line[1024], label[16];
    int n, last = -1;
    for (n = 0; th_screen_line(s, n, line, sizeof(line)); n++) {
        if (columns(line, strlen(line)) > 80)
            return false;
        char *v = strstr(line, "virt-");
        if (v && strstr(v + 1, "virt-"))
            return false; /* two slots on a line: the old tile rows */
        if (line[0])
            last = n;
    }
    if (n < 24 || last != 23 || !th_screen_line(s, 23, line, sizeof(line)) ||
        !strstr(line, "q quit"))
        return false;
    if (!th_screen_line(s, 0, line, sizeof(line)) || !strstr(line, "station"))
        return false;
    /* each slot once, as a line of its own starting after the marker
     * column (the footer's events name slots too, further right) */
    for (int i = 1; i <= 12; i++) {
        int seen = 0;
        snprintf(label, sizeof(label), "virt-%02d", i);
        for (n = 0; th_screen_line(s, n, line, sizeof(line)); n++) {
            const char *a = strstr(line, label);
            seen += a && columns(line, (size_t)(a - line)) == 1;
        }
        if (seen != 1)
            return false;
    }
    return true;
}

static bool file_exists(struct fx *fx, const char *s, const void *arg)
{
    return access(fx->rc, F_OK) == 0;
}

static int exit_code(struct fx *fx, int limit_ms)
{
    free(wait_for(fx, limit_ms, file_exists, NULL, "the station to exit"));
    FILE *f = fopen(fx->rc, "r");
    int rc = -1;
    assert_non_null(f);
    for (int i = 0; i < 50 && fscanf(f, "%d", &rc) != 1; i++) {
        /* the shell may still be writing it */
        th_sleep_ms(20);
        rewind(f);
    }
    fclose(f);
    return rc;
}

/* ---- tests ---- */

static void test_rack_faults_pause_resize_quit(void **state)
{
    struct fx *fx = *state;
    char *s;
    int twelve = 12;
    start(fx, 120, 40, "LC_ALL=C.UTF-8",
          "run --simulate 12 --fault 3:fail=flash:system --fault 5:disconnect=2097152 "
          "--pace 2 --replug-ms 4000");

    /* the tiles show the slot labels, four to a row */
    s = wait_for(fx, 15000, all_labels, &twelve, "the 12 slot labels");
    char line[1024];
    bool row_of_four = false;
    for (int n = 0; th_screen_line(s, n, line, sizeof(line)); n++)
        row_of_four |= strstr(line, "virt-01") && strstr(line, "virt-04");
    assert_true(row_of_four);
    free(s);

    /* then progress */
    free(wait_for(fx, 15000, progress_shown, NULL, "progress between 0 and 100 %"));

    /* pause intake: devices plugged from now on wait */
    keys(fx, "p");
    const char *paused[] = {"PAUSED", "p resume", NULL};
    free(wait_text(fx, 5000, paused));

    /* then PASS and FAIL with the injected reasons */
    free(wait_for(fx, 20000, results_shown, NULL, "PASS, and FAIL with the injected reasons"));

    /* the detail of virt-03: steps with timings and the error */
    keys(fx, "Right");
    keys(fx, "l");
    keys(fx, "Enter");
    const char *detail[] = {"Error in flash:system",
                            "flash:system: flash: device replied FAIL: injected fault",
                            "getvar:product",
                            "flash:boot",
                            "PASS",
                            "Esc/Enter close",
                            NULL};
    free(wait_text(fx, 5000, detail));
    keys(fx, "Escape");
    free(wait_for(fx, 5000, all_labels, &twelve, "the grid again"));

    /* the header's counts are the database's */
    free(wait_for(fx, 20000, idle, NULL, "no session in progress"));
    s = wait_for(fx, 5000, counts_match_db, NULL, "header counts equal to the database's");
    struct th_counts c;
    assert_true(th_header_counts(s, &c));
    assert_int_equal(c.failed, 2);
    assert_true(c.passed >= 1);
    free(s);

    /* replugged units wait while paused */
    const char *waiting[] = {"WAITING", NULL};
    free(wait_text(fx, 20000, waiting));

    /* a smaller terminal: redrawn cleanly, one line per slot */
    assert_int_equal(th_tmux(fx->sock, "resize-window", "-t", "st", "-x", "80", "-y", "24", NULL),
                     0);
    free(wait_for(fx, 5000, clean_80x24, NULL, "a clean 80x24 screen"));

    /* resume: the waiting units start */
    keys(fx, "p");
    const char *running[] = {"RUNNING", "WORKING", NULL};
    free(wait_text(fx, 5000, running));
    free(wait_for(fx, 10000, progress_shown, NULL, "progress after resuming"));

    /* quit asks while sessions run, then stops them cleanly */
    keys(fx, "q");
    const char *ask[] = {"Quit and record them ABORTED?", "y / n", NULL};
    s = wait_text(fx, 5000, ask);
    free(s);
    s = capture(fx);
    assert_true(th_header_counts(s, &c));
    unsigned in_flight = c.in_progress;
    assert_true(in_flight > 0);
    free(s);
    keys(fx, "y");
    assert_int_equal(exit_code(fx, 30000), 0);

    long long aborted = th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='ABORTED'");
    assert_true(aborted >= 1);
    assert_true(aborted <= in_flight);
    assert_int_equal(th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL"), 0);
    assert_int_equal(th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='ABORTED' AND "
                                       "reason LIKE 'station stopped during %'"),
                     aborted);
}

static bool no_high_bytes(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p >= 0x80)
            return false;
    return true;
}

static bool three_passed(struct fx *fx, const char *s, const void *arg)
{
    struct th_counts c;
    return th_header_counts(s, &c) && c.passed == 3 && c.in_progress == 0;
}

static void test_ascii_without_colour_and_quit_when_idle(void **state)
{
    struct fx *fx = *state;
    start(fx, 100, 30, "LC_ALL=C TERM=vt100", "run --simulate 3 --pace 8 --replug-ms 0");
    char *s = wait_for(fx, 20000, three_passed, NULL, "three PASS");
    assert_true(no_high_bytes(s));
    assert_non_null(strstr(s, "[####"));
    assert_non_null(strstr(s, "arrows/hjkl select"));
    free(s);
    /* vt100 has no colours: no SGR colour codes at all */
    s = capture_ex(fx, true);
    for (int code = 30; code <= 47; code++) {
        char sgr[8];
        snprintf(sgr, sizeof(sgr), "[%dm", code);
        if (code != 39 && strstr(s, sgr))
            fail_msg("colour %s on a vt100:\n%s", sgr, s);
    }
    assert_null(strstr(s, "38;5;"));
    free(s);
    /* help, closed by any key */
    keys(fx, "?");
    const char *help[] = {"any key closes this help", NULL};
    free(wait_text(fx, 5000, help));
    keys(fx, "x");
    s = capture(fx);
    for (int i = 0; i < 100 && strstr(s, "any key closes"); i++) {
        free(s);
        th_sleep_ms(50);
        s = capture(fx);
    }
    assert_null(strstr(s, "any key closes"));
    free(s);
    /* nothing runs: q quits without asking */
    keys(fx, "q");
    assert_int_equal(exit_code(fx, 20000), 0);
    assert_int_equal(th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 3);
}

/* An operator's Ctrl-S (XOFF) on the station's terminal: the flashing
 * goes on, the station finishes its sessions and exits by itself. With
 * the terminal's flow control on, its next write to the terminal waited
 * for a Ctrl-Q and no slot moved. */
static void test_ctrl_s_does_not_stop_the_station(void **state)
{
    struct fx *fx = *state;
    start(fx, 120, 40, "",
          "run --simulate 4 --pace 0 --system-mib 1 --replug-ms 300 --exit-after 40 "
          "--serial-policy reflash");
    const char *up[] = {"virt-01", NULL};
    free(wait_text(fx, 20000, up));
    keys(fx, "C-s");
    int rc = exit_code(fx, 60000);
    keys(fx, "C-q");
    assert_int_equal(rc, 0);
    assert_int_equal(th_db_int(fx->db, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 40);
}

static void test_headless_flag_on_a_terminal(void **state)
{
    struct fx *fx = *state;
    start(fx, 120, 40, "LC_ALL=C.UTF-8", "run --simulate 2 --exit-after 2 --pace 0 --headless");
    const char *lines[] = {"virt-01", "arrived on", " PASS ", "stopped: 2 passed", NULL};
    char *s = wait_text(fx, 20000, lines);
    assert_null(strstr(s, "q quit"));
    free(s);
    assert_int_equal(exit_code(fx, 20000), 0);
}

static void test_log_format_json(void **state)
{
    struct fx *fx = *state;
    char script[400], bin[] = STATION_BIN;
    char *args[] = {bin,
                    "run",
                    "--simulate",
                    "4",
                    "--exit-after",
                    "4",
                    "--pace",
                    "8",
                    "--log-format",
                    "json",
                    "--info-lines",
                    "2",
                    "--fault",
                    "2:fail=flash:boot",
                    "--db",
                    fx->db,
                    NULL};
    assert_int_equal(run_argv(args, fx->out, 60), 1);
    snprintf(script, sizeof(script), "%s/check.py", fx->dir);
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fputs("import json, sys\n"
          "ev = {}\n"
          "for n, line in enumerate(open(sys.argv[1], encoding='utf-8'), 1):\n"
          "    o = json.loads(line)\n"
          "    assert list(o)[:3] == ['t', 't_ms', 'event'], (n, line)\n"
          "    assert isinstance(o['t_ms'], int) and o['t'].endswith('Z'), line\n"
          "    ev.setdefault(o['event'], []).append(o)\n"
          "need = {'arrived', 'session_begin', 'progress', 'info', 'step_end', 'session_end',\n"
          "        'result', 'note'}\n"
          "assert not need - set(ev), need - set(ev)\n"
          "res = ev['result']\n"
          "assert len(res) == 4, res\n"
          "assert sum(r['result'] == 'PASS' for r in res) == 3, res\n"
          "fail = [r for r in res if r['result'] == 'FAIL'][0]\n"
          "assert fail['slot'] == 'virt-02' and fail['reason'].startswith('flash:boot: '), fail\n"
          "for r in res:\n"
          "    assert r['serial'] and isinstance(r['duration_ms'], int), r\n"
          "    assert isinstance(r['bytes'], int), r\n"
          "for p in ev['progress']:\n"
          "    assert p['pct'] in (0, 25, 50, 75) and p['step'] and p['slot'], p\n"
          "for s in ev['step_end']:\n"
          "    assert s['result'] in ('PASS', 'FAIL') and isinstance(s['duration_ms'], int), s\n"
          "for i in ev['info']:\n"
          "    assert i['text'] and i['step'], i\n"
          "for b in ev['session_begin']:\n"
          "    assert b['recipe'] == 'demo-phone' and b['session_id'] > 0, b\n"
          "assert any(n['text'].startswith('stopped: 3 passed, 1 failed') for n in ev['note'])\n",
          f);
    fclose(f);
    char *py[] = {"python3", script, fx->out, NULL};
    if (run_argv(py, NULL, 60) != 0) {
        if (th_sh("python3 '%s' '%s' 1>&2", script, fx->out) != 0)
            fail_msg("the JSON lines in %s do not check out (see above)", fx->out);
    }
    /* a format that does not exist is a usage error */
    char *bad[] = {bin, "run", "--simulate", "1", "--log-format", "xml", NULL};
    assert_int_equal(run_argv(bad, NULL, 30), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rack_faults_pause_resize_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ascii_without_colour_and_quit_when_idle, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ctrl_s_does_not_stop_the_station, setup, teardown),
        cmocka_unit_test_setup_teardown(test_headless_flag_on_a_terminal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_format_json, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
