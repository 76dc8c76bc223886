/*
 * test_usbsim: the usbdevfs harness (tests/usbsim) against real clients:
 * lsusb, AOSP fastboot, and usbprobe (libusb's async API). Each test runs
 * `usbsim [options] -- COMMAND` as a child with a time limit and checks
 * its exit status, its output and the harness's --stats file.
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

#include "helpers.h"

#define ALARM_S 120
#define MIB (1024 * 1024)

static int setup(void **state)
{
    *state = th_fx_new("usbsim", ALARM_S);
    return 0;
}

static int teardown(void **state)
{
    th_fx_free(*state);
    return 0;
}

#define RUN(fx, limit, ...) th_usbsim((fx), (limit), (const char *const[]){__VA_ARGS__, NULL})

/* ---- lsusb -------------------------------------------------------- */

static void test_lsusb_lists_devices_and_hub_path(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("lsusb"))
        skip();
    int rc = RUN(fx, 30, "--fastboot", "1-1", "--fastboot", "1-1.4.2", "--", "sh", "-c",
                 "lsusb && echo ---tree && lsusb -t 2>/dev/null");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    assert_int_equal(th_file_count(fx->out, "ID 18d1:4ee0"), 2);
    th_fx_expect_in(fx, fx->out, "ID 05e3:0608"); /* the implied hub 1-1.4 */
    /* lsusb -t: 1-1 on port 1 of bus 1, hub 1-1.4 on its port 4, the
     * device 1-1.4.2 on port 2 of that hub */
    th_fx_expect_in(fx, fx->out, "|__ Port 4: Dev 2, If 0");
    th_fx_expect_in(fx, fx->out, "Driver=hub/7p");
    th_fx_expect_in(fx, fx->out, "|__ Port 2: Dev 4, If 0");
}

/* ---- fastboot ----------------------------------------------------- */

static void test_fastboot_devices_and_getvar(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("fastboot"))
        skip();
    int rc = RUN(fx, 30, "--fastboot", "1-1:serial=ABC123", "--fastboot", "1-1.4.2", "--",
                 "fastboot", "devices");
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "ABC123\tfastboot");
    th_fx_expect_in(fx, fx->out, "SIM1_1_4_2\tfastboot");

    rc = RUN(fx, 30, "--fastboot", "1-1:serial=ABC123", "--", "fastboot", "-s", "ABC123", "getvar",
             "product");
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->err, "product: simphone");
}

static void test_fastboot_flash_and_stage_bytes_arrive(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("fastboot"))
        skip();
    char img[300], line[400], dump[400];
    snprintf(img, sizeof(img), "%s/small.img", fx->dir);
    /* 1-4 MiB, not a multiple of the 512-byte packet */
    size_t len = (size_t)(1 + (unsigned)getpid() % 3) * MIB + 4097;
    uint64_t h = th_random_file(img, len);
    char script[800];
    snprintf(script, sizeof(script), "fastboot flash boot '%s' && fastboot stage '%s'", img, img);
    int rc = RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-1:serial=FLASH1,keep=1", "--", "sh",
                 "-c", script);
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->err, "Writing 'boot'");
    /* flash, then stage: the model saw the image twice, stored it once */
    snprintf(line, sizeof(line), "1-1 serial=FLASH1 writes=1 bytes=%zu part:boot=%zu:%016" PRIx64,
             2 * len, len, h);
    th_fx_expect_in(fx, fx->stats, line);
    /* keep=1: the partition's bytes, byte for byte */
    snprintf(dump, sizeof(dump), "%s.d/1-1/boot.img", fx->stats);
    size_t got_len, want_len;
    char *got = th_slurp_or_empty(dump, &got_len), *want = th_slurp_or_empty(img, &want_len);
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    free(got);
    free(want);
}

