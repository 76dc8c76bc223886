/*
 * test_usbsim_dfu: DFU devices in the usbdevfs harness (tests/usbsim,
 * --dfu), proven against the real dfu-util, then the station flashing
 * them through libusb (engine/usb.c: DFU interfaces, alt names, the USB
 * reset on the thread pool). Each test runs `usbsim [options] -- COMMAND`
 * as a child with a time limit and checks its exit status, its output,
 * the harness's --stats file (and the memory dumps of keep=1) and, for
 * the station, its SQLite record.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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

#include <setjmp.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "helpers.h"

#define ALARM_S 120

static int setup(void **state)
{
    *state = th_fx_new("usbdfu", ALARM_S);
    return 0;
}

static int teardown(void **state)
{
    th_fx_free(*state);
    return 0;
}

#define RUN(fx, limit, ...) th_usbsim((fx), (limit), (const char *const[]){__VA_ARGS__, NULL})

/* The stats line of the unit on `path` (first one), copied into buf. */
static const char *stats_line(struct th_fx *fx, const char *path, char *buf, size_t cap)
{
    if (!th_stats_line(fx->stats, path, buf, cap)) {
        th_fx_show(fx);
        th_show("stats", fx->stats);
        fail_msg("no stats line for %s", path);
    }
    return buf;
}

static void expect_stat(struct th_fx *fx, const char *path, const char *needle)
{
    char line[1024];
    stats_line(fx, path, line, sizeof(line));
    if (!strstr(line, needle)) {
        th_fx_show(fx);
        fail_msg("expected \"%s\" in the stats of %s: %s", needle, path, line);
    }
}

/* `len` random bytes written to dir/name; returns its XXH3-64. */
static uint64_t random_file(struct th_fx *fx, const char *name, size_t len)
{
    char path[400];
    th_path(path, sizeof(path), fx->dir, name);
    return th_random_file(path, len);
}

/* A copy of dir/bin with a DFU suffix for VID:PID (dfu-suffix -a). */
static void suffixed(struct th_fx *fx, const char *bin, const char *dfu, const char *vid,
                     const char *pid)
{
    th_sh_ok("cd '%s' && cp '%s' '%s' && dfu-suffix -a '%s' -v %s -p %s >/dev/null", fx->dir, bin,
             dfu, dfu, vid, pid);
}

/* The first `len` bytes of two files are equal, and `a` has exactly `len`. */
static void expect_same_prefix(struct th_fx *fx, const char *a, const char *b, size_t len)
{
    char pa[400], pb[400];
    th_path(pa, sizeof(pa), fx->dir, a);
    th_path(pb, sizeof(pb), fx->dir, b);
    size_t la, lb;
    char *da = th_slurp_or_empty(pa, &la), *db = th_slurp_or_empty(pb, &lb);
    assert_int_equal(la, len);
    assert_true(lb >= len);
    assert_memory_equal(da, db, len);
    free(da);
    free(db);
}

/* ---- the database --------------------------------------------------- */

