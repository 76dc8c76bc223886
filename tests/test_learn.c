/*
 * test_learn: `station learn` binds slots to ports, driven against the
 * simulated rack (--simulate) and against the usbdevfs harness
 * (tests/usbsim, devices plugged one after the other with absent=1 and
 * --plug PATH@MS). Each test checks the rewritten station.ini byte for
 * byte (comments and other lines kept), that `station check` accepts it,
 * and that `station run -c` afterwards records each device on the slot it
 * was learned for (the sessions' slot column). A slot whose device never
 * comes exits 2 and leaves the file as it was.
 *
 * Every command runs as a child in the fixture's folder with a time limit
 * (its whole process group is killed after it).
 */
#include <errno.h>
#include <fcntl.h>
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

#define ALARM_S 240

struct fx {
    char dir[256];
    char out[300], err[300], ini[300], db[300];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    alarm(ALARM_S);
    th_tmpdir("learn", fx->dir, sizeof(fx->dir));
    th_path(fx->out, sizeof(fx->out), fx->dir, "out.txt");
    th_path(fx->err, sizeof(fx->err), fx->dir, "err.txt");
    th_path(fx->ini, sizeof(fx->ini), fx->dir, "station.ini");
    th_path(fx->db, sizeof(fx->db), fx->dir, "station.db");
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    th_rmtree(fx->dir);
    free(fx);
    alarm(0);
    return 0;
}

static char *slurp(const char *path)
{
    return th_slurp_or_empty(path, NULL);
}

static void show(struct fx *fx)
{
    th_show("stdout", fx->out);
    th_show("stderr", fx->err);
    th_show("station.ini", fx->ini);
    fputs("---\n", stderr);
}

/* Run argv (NULL-terminated, argv[0] a path) in the fixture's folder;
 * returns the exit status (128+N if killed by signal N). */
static int run(struct fx *fx, int limit_s, const char *const *args)
{
    int rc;
    if (!th_run_for(args, fx->out, fx->err, fx->dir, limit_s, &rc, NULL)) {
        show(fx);
        fail_msg("%s did not exit within %d s", args[1], limit_s);
    }
    return rc;
}

#define RUN(fx, limit, ...) run((fx), (limit), (const char *const[]){__VA_ARGS__, NULL})

static void expect_rc(struct fx *fx, int rc, int want)
{
    if (rc != want) {
        show(fx);
        fail_msg("exit status %d, expected %d", rc, want);
    }
}

static void expect_in(struct fx *fx, const char *file, const char *needle)
{
    if (!th_file_has(file, needle)) {
        show(fx);
        fail_msg("expected \"%s\" in %s", needle, file);
    }
}

static void expect_ini(struct fx *fx, const char *want)
{
    char *text = slurp(fx->ini);
    if (strcmp(text, want) != 0) {
        fprintf(stderr, "--- expected\n%s--- got\n%s---\n", want, text);
        free(text);
        fail_msg("station.ini is not as expected");
    }
    free(text);
}

/* The slot recorded for the session(s) on `port`; fails unless exactly
 * `count` sessions there all passed under that one slot name. */
static void expect_slot(struct fx *fx, const char *port, const char *slot, int count)
{
    sqlite3 *c = th_db_open(fx->db, false);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(c,
                                        "SELECT count(*), count(DISTINCT slot), min(slot), "
                                        "sum(result = 'PASS') FROM sessions WHERE port = ?1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, port, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0), slots = sqlite3_column_int(st, 1);
    int passed = sqlite3_column_int(st, 3);
    char got[80];
    const unsigned char *t = sqlite3_column_text(st, 2);
    snprintf(got, sizeof(got), "%s", t ? (const char *)t : "(none)");
    sqlite3_finalize(st);
    sqlite3_close(c);
    if (n != count || slots != (count ? 1 : 0) || passed != count || (count && strcmp(got, slot))) {
        show(fx);
        fail_msg("port %s: %d session(s), %d passed, slot %s; expected %d on slot %s", port, n,
                 passed, got, count, slot);
    }
}

/* A fastboot profile whose recipe flashes one small image. */
static void make_recipe(struct fx *fx)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/images", fx->dir);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/recipes", fx->dir);
    mkdir(path, 0755);
    char *img = malloc(65536);
    assert_non_null(img);
    for (int i = 0; i < 65536; i++)
        img[i] = (char)(i * 31 + 7);
    th_path(path, sizeof(path), fx->dir, "images/boot.img");
    th_spit(path, img, 65536);
    free(img);
    th_spit_in(fx->dir, "recipes/phone.recipe",
               "# learn test recipe\n"
               "recipe learn-phone 1.0\n"
               "image boot ../images/boot.img\n"
               "getvar serialno\n"
               "flash boot boot\n");
}

