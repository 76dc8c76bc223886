/*
 * test_flood: the real station binary under two kinds of abuse that must
 * cost the other sessions nothing (ARCHITECTURE.md, rules 5 and 6).
 *
 *  - INFO flood: a fastboot-over-TCP device served by this program (a
 *    thread) answers `flash:boot` with INFO lines for FLOOD_MS, as fast as
 *    the station takes them, while the simulated rack flashes beside it.
 *    The rack's sessions that ran inside the flood pass in about their
 *    paced time, the flooding session passes, its step record keeps the
 *    first lines and "... N more lines" (N exact), its log lines stop
 *    where the record does, and the station's anonymous memory does not
 *    grow with the flood.
 *  - Hotplug burst: one rack position has a loose connector (`--flap`):
 *    each unit leaves FLAP_MS after it arrived and a fresh one follows,
 *    thousands of arrivals and departures, while the other positions
 *    flash. They all pass in about their paced time, the flapping units'
 *    sessions end without PASS, and memory stays bounded.
 *
 * Time is only bounded generously (sanitizer builds run these too): a
 * starved session shows as several times its paced duration.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "helpers.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#define FLOOD_MS 3000
#define FLAP_MS 2
/* The demo recipe at the default 8 MB/s: boot 1 MiB + system 4 MiB. */
#define PACED_S (5.0 * 1048576 / 8e6)
/* Growth of the station's anonymous memory that counts as unbounded. */
#define ANON_BOUND_KB (64 * 1024)

static int setup(void **state)
{
    *state = th_fx_new("flood", 0);
    return 0;
}

static int teardown(void **state)
{
    th_fx_free(*state);
    return 0;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* RssAnon of pid in KiB, or -1: what the station allocates (the demo
 * images are shared memory and do not count). */
static long anon_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "RssAnon:", 8))
            kb = strtol(line + 8, NULL, 10);
    fclose(f);
    return kb;
}

/* A count from the database while the station writes it; -1 if it cannot
 * be read yet. */