/* The session recorded for port `port`: result and reason. */
static void db_session(struct th_fx *fx, const char *port, char *result, size_t rcap, char *reason,
                       size_t why_cap)
{
    sqlite3 *c = th_db_open(fx->db, false);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(c,
                                        "SELECT result, coalesce(reason, '') FROM sessions "
                                        "WHERE port = ?1 ORDER BY id",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, port, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        sqlite3_close(c);
        th_fx_show(fx);
        fail_msg("no session recorded for %s", port);
    }
    snprintf(result, rcap, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(reason, why_cap, "%s", (const char *)sqlite3_column_text(st, 1));
    sqlite3_finalize(st);
    sqlite3_close(c);
}

static void expect_session(struct th_fx *fx, const char *port, const char *result, const char *why)
{
    char r[32], reason[512];
    db_session(fx, port, r, sizeof(r), reason, sizeof(reason));
    if (strcmp(r, result) != 0 || (why && !strstr(reason, why))) {
        th_fx_show(fx);
        fail_msg("%s: expected %s \"%s\", recorded %s \"%s\"", port, result, why ? why : "", r,
                 reason);
    }
}

/* station.ini: a [station] section, then `body` (the profiles). */
static void write_config(struct th_fx *fx, const char *ini, const char *body)
{
    char text[4096];
    snprintf(text, sizeof(text), "[station]\nid = usbsim-dfu\nui = headless\n\n%s", body);
    th_spit_in(fx->dir, ini, text);
}

/* ---- dfu-util against the harness ------------------------------------ */

static void test_dfu_util_lists_devices_and_alt_settings(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-util"))
        skip();
    int rc =
        RUN(fx, 30, "--dfu", "1-1:alt=Flash#65536,alt=Option bytes#16", "--dfu",
            "1-4.2:dfuse=1,pid=df12", "--dfu", "2-3:runtime=1,serial=RT42", "--", "dfu-util", "-l");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "Found DFU: [0483:df11] ver=2200, devnum=");
    th_fx_expect_in(fx, fx->out,
                    "cfg=1, intf=0, path=\"1-1\", alt=0, name=\"Flash\", serial=\"SIM1_1\"");
    th_fx_expect_in(fx, fx->out, "path=\"1-1\", alt=1, name=\"Option bytes\", serial=\"SIM1_1\"");
    th_fx_expect_in(fx, fx->out, "Found DFU: [0483:df12] ver=2200, devnum=");
    th_fx_expect_in(fx, fx->out,
                    "cfg=1, intf=0, path=\"1-4.2\", alt=0, "
                    "name=\"@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg\", "
                    "serial=\"SIM1_4_2\"");
    th_fx_expect_in(fx, fx->out, "Found Runtime: [0483:5740]");
    th_fx_expect_in(fx, fx->out, "path=\"2-3\", alt=0, name=\"UNKNOWN\", serial=\"RT42\"");
}

static void test_dfu_util_download_then_upload_same_bytes(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-util") || !th_have("dfu-suffix"))
        skip();
    /* not a multiple of the 512-byte transfer size */
    const size_t len = 100000 + (size_t)getpid() % 512;
    char want[128];
    uint64_t h = random_file(fx, "fw.bin", len);
    suffixed(fx, "fw.bin", "fw.dfu", "0483", "df11");
    int rc = RUN(fx, 60, "--stats", fx->stats, "--dfu", "1-1:transfer=512,size=256K,keep=1", "--",
                 "sh", "-c", "dfu-util -a 0 -D fw.dfu && dfu-util -a 0 -U out.bin");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "Device returned transfer size 512");
    th_fx_expect_in(fx, fx->out, "Done!");
    snprintf(want, sizeof(want), "Received a total of %zu bytes", len);
    th_fx_expect_in(fx, fx->out, want);
    /* the model's memory holds the payload (not the suffix), and the
     * upload read back exactly it */
    snprintf(want, sizeof(want), "alt0=%zu:%016" PRIx64, len, h);
    expect_stat(fx, "1-1", want);
    expect_stat(fx, "1-1", " manifests=1 ");
    expect_same_prefix(fx, "fw.bin", "stats.txt.d/1-1/alt0.bin", len);
    expect_same_prefix(fx, "fw.bin", "out.bin", len);
    char out[400];
    struct stat sb;
    snprintf(out, sizeof(out), "%s/out.bin", fx->dir);
    assert_int_equal(stat(out, &sb), 0);
    assert_int_equal((size_t)sb.st_size, len);
}

