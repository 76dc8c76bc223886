/*
 * Integration: the real station binary against its simulated rack, with
 * the SQLite file read back afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/image.h"
#include "helpers.h"

static int setup(void **state)
{
    *state = th_fx_new("run", 0);
    return 0;
}

static int teardown(void **state)
{
    th_fx_free(*state);
    return 0;
}

/* Start the station with argv (NULL-terminated, without argv[0]), behind
 * `wrapper` ("valgrind --flag ...", split on spaces) if given; stdout and
 * stderr go to the fixture's files. Returns the pid. */
static pid_t spawn(struct th_fx *fx, const char *wrapper, char *const args[])
{
    const char *argv[64];
    char buf[512];
    size_t n = 0;
    if (wrapper) {
        snprintf(buf, sizeof(buf), "%s", wrapper);
        for (char *tok = strtok(buf, " "); tok && n < 20; tok = strtok(NULL, " "))
            argv[n++] = tok;
    }
    th_argv(argv + n, 64 - n, STATION_BIN, (const char *const *)args);
    return th_spawn(argv, fx->out, fx->err, NULL);
}

static int run(struct th_fx *fx, int limit_s, char *const args[])
{
    return th_wait_exit(spawn(fx, NULL, args), limit_s, "station");
}

static sqlite3 *db_peek(struct th_fx *fx)
{
    return th_db_open(fx->db, false);
}

static void demo_sha256(uint64_t size, uint32_t seed, char hex[65])
{
    uint8_t *buf = malloc(size);
    eng_image_demo_fill(buf, size, seed);
    th_sha256_hex(buf, size, hex);
    free(buf);
}

static void test_sixteen_pass_in_parallel(void **state)
{
    struct th_fx *fx = *state;
    char *args[] = {"run", "--simulate", "16",   "--headless", "--exit-after",
                    "16",  "--db",       fx->db, NULL};
    assert_int_equal(run(fx, 120, args), 0);
    sqlite3 *c = db_peek(fx);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions"), 16);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 16);
    assert_int_equal(th_q_int(c, "SELECT COUNT(DISTINCT serial) FROM sessions"), 16);
    assert_int_equal(th_q_int(c, "SELECT COUNT(DISTINCT slot) FROM sessions"), 16);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE serial IS NULL OR serial=''"),
                     0);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE recipe='demo-phone' AND "
                                 "recipe_version='1.0'"),
                     16);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE bytes=5242880"), 16);
    /* They really ran at once: every session started before any ended. */
    assert_true(th_q_int(c, "SELECT MAX(started_ms) < MIN(ended_ms) FROM sessions"));
    /* Each image's SHA-256 is recorded with every session. */
    char boot[65], system_[65];
    demo_sha256(1u << 20, 0xb007u, boot);
    demo_sha256(4u << 20, 0x5157u, system_);
    char sql[300];
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM session_images WHERE name='boot' AND sha256='%s'", boot);
    assert_int_equal(th_q_int(c, sql), 16);
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM session_images WHERE name='system' AND sha256='%s'", system_);
    assert_int_equal(th_q_int(c, sql), 16);
    /* One row per step, all PASS. */
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM steps WHERE result='PASS'"), 16 * 5);
    char *mode = th_q_text(c, "PRAGMA journal_mode");
    assert_string_equal(mode, "wal");
    free(mode);
    sqlite3_close(c);
    /* PASS lines are printed, and only after "recording result". */
    char *out = th_slurp(fx->out, NULL);
    int passes = 0;
    for (char *p = out; (p = strstr(p, " PASS ")); p++)
        passes++;
    assert_int_equal(passes, 16);
    free(out);
}