#define PROFILE                                                                                    \
    "[profile phone]\n"                                                                            \
    "match = class FF/42/03          ; any fastboot interface\n"                                   \
    "recipe = recipes/phone.recipe\n"                                                              \
    "serial_policy = reflash\n"

/* ---- the simulated rack ---------------------------------------------- */

static void test_rack_rewrites_slots_keeping_comments(void **state)
{
    struct fx *fx = *state;
    make_recipe(fx);
    /* two slots exist (one with two cables), one is new; the order asked
     * for is not the file's */
    th_spit_in(fx->dir, "station.ini",
               "; Line 3 station.\n"
               "# Bays are numbered from the left.\n"
               "[station]\n"
               "id = line3        ; recorded with every session\n"
               "db = station.db\n"
               "\n"
               "; the left bay\n"
               "[slot left]\n"
               "  path = 9-1              ; old cable\n"
               "\n"
               "[ slot  right ]\n"
               "; two cables into one bay\n"
               "path=9-2\n"
               "path = 9-3                ; USB3 side\n"
               "\n" PROFILE "# end of file\n");
    int rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "3", "--slots",
                 "right,left,extra");
    expect_rc(fx, rc, 0);
    expect_in(fx, fx->out,
              "plug a device into the port for slot right\n"
              "slot right: port virt-01\n"
              "plug a device into the port for slot left\n"
              "slot left: port virt-02\n"
              "plug a device into the port for slot extra\n"
              "slot extra: port virt-03\n");
    expect_ini(fx, "; Line 3 station.\n"
                   "# Bays are numbered from the left.\n"
                   "[station]\n"
                   "id = line3        ; recorded with every session\n"
                   "db = station.db\n"
                   "\n"
                   "; the left bay\n"
                   "[slot left]\n"
                   "  path = virt-02          ; old cable\n"
                   "\n"
                   "[ slot  right ]\n"
                   "; two cables into one bay\n"
                   "path=virt-01\n"
                   "; path = 9-3                ; USB3 side\n"
                   "\n" PROFILE "# end of file\n"
                   "\n"
                   "[slot extra]\n"
                   "path = virt-03\n");
    char tmp[400];
    snprintf(tmp, sizeof(tmp), "%s.tmp", fx->ini);
    assert_int_equal(access(tmp, F_OK), -1);

    rc = RUN(fx, 30, STATION_BIN, "check", "-c", "station.ini");
    expect_rc(fx, rc, 0);
    expect_in(fx, fx->out, "slot left: virt-02\nslot right: virt-01\nslot extra: virt-03\n");

    rc = RUN(fx, 60, STATION_BIN, "run", "-c", "station.ini", "--simulate", "3", "--exit-after",
             "3", "--headless", "--pace", "0");
    expect_rc(fx, rc, 0);
    expect_slot(fx, "virt-01", "right", 1);
    expect_slot(fx, "virt-02", "left", 1);
    expect_slot(fx, "virt-03", "extra", 1);
}

static void test_rack_default_slot_names_and_crlf(void **state)
{
    struct fx *fx = *state;
    make_recipe(fx);
    /* no [slot] section: slot1..slotN; CRLF line endings are kept */
    th_spit_in(fx->dir, "station.ini",
               "; windows editor\r\n[station]\r\ndb = station.db\r\n"
               "[profile phone]\r\nmatch = class FF/42/03\r\nrecipe = recipes/phone.recipe\r\n");
    int rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "2");
    expect_rc(fx, rc, 0);
    expect_ini(fx, "; windows editor\r\n[station]\r\ndb = station.db\r\n"
                   "[profile phone]\r\nmatch = class FF/42/03\r\nrecipe = recipes/phone.recipe\r\n"
                   "\r\n[slot slot1]\r\npath = virt-01\r\n"
                   "\r\n[slot slot2]\r\npath = virt-02\r\n");
    rc = RUN(fx, 30, STATION_BIN, "check", "-c", "station.ini");
    expect_rc(fx, rc, 0);

    /* learning again, in the file's order, replaces the paths in place */
    rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "2");
    expect_rc(fx, rc, 0);
    expect_in(fx, fx->out, "slot slot1: port virt-01\n");
    expect_in(fx, fx->out, "slot slot2: port virt-02\n");
    expect_ini(fx, "; windows editor\r\n[station]\r\ndb = station.db\r\n"
                   "[profile phone]\r\nmatch = class FF/42/03\r\nrecipe = recipes/phone.recipe\r\n"
                   "\r\n[slot slot1]\r\npath = virt-01\r\n"
                   "\r\n[slot slot2]\r\npath = virt-02\r\n");
}

