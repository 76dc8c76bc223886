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

#define ALARM_S 240
#define BOOT_BYTES (256u << 10)
#define SYSTEM_BYTES (3u << 20) /* 3+ s per session at --pace 1 (the reload test) */

struct fx {
    char dir[256];
    char out[300], err[300], db[300];
    char boot_sha[65], system_sha[65];
};

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

static void write_file(struct fx *fx, const char *name, const char *text)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", fx->dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* `len` pseudo-random bytes into dir/name; their SHA-256 in hex. */
static void random_image(struct fx *fx, const char *name, size_t len, uint32_t seed, char hex[65])
{
    char path[400];
    unsigned char sum[32];
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    for (size_t i = 0; i < len; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        buf[i] = (uint8_t)seed;
    }
    snprintf(path, sizeof(path), "%s/%s", fx->dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    crypto_hash_sha256(sum, buf, len);
    sodium_bin2hex(hex, 65, sum, 32);
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
    write_file(fx, "recipes/phone.recipe", text);
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
    if (sh("command -v minisign >/dev/null") != 0) {
        fprintf(stderr, "test_trust_station: minisign not found (apt-get install minisign; "
                        "scripts/setup.sh installs it)\n");
        return -1;
    }
    if (sodium_init() < 0)
        return -1;
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    alarm(ALARM_S);
    mkdir(TEST_TMPDIR, 0755);
    snprintf(fx->dir, sizeof(fx->dir), "%s/truststXXXXXX", TEST_TMPDIR);
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->out, sizeof(fx->out), "%s/out.txt", fx->dir);
    snprintf(fx->err, sizeof(fx->err), "%s/err.txt", fx->dir);
    snprintf(fx->db, sizeof(fx->db), "%s/station.db", fx->dir);
    assert_int_equal(sh("cd '%s' && mkdir images recipes keys", fx->dir), 0);
    random_image(fx, "images/boot.img", BOOT_BYTES, 0xb007u, fx->boot_sha);
    random_image(fx, "images/system.img", SYSTEM_BYTES, 0x5157u, fx->system_sha);
    /* a key pair without password, and both images signed with it
     * (prehashed signatures, minisign's default) */
    assert_int_equal(sh("cd '%s' && minisign -G -p keys/station.pub -s keys/station.key -W "
                        ">/dev/null </dev/null && "
                        "minisign -S -s keys/station.key -m images/boot.img >/dev/null </dev/null "
                        "&& minisign -S -s keys/station.key -m images/system.img "
                        "-t 'release 7' >/dev/null </dev/null",
                        fx->dir),
                     0);
    write_recipe(fx, "1.0", "system.img");
    write_file(fx, "station.ini", STATION_INI);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (sh("rm -rf '%s'", fx->dir) != 0)
        fprintf(stderr, "could not remove %s\n", fx->dir);
    free(fx);
    alarm(0);
    return 0;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

static void show(struct fx *fx)
{
    char *o = slurp(fx->out), *e = slurp(fx->err);
    fprintf(stderr, "--- stdout\n%s--- stderr\n%s---\n", o, e);
    free(o);
    free(e);
}

/* Start the station with args (NULL-terminated, without argv[0]) in the
 * fixture's folder, its output in the fixture's files. */
static pid_t spawn(struct fx *fx, const char *const *args)
{
    const char *argv[40];
    int n = 0;
    argv[n++] = STATION_BIN;
    for (int i = 0; args[i] && n < 39; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(fx->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(fx->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        if (chdir(fx->dir) != 0)
            _exit(126);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    return pid;
}

static int wait_exit(struct fx *fx, pid_t pid, int limit_s)
{
    int status;
    for (int i = 0; i < limit_s * 200; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    show(fx);
    fail_msg("station did not exit within %d s", limit_s);
    return -1;
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
    char *text = slurp(file);
    bool hit = strstr(text, needle) != NULL;
    free(text);
    if (!hit) {
        show(fx);
        fail_msg("expected \"%s\" in %s", needle, file);
    }
}

static void expect_not_in(struct fx *fx, const char *file, const char *needle)
{
    char *text = slurp(file);
    bool hit = strstr(text, needle) != NULL;
    free(text);
    if (hit) {
        show(fx);
        fail_msg("did not expect \"%s\" in %s", needle, file);
    }
}

/* Wait until `needle` shows in the station's stdout (at most limit_s). */
static void await_out(struct fx *fx, const char *needle, int limit_s)
{
    for (int i = 0; i < limit_s * 100; i++) {
        char *text = slurp(fx->out);
        bool hit = strstr(text, needle) != NULL;
        free(text);
        if (hit)
            return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    show(fx);
    fail_msg("\"%s\" did not show within %d s", needle, limit_s);
}

static long long db_int(struct fx *fx, const char *sql)
{
    sqlite3 *c;
    sqlite3_stmt *st;
    if (sqlite3_open_v2(fx->db, &c, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        show(fx);
        fail_msg("cannot open %s", fx->db);
    }
    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    return v;
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
    assert_int_equal(db_int(fx, "SELECT count(*) FROM sessions"), 0);
    assert_int_equal(db_int(fx, "SELECT count(*) FROM steps"), 0);
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
    assert_int_equal(db_int(fx, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 2);
    assert_int_equal(db_int(fx, "SELECT count(*) FROM sessions WHERE recipe = 'trust-phone' AND "
                                "recipe_version = '1.0'"),
                     2);
    char sql[300];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM session_images WHERE name = 'system' AND sha256 = '%s'",
             fx->system_sha);
    assert_int_equal(db_int(fx, sql), 2);
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
    char *text = slurp(path);
    char *line2 = strchr(text, '\n');
    assert_non_null(line2);
    line2++;
    assert_true(strcspn(line2, "\n") > 60);
    line2[40] = line2[40] == 'A' ? 'B' : 'A';
    write_file(fx, name, text);
    free(text);
}

static void test_bad_and_missing_signatures_are_refused(void **state)
{
    struct fx *fx = *state;
    /* a good signature of other bytes, by the right key */
    assert_int_equal(sh("cd '%s' && head -c 1000 images/boot.img > images/other.bin && "
                        "minisign -S -s keys/station.key -m images/other.bin "
                        "-x images/system.img.minisig >/dev/null </dev/null",
                        fx->dir),
                     0);
    expect_refused(fx, "images/system.img: refused: ");
    expect_in(fx, fx->err, "images/system.img.minisig: signature does not match");

    /* the right bytes signed by another key */
    assert_int_equal(sh("cd '%s' && minisign -G -p keys/other.pub -s keys/other.key -W "
                        ">/dev/null </dev/null && minisign -S -s keys/other.key "
                        "-m images/system.img >/dev/null </dev/null",
                        fx->dir),
                     0);
    expect_refused(fx, "images/system.img.minisig: signed by another key");

    /* a good signature with one base64 character of it changed */
    assert_int_equal(sh("cd '%s' && minisign -S -s keys/station.key -m images/system.img "
                        ">/dev/null </dev/null",
                        fx->dir),
                     0);
    damage_signature(fx, "images/system.img.minisig");
    expect_refused(fx, "images/system.img.minisig: signature does not match");

    /* no signature at all */
    assert_int_equal(sh("rm '%s/images/system.img.minisig'", fx->dir), 0);
    expect_refused(fx, "images/system.img.minisig: missing");

    /* signed again: accepted again */
    assert_int_equal(sh("cd '%s' && minisign -S -s keys/station.key -m images/system.img "
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
    write_file(fx, "station.ini", STATION_INI "bogus line\n");
    kill(pid, SIGHUP);
    await_out(fx,
              "config reload failed: station.ini:10:1: expected \"key = value\", a [section] "
              "or a comment, got \"bogus line\"; still running on the previous configuration",
              20);

    /* a recipe whose new image is not signed: refused, the station runs on */
    write_file(fx, "station.ini", STATION_INI);
    assert_int_equal(sh("cp '%s/images/system.img' '%s/images/system2.img'", fx->dir, fx->dir), 0);
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
    char *out = slurp(fx->out);
    char *reloaded = strstr(out, "config reloaded: 1 profiles");
    char *first_pass = strstr(out, " PASS ");
    assert_non_null(reloaded);
    assert_non_null(first_pass);
    assert_true(reloaded < first_pass);
    free(out);
    assert_int_equal(db_int(fx, "SELECT count(*) FROM sessions WHERE result = 'PASS'"), 4);
    /* running across the reload: the old version, to the end */
    assert_int_equal(db_int(fx, "SELECT count(*) FROM sessions WHERE id <= 2 AND "
                                "recipe_version = '1.0' AND bytes = 3407872"),
                     2);
    /* started after it: the new one */
    assert_int_equal(db_int(fx, "SELECT count(*) FROM sessions WHERE id > 2 AND "
                                "recipe_version = '2.0'"),
                     2);
    assert_true(db_int(fx, "SELECT (SELECT min(started_ms) FROM sessions WHERE recipe_version "
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
