/*
 * test_usb_station: the real station binary flashing virtual fastboot
 * devices through libusb under the usbdevfs harness (tests/usbsim): port
 * paths behind hubs, an unplug in the middle of a download, re-enumeration
 * after `reboot bootloader`, hotplug latency, `station ports`, and devices
 * that fail to open or enumerate. Each test runs `usbsim [options] --
 * station ...` as a child with a time limit and checks its exit status,
 * its output, the SQLite record (sqlite3 C API) and the harness's --stats
 * file.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "helpers.h"

#define ALARM_S 120
/* the demo recipe (--usb without -c): boot 1 MiB + system 4 MiB */
#define DEMO_BYTES 5242880

static int setup(void **state)
{
    *state = th_fx_new("usbst", ALARM_S);
    return 0;
}

static int teardown(void **state)
{
    th_fx_free(*state);
    return 0;
}

/* `len` pseudo-random bytes written to dir/name; returns their XXH3-64. */
static uint64_t random_file(struct th_fx *fx, const char *name, size_t len)
{
    char path[400];
    th_path(path, sizeof(path), fx->dir, name);
    return th_random_file(path, len);
}

#define RUN(fx, limit, ...) th_usbsim((fx), (limit), (const char *const[]){__VA_ARGS__, NULL})

static void expect_rc(struct th_fx *fx, int rc, int want)
{
    if (rc != want) {
        th_fx_show(fx);
        fail_msg("exit status %d, expected %d", rc, want);
    }
}

/* The first line of `file` that contains `a` (and `b`, if given), copied
 * into buf; fails if there is none. */
static const char *line_with(struct th_fx *fx, const char *file, const char *a, const char *b,
                             char *buf, size_t cap)
{
    char *text = th_slurp_or_empty(file, NULL);
    for (char *line = text; *line;) {
        size_t n = strcspn(line, "\n");
        char save = line[n];
        line[n] = '\0';
        bool hit = strstr(line, a) && (!b || strstr(line, b));
        if (hit)
            snprintf(buf, cap, "%s", line);
        line[n] = save;
        if (hit) {
            free(text);
            return buf;
        }
        line += n + (save ? 1 : 0);
    }
    free(text);
    th_fx_show(fx);
    fail_msg("no line with \"%s\"%s%s%s in %s", a, b ? " and \"" : "", b ? b : "", b ? "\"" : "",
             file);
    return NULL;
}

/* ---- the harness's --stats file ------------------------------------ */

/* The stats line of the unit on `path` (the first one plugged there). */
static const char *stats_line(struct th_fx *fx, const char *path, char *buf, size_t cap)
{
    if (!th_stats_line(fx->stats, path, buf, cap)) {
        th_fx_show(fx);
        fail_msg("no stats line for %s", path);
    }
    return buf;
}

static void expect_stat(struct th_fx *fx, const char *path, const char *needle)
{
    char line[2048];
    stats_line(fx, path, line, sizeof(line));
    if (!strstr(line, needle)) {
        th_fx_show(fx);
        fail_msg("expected \"%s\" in the stats of %s: %s", needle, path, line);
    }
}

/* The value of `key=` (up to the next space) in the stats of `path`. */
static void stat_value(struct th_fx *fx, const char *path, const char *key, char *buf, size_t cap)
{
    char line[2048], k[64];
    stats_line(fx, path, line, sizeof(line));
    snprintf(k, sizeof(k), " %s=", key);
    const char *p = strstr(line, k);
    if (!p) {
        th_fx_show(fx);
        fail_msg("no %s in the stats of %s: %s", key, path, line);
    }
    p += strlen(k);
    snprintf(buf, cap, "%.*s", (int)strcspn(p, " "), p);
}

/* ---- the database ---------------------------------------------------- */

struct session_row {
    long long id;
    char slot[80], usb_serial[80], serial[80], result[16], failed_step[80], reason[512];
    long long bytes;
};