static void test_timeout_leaves_the_file_unchanged(void **state)
{
    struct fx *fx = *state;
    make_recipe(fx);
    /* virt-02 belongs to a slot that is not being learned: slot B never
     * gets a device */
    const char *ini = "[station]\n"
                      "db = station.db\n"
                      "[slot kept]\n"
                      "path = virt-02   ; stays\n" PROFILE;
    th_spit_in(fx->dir, "station.ini", ini);
    int rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "2", "--slots",
                 "A,B", "--timeout-ms", "1500");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->out, "slot A: port virt-01\n");
    expect_in(fx, fx->out,
              "port virt-02 belongs to [slot kept] in station.ini (not being "
              "learned); plug the device for slot B into another port\n");
    expect_in(fx, fx->err,
              "station: no new device in the port for slot B within 1500 ms; "
              "station.ini unchanged\n");
    expect_ini(fx, ini);

    /* usage errors: exit 2, nothing written */
    rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "2", "--slots",
             "A,,B");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->err,
              "--slots: expected slot names (letters, digits, ._-) separated by "
              "commas, got \"A,,B\"");
    rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "2", "--slots",
             "A,B,A");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->err, "--slots: slot \"A\" is named twice");
    rc =
        RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "1", "--slots", "A,B");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->err, "--simulate 1: fewer virtual devices than the 2 slot(s) to learn");
    rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "station.ini", "--simulate", "1", "--usb");
    expect_rc(fx, rc, 2);
    th_spit_in(fx->dir, "broken.ini", "[station]\nbogus = 1\n");
    rc = RUN(fx, 30, STATION_BIN, "learn", "-c", "broken.ini", "--simulate", "1");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->err, "broken.ini:2:1: unknown key \"bogus\" in [station]");
    expect_ini(fx, ini);
}

/* ---- USB devices under the usbdevfs harness -------------------------- */

/* 1-1 is the hub in front of 1-1.4 here (no device sits on a path with
 * devices behind it: see tests/test_usb_station.c). */
static void test_usb_devices_plugged_one_after_the_other(void **state)
{
    struct fx *fx = *state;
    make_recipe(fx);
    th_spit_in(fx->dir, "station.ini",
               "; USB line\n"
               "[station]\n"
               "db = station.db\n"
               "[slot bayA]\n"
               "path = 7-7          ; to be learned\n" PROFILE);
    /* 2-1 is plugged in before learning starts: it is not a new device */
    int rc = RUN(fx, 60, USBSIM_BIN, "--fastboot", "2-1", "--fastboot", "1-1.4.2:absent=1",
                 "--fastboot", "1-3:absent=1", "--plug", "1-1.4.2@800", "--plug", "1-3@2000", "--",
                 STATION_BIN, "learn", "-c", "station.ini", "--slots", "bayA,bayB");
    expect_rc(fx, rc, 0);
    expect_in(fx, fx->out, "ignoring 1 device(s) already plugged in");
    expect_in(fx, fx->out,
              "plug a device into the port for slot bayA\n"
              "slot bayA: port 1-1.4.2\n"
              "plug a device into the port for slot bayB\n"
              "slot bayB: port 1-3\n");
    expect_ini(fx, "; USB line\n"
                   "[station]\n"
                   "db = station.db\n"
                   "[slot bayA]\n"
                   "path = 1-1.4.2      ; to be learned\n" PROFILE "\n"
                   "[slot bayB]\n"
                   "path = 1-3\n");
    rc = RUN(fx, 30, STATION_BIN, "check", "-c", "station.ini");
    expect_rc(fx, rc, 0);

    /* the station names the devices' slots from the learned paths */
    rc = RUN(fx, 60, USBSIM_BIN, "--fastboot", "1-3", "--fastboot", "1-1.4.2", "--fastboot", "2-1",
             "--", STATION_BIN, "run", "-c", "station.ini", "--headless", "--exit-after", "3");
    expect_rc(fx, rc, 0);
    expect_slot(fx, "1-1.4.2", "bayA", 1);
    expect_slot(fx, "1-3", "bayB", 1);
    expect_slot(fx, "2-1", "2-1", 1); /* no slot: named after its port */

    /* a slot whose device never comes: exit 2, the file as it was */
    char *before = slurp(fx->ini);
    rc = RUN(fx, 60, USBSIM_BIN, "--fastboot", "1-3:absent=1", "--plug", "1-3@500", "--",
             STATION_BIN, "learn", "-c", "station.ini", "--usb", "--timeout-ms", "2000");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->out, "slot bayA: port 1-3\n");
    expect_in(fx, fx->err, "no new device in the port for slot bayB within 2000 ms");
    expect_ini(fx, before);
    free(before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rack_rewrites_slots_keeping_comments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rack_default_slot_names_and_crlf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_leaves_the_file_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usb_devices_plugged_one_after_the_other, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