static void test_three_faults_fail_only_their_sessions(void **state)
{
    struct th_fx *fx = *state;
    char *args[] = {"run",
                    "--simulate",
                    "16",
                    "--headless",
                    "--exit-after",
                    "16",
                    "--db",
                    fx->db,
                    "--fault",
                    "3:fail=flash:system",
                    "--fault",
                    "7:disconnect=2097152",
                    "--fault",
                    "11:silent=getvar:product",
                    NULL};
    time_t t0 = time(NULL);
    assert_int_equal(run(fx, 60, args), 1);
    assert_true(time(NULL) - t0 < 30);
    sqlite3 *c = db_peek(fx);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 13);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='FAIL'"), 3);
    char *r = th_q_text(c, "SELECT reason FROM sessions WHERE slot='virt-03'");
    assert_string_equal(r, "flash:system: flash: device replied FAIL: injected fault");
    free(r);
    r = th_q_text(c, "SELECT reason FROM sessions WHERE slot='virt-07'");
    assert_string_equal(
        r, "flash:system: download: device disconnected after 1048576 of 4194304 bytes");
    free(r);
    r = th_q_text(c, "SELECT reason FROM sessions WHERE slot='virt-11'");
    assert_string_equal(r, "getvar:product: no reply within 5 s");
    free(r);
    r = th_q_text(c, "SELECT group_concat(failed_step, ',') FROM "
                     "(SELECT failed_step FROM sessions WHERE result='FAIL' ORDER BY slot)");
    assert_string_equal(r, "flash:system,flash:system,getvar:product");
    free(r);
    /* the failing step's row carries the detail */
    r = th_q_text(c, "SELECT detail FROM steps JOIN sessions ON sessions.id=steps.session_id "
                     "WHERE slot='virt-03' AND steps.result='FAIL'");
    assert_string_equal(r, "flash: device replied FAIL: injected fault");
    free(r);
    sqlite3_close(c);
}

static void test_wrong_product_is_never_written(void **state)
{
    /* The getvar product check runs before any download: a FAIL on
     * "download" would show if the station had sent one. */
    struct th_fx *fx = *state;
    char *args[] = {"run",    "--simulate", "2",       "--exit-after",          "2", "--db", fx->db,
                    "--pace", "0",          "--fault", "2:fail=getvar:product", NULL};
    assert_int_equal(run(fx, 60, args), 1);
    sqlite3 *c = db_peek(fx);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM steps JOIN sessions ON id=session_id "
                                 "WHERE slot='virt-02'"),
                     1);
    assert_int_equal(th_q_int(c, "SELECT bytes FROM sessions WHERE slot='virt-02'"), 0);
    sqlite3_close(c);
}

static void expect_usage_error(struct th_fx *fx, char *const args[], const char *needle)
{
    assert_int_equal(run(fx, 30, args), 2);
    char *err = th_slurp(fx->err, NULL);
    if (!strstr(err, needle))
        fail_msg("stderr \"%s\" does not mention \"%s\"", err, needle);
    free(err);
}

static void test_bad_input_exits_2(void **state)
{
    struct th_fx *fx = *state;
    char *a1[] = {"run", "--simulate", "2", "--bogus", NULL};
    expect_usage_error(fx, a1, "--bogus");
    char *a2[] = {"run", "--simulate", "two", NULL};
    expect_usage_error(fx, a2, "--simulate");
    char *a3[] = {"run", "--simulate", "2", "--db", "/nonexistent/dir/t.db", NULL};
    expect_usage_error(fx, a3, "/nonexistent/dir/t.db");
    char *a4[] = {"run", "--simulate", "2", "--db", fx->db, "--image", "system=/no/such/system.img",
                  NULL};
    expect_usage_error(fx, a4, "/no/such/system.img");
    char *a5[] = {"run", "--simulate", "2", "--db", fx->db, "--fault", "9:fail=flash", NULL};
    expect_usage_error(fx, a5, "--fault 9:fail=flash");
    char *a6[] = {"run", "--simulate", "2", "--db", fx->db, "--fault", "1:explode=now", NULL};
    expect_usage_error(fx, a6, "--fault 1:explode=now");
    char *a7[] = {"frobnicate", NULL};
    expect_usage_error(fx, a7, "frobnicate");
    char *a8[] = {"run", "--simulate", "2", "--db", fx->db, "--image", "radio=/tmp/x", NULL};
    expect_usage_error(fx, a8, "radio");
    /* a database that is not a database */
    FILE *f = fopen(fx->db, "w");
    fputs("this is not an sqlite database, just text that is long enough to matter\n", f);
    fclose(f);
    char *a9[] = {"run", "--simulate", "2", "--db", fx->db, NULL};
    expect_usage_error(fx, a9, fx->db);
}