static long long poll_count(const char *db, const char *sql)
{
    struct stat sb;
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (stat(db, &sb) != 0)
        return -1;
    if (sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(c, 500);
        if (sqlite3_prepare_v2(c, sql, -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(c);
    return v;
}

/* The station's environment: under AddressSanitizer a small quarantine,
 * so that freed memory held back for checking is not taken for growth. */
static void child_env(void)
{
#ifdef UNDER_ASAN
    const char *old = getenv("ASAN_OPTIONS");
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s%squarantine_size_mb=8", old ? old : "", old && *old ? ":" : "");
    setenv("ASAN_OPTIONS", buf, 1);
#endif
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median and maximum of the durations (s) of the sessions `where` selects. */
static unsigned durations(const char *db, const char *where, double *median, double *max)
{
    sqlite3 *c = th_db_open(db, false);
    sqlite3_stmt *st;
    char sql[512];
    double v[4096];
    unsigned n = 0;
    snprintf(sql, sizeof(sql), "SELECT (ended_ms - started_ms) / 1000.0 FROM sessions WHERE %s",
             where);
    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    while (n < 4096 && sqlite3_step(st) == SQLITE_ROW)
        v[n++] = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    *median = *max = 0;
    if (n) {
        qsort(v, n, sizeof(v[0]), cmp_double);
        *median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
        *max = v[n - 1];
    }
    return n;
}

static void show(struct th_fx *fx)
{
    th_show("stderr", fx->err);
}

/* ---- the flooding fastboot-over-TCP device ---- */

struct flood_dev {
    int listen_fd;
    uint16_t port;
    pthread_t thread;
    /* results, read after the thread is joined */
    bool served;                 /* the session got to "reboot" */
    unsigned long lines;         /* INFO lines sent */
    volatile int64_t t_start_ms; /* the flood began (wall clock) */
    volatile int64_t t_end_ms;   /* ...and ended */
    volatile int flooding;       /* 1 while INFO lines go out */
    char why[200];               /* what went wrong, if not served */
};

static bool send_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static bool recv_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 30000) <= 0)
            return false;
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* One message: 8-byte big-endian length, then the payload. */
static bool send_msg(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool send_msg(int fd, const char *fmt, ...)
{
    uint8_t buf[8 + 256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)buf + 8, 256, fmt, ap);
    va_end(ap);
    if (n < 0 || n > 255)
        return false;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    return send_all(fd, buf, 8 + (size_t)n);
}

/* Receive one message into buf (NUL-terminated); data frames longer than
 * cap are consumed and counted in *data. */
static bool recv_msg(int fd, char *buf, size_t cap, uint64_t *len)
{
    uint8_t hdr[8];
    if (!recv_all(fd, hdr, 8))
        return false;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n = n << 8 | hdr[i];
    *len = n;
    uint64_t left = n;
    size_t o = 0;
    while (left) {
        char sink[65536];
        size_t take = left > sizeof(sink) ? sizeof(sink) : (size_t)left;
        if (!recv_all(fd, sink, take))
            return false;
        if (o + 1 < cap) {
            size_t c = take < cap - 1 - o ? take : cap - 1 - o;
            memcpy(buf + o, sink, c);
            o += c;
        }
        left -= take;
    }
    buf[o] = '\0';
    return true;
}

static void *flood_main(void *arg)
{
    struct flood_dev *d = arg;
    struct pollfd pf = {.fd = d->listen_fd, .events = POLLIN};
    if (poll(&pf, 1, 30000) <= 0) {
        snprintf(d->why, sizeof(d->why), "the station never connected");
        return NULL;
    }
    int fd = accept(d->listen_fd, NULL, NULL);
    if (fd < 0) {
        snprintf(d->why, sizeof(d->why), "accept: %s", strerror(errno));
        return NULL;
    }
    char hs[4];
    if (!recv_all(fd, hs, 4) || memcmp(hs, "FB01", 4) || !send_all(fd, "FB01", 4)) {
        snprintf(d->why, sizeof(d->why), "no FB01 handshake");
        close(fd);
        return NULL;
    }
    uint64_t expect_data = 0;
    for (;;) {
        char cmd[300];
        uint64_t len;
        if (!recv_msg(fd, cmd, sizeof(cmd), &len)) {
            snprintf(d->why, sizeof(d->why), "the station hung up before reboot");
            break;
        }
        bool ok = true;
        if (expect_data) {
            /* data frames until the announced size has arrived */
            expect_data = len >= expect_data ? 0 : expect_data - len;
            if (!expect_data)
                ok = send_msg(fd, "OKAY");
        } else if (!strcmp(cmd, "getvar:product")) {
            ok = send_msg(fd, "OKAYsimphone");
        } else if (!strcmp(cmd, "getvar:serialno")) {
            ok = send_msg(fd, "OKAYFLOOD%08d", (int)getpid());
        } else if (!strncmp(cmd, "getvar:has-slot:", 16)) {
            ok = send_msg(fd, "OKAYno");
        } else if (!strcmp(cmd, "getvar:max-download-size")) {
            ok = send_msg(fd, "OKAY0x10000000");
        } else if (!strncmp(cmd, "getvar:", 7)) {
            ok = send_msg(fd, "FAILunknown variable");
        } else if (!strncmp(cmd, "download:", 9)) {
            expect_data = strtoull(cmd + 9, NULL, 16);
            ok = send_msg(fd, "DATA%08llx", (unsigned long long)expect_data);
        } else if (!strcmp(cmd, "flash:boot")) {
            /* as fast as the station reads: TCP stops us when its queue is full */
            d->t_start_ms = wall_ms();
            d->flooding = 1;
            while (ok && wall_ms() - d->t_start_ms < FLOOD_MS) {
                ok = send_msg(fd, "INFOflood line %lu: the device has a lot to say", d->lines + 1);
                if (ok)
                    d->lines++;
            }
            d->flooding = 0;
            d->t_end_ms = wall_ms();
            ok = ok && send_msg(fd, "OKAY");
        } else if (!strcmp(cmd, "reboot")) {
            ok = send_msg(fd, "OKAY");
            d->served = ok;
            break;
        } else {
            ok = send_msg(fd, "OKAY");
        }
        if (!ok) {
            snprintf(d->why, sizeof(d->why), "send failed after \"%.40s\"", cmd);
            break;
        }
    }
    close(fd);
    return NULL;
}

static void flood_dev_start(struct flood_dev *d)
{
    memset(d, 0, sizeof(*d));
    d->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(d->listen_fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(d->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(d->listen_fd, 1), 0);
    socklen_t al = sizeof(a);
    assert_int_equal(getsockname(d->listen_fd, (struct sockaddr *)&a, &al), 0);
    d->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&d->thread, NULL, flood_main, d), 0);
}

/* ---- 1. INFO flood ---- */

static void test_info_flood_starves_nobody(void **state)
{
    struct th_fx *fx = *state;
    struct flood_dev dev;
    flood_dev_start(&dev);
    char tcp[64];
    snprintf(tcp, sizeof(tcp), "127.0.0.1:%u", dev.port);
    const char *argv[] = {STATION_BIN, "run",  "--simulate",  "6",   "--tcp",  tcp,  "--headless",
                          "--db",      fx->db, "--replug-ms", "100", "--seed", "11", NULL};
    child_env();
    pid_t pid = th_spawn(argv, fx->out, fx->err, fx->dir);
    long anon_before = -1, anon_peak = -1;
    /* While the device floods: the station's anonymous memory. */
    int64_t t0 = th_now_ms();
    int64_t saved_at = 0;
    for (;;) {
        long kb = anon_kb(pid);
        if (!dev.flooding && dev.t_start_ms == 0 && kb > 0)
            anon_before = kb; /* the last sample before the flood */
        if (dev.flooding && kb > anon_peak)
            anon_peak = kb;
        if (dev.t_end_ms && !saved_at &&
            poll_count(fx->db, "SELECT count(*) FROM sessions WHERE port LIKE 'tcp:%' "
                               "AND ended_ms IS NOT NULL") == 1)
            saved_at = th_now_ms();
        /* a second more of rack sessions after the flooding one is recorded */
        if (saved_at && th_now_ms() - saved_at > 1000)
            break;
        if (th_now_ms() - t0 > 45000) {
            kill(pid, SIGTERM);
            th_wait_for(pid, 20, &(int){0});
            pthread_join(dev.thread, NULL);
            close(dev.listen_fd);
            show(fx);
            fail_msg("the flooding session was not recorded within 45 s (device: %s)",
                     dev.why[0] ? dev.why : "-");
        }
        th_sleep_ms(20);
    }
    kill(pid, SIGTERM);
    int status = th_wait_exit(pid, 30, "station after SIGTERM");
    pthread_join(dev.thread, NULL);
    close(dev.listen_fd);
    if (status > 1) {
        show(fx);
        fail_msg("the station exited with %d", status);
    }
    if (!dev.served)
        fail_msg("the flooding device was not served to the end: %s", dev.why);
    printf("flood: %lu INFO lines in %.1f s\n", dev.lines,
           (double)(dev.t_end_ms - dev.t_start_ms) / 1000.0);
    assert_true(dev.lines >= 1000);

    /* The flooding session passed, and its record is bounded and exact. */
    sqlite3 *c = th_db_open(fx->db, false);
    assert_int_equal(th_q_int(c, "SELECT count(*) FROM sessions WHERE port LIKE 'tcp:%' "
                                 "AND result = 'PASS'"),
                     1);
    char *info = th_q_text(c, "SELECT info FROM steps WHERE name = 'flash:boot' AND session_id = "
                              "(SELECT id FROM sessions WHERE port LIKE 'tcp:%')");
    sqlite3_close(c);
    size_t info_len = strlen(info);
    assert_true(info_len <= 4096);
    unsigned long kept = th_count(info, "\n") - 1, more = 0;
    const char *mark = strstr(info, "... ");
    assert_non_null(mark);
    assert_int_equal(sscanf(mark, "... %lu more lines", &more), 1);
    assert_string_equal(mark + strlen(mark) - strlen(" more lines\n"), " more lines\n");
    assert_non_null(strstr(info, "flood line 1: "));
    printf("flood: step record %zu bytes, %lu lines kept, \"... %lu more lines\"\n", info_len, kept,
           more);
    assert_int_equal(kept + more, dev.lines);
    free(info);
    /* The log shows the lines the record kept, then says once that the
     * rest are only counted: a flood does not flood the journal either. */
    assert_int_equal(th_file_count(fx->out, "flood line "), kept);
    assert_int_equal(th_file_count(fx->out, "INFO lines of this step are counted, not shown"), 1);

    /* The rack's sessions inside the flood window were not starved. */
    char where[256];
    snprintf(where, sizeof(where),
             "port NOT LIKE 'tcp:%%' AND started_ms >= %lld AND ended_ms <= %lld",
             (long long)dev.t_start_ms, (long long)dev.t_end_ms);
    double med, max;
    unsigned n = durations(fx->db, where, &med, &max);
    char pass_where[300];
    snprintf(pass_where, sizeof(pass_where), "%s AND result = 'PASS'", where);
    double pmed, pmax;
    unsigned passed = durations(fx->db, pass_where, &pmed, &pmax);
    printf("flood: %u rack sessions inside the flood, %u PASS, median %.3f s, max %.3f s "
           "(paced %.3f s)\n",
           n, passed, med, max, PACED_S);
    assert_true(n >= 6);
    assert_int_equal(passed, n);
    if (med > 3 * PACED_S || max > 6 * PACED_S) {
        show(fx);
        fail_msg("rack sessions during the flood took median %.3f s, max %.3f s", med, max);
    }

    /* And the flood cost no memory to speak of. */
    printf("flood: RssAnon %ld KiB before, %ld KiB peak during the flood\n", anon_before,
           anon_peak);
    assert_true(anon_before > 0 && anon_peak > 0);
    assert_true(anon_peak - anon_before < ANON_BOUND_KB);
}

/* ---- 2. Hotplug burst ---- */

static void test_hotplug_burst_starves_nobody(void **state)
{
    struct th_fx *fx = *state;
    /* position 8 flaps; 3000 units in all, most of them on position 8 */
    const char *argv[] = {STATION_BIN,   "run",    "--simulate",   "8",    "--flap",     "8:2",
                          "--replug-ms", "2",      "--exit-after", "3000", "--headless", "--db",
                          fx->db,        "--seed", "12",           NULL};
    child_env();
    pid_t pid = th_spawn(argv, fx->out, fx->err, fx->dir);
    long anon_base = -1, anon_peak = -1;
    long long last = -1;
    int64_t t0 = th_now_ms(), changed = t0;
    int status = -1;
    for (;;) {
        int ws;
        if (waitpid(pid, &ws, WNOHANG) == pid) {
            /* stopped by itself: every unit made a session */
            status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
            break;
        }
        long kb = anon_kb(pid);
        long long n =
            poll_count(fx->db, "SELECT count(*) FROM sessions WHERE ended_ms IS NOT NULL");
        if (n >= 200 && anon_base < 0)
            anon_base = kb;
        if (anon_base > 0 && kb > anon_peak)
            anon_peak = kb;
        if (n != last) {
            last = n;
            changed = th_now_ms();
        }
        /* A unit that arrives while the last one's session is still being
         * saved waits for it, and a newer one replaces it: not every unit
         * makes a session, so the count may stop short of --exit-after. */
        if (n >= 2500 && th_now_ms() - changed > 3000) {
            kill(pid, SIGTERM);
            status = th_wait_exit(pid, 30, "station after SIGTERM");
            break;
        }
        if (th_now_ms() - t0 > 50000) {
            kill(pid, SIGTERM);
            th_wait_for(pid, 20, &status);
            show(fx);
            fail_msg("the burst did not end within 50 s (%lld sessions recorded)", n);
        }
        th_sleep_ms(50);
    }
    if (status > 1) {
        show(fx);
        fail_msg("the station exited with %d", status);
    }
    sqlite3 *c = th_db_open(fx->db, false);
    long long flaps = th_q_int(c, "SELECT count(*) FROM sessions WHERE slot = 'virt-08'");
    long long flap_pass =
        th_q_int(c, "SELECT count(*) FROM sessions WHERE slot = 'virt-08' AND result = 'PASS'");
    long long steady = th_q_int(c, "SELECT count(*) FROM sessions WHERE slot <> 'virt-08'");
    long long steady_pass =
        th_q_int(c, "SELECT count(*) FROM sessions WHERE slot <> 'virt-08' AND result = 'PASS'");
    long long open = th_q_int(c, "SELECT count(*) FROM sessions WHERE ended_ms IS NULL");
    sqlite3_close(c);
    double med, max;
    durations(fx->db, "slot <> 'virt-08'", &med, &max);
    printf("burst: %lld flapping sessions (%lld PASS) in %.1f s, %lld steady sessions "
           "(%lld PASS), median %.3f s, max %.3f s (paced %.3f s); RssAnon %ld KiB after 200 "
           "sessions, peak %ld KiB\n",
           flaps, flap_pass, (double)(th_now_ms() - t0) / 1000.0, steady, steady_pass, med, max,
           PACED_S, anon_base, anon_peak);
    /* thousands of arrivals and as many departures */
    assert_true(flaps >= 2000);
    assert_int_equal(flap_pass, 0);
    assert_int_equal(open, 0);
    /* the steady positions kept flashing, every one of them passed, in
     * about their paced time */
    assert_true(steady >= 7 * 3);
    assert_int_equal(steady_pass, steady);
    if (med > 3 * PACED_S || max > 6 * PACED_S) {
        show(fx);
        fail_msg("steady sessions during the burst took median %.3f s, max %.3f s", med, max);
    }
    assert_true(anon_base > 0 && anon_peak > 0);
    assert_true(anon_peak - anon_base < ANON_BOUND_KB);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_info_flood_starves_nobody, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hotplug_burst_starves_nobody, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
