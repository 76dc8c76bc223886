/*
 * test_trust_station: image trust at the station level, with keys and
 * signatures made by the real `minisign` tool (Debian package minisign).
 * A configuration with minisign_key and require_signatures = yes and a
 * recipe whose images are pinned (sha256=):
 *   - good signatures: `station check` exits 0, `station run` flashes;
 *   - one changed byte in an image: `station check` exits 2 naming
 *     "images/system.img: sha256 mismatch", `station run` refuses (exit 2)
 *     before any virtual device is plugged (no session row, no arrival);
 *   - a signature of other bytes, a signature by another key, a missing
 *     .minisig: refused by both.
 * And configuration reload (SIGHUP to `station run -c`): a file that does
 * not parse and a recipe with an unsigned image are refused with the
 * station running on; a good reload gives sessions started after it the
 * new recipe version while sessions running across it keep the old one.
 *
 * Every command runs as a child in the fixture's folder with a time limit.
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
#include <sodium.h>
#include <sqlite3.h>

#include "helpers.h"

#define ALARM_S 240
#define BOOT_BYTES (256u << 10)
#define SYSTEM_BYTES (3u << 20) /* 3+ s per session at --pace 1 (the reload test) */

struct fx {
    char dir[256];
    char out[300], err[300], db[300];
    char boot_sha[65], system_sha[65];
};

/* `len` pseudo-random bytes into dir/name; their SHA-256 in hex. */
static void random_image(struct fx *fx, const char *name, size_t len, uint32_t seed, char hex[65])
{
    char path[400];
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    th_fill_xorshift(buf, len, seed);
    th_path(path, sizeof(path), fx->dir, name);
    th_spit(path, buf, len);
    th_sha256_hex(buf, len, hex);
    free(buf);
}

static void write_recipe(struct fx *fx, const char *version, const char *system_image)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "# pinned and signed\n"
             "recipe trust-phone %s\n"
             "image boot   ../images/boot.img   sha256=%s\n"
             "image system ../images/%s sha256=%s\n"
             "require product=simphone\n"
             "getvar serialno\n"
             "flash boot boot\n"
             "flash system system\n"
             "reboot\n",
             version, fx->boot_sha, system_image, fx->system_sha);
    th_spit_in(fx->dir, "recipes/phone.recipe", text);
}

#define STATION_INI                                                                                \
    "; signed images only\n"                                                                       \
    "[station]\n"                                                                                  \
    "db = station.db\n"                                                                            \
    "minisign_key = keys/station.pub\n"                                                            \
    "require_signatures = yes\n"                                                                   \
    "[profile phone]\n"                                                                            \
    "match = class FF/42/03\n"                                                                     \
    "recipe = recipes/phone.recipe\n"                                                              \
    "serial_policy = reflash\n"