static void test_fastboot_fails_when_unplugged_while_waiting(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("fastboot"))
        skip();
    char img[300];
    snprintf(img, sizeof(img), "%s/small.img", fx->dir);
    th_random_file(img, MIB);
    /* The device never answers flash:; the unplug must end the wait. */
    int rc = RUN(fx, 20, "--fastboot", "1-1:silent=flash", "--unplug", "1-1@1000", "--", "fastboot",
                 "flash", "boot", img);
    assert_int_not_equal(rc, 0);
    assert_true(fx->seconds < 10);
    th_fx_expect_in(fx, fx->err, "No such device");

    /* Unplugged in the middle of a download paced to last a second. */
    rc = RUN(fx, 20, "--fastboot", "1-1:pace=1", "--unplug", "1-1@700", "--", "fastboot", "flash",
             "boot", img);
    assert_int_not_equal(rc, 0);
    th_fx_expect_in(fx, fx->err, "No such device");

    /* getvar exits 0 even when it fails: it must still not hang. */
    rc = RUN(fx, 20, "--fastboot", "1-1:silent=getvar", "--unplug", "1-1@700", "--", "fastboot",
             "getvar", "product");
    assert_true(fx->seconds < 10);
    th_fx_expect_in(fx, fx->err, "FAILED");
}

static void test_fastboot_reboot_bootloader_and_reboot(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("fastboot"))
        skip();
    /* reboot-bootloader: the node goes away (fastboot waits for that) and
     * comes back with the other PID; "reboot" leaves for good. */
    int rc = RUN(fx, 30, "--stats", fx->stats, "--fastboot", "1-1", "--", "sh", "-c",
                 "fastboot reboot bootloader && sleep 1 && lsusb && fastboot getvar product "
                 "&& fastboot reboot && sleep 0.8 && echo devices: && fastboot devices");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "ID 18d1:4ee1");
    th_fx_expect_in(fx, fx->err, "product: simphone");
    char *out = th_slurp_or_empty(fx->out, NULL);
    assert_non_null(strstr(out, "devices:\n"));
    assert_string_equal(strstr(out, "devices:\n"), "devices:\n");
    free(out);
    th_fx_expect_in(fx, fx->stats,
                    "1-1 serial=SIM1_1 writes=0 bytes=0 commands=3 enumerations=2 present=0");
}

static void test_fastboot_flash_32mib_speed(void **state)
{
    struct th_fx *fx = *state;
    if (!th_have("fastboot"))
        skip();
    char img[300], line[400];
    snprintf(img, sizeof(img), "%s/big.img", fx->dir);
    uint64_t h = th_random_file(img, 32 * MIB);
    int rc = RUN(fx, 120, "--stats", fx->stats, "--fastboot", "1-1", "--", "fastboot", "flash",
                 "boot", img);
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    snprintf(line, sizeof(line), "part:boot=%d:%016" PRIx64, 32 * MIB, h);
    th_fx_expect_in(fx, fx->stats, line);
    /* "Sending 'boot' (32768 KB)   OKAY [  0.123s]" */
    char *err = th_slurp_or_empty(fx->err, NULL);
    const char *p = strstr(err, "Sending 'boot'");
    double send_s = 0;
    if (p && (p = strstr(p, "OKAY [")))
        send_s = strtod(p + 6, NULL);
    printf("usbsim: fastboot flash of 32 MiB: sending %.3f s = %.1f MB/s; whole run %.3f s\n",
           send_s, send_s > 0 ? 32.0 * MIB / 1e6 / send_s : 0.0, fx->seconds);
    free(err);
}

/* ---- libusb, async (usbprobe) -------------------------------------- */

static void test_probe_port_paths_serials_and_replies(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 30, "--fastboot", "1-1", "--fastboot", "1-1.4.2", "--fastboot",
                 "2-3.1:serial=XYZ,pid=4ee7", "--", USBPROBE_BIN);
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "device 1-1 18d1:4ee0");
    th_fx_expect_in(fx, fx->out, "device 1-1.4 05e3:0608");
    th_fx_expect_in(fx, fx->out, "device 1-1.4.2 18d1:4ee0");
    th_fx_expect_in(fx, fx->out, "device 2-3.1 18d1:4ee7");
    th_fx_expect_in(fx, fx->out, "reply 1-1 SIM1_1 OKAYsimphone");
    th_fx_expect_in(fx, fx->out, "reply 1-1.4.2 SIM1_1_4_2 OKAYsimphone");
    th_fx_expect_in(fx, fx->out, "reply 2-3.1 XYZ OKAYsimphone");
}