static void col(sqlite3_stmt *st, int i, char *buf, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(buf, cap, "%s", t ? (const char *)t : "");
}

/* The only session recorded for port `port`. */
static void db_session(struct th_fx *fx, const char *port, struct session_row *r)
{
    sqlite3 *c = th_db_open(fx->db, false);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(c,
                                        "SELECT id, slot, usb_serial, serial, result, failed_step, "
                                        "reason, bytes FROM sessions WHERE port = ?1 ORDER BY id",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, port, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        sqlite3_close(c);
        th_fx_show(fx);
        fail_msg("no session recorded for port %s", port);
    }
    memset(r, 0, sizeof(*r));
    r->id = sqlite3_column_int64(st, 0);
    col(st, 1, r->slot, sizeof(r->slot));
    col(st, 2, r->usb_serial, sizeof(r->usb_serial));
    col(st, 3, r->serial, sizeof(r->serial));
    col(st, 4, r->result, sizeof(r->result));
    col(st, 5, r->failed_step, sizeof(r->failed_step));
    col(st, 6, r->reason, sizeof(r->reason));
    r->bytes = sqlite3_column_int64(st, 7);
    bool more = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    sqlite3_close(c);
    if (more) {
        th_fx_show(fx);
        fail_msg("more than one session recorded for port %s", port);
    }
}

static void expect_session(struct th_fx *fx, const char *port, const char *result, const char *why)
{
    struct session_row r;
    db_session(fx, port, &r);
    if (strcmp(r.result, result) != 0 || (why && !strstr(r.reason, why))) {
        th_fx_show(fx);
        fail_msg("%s: expected %s \"%s\", recorded %s \"%s\"", port, result, why ? why : "",
                 r.result, r.reason);
    }
}

/* ---- 1. eight devices on eight ports, some behind hubs --------------- */

/* No device sits on a path that has devices behind it (1-1 here is the
 * hub in front of 1-1.4): given both 1-1 and 1-1.4.2, usbsim makes the
 * phone on 1-1 the parent of the hub 1-1.4, a topology no real rack has,
 * and once that phone reboots away while 1-1.4.2 is still listed,
 * libusb 1.0.26's libusb_exit() crashes the station (SIGSEGV in
 * usbi_hotplug_exit: list_del of the departed parent). */
static const char *const eight[8] = {"1-3", "1-2",   "1-1.4.2", "1-1.4.3",
                                     "2-1", "2-3.1", "2-3.2",   "3-1"};

static void test_eight_devices_on_hub_paths_pass(void **state)
{
    struct th_fx *fx = *state;
    /* 1-3 and 2-3.2 have serials of their own; 1-1.4.3 reports a USB
     * iSerial different from its fastboot serialno */
    int rc =
        RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-3:serial=ALPHA01", "--fastboot", "1-2",
            "--fastboot", "1-1.4.2", "--fastboot", "1-1.4.3:usb_serial=USB443", "--fastboot", "2-1",
            "--fastboot", "2-3.1", "--fastboot", "2-3.2:serial=ZULU32", "--fastboot", "3-1", "--",
            STATION_BIN, "run", "--usb", "--exit-after", "8", "--db", fx->db, "--headless");
    expect_rc(fx, rc, 0);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 8);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 8);
    assert_int_equal(th_db_int(fx->db, "SELECT count(DISTINCT port) FROM sessions"), 8);
    for (int i = 0; i < 8; i++) {
        const char *path = eight[i];
        struct session_row r;
        char serial[80], bytes[32];
        db_session(fx, path, &r); /* its port column is the path */
        assert_string_equal(r.result, "PASS");
        assert_string_equal(r.slot, path); /* no slots configured: named after the path */
        assert_int_equal(r.bytes, DEMO_BYTES);
        stat_value(fx, path, "serial", serial, sizeof(serial));
        if (!strcmp(path, "1-1.4.3")) {
            assert_string_equal(r.usb_serial, "USB443"); /* iSerial */
            assert_string_equal(r.serial, serial);       /* getvar serialno */
        } else {
            assert_string_equal(r.usb_serial, serial);
            assert_string_equal(r.serial, serial);
        }
        stat_value(fx, path, "bytes", bytes, sizeof(bytes));
        assert_string_equal(bytes, "5242880");
        expect_stat(fx, path, " writes=2 ");
        expect_stat(fx, path, " enumerations=1 ");
    }
    expect_stat(fx, "1-3", "serial=ALPHA01 ");
    expect_stat(fx, "2-3.2", "serial=ZULU32 ");
    expect_stat(fx, "1-1.4.2", "serial=SIM1_1_4_2 ");
    printf("usb_station: 8 devices x %d bytes through libusb in %.2f s\n", DEMO_BYTES, fx->seconds);
}