static int setup(void **state)
{
    if (th_sh("command -v minisign >/dev/null") != 0) {
        fprintf(stderr, "test_trust_station: minisign not found (apt-get install minisign; "
                        "scripts/setup.sh installs it)\n");
        return -1;
    }
    if (sodium_init() < 0)
        return -1;
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    alarm(ALARM_S);
    th_tmpdir("trustst", fx->dir, sizeof(fx->dir));
    th_path(fx->out, sizeof(fx->out), fx->dir, "out.txt");
    th_path(fx->err, sizeof(fx->err), fx->dir, "err.txt");
    th_path(fx->db, sizeof(fx->db), fx->dir, "station.db");
    assert_int_equal(th_sh("cd '%s' && mkdir images recipes keys", fx->dir), 0);
    random_image(fx, "images/boot.img", BOOT_BYTES, 0xb007u, fx->boot_sha);
    random_image(fx, "images/system.img", SYSTEM_BYTES, 0x5157u, fx->system_sha);
    /* a key pair without password, and both images signed with it
     * (prehashed signatures, minisign's default) */
    assert_int_equal(
        th_sh("cd '%s' && minisign -G -p keys/station.pub -s keys/station.key -W "
              ">/dev/null </dev/null && "
              "minisign -S -s keys/station.key -m images/boot.img >/dev/null </dev/null "
              "&& minisign -S -s keys/station.key -m images/system.img "
              "-t 'release 7' >/dev/null </dev/null",
              fx->dir),
        0);
    write_recipe(fx, "1.0", "system.img");
    th_spit_in(fx->dir, "station.ini", STATION_INI);
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

static void show(struct fx *fx)
{
    th_show("stdout", fx->out);
    th_show("stderr", fx->err);
    fputs("---\n", stderr);
}

/* Start the station with args (NULL-terminated, without argv[0]) in the
 * fixture's folder, its output in the fixture's files. */
static pid_t spawn(struct fx *fx, const char *const *args)
{
    const char *argv[40];
    th_argv(argv, 40, STATION_BIN, args);
    return th_spawn(argv, fx->out, fx->err, fx->dir);
}

static int wait_exit(struct fx *fx, pid_t pid, int limit_s)
{
    int rc;
    if (!th_wait_for(pid, limit_s, &rc)) {
        show(fx);
        fail_msg("station did not exit within %d s", limit_s);
    }
    return rc;
}

#define RUN(fx, limit, ...)                                                                        \
    wait_exit((fx), spawn((fx), (const char *const[]){__VA_ARGS__, NULL}), (limit))

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

static void expect_not_in(struct fx *fx, const char *file, const char *needle)
{
    if (th_file_has(file, needle)) {
        show(fx);
        fail_msg("did not expect \"%s\" in %s", needle, file);
    }
}

/* Wait until `needle` shows in the station's stdout (at most limit_s). */
static void await_out(struct fx *fx, const char *needle, int limit_s)
{
    if (!th_await_file(fx->out, needle, limit_s)) {
        show(fx);
        fail_msg("\"%s\" did not show within %d s", needle, limit_s);
    }
}

/* `station check` exits 2 naming `why`; `station run` refuses with it
 * before any virtual device is plugged. */
static void expect_refused(struct fx *fx, const char *why)
{
    int rc = RUN(fx, 30, "check", "-c", "station.ini");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->out, why);
    expect_in(fx, fx->out, "check: 1 error(s)\n");

    rc = RUN(fx, 30, "run", "-c", "station.ini", "--simulate", "2", "--exit-after", "2",
             "--headless", "--pace", "0");
    expect_rc(fx, rc, 2);
    expect_in(fx, fx->err, why);
    expect_not_in(fx, fx->out, "arrived on virt-");
    expect_not_in(fx, fx->out, "session 1 started");
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions"), 0);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM steps"), 0);
}

static void test_good_signatures_pass(void **state)
{
    struct fx *fx = *state;
    int rc = RUN(fx, 30, "check", "-c", "station.ini");
    expect_rc(fx, rc, 0);
    expect_in(fx, fx->out, "signatures required\n");
    expect_in(fx, fx->out, "images/system.img  3145728 bytes  sha256 ");
    expect_in(fx, fx->out, "(pinned: ok)");
    expect_in(fx, fx->out, "check: ok\n");

    rc = RUN(fx, 60, "run", "-c", "station.ini", "--simulate", "2", "--exit-after", "2",
             "--headless", "--pace", "0");
    expect_rc(fx, rc, 0);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 2);
    assert_int_equal(th_db_int(fx->db,
                               "SELECT count(*) FROM sessions WHERE recipe = 'trust-phone' AND "
                               "recipe_version = '1.0'"),
                     2);
    char sql[300];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM session_images WHERE name = 'system' AND sha256 = '%s'",
             fx->system_sha);
    assert_int_equal(th_db_int(fx->db, sql), 2);
}

static void test_changed_byte_is_refused(void **state)
{
    struct fx *fx = *state;
    char path[400];
    snprintf(path, sizeof(path), "%s/images/system.img", fx->dir);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, 1234567), 1);
    b ^= 0x01;
    assert_int_equal(pwrite(fd, &b, 1, 1234567), 1);
    close(fd);
    expect_refused(fx, "images/system.img: sha256 mismatch (pinned ");
    expect_in(fx, fx->err, "station: ");
}

/* Change the 41st character of the signature line (line 2: base64 of
 * algorithm, key id and signature; character 41 is in the signature). */
static void damage_signature(struct fx *fx, const char *name)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", fx->dir, name);
    char *text = th_slurp_or_empty(path, NULL);
    char *line2 = strchr(text, '\n');
    assert_non_null(line2);
    line2++;
    assert_true(strcspn(line2, "\n") > 60);
    line2[40] = line2[40] == 'A' ? 'B' : 'A';
    th_spit_in(fx->dir, name, text);
    free(text);
}