static void test_probe_async_downloads_on_four_devices(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 60, "--stats", fx->stats, "--fastboot", "1-1", "--fastboot", "1-2",
                 "--fastboot", "1-3.1", "--fastboot", "2-1", "--", USBPROBE_BIN, "--download", "16",
                 "--inflight", "3");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    assert_int_equal(th_file_count(fx->out, "download "), 4);
    /* The probe's data is deterministic: one hash for all four. */
    char *out = th_slurp_or_empty(fx->out, NULL);
    const char *h = strstr(out, "hash=");
    assert_non_null(h);
    char want[64];
    snprintf(want, sizeof(want), "part:probe=%d:%.16s", 16 * MIB, h + 5);
    assert_int_equal(th_file_count(fx->stats, want), 4);
    for (const char *p = out; (p = strstr(p, "mbps=")); p++)
        printf("usbsim: libusb async 1 MiB x3 in flight: %.1f MB/s\n", strtod(p + 5, NULL));
    free(out);
}

static void test_probe_cancel_then_clean_reply(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 30, "--fastboot", "1-1", "--fastboot", "1-2", "--", USBPROBE_BIN, "--cancel");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    assert_int_equal(th_file_count(fx->out, "cancelled "), 2);
    th_fx_expect_in(fx, fx->out, "reply 1-1 SIM1_1 OKAYsimphone");
    th_fx_expect_in(fx, fx->out, "reply 1-2 SIM1_2 OKAYsimphone");
}

static void test_probe_unplug_ends_pending_transfers(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 30, "--fastboot", "1-1", "--fastboot", "1-2", "--unplug", "1-2@600",
                 "--unplug", "1-1@900", "--", USBPROBE_BIN, "--wait-gone");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "gone 1-2");
    th_fx_expect_in(fx, fx->out, "left 1-2");
    th_fx_expect_in(fx, fx->out, "gone 1-1");
    assert_true(fx->seconds < 10);
}

static void test_probe_hotplug_and_fresh_units(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 30, "--stats", fx->stats, "--fastboot", "1-1", "--fastboot", "1-2:absent=1",
                 "--unplug", "1-1@600", "--plug", "1-2@800", "--plug", "1-1@1000", "--",
                 USBPROBE_BIN, "--hotplug", "1800");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "reply 1-1 SIM1_1 OKAYsimphone");
    th_fx_expect_in(fx, fx->out, "left 1-1");
    th_fx_expect_in(fx, fx->out, "arrived 1-2 18d1:4ee0");
    th_fx_expect_in(fx, fx->out, "reply 1-2 SIM1_2 OKAYsimphone");
    th_fx_expect_in(fx, fx->out, "arrived 1-1 18d1:4ee0");
    th_fx_expect_in(fx, fx->out, "reply 1-1 SIM1_1-2 OKAYsimphone"); /* a new unit */
    th_fx_expect_in(fx, fx->stats,
                    "1-1 serial=SIM1_1 writes=0 bytes=0 commands=1 enumerations=1 present=0");
    th_fx_expect_in(fx, fx->stats, "1-1 serial=SIM1_1-2 ");
}

static void test_probe_reboot_bootloader_reenumerates(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 30, "--stats", fx->stats, "--fastboot", "1-5.3", "--fastboot",
                 "1-1:pid=d00d,pid2=d00e", "--", USBPROBE_BIN, "--reenum");
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "reenumerated 1-5.3 18d1:4ee0->18d1:4ee1 SIM1_5_3");
    th_fx_expect_in(fx, fx->out, "reenumerated 1-1 18d1:d00d->18d1:d00e SIM1_1");
    th_fx_expect_in(fx, fx->stats,
                    "1-5.3 serial=SIM1_5_3 writes=0 bytes=0 commands=3 enumerations=2");
}

static void test_probe_open_descriptor_and_control_faults(void **state)
{
    struct th_fx *fx = *state;
    int rc = RUN(fx, 30, "--fastboot", "1-1:eacces=1", "--fastboot", "1-2:baddesc=1", "--fastboot",
                 "1-3:stallctl=1", "--fastboot", "1-4", "--", USBPROBE_BIN);
    assert_int_equal(rc, 1); /* some devices failed */
    th_fx_expect_in(fx, fx->out, "error 1-1 open: LIBUSB_ERROR_ACCESS");
    th_fx_expect_in(fx, fx->out, "error 1-2 config: LIBUSB_ERROR_IO");
    th_fx_expect_in(fx, fx->out, "error 1-3 serial: LIBUSB_ERROR_PIPE");
    th_fx_expect_in(fx, fx->out, "reply 1-4 SIM1_4 OKAYsimphone");
}