/* ---- 2. a device unplugged in the middle of a download --------------- */

static void expect_one_disconnect(struct th_fx *fx, const char *gone)
{
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 8);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 7);
    for (int i = 0; i < 8; i++)
        if (strcmp(eight[i], gone) != 0)
            expect_session(fx, eight[i], "PASS", NULL);
    struct session_row r;
    db_session(fx, gone, &r);
    expect_session(fx, gone, "FAIL", "disconnected");
    /* it left in a data step: flash:boot or flash:system */
    if (strncmp(r.failed_step, "flash:", 6) != 0) {
        th_fx_show(fx);
        fail_msg("%s failed in \"%s\", expected a flash step", gone, r.failed_step);
    }
    char bytes[32];
    stat_value(fx, gone, "bytes", bytes, sizeof(bytes));
    assert_true(strtoull(bytes, NULL, 10) < DEMO_BYTES);
    expect_stat(fx, gone, " present=0");
    printf("usb_station: %s: FAIL \"%s\" (the device received %s bytes)\n", gone, r.reason, bytes);
}

static void test_unplug_during_download_fails_only_that_slot(void **state)
{
    struct th_fx *fx = *state;
    /* 1-2 moves 1 MB/s: boot takes about 1 s, system about 4 s; the
     * unplug at 2.5 s lands in the system download (in the boot one if
     * the station is very slow to start: still a download) */
    int rc =
        RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-3", "--fastboot", "1-2:pace=1",
            "--fastboot", "1-1.4.2", "--fastboot", "1-1.4.3", "--fastboot", "2-1", "--fastboot",
            "2-3.1", "--fastboot", "2-3.2", "--fastboot", "3-1", "--unplug", "1-2@2500", "--",
            STATION_BIN, "run", "--usb", "--exit-after", "8", "--db", fx->db, "--headless");
    expect_rc(fx, rc, 1); /* a session failed */
    expect_one_disconnect(fx, "1-2");
    th_fx_expect_in(fx, fx->out, "1-2 left");

    /* the same with the device model's own fault: the transfer crossing
     * 3000000 bytes (inside system, after boot's 1048576) ends with
     * ENODEV and the device is gone */
    unlink(fx->db);
    rc = RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-3", "--fastboot", "1-2", "--fastboot",
             "1-1.4.2", "--fastboot", "1-1.4.3", "--fastboot", "2-1", "--fastboot",
             "2-3.1:disconnect=3000000", "--fastboot", "2-3.2", "--fastboot", "3-1", "--",
             STATION_BIN, "run", "--usb", "--exit-after", "8", "--db", fx->db, "--headless");
    expect_rc(fx, rc, 1);
    expect_one_disconnect(fx, "2-3.1");
    struct session_row r;
    db_session(fx, "2-3.1", &r);
    assert_string_equal(r.failed_step, "flash:system");
    expect_stat(fx, "2-3.1", " bytes=3000000 ");
}

/* ---- 3. reboot bootloader: leave, come back with another PID ---------- */