static void test_dfu_util_detaches_a_runtime_device_and_downloads(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-util") || !th_have("dfu-suffix"))
        skip();
    const size_t len = 30000;
    char want[128];
    uint64_t h = random_file(fx, "fw.bin", len);
    suffixed(fx, "fw.bin", "fw.dfu", "0483", "df11");
    /* The file names the DFU-mode PID: -d gives both (run-time, DFU). */
    int rc = RUN(fx, 60, "--stats", fx->stats, "--dfu", "1-4.2:runtime=1,keep=1", "--", "sh", "-c",
                 "dfu-util -E 1 -d 0483:5740,0483:df11 -a 0 -D fw.dfu && lsusb");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "Device really in Run-Time Mode, send DFU detach request");
    th_fx_expect_in(fx, fx->out, "Done!");
    th_fx_expect_in(fx, fx->out, "ID 0483:df11"); /* back on 1-4.2 in DFU mode */
    snprintf(want, sizeof(want), "alt0=%zu:%016" PRIx64, len, h);
    expect_stat(fx, "1-4.2", want);
    expect_stat(fx, "1-4.2", "dfu mode=2 ");
    expect_stat(fx, "1-4.2", " resets=1 detaches=1 ");
    expect_stat(fx, "1-4.2", " enumerations=2 present=1");
}

static void test_dfu_util_dfuse_download_and_leave(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-util"))
        skip();
    const size_t len = 70000; /* five 16 KiB pages */
    random_file(fx, "fw.bin", len);
    int rc = RUN(fx, 60, "--stats", fx->stats, "--dfu", "1-1:dfuse=1,keep=1", "--", "sh", "-c",
                 "dfu-util -a 0 -s 0x08000000:leave -D fw.bin && sleep 0.6");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "Device DFU version 011a");
    th_fx_expect_in(fx, fx->out, "DfuSe interface name: \"Internal Flash  \"");
    th_fx_expect_in(fx, fx->out, "File downloaded successfully");
    th_fx_expect_in(fx, fx->out, "Submitting leave request...");
    /* memory at 0x08000000 (the start of the dump) is fw.bin; the pages
     * it covers were erased; "leave" restarted the device */
    expect_same_prefix(fx, "fw.bin", "stats.txt.d/1-1/alt0.bin", len);
    expect_stat(fx, "1-1", " erases=5 ");
    expect_stat(fx, "1-1", " manifests=1 ");
    expect_stat(fx, "1-1", " enumerations=2 ");
}

static void test_dfu_util_sees_the_write_fault(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-util") || !th_have("dfu-suffix"))
        skip();
    random_file(fx, "fw.bin", 20000);
    suffixed(fx, "fw.bin", "fw.dfu", "0483", "df11");
    int rc = RUN(fx, 60, "--dfu", "1-1:errwrite=5", "--", "dfu-util", "-a", "0", "-D", "fw.dfu");
    assert_int_not_equal(rc, 0);
    /* dfu-util stops after block 5 and reports the device's bStatus
     * (3, errWRITE) */
    th_fx_expect_in(fx, fx->out, "5120 bytes failed!");
    th_fx_expect_in(fx, fx->out,
                    "DFU state(10) = dfuERROR, status(3) = Device is unable to write memory");
}

/* ---- the station through libusb ----------------------------------- */

static const char board_ini[] = "[profile board]\n"
                                "match = class FE/01/02\n"
                                "match = class FE/01/01\n"
                                "protocol = dfu\n"
                                "recipe = board.recipe\n"
                                "timeout = 2s\n";

static const char board_recipe[] = "recipe usbsim-board 1.0\n"
                                   "protocol dfu\n"
                                   "image firmware fw.dfu\n"
                                   "detach                  # a no-op in DFU mode\n"
                                   "dfu-download 0 firmware\n"
                                   "dfu-verify 0 firmware\n";