static void test_bad_and_missing_signatures_are_refused(void **state)
{
    struct fx *fx = *state;
    /* a good signature of other bytes, by the right key */
    assert_int_equal(th_sh("cd '%s' && head -c 1000 images/boot.img > images/other.bin && "
                           "minisign -S -s keys/station.key -m images/other.bin "
                           "-x images/system.img.minisig >/dev/null </dev/null",
                           fx->dir),
                     0);
    expect_refused(fx, "images/system.img: refused: ");
    expect_in(fx, fx->err, "images/system.img.minisig: signature does not match");

    /* the right bytes signed by another key */
    assert_int_equal(th_sh("cd '%s' && minisign -G -p keys/other.pub -s keys/other.key -W "
                           ">/dev/null </dev/null && minisign -S -s keys/other.key "
                           "-m images/system.img >/dev/null </dev/null",
                           fx->dir),
                     0);
    expect_refused(fx, "images/system.img.minisig: signed by another key");

    /* a good signature with one base64 character of it changed */
    assert_int_equal(th_sh("cd '%s' && minisign -S -s keys/station.key -m images/system.img "
                           ">/dev/null </dev/null",
                           fx->dir),
                     0);
    damage_signature(fx, "images/system.img.minisig");
    expect_refused(fx, "images/system.img.minisig: signature does not match");

    /* no signature at all */
    assert_int_equal(th_sh("rm '%s/images/system.img.minisig'", fx->dir), 0);
    expect_refused(fx, "images/system.img.minisig: missing");

    /* signed again: accepted again */
    assert_int_equal(th_sh("cd '%s' && minisign -S -s keys/station.key -m images/system.img "
                           ">/dev/null </dev/null",
                           fx->dir),
                     0);
    int rc = RUN(fx, 30, "check", "-c", "station.ini");
    expect_rc(fx, rc, 0);
}

/* ---- SIGHUP: reload the configuration -------------------------------- */

static void test_sighup_reload(void **state)
{
    struct fx *fx = *state;
    /* two slow units (3+ s each at 1 MB/s); four sessions in all */
    pid_t pid = spawn(fx, (const char *const[]){"run", "-c", "station.ini", "--simulate", "2",
                                                "--pace", "1", "--headless", "--exit-after", "4",
                                                "--replug-ms", "200", NULL});
    await_out(fx, "virt-02 ", 20);
    await_out(fx, "session 2 started: trust-phone 1.0", 20);

    /* a file that does not load: named with line and column, the station runs on */
    th_spit_in(fx->dir, "station.ini", STATION_INI "bogus line\n");
    kill(pid, SIGHUP);
    await_out(fx,
              "config reload failed: station.ini:10:1: expected \"key = value\", a [section] "
              "or a comment, got \"bogus line\"; still running on the previous configuration",
              20);

    /* a recipe whose new image is not signed: refused, the station runs on */
    th_spit_in(fx->dir, "station.ini", STATION_INI);
    assert_int_equal(th_sh("cp '%s/images/system.img' '%s/images/system2.img'", fx->dir, fx->dir),
                     0);
    write_recipe(fx, "2.0", "system2.img");
    kill(pid, SIGHUP);
    await_out(fx,
              "images/system2.img.minisig: missing; still running on the previous "
              "configuration",
              20);

    /* a good one: new sessions get version 2.0 */
    write_recipe(fx, "2.0", "system.img");
    kill(pid, SIGHUP);
    await_out(fx, "config reloaded: 1 profiles", 20);
    int rc = wait_exit(fx, pid, 60);
    expect_rc(fx, rc, 0);

    /* the reloads happened while the first two sessions ran */
    char *out = th_slurp_or_empty(fx->out, NULL);
    char *reloaded = strstr(out, "config reloaded: 1 profiles");
    char *first_pass = strstr(out, " PASS ");
    assert_non_null(reloaded);
    assert_non_null(first_pass);
    assert_true(reloaded < first_pass);
    free(out);
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 4);
    /* running across the reload: the old version, to the end */
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE id <= 2 AND "
                                       "recipe_version = '1.0' AND bytes = 3407872"),
                     2);
    /* started after it: the new one */
    assert_int_equal(th_db_int(fx->db, "SELECT count(*) FROM sessions WHERE id > 2 AND "
                                       "recipe_version = '2.0'"),
                     2);
    assert_true(th_db_int(fx->db,
                          "SELECT (SELECT min(started_ms) FROM sessions WHERE recipe_version "
                          "= '2.0') >= (SELECT min(ended_ms) FROM sessions WHERE "
                          "recipe_version = '1.0')"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_good_signatures_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_changed_byte_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_and_missing_signatures_are_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sighup_reload, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