static void test_reboot_bootloader_continues_the_session(void **state)
{
    struct th_fx *fx = *state;
    uint64_t h = random_file(fx, "boot.img", 300001);
    random_file(fx, "vendor.img", 70000); /* declared, not flashed */
    th_spit_in(fx->dir, "station.ini",
               "[station]\nid = usb-station-test\nui = headless\n\n"
               "[profile phone]\nmatch = class FF/42/03\nrecipe = t.recipe\ntimeout = 3s\n");
    th_spit_in(fx->dir, "t.recipe",
               "recipe t 1\n"
               "image boot boot.img\n"
               "image vendor vendor.img\n"
               "getvar product\n"
               "reboot bootloader\n"
               "flash boot boot\n"
               "reboot\n");
    int rc = RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-1.4.2:pid=4ee0,pid2=d00d", "--",
                 STATION_BIN, "run", "-c", "station.ini", "--exit-after", "1", "--db", fx->db);
    expect_rc(fx, rc, 0);
    /* one session, the same one before and after the re-enumeration */
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 1);
    expect_session(fx, "1-1.4.2", "PASS", NULL);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM steps"), 4);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM steps WHERE result = 'PASS'"), 4);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM steps WHERE seq = 1 AND "
                                       "name = 'reboot-bootloader' AND detail LIKE 'back after %'"),
                     1);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM steps WHERE seq = 2 AND "
                                       "name = 'flash:boot' AND bytes = 300001"),
                     1);
    /* the device saw two enumerations, and boot arrived byte for byte */
    expect_stat(fx, "1-1.4.2", " enumerations=2 ");
    char want[80];
    snprintf(want, sizeof(want), " part:boot=300001:%016" PRIx64 " ", h);
    expect_stat(fx, "1-1.4.2", want);
    char line[1024];
    line_with(fx, fx->out, "reboot-bootloader ok", "back after", line, sizeof(line));
    printf("usb_station: %s\n", line);
}

/* ---- 4. devices plugged while the station runs ------------------------ */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_plugged_devices_start_quickly(void **state)
{
    struct th_fx *fx = *state;
    static const char *const plugged[6] = {"1-2", "1-3.1", "2-1", "2-2.4.1", "3-1", "3-2"};
    int rc = RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-1", "--fastboot", "1-2:absent=1",
                 "--fastboot", "1-3.1:absent=1", "--fastboot", "2-1:absent=1", "--fastboot",
                 "2-2.4.1:absent=1", "--fastboot", "3-1:absent=1", "--fastboot", "3-2:absent=1",
                 "--plug", "1-2@1500", "--plug", "1-3.1@1500", "--plug", "2-1@1600", "--plug",
                 "2-2.4.1@1700", "--plug", "3-1@1850", "--plug", "3-2@2000", "--", STATION_BIN,
                 "run", "--usb", "--exit-after", "7", "--db", fx->db, "--headless");
    expect_rc(fx, rc, 0);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 7);
    double ms[6], max = 0;
    printf("usb_station: arrival to first command:");
    for (int i = 0; i < 6; i++) {
        char v[64];
        expect_session(fx, plugged[i], "PASS", NULL);
        stat_value(fx, plugged[i], "first_cmd_ms", v, sizeof(v));
        ms[i] = strtod(v, NULL);
        assert_true(ms[i] >= 0);
        if (ms[i] > max)
            max = ms[i];
        printf(" %s %.1f ms;", plugged[i], ms[i]);
    }
    qsort(ms, 6, sizeof(ms[0]), cmp_double);
    printf(" median %.1f ms, max %.1f ms\n", (ms[2] + ms[3]) / 2, max);
    /* the 20 ms target (B4) is measured by bench/bench_usb; here only a bound
     * no loaded machine should reach */
    if (max >= 1000.0) {
        th_fx_show(fx);
        fail_msg("a plugged device waited %.1f ms for its first command", max);
    }
}

/* ---- 5. station ports -------------------------------------------------- */