static void test_probe_kernel_driver_and_usbfs_memory(void **state)
{
    struct th_fx *fx = *state;
    char script[600];
    /* A bound kernel driver: a plain claim is EBUSY, libusb's automatic
     * detach (DISCONNECT_CLAIM) gets the interface. */
    snprintf(script, sizeof(script), "%s --plain-claim; %s", USBPROBE_BIN, USBPROBE_BIN);
    int rc = RUN(fx, 30, "--fastboot", "1-1:driver=usb-storage", "--", "sh", "-c", script);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "driver 1-1 active");
    th_fx_expect_in(fx, fx->out, "error 1-1 claim: LIBUSB_ERROR_BUSY");
    th_fx_expect_in(fx, fx->out, "reply 1-1 SIM1_1 OKAYsimphone");

    /* usbfs memory: 16 one-MiB URBs in flight do not fit in the default
     * 16 MiB (per-URB overhead), 15 do; --usbfs-mb 0 lifts the limit. */
    rc = RUN(fx, 30, "--fastboot", "1-1", "--", USBPROBE_BIN, "--download", "32", "--inflight",
             "16");
    assert_int_equal(rc, 1);
    th_fx_expect_in(fx, fx->out, "error 1-1 submit data: LIBUSB_ERROR_NO_MEM");
    rc = RUN(fx, 30, "--fastboot", "1-1", "--", USBPROBE_BIN, "--download", "32", "--inflight",
             "15");
    assert_int_equal(rc, 0);
    rc = RUN(fx, 30, "--usbfs-mb", "0", "--fastboot", "1-1", "--", USBPROBE_BIN, "--download", "32",
             "--inflight", "16");
    assert_int_equal(rc, 0);
}

static void test_stale_reply_of_a_vanished_client_is_dropped(void **state)
{
    struct th_fx *fx = *state;
    char script[600];
    /* The first client sends a command and leaves without reading the
     * reply; the next client must get its own answer, not that one. */
    snprintf(script, sizeof(script), "%s --send-only getvar:serialno && %s", USBPROBE_BIN,
             USBPROBE_BIN);
    int rc = RUN(fx, 30, "--fastboot", "1-1", "--", "sh", "-c", script);
    if (rc != 0)
        th_fx_show(fx);
    assert_int_equal(rc, 0);
    th_fx_expect_in(fx, fx->out, "reply 1-1 SIM1_1 OKAYsimphone");
}

static void test_harness_exit_codes(void **state)
{
    struct th_fx *fx = *state;
    assert_int_equal(RUN(fx, 20, "--fastboot", "1-1", "--", "sh", "-c", "exit 7"), 7);
    assert_int_equal(RUN(fx, 20, "--fastboot", "1-x", "--", "true"), 125);
    th_fx_expect_in(fx, fx->err, "port path");
    assert_int_equal(RUN(fx, 20, "--fastboot", "1-1:bogus=1", "--", "true"), 125);
    assert_int_equal(RUN(fx, 20, "--unplug", "1-1@10", "--", "true"), 125);
    assert_int_equal(RUN(fx, 20, "--fastboot", "1-1"), 125);
    assert_int_equal(RUN(fx, 20, "--fastboot", "1-1", "--", "/nonexistent/cmd"), 127);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lsusb_lists_devices_and_hub_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastboot_devices_and_getvar, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastboot_flash_and_stage_bytes_arrive, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fastboot_fails_when_unplugged_while_waiting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fastboot_reboot_bootloader_and_reboot, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fastboot_flash_32mib_speed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_port_paths_serials_and_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_async_downloads_on_four_devices, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_probe_cancel_then_clean_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_unplug_ends_pending_transfers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_hotplug_and_fresh_units, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_reboot_bootloader_reenumerates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_open_descriptor_and_control_faults, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_probe_kernel_driver_and_usbfs_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_reply_of_a_vanished_client_is_dropped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_harness_exit_codes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
