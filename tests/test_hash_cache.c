/*
 * test_hash_cache: remembered image hashes (engine/image.h, DB.hashes/),
 * against the real binary.
 *
 * - a file hashed at one start is not read again at the next: the line
 *   says "remembered" and the records carry the same, true SHA-256;
 * - a file changed since (same size, one byte) is hashed again, and the
 *   records carry its new SHA-256;
 * - a damaged cache entry is ignored;
 * - --no-hash-cache neither reads nor writes the cache;
 * - `station check` hashes every byte every time and leaves what it read
 *   to the station's next start with the same configuration;
 * - a file modified less than two seconds before its hashing (here: an
 *   hour in the future) is not remembered (a later write in the same
 *   timestamp tick could hide).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <sodium.h>
#include <sqlite3.h>
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

#define IMAGE_BYTES (2u << 20)

struct fx {
    char dir[256];
    char image[300], db[300], cache[320], out[300];
    char sha[65];
};

/* IMAGE_BYTES pseudo-random bytes from seed into fx->image; fx->sha. */
static void write_image(struct fx *fx, uint32_t seed)
{
    uint8_t *buf = malloc(IMAGE_BYTES);
    assert_non_null(buf);
    th_fill_xorshift(buf, IMAGE_BYTES, seed);
    /* rewrite in place: the same inode, as an operator copying over it */
    int fd = open(fx->image, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, IMAGE_BYTES), IMAGE_BYTES);
    assert_int_equal(close(fd), 0);
    th_sha256_hex(buf, IMAGE_BYTES, fx->sha);
    free(buf);
}

static void set_mtime(struct fx *fx, time_t t)
{
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, fx->image, ts, 0), 0);
}

/* One simulated unit flashed with the image; returns the station's stdout. */
static char *run_station(struct fx *fx, bool no_cache)
{
    char img[400];
    snprintf(img, sizeof(img), "system=%s", fx->image);
    const char *argv[] = {STATION_BIN,
                          "run",
                          "--simulate",
                          "1",
                          "--exit-after",
                          "1",
                          "--pace",
                          "0",
                          "--headless",
                          "--serial-policy",
                          "reflash",
                          "--seed",
                          "7",
                          "--image",
                          img,
                          "--db",
                          fx->db,
                          no_cache ? "--no-hash-cache" : NULL,
                          NULL};
    /* stdout and stderr into one file, in the order they were written */
    pid_t pid = th_spawn(argv, fx->out, fx->out, NULL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char *out = th_slurp_or_empty(fx->out, NULL);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "--- station output\n%s---\n", out);
        fail_msg("station exited with status %d", status);
    }
    return out;
}

/* The SHA-256 recorded for the system image of the newest session. */
static void recorded_sha(struct fx *fx, char out[65])
{
    sqlite3 *c = th_db_open(fx->db, false);
    char *sha = th_q_text(c, "SELECT sha256 FROM session_images WHERE name = 'system' "
                             "ORDER BY session_id DESC LIMIT 1");
    snprintf(out, 65, "%s", sha);
    free(sha);
    sqlite3_close(c);
}