static void test_ports_lists_paths_and_slots(void **state)
{
    struct th_fx *fx = *state;
    th_spit_in(fx->dir, "t.recipe", "recipe t 1\ngetvar product\n");
    th_spit_in(fx->dir, "station.ini",
               "[station]\nid = usb-station-test\n\n"
               "[slot front-left]\npath = 1-1\n\n"
               "[slot hub-two]\npath = 1-1.4.2\npath = 2-1.4.2\n\n"
               "[profile phone]\nmatch = class FF/42/03\nrecipe = t.recipe\n");
    int rc = RUN(fx, 30, "--fastboot", "1-1:serial=PORTS11", "--fastboot", "1-1.4.2", "--",
                 STATION_BIN, "ports", "-c", "station.ini");
    expect_rc(fx, rc, 0);
    static const char *const want[2][3] = {
        {"1-1 ", "PORTS11", "front-left"},
        {"1-1.4.2 ", "SIM1_1_4_2", "hub-two"},
    };
    for (int i = 0; i < 2; i++) {
        char line[512];
        bool found = false;
        char *text = th_slurp_or_empty(fx->out, NULL);
        for (char *p = text; *p;) {
            size_t n = strcspn(p, "\n");
            if (!strncmp(p, want[i][0], strlen(want[i][0]))) {
                snprintf(line, sizeof(line), "%.*s", (int)n, p);
                found = true;
                break;
            }
            p += n + (p[n] ? 1 : 0);
        }
        free(text);
        if (!found) {
            th_fx_show(fx);
            fail_msg("no line for %s", want[i][0]);
        }
        const char *needles[] = {"18d1:4ee0", "FF/42/03", want[i][1], want[i][2], "phone"};
        for (size_t k = 0; k < sizeof(needles) / sizeof(needles[0]); k++)
            if (!strstr(line, needles[k])) {
                th_fx_show(fx);
                fail_msg("expected \"%s\" in the line of %s: %s", needles[k], want[i][0], line);
            }
    }
    th_fx_expect_in(fx, fx->out, "SLOT");
    /* the hubs themselves are left out */
    char *text = th_slurp_or_empty(fx->out, NULL);
    assert_null(strstr(text, "05e3:0608"));
    assert_null(strstr(text, "1d6b:0002"));
    free(text);
}

/* ---- 6. open, descriptor and control faults fail only their slot ------- */

static void test_faulty_devices_get_their_own_errors(void **state)
{
    struct th_fx *fx = *state;
    /* 1-4 moves 1 MB/s so that its PASS (about 5 s) comes after the
     * station gave up opening 1-1 (its open retry window is 2 s) */
    int rc = RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-1:eacces=1", "--fastboot",
                 "1-2:baddesc=1", "--fastboot", "1-3:stallctl=1", "--fastboot", "1-4:pace=1", "--",
                 STATION_BIN, "run", "--usb", "--exit-after", "1", "--db", fx->db, "--headless");
    expect_rc(fx, rc, 0);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 1);
    expect_session(fx, "1-4", "PASS", NULL);
    char line[1024];
    /* a per-slot line that says what to do */
    line_with(fx, fx->out, " 1-1: ", "udev", line, sizeof(line));
    printf("usb_station: %s\n", line);
    assert_non_null(strstr(line, "permission denied"));
    line_with(fx, fx->out, " 1-2: ", "descriptors", line, sizeof(line));
    printf("usb_station: %s\n", line);
    assert_null(strstr(line, "1-1"));
    line_with(fx, fx->out, " 1-3: ", "stalled", line, sizeof(line));
    printf("usb_station: %s\n", line);
    assert_null(strstr(line, "1-1"));
    /* the faulty devices never started a session or received a command */
    expect_stat(fx, "1-1", " commands=0 ");
    expect_stat(fx, "1-2", " commands=0 ");
    expect_stat(fx, "1-3", " commands=0 ");
    expect_stat(fx, "1-4", " bytes=5242880 ");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_eight_devices_on_hub_paths_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unplug_during_download_fails_only_that_slot, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reboot_bootloader_continues_the_session, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_plugged_devices_start_quickly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ports_lists_paths_and_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_faulty_devices_get_their_own_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
