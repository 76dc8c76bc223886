/*
 * `station check` against real files: what it accepts and what it refuses,
 * with exit codes and the messages a line engineer reads. DFU files are
 * made with the real dfu-suffix and dfuse-pack.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

static char dir[256];

/* Run a shell command line; returns its exit status; output into `out`. */
static int sh(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int sh(char *out, size_t len, const char *fmt, ...)
{
    char cmd[2048], *text;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = th_sh_out(&text, "cd '%s' && (%s) 2>&1", dir, cmd);
    snprintf(out, len, "%s", text);
    free(text);
    return rc;
}

static void write_board(const char *image_line, const char *extra_match)
{
    char ini[1024];
    th_spit_in(dir, "board.recipe", "recipe board 1\nprotocol dfu\n");
    char recipe[1024];
    snprintf(recipe, sizeof(recipe),
             "recipe board 1\nprotocol dfu\n%s\ndfu-download 0 fw\ndfu-verify 0 fw\n", image_line);
    th_spit_in(dir, "board.recipe", recipe);
    snprintf(ini, sizeof(ini),
             "[station]\nid = t\n[profile board]\nmatch = class FE/01/02\n%s"
             "protocol = dfu\nrecipe = board.recipe\n",
             extra_match);
    th_spit_in(dir, "station.ini", ini);
}

static void test_examples_pass_and_a_changed_byte_is_refused(void **state)
{
    char out[8192];
    assert_int_equal(sh(out, sizeof(out),
                        "cp -r '%s/examples' ex && bash ex/make-images.sh ex/images", SOURCE_DIR),
                     0);
    int rc = sh(out, sizeof(out), "%s check -c ex/station.ini", STATION_BIN);
    if (rc != 0)
        fail_msg("check of the examples failed:\n%s", out);
    assert_non_null(strstr(out, "check: ok"));
    assert_non_null(strstr(out, "(pinned: ok)"));
    /* one changed byte in a pinned image */
    assert_int_equal(
        sh(out, sizeof(out), "printf x | dd of=ex/images/boot.img bs=1 seek=4096 conv=notrunc"), 0);
    rc = sh(out, sizeof(out), "%s check -c ex/station.ini", STATION_BIN);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "images/boot.img: sha256 mismatch"));
    /* and `run` refuses before any device gets a byte: no session is recorded */
    rc = sh(out, sizeof(out),
            "%s run -c ex/station.ini --simulate 4 --exit-after 4 --headless --db ex/t.db",
            STATION_BIN);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "sha256 mismatch"));
    assert_int_equal(sh(out, sizeof(out), "sqlite3 ex/t.db 'select count(*) from sessions'"), 0);
    assert_string_equal(out, "0\n");
}

static void test_dfu_suffix_files(void **state)
{
    char out[8192];
    assert_int_equal(sh(out, sizeof(out),
                        "head -c 20000 /dev/urandom > fw.bin && cp fw.bin fw.dfu"
                        " && dfu-suffix -v 0483 -p df11 -a fw.dfu"),
                     0);
    /* made by dfu-suffix for the profile's VID:PID: accepted */
    write_board("image fw fw.dfu", "match = usb 0483:df11\n");
    int rc = sh(out, sizeof(out), "%s check -c station.ini", STATION_BIN);
    if (rc != 0)
        fail_msg("dfu-suffix file refused:\n%s", out);
    /* made for another device: refused */
    write_board("image fw fw.dfu", "match = usb 1234:5678\n");
    rc = sh(out, sizeof(out), "%s check -c station.ini", STATION_BIN);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "made for 0483:df11"));
    /* a bad CRC: refused */
    assert_int_equal(sh(out, sizeof(out), "printf x | dd of=fw.dfu bs=1 seek=100 conv=notrunc"), 0);
    write_board("image fw fw.dfu", "match = usb 0483:df11\n");
    rc = sh(out, sizeof(out), "%s check -c station.ini", STATION_BIN);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "CRC"));
    /* a raw .bin only where the recipe allows it */
    write_board("image fw fw.bin", "");
    rc = sh(out, sizeof(out), "%s check -c station.ini", STATION_BIN);
    assert_int_equal(rc, 2);
    write_board("allow-raw-dfu\nimage fw fw.bin", "");
    rc = sh(out, sizeof(out), "%s check -c station.ini", STATION_BIN);
    if (rc != 0)
        fail_msg("raw .bin with allow-raw-dfu refused:\n%s", out);
}

static void test_dfuse_pack_files(void **state)
{
    char out[8192];
    assert_int_equal(sh(out, sizeof(out),
                        "head -c 30000 /dev/urandom > app.bin && "
                        "dfuse-pack -b 0x08000000:app.bin -D 0x0483:0xdf11 app.dfu"),
                     0);
    write_board("image fw app.dfu", "match = usb 0483:df11\n");
    int rc = sh(out, sizeof(out), "%s check -c station.ini", STATION_BIN);
    if (rc != 0)
        fail_msg("dfuse-pack file refused:\n%s", out);
    assert_non_null(strstr(out, "check: ok"));
}

static int group_setup(void **state)
{
    th_tmpdir("check", dir, sizeof(dir));
    return 0;
}

static int group_teardown(void **state)
{
    return th_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples_pass_and_a_changed_byte_is_refused),
        cmocka_unit_test(test_dfu_suffix_files),
        cmocka_unit_test(test_dfuse_pack_files),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