static void test_image_file_is_flashed_and_hashed(void **state)
{
    struct th_fx *fx = *state;
    char path[400], arg[420];
    snprintf(path, sizeof(path), "%s/boot.img", fx->dir);
    FILE *f = fopen(path, "wb");
    for (int i = 0; i < 300000; i++)
        fputc((i * 7) & 0xff, f);
    fclose(f);
    snprintf(arg, sizeof(arg), "boot=%s", path);
    char *args[] = {"run",  "--simulate", "2", "--exit-after", "2", "--db",
                    fx->db, "--pace",     "0", "--image",      arg, NULL};
    assert_int_equal(run(fx, 60, args), 0);
    sqlite3 *c = db_peek(fx);
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM images WHERE path='%s' AND size=300000", path);
    assert_int_equal(th_q_int(c, sql), 1);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE bytes=300000+4194304"), 2);
    sqlite3_close(c);
}

static void test_sigterm_records_aborted_and_crash_is_recovered(void **state)
{
    struct th_fx *fx = *state;
    /* slow devices, so sessions are in flight when the signal comes */
    char *args[] = {"run", "--simulate", "4", "--db", fx->db, "--pace", "1", NULL};
    pid_t pid = spawn(fx, NULL, args);
    th_sleep_ms(1000);
    kill(pid, SIGTERM);
    assert_int_equal(th_wait_exit(pid, 30, "station"), 0);
    sqlite3 *c = db_peek(fx);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='ABORTED'"), 4);
    char *r = th_q_text(c, "SELECT reason FROM sessions LIMIT 1");
    assert_non_null(strstr(r, "station stopped during "));
    free(r);
    sqlite3_close(c);

    /* kill -9: nothing is closed; the next start closes them as ABORTED */
    pid = spawn(fx, NULL, args);
    th_sleep_ms(1000);
    kill(pid, SIGKILL);
    assert_int_equal(th_wait_exit(pid, 30, "station"), 128 + SIGKILL);
    c = db_peek(fx);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL"), 4);
    sqlite3_close(c);
    char *args2[] = {"run",    "--simulate", "1",    "--exit-after", "1",
                     "--pace", "0",          "--db", fx->db,         NULL};
    assert_int_equal(run(fx, 60, args2), 0);
    char *out = th_slurp(fx->out, NULL);
    assert_non_null(strstr(out, "recovered 4 interrupted session(s) as ABORTED"));
    free(out);
    c = db_peek(fx);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL"), 0);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='ABORTED'"), 8);
    char *ic = th_q_text(c, "PRAGMA integrity_check");
    assert_string_equal(ic, "ok");
    free(ic);
    sqlite3_close(c);
}

static void test_clean_under_valgrind(void **state)
{
#ifdef STATION_SANITIZED
    skip();
#else
    struct th_fx *fx = *state;
    if (!th_have("valgrind")) {
        fail_msg("valgrind is not installed (scripts/setup.sh installs it)");
    }
    char *args[] = {"run",
                    "--simulate",
                    "4",
                    "--exit-after",
                    "4",
                    "--pace",
                    "0",
                    "--db",
                    fx->db,
                    "--fault",
                    "2:disconnect=1500000",
                    "--fault",
                    "3:fail=flash:boot",
                    NULL};
    pid_t pid = spawn(fx,
                      "valgrind -q --error-exitcode=99 --leak-check=full "
                      "--errors-for-leak-kinds=definite,indirect,possible",
                      args);
    int rc = th_wait_exit(pid, 240, "valgrind");
    if (rc != 1) {
        char *err = th_slurp(fx->err, NULL);
        fail_msg("valgrind run exited %d:\n%s", rc, err);
    }
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sixteen_pass_in_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_three_faults_fail_only_their_sessions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wrong_product_is_never_written, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_exits_2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_file_is_flashed_and_hashed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_records_aborted_and_crash_is_recovered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_clean_under_valgrind, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