static void test_station_flashes_eight_dfu_devices(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-suffix"))
        skip();
    const size_t len = 50000;
    uint64_t h = random_file(fx, "fw.bin", len);
    suffixed(fx, "fw.bin", "fw.dfu", "0483", "df11");
    write_config(fx, "station.ini", board_ini);
    th_spit_in(fx->dir, "board.recipe", board_recipe);
    /* 8 devices, some behind hubs; 4 start in run-time mode and need the
     * detach (DETACH, then a USB reset, then they come back on their
     * path as 0483:df11) */
    static const char *const paths[8] = {"1-1",     "1-2", "1-3.1", "1-3.2",
                                         "1-4.4.1", "2-1", "2-2",   "2-3.4"};
    int rc = RUN(fx, 90, "--stats", fx->stats, "--dfu", "1-1", "--dfu", "1-2:runtime=1", "--dfu",
                 "1-3.1", "--dfu", "1-3.2:runtime=1,block_busy=2", "--dfu", "1-4.4.1", "--dfu",
                 "2-1:runtime=1,transfer=2048", "--dfu", "2-2:block_busy=3", "--dfu",
                 "2-3.4:runtime=1", "--", STATION_BIN, "run", "-c", "station.ini", "--exit-after",
                 "8", "--db", fx->db, "--headless");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 8);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 8);
    char want[128];
    snprintf(want, sizeof(want), "alt0=%zu:%016" PRIx64, len, h);
    for (int i = 0; i < 8; i++) {
        expect_session(fx, paths[i], "PASS", NULL);
        expect_stat(fx, paths[i], want);
        expect_stat(fx, paths[i], "uploads="); /* verified by read-back */
        bool runtime = i == 1 || i == 3 || i == 5 || i == 7;
        expect_stat(fx, paths[i], runtime ? " resets=1 detaches=1 " : " resets=0 detaches=0 ");
        expect_stat(fx, paths[i], runtime ? " enumerations=2 " : " enumerations=1 ");
    }
    /* 2-2 and 1-3.2 were busy after each block (bwPollTimeout): the
     * station waited that long before asking again, never less */
    for (int i = 0; i < 8; i++)
        expect_stat(fx, paths[i], " early_polls=0 ");
    th_fx_expect_in(fx, fx->out, "1-2 SIM1_2 detach ok");
    th_fx_expect_in(fx, fx->out, "already in DFU mode (dfuIDLE)"); /* 1-1 and the like */
}

static void test_station_dfu_faults_fail_only_their_slot(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfu-suffix"))
        skip();
    random_file(fx, "fw.bin", 50000); /* 49 blocks of 1024 */
    suffixed(fx, "fw.bin", "fw.dfu", "0483", "df11");
    char ini[600];
    snprintf(ini, sizeof(ini), "%.*stimeout = 1s\n",
             (int)(strstr(board_ini, "timeout") - board_ini), board_ini);
    write_config(fx, "station.ini", ini);
    th_spit_in(fx->dir, "board.recipe", board_recipe);
    int rc = RUN(fx, 90, "--dfu", "1-1:errwrite=37", "--dfu", "1-2:runtime=1,corrupt=4096", "--dfu",
                 "1-3:stall=dnload@5", "--dfu", "1-4:disconnect=manifest", "--dfu", "1-5:stuck=10",
                 "--dfu", "1-6:silent=getstatus@3", "--dfu", "1-7", "--dfu", "1-8:runtime=1", "--",
                 STATION_BIN, "run", "-c", "station.ini", "--exit-after", "8", "--db", fx->db,
                 "--headless");
    assert_int_equal(rc, 1); /* a session failed */
    expect_session(fx, "1-1", "FAIL", "dfu-download:0: download alt 0 block 37: errWRITE");
    expect_session(fx, "1-2", "FAIL", "dfu-verify:0: verify alt 0: byte 4096 differs");
    expect_session(fx, "1-3", "FAIL",
                   "dfu-download:0: download alt 0 block 5: device stalled DNLOAD");
    expect_session(fx, "1-4", "FAIL", "download alt 0: device disconnected during manifestation");
    expect_session(fx, "1-5", "FAIL", "download alt 0 block 10: device stays in dfuDNBUSY");
    expect_session(fx, "1-6", "FAIL", "download alt 0 block 1: no answer to GETSTATUS");
    expect_session(fx, "1-7", "PASS", NULL);
    expect_session(fx, "1-8", "PASS", NULL);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 8);
}