static unsigned cache_entries(struct fx *fx)
{
    DIR *d = opendir(fx->cache);
    unsigned n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void expect_line(const char *out, const char *sha, bool remembered)
{
    char want[200];
    snprintf(want, sizeof(want), "bytes sha256 %s%s", sha,
             remembered ? " (remembered: file unchanged)" : "\n");
    if (!strstr(out, want)) {
        fprintf(stderr, "--- station output\n%s---\n", out);
        fail_msg("expected \"%s\" in the output", want);
    }
}

static int setup(void **state)
{
    if (sodium_init() < 0)
        return -1;
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    th_tmpdir("hashcache", fx->dir, sizeof(fx->dir));
    th_path(fx->image, sizeof(fx->image), fx->dir, "system.img");
    th_path(fx->db, sizeof(fx->db), fx->dir, "station.db");
    snprintf(fx->cache, sizeof(fx->cache), "%s.hashes", fx->db);
    th_path(fx->out, sizeof(fx->out), fx->dir, "out.txt");
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

static void test_remembered_until_the_file_changes(void **state)
{
    struct fx *fx = *state;
    char sha[65];
    write_image(fx, 0x1234u);

    /* A modification time that is not at least 2 s before the hashing
     * (here an hour ahead, so that no start-up delay can age it) is not
     * remembered. */
    set_mtime(fx, time(NULL) + 3600);
    char *out = run_station(fx, false);
    expect_line(out, fx->sha, false);
    free(out);
    assert_int_equal(cache_entries(fx), 0);

    set_mtime(fx, time(NULL) - 60); /* the change time is now: wait it out */
    th_sleep_ms(2500);
    out = run_station(fx, false); /* hashed and remembered */
    expect_line(out, fx->sha, false);
    free(out);
    assert_int_equal(cache_entries(fx), 1);

    out = run_station(fx, false); /* taken from the cache */
    expect_line(out, fx->sha, true);
    free(out);
    recorded_sha(fx, sha);
    assert_string_equal(sha, fx->sha);

    /* --no-hash-cache reads the file again */
    out = run_station(fx, true);
    expect_line(out, fx->sha, false);
    free(out);

    /* same size, same inode, other bytes: hashed again, new hash recorded */
    char old[65];
    memcpy(old, fx->sha, sizeof(old));
    write_image(fx, 0x4321u);
    assert_string_not_equal(old, fx->sha);
    out = run_station(fx, false);
    expect_line(out, fx->sha, false);
    free(out);
    recorded_sha(fx, sha);
    assert_string_equal(sha, fx->sha);
}

/* Keep every cache entry's header and stat line; make its hash `hash`. */
static void set_entry_hashes(struct fx *fx, const char *hash)
{
    DIR *d = opendir(fx->cache);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", fx->cache, e->d_name);
        char *text = th_slurp_or_empty(path, NULL);
        char *last = strrchr(text, '\n');
        assert_non_null(last);
        *last = '\0';
        last = strrchr(text, '\n');
        assert_non_null(last);
        last[1] = '\0';
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "%s%s\n", text, hash);
        assert_int_equal(fclose(f), 0);
        free(text);
    }
    closedir(d);
}

/* `station check` reads every byte and remembers what it read for the
 * station's next start with the same configuration. */
static void test_check_remembers_for_the_next_start(void **state)
{
    struct fx *fx = *state;
    write_image(fx, 0x5eedu);
    set_mtime(fx, time(NULL) - 60);
    th_sleep_ms(2500); /* the change time too */
    th_spit_in(fx->dir, "t.recipe",
               "recipe t 1\nprotocol fastboot\nimage system system.img\nflash system system\n");
    th_spit_in(fx->dir, "station.ini",
               "[station]\nid = t\ndb = station.db\n[profile p]\nmatch = class FF/42/03\n"
               "recipe = t.recipe\n");
    char *out;
    int rc = th_sh_out(&out, "cd '%s' && %s check -c station.ini 2>&1", fx->dir, STATION_BIN);
    if (rc != 0 || !strstr(out, fx->sha))
        fail_msg("station check failed or printed another hash:\n%s", out);
    free(out);
    assert_int_equal(cache_entries(fx), 1);
    /* check itself never takes a remembered hash: a forged one is
     * overwritten with what the file holds */
    char forged[65];
    memset(forged, 'a', 64);
    forged[64] = '\0';
    set_entry_hashes(fx, forged);
    rc = th_sh_out(&out, "cd '%s' && %s check -c station.ini 2>&1", fx->dir, STATION_BIN);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, fx->sha));
    assert_null(strstr(out, forged));
    free(out);
    /* the station's first start with this configuration reads no image byte */
    rc = th_sh_out(&out,
                   "cd '%s' && %s run -c station.ini --simulate 1 --exit-after 1 --pace 0 "
                   "--headless --seed 7 2>&1",
                   fx->dir, STATION_BIN);
    if (rc != 0)
        fail_msg("station run failed:\n%s", out);
    expect_line(out, fx->sha, true);
    free(out);
    char sha[65];
    recorded_sha(fx, sha);
    assert_string_equal(sha, fx->sha);
}

static void test_damaged_entry_is_ignored(void **state)
{
    struct fx *fx = *state;
    char sha[65];
    write_image(fx, 0x777u);
    th_sleep_ms(2500);
    free(run_station(fx, false));
    assert_int_equal(cache_entries(fx), 1);

    /* every entry: the right header and stat line, a hash cut short */
    char prefix[10];
    snprintf(prefix, sizeof(prefix), "%.9s", fx->sha);
    set_entry_hashes(fx, prefix);

    char *out = run_station(fx, false);
    expect_line(out, fx->sha, false);
    free(out);
    recorded_sha(fx, sha);
    assert_string_equal(sha, fx->sha);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_remembered_until_the_file_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_remembers_for_the_next_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_entry_is_ignored, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