static void test_station_dfuse_file_on_runtime_and_dfu_mode_devices(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("dfuse-pack") || !th_have("dfu-suffix"))
        skip();
    const size_t len = 100000;
    random_file(fx, "se.bin", len);
    random_file(fx, "fw.bin", 20000);
    suffixed(fx, "fw.bin", "fw.dfu", "0483", "df11");
    th_sh_ok("cd '%s' && dfuse-pack -b 0x08000000:se.bin -D 0x0483:0xdf12 se.dfu >/dev/null",
             fx->dir);
    /* The STM32 profile by VID:PID (run-time and DFU-mode PIDs) first;
     * other DFU interfaces get the plain board recipe. */
    char ini[1200];
    snprintf(ini, sizeof(ini),
             "[profile stm32]\nmatch = usb 0483:df12\nmatch = usb 0483:5741\nprotocol = dfu\n"
             "recipe = stm32.recipe\ntimeout = 2s\n\n%s",
             board_ini);
    write_config(fx, "station.ini", ini);
    th_spit_in(fx->dir, "board.recipe", board_recipe);
    th_spit_in(fx->dir, "stm32.recipe",
               "recipe usbsim-stm32 1.0\nprotocol dfu\n"
               "image firmware se.dfu\ndetach\n"
               "dfu-download 0 firmware\n"
               "dfu-verify 0 firmware\n");
    int rc = RUN(fx, 90, "--stats", fx->stats, "--dfu", "1-1:dfuse=1,pid=df12,keep=1", "--dfu",
                 "1-2:dfuse=1,runtime=1,runtime_pid=5741,pid=df12,keep=1", "--dfu", "1-3", "--",
                 STATION_BIN, "run", "-c", "station.ini", "--exit-after", "3", "--db", fx->db,
                 "--headless");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    expect_session(fx, "1-1", "PASS", NULL);
    expect_session(fx, "1-2", "PASS", NULL);
    expect_session(fx, "1-3", "PASS", NULL);
    expect_same_prefix(fx, "se.bin", "stats.txt.d/1-1/alt0.bin", len);
    expect_same_prefix(fx, "se.bin", "stats.txt.d/1-2/alt0.bin", len);
    expect_stat(fx, "1-1", " erases=5 "); /* the 4 x 16K pages and the 64K page it covers */
    expect_stat(fx, "1-2", " resets=1 detaches=1 ");
}

/* ---- the harness's own checks ------------------------------------- */

static void test_harness_dfu_options(void **state)
{
    struct th_fx *fx = *state;
    assert_int_equal(RUN(fx, 20, "--dfu", "1-1:bogus=1", "--", "true"), 125);
    th_fx_expect_in(fx, fx->err, "unknown or bad option 'bogus=1'");
    assert_int_equal(RUN(fx, 20, "--dfu", "1-1:stall=nothing", "--", "true"), 125);
    /* a DfuSe alt must be a memory layout */
    assert_int_equal(RUN(fx, 20, "--dfu", "1-1:dfuse=1,alt=Flash", "--", "true"), 125);
    th_fx_expect_in(fx, fx->err, "the model refuses this configuration");
    assert_int_equal(RUN(fx, 20, "--dfu", "1-1", "--fastboot", "1-1", "--", "true"), 125);
    assert_int_equal(RUN(fx, 20, "--dfu", "1-1:transfer=0", "--", "true"), 125);
    /* ';' in an alt name stands for ',' (options are split at commas) */
    if (th_have("dfu-util")) {
        int rc = RUN(fx, 20, "--dfu", "1-1:dfuse=1,alt=@Flash /0x08000000/02*016Kg;01*064Kg", "--",
                     "dfu-util", "-l");
        assert_int_equal(rc, 0);
        th_fx_expect_in(fx, fx->out, "name=\"@Flash /0x08000000/02*016Kg,01*064Kg\"");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dfu_util_lists_devices_and_alt_settings, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dfu_util_download_then_upload_same_bytes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dfu_util_detaches_a_runtime_device_and_downloads,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_dfu_util_dfuse_download_and_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dfu_util_sees_the_write_fault, setup, teardown),
        cmocka_unit_test_setup_teardown(test_station_flashes_eight_dfu_devices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_station_dfu_faults_fail_only_their_slot, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_station_dfuse_file_on_runtime_and_dfu_mode_devices,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_harness_dfu_options, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
