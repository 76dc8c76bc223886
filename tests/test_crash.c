/*
 * test_crash: records that are never lost, against the real binary.
 *
 * - kill -9 of a 32-device simulated run at 20 random (seeded) moments:
 *   every session printed PASS before the kill is PASS in the file, the
 *   file passes integrity_check, the next start closes what was running as
 *   ABORTED (and says how many), and nothing is duplicated;
 * - database faults while the station runs: locked (another process holds
 *   the write lock longer than the station waits), full (a small tmpfs
 *   filled up), read-only (the immutable flag on the files), corrupt
 *   (pages overwritten with garbage): each stops intake with a DB ERROR
 *   line that says which; read-only and corrupt files are also refused at
 *   start with exit 2.
 *
 * The faults are real, not simulated inside SQLite: they need root (tmpfs
 * mount in a private mount namespace, chattr). Where the system refuses,
 * the test says so and skips that case rather than pretending.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define ALARM_S 240

struct fx {
    char dir[256];
    char db[300];
    char out[300];
    char err[300];
    char mnt[300];
    bool mounted;
    char immutable[4][320]; /* files to chattr -i at teardown */
    int n_immutable;
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    mkdir(TEST_TMPDIR, 0755);
    snprintf(fx->dir, sizeof(fx->dir), "%s/crashXXXXXX", TEST_TMPDIR);
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->db, sizeof(fx->db), "%s/t.db", fx->dir);
    snprintf(fx->out, sizeof(fx->out), "%s/out.txt", fx->dir);
    snprintf(fx->err, sizeof(fx->err), "%s/err.txt", fx->dir);
    *state = fx;
    alarm(ALARM_S);
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    char cmd[700];
    alarm(0);
    for (int i = 0; i < fx->n_immutable; i++) {
        snprintf(cmd, sizeof(cmd), "chattr -i '%s' 2>/dev/null", fx->immutable[i]);
        if (system(cmd) != 0)
            fprintf(stderr, "could not chattr -i %s\n", fx->immutable[i]);
    }
    if (fx->mounted)
        umount2(fx->mnt, MNT_DETACH);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", fx->dir);
    free(fx);
    return 0;
}

/* ---- processes ---------------------------------------------------------- */

static pid_t spawn(struct fx *fx, const char *out, char *const args[])
{
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)STATION_BIN;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(fx->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid, int limit_s)
{
    int status;
    for (int i = 0; i < limit_s * 100; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("station did not exit within %d s", limit_s);
    return -1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = calloc(1, 8 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (8 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Wait until `path` holds `needle` `times` times; false after limit_ms. */
static bool wait_for_text(const char *path, const char *needle, int times, int limit_ms)
{
    for (int waited = 0; waited < limit_ms; waited += 50) {
        if (access(path, R_OK) != 0) { /* the child has not opened it yet */
            sleep_ms(50);
            continue;
        }
        char *text = slurp(path);
        int n = count_of(text, needle);
        free(text);
        if (n >= times)
            return true;
        sleep_ms(50);
    }
    return false;
}

/* ---- the file ----------------------------------------------------------- */

static sqlite3 *db_ro(const char *path)
{
    sqlite3 *c;
    assert_int_equal(sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(c, 5000);
    return c;
}

static long long q_int(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void assert_text(sqlite3 *c, const char *sql, const char *want)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    const unsigned char *t = sqlite3_column_text(st, 0);
    if (!t || strcmp((const char *)t, want) != 0)
        fail_msg("%s gave \"%s\", want \"%s\"", sql, t ? (const char *)t : "(null)", want);
    sqlite3_finalize(st);
}

/* ---- kill -9 ------------------------------------------------------------ */

/* The serials printed as "<ts> <slot> <serial> PASS ..." in `out`. */
static int passed_serials(const char *out, char (*serials)[64], int max)
{
    int n = 0;
    const char *line = out;
    while (*line && n < max) {
        const char *eol = strchr(line, '\n');
        if (!eol)
            break; /* a line cut by the kill is no promise */
        char ts[64], slot[64], serial[64], word[16];
        if (sscanf(line, "%63s %63s %63s %15s", ts, slot, serial, word) == 4 &&
            !strcmp(word, "PASS"))
            snprintf(serials[n++], 64, "%s", serial);
        line = eol + 1;
    }
    return n;
}

static void test_kill_9_twenty_times(void **state)
{
    enum { ROUNDS = 20, MAX_PASS = 4096 };
    struct fx *fx = *state;
    char(*serials)[64] = calloc(MAX_PASS, 64);
    unsigned seed = 20261122;
    long long open_before = 0, total_printed = 0;
    char out[ROUNDS + 1][320];
    assert_non_null(serials);

    for (int round = 0; round <= ROUNDS; round++) {
        char seed_arg[16];
        snprintf(out[round], sizeof(out[round]), "%s/out%02d.txt", fx->dir, round);
        snprintf(seed_arg, sizeof(seed_arg), "%d", 7000 + round);
        if (round == ROUNDS) {
            /* the last start: let it finish one unit cleanly */
            char *args[] = {"run", "--simulate", "1",      "--exit-after", "1",    "--pace",
                            "0",   "--seed",     seed_arg, "--db",         fx->db, NULL};
            assert_int_equal(wait_exit(spawn(fx, out[round], args), 60), 0);
        } else {
            char *args[] = {"run", "--simulate", "32",     "--pace", "20",   "--replug-ms",
                            "200", "--seed",     seed_arg, "--db",   fx->db, NULL};
            /* from the first milliseconds (open, recovery) to mid-run */
            long kill_ms = 5 + (long)(rand_r(&seed) % 2400);
            pid_t pid = spawn(fx, out[round], args);
            sleep_ms(kill_ms);
            kill(pid, SIGKILL);
            assert_int_equal(wait_exit(pid, 30), -SIGKILL);
        }

        char *text = slurp(out[round]);
        /* the previous kill left open_before sessions: this start closed
         * them as ABORTED and said so */
        if (open_before > 0 && strstr(text, ": recipe demo-phone ") != NULL) {
            char want[96];
            snprintf(want, sizeof(want), "recovered %lld interrupted session(s) as ABORTED",
                     open_before);
            if (!strstr(text, want))
                fail_msg("round %d: \"%s\" missing:\n%.2000s", round, want, text);
        }
        int n = passed_serials(text, serials, MAX_PASS);
        free(text);
        total_printed += n;

        if (access(fx->db, F_OK) != 0) {
            assert_int_equal(n, 0); /* killed before the file existed */
            open_before = 0;
            continue;
        }
        sqlite3 *c = db_ro(fx->db);
        sqlite3_stmt *st;
        if (q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sessions'") == 0) {
            /* killed before the schema was even created: nothing can be lost */
            assert_int_equal(n, 0);
            sqlite3_close(c);
            open_before = 0;
            continue;
        }
        assert_int_equal(sqlite3_prepare_v2(c,
                                            "SELECT COUNT(*) FROM sessions WHERE serial = ? AND"
                                            " result = 'PASS' AND ended_ms IS NOT NULL",
                                            -1, &st, NULL),
                         SQLITE_OK);
        for (int i = 0; i < n; i++) {
            sqlite3_bind_text(st, 1, serials[i], -1, SQLITE_STATIC);
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            if (sqlite3_column_int64(st, 0) != 1)
                fail_msg("round %d: %s was printed PASS but the file has %lld PASS rows", round,
                         serials[i], (long long)sqlite3_column_int64(st, 0));
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
        assert_text(c, "PRAGMA integrity_check", "ok");
        /* What is open now is this round's, or, when the kill came before
         * the file was opened, still the previous one's: either way the
         * next start must recover exactly these. */
        long long open_now = q_int(c, "SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL");
        sqlite3_close(c);
        open_before = open_now;
        print_message("round %2d: %3d printed PASS, %lld left running\n", round, n, open_now);
    }

    sqlite3 *c = db_ro(fx->db);
    assert_text(c, "PRAGMA integrity_check", "ok");
    assert_int_equal(q_int(c, "SELECT COUNT(*) FROM pragma_foreign_key_check"), 0);
    assert_int_equal(q_int(c, "SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL OR result IS"
                              " NULL"),
                     0);
    assert_int_equal(q_int(c, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM sessions"), 0);
    /* every serial is one unit: none passed twice, none recorded twice */
    assert_int_equal(q_int(c, "SELECT COUNT(*) FROM (SELECT serial FROM sessions WHERE result ="
                              " 'PASS' GROUP BY serial HAVING COUNT(*) > 1)"),
                     0);
    assert_int_equal(q_int(c, "SELECT COUNT(*) FROM (SELECT serial, started_ms FROM sessions"
                              " WHERE serial IS NOT NULL GROUP BY serial, started_ms HAVING"
                              " COUNT(*) > 1)"),
                     0);
    /* a PASS has all its steps; an interrupted session says where */
    assert_int_equal(q_int(c, "SELECT COUNT(*) FROM sessions AS s WHERE result = 'PASS' AND"
                              " (SELECT COUNT(*) FROM steps WHERE session_id = s.id) != 5"),
                     0);
    assert_int_equal(q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'ABORTED' AND"
                              " reason NOT LIKE 'station stopped during %'"),
                     0);
    long long pass = q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'PASS'");
    long long aborted = q_int(c, "SELECT COUNT(*) FROM sessions WHERE result = 'ABORTED'");
    sqlite3_close(c);
    print_message("%d kills: %lld printed PASS, %lld PASS rows, %lld ABORTED rows\n", ROUNDS,
                  total_printed, pass, aborted);
    assert_true(total_printed > 50); /* the kills did land mid-run */
    assert_true(aborted > 0);
    assert_true(pass >= total_printed);
    free(serials);
}

/* ---- database faults ---------------------------------------------------- */

/* Start a station that keeps taking units; returns once `n` passed. */
static pid_t start_busy_station(struct fx *fx, const char *db, const char *extra)
{
    char *args[] = {"run",         "--simulate",  "8",    "--pace",   "20",
                    "--replug-ms", "100",         "--db", (char *)db, "--db-timeout-ms",
                    "200",         (char *)extra, NULL};
    pid_t pid = spawn(fx, fx->out, args);
    if (!wait_for_text(fx->out, " PASS ", 3, 20000)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        char *text = slurp(fx->out);
        fail_msg("the station never passed 3 units:\n%s", text);
    }
    return pid;
}

/* After the fault: a DB ERROR line with `detail`, intake stopped, and no
 * session started after it; then a clean stop. */
static void expect_db_error(struct fx *fx, pid_t pid, const char *detail)
{
    if (!wait_for_text(fx->out, "DB ERROR: intake stopped", 1, 20000)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        char *text = slurp(fx->out);
        fail_msg("no DB ERROR within 20 s:\n%s", text);
    }
    sleep_ms(1500); /* units keep arriving: none may start */
    kill(pid, SIGTERM);
    int rc = wait_exit(pid, 30);
    char *text = slurp(fx->out);
    char *first = strstr(text, "DB ERROR");
    assert_non_null(first);
    char *eol = strchr(first, '\n');
    assert_non_null(eol);
    *eol = '\0';
    print_message("%s\n", first - 25 > text ? first - 25 : first);
    if (!strstr(first, detail))
        fail_msg("DB ERROR line \"%s\" does not say \"%s\"", first, detail);
    char *after = strstr(eol + 1, "DB ERROR: intake stopped");
    assert_non_null(after);
    if (strstr(after, " started: "))
        fail_msg("a session started after intake stopped:\n%s", after);
    assert_true(rc == 0 || rc == 1);
    free(text);
}

static void test_db_locked(void **state)
{
    struct fx *fx = *state;
    pid_t pid = start_busy_station(fx, fx->db, NULL);
    sqlite3 *c;
    assert_int_equal(sqlite3_open_v2(fx->db, &c, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(c, 5000);
    /* held far longer than the station's 200 ms */
    assert_int_equal(sqlite3_exec(c, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    bool seen = wait_for_text(fx->out, "DB ERROR: intake stopped", 1, 20000);
    assert_int_equal(sqlite3_exec(c, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(c);
    assert_true(seen);
    expect_db_error(fx, pid, "database is locked");
}

static bool make_tmpfs(struct fx *fx, const char *size)
{
    snprintf(fx->mnt, sizeof(fx->mnt), "%s/mnt", fx->dir);
    assert_int_equal(mkdir(fx->mnt, 0755), 0);
    /* a private mount namespace: the mount vanishes with this process */
    static bool unshared;
    if (!unshared) {
        if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
            print_message("cannot make a mount namespace (%s): not root?\n", strerror(errno));
            return false;
        }
        unshared = true;
    }
    char opts[64];
    snprintf(opts, sizeof(opts), "size=%s,mode=0755", size);
    if (mount("tmpfs", fx->mnt, "tmpfs", 0, opts) != 0) {
        print_message("cannot mount a tmpfs (%s)\n", strerror(errno));
        return false;
    }
    fx->mounted = true;
    return true;
}

static void test_db_full(void **state)
{
    struct fx *fx = *state;
    char db[400], fill[400];
    if (!make_tmpfs(fx, "4m")) {
        print_message("SKIPPED: a full disk cannot be produced here\n");
        skip();
    }
    snprintf(db, sizeof(db), "%s/t.db", fx->mnt);
    snprintf(fill, sizeof(fill), "%s/fill", fx->mnt);
    pid_t pid = start_busy_station(fx, db, NULL);
    int fd = open(fill, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    static char block[65536];
    while (write(fd, block, sizeof(block)) > 0)
        ;
    assert_int_equal(errno, ENOSPC);
    close(fd);
    expect_db_error(fx, pid, "No space left on device");
}

static bool chattr(struct fx *fx, const char *path)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "chattr +i '%s' 2>/dev/null", path);
    if (system(cmd) != 0)
        return false;
    snprintf(fx->immutable[fx->n_immutable++], sizeof(fx->immutable[0]), "%s", path);
    return true;
}

static void test_db_read_only(void **state)
{
    struct fx *fx = *state;
    char wal[320];

    /* at start: refused before any device is touched */
    char *first[] = {"run",    "--simulate", "1",    "--exit-after", "1",
                     "--pace", "0",          "--db", fx->db,         NULL};
    assert_int_equal(wait_exit(spawn(fx, fx->out, first), 60), 0);
    if (!chattr(fx, fx->db)) {
        print_message("SKIPPED: this file system has no immutable flag\n");
        skip();
    }
    assert_int_equal(wait_exit(spawn(fx, fx->out, first), 60), 2);
    char *err = slurp(fx->err);
    if (!strstr(err, fx->db) || !strstr(err, "read-only"))
        fail_msg("stderr \"%s\" should name the file and say read-only", err);
    free(err);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "chattr -i '%s'", fx->db);
    assert_int_equal(system(cmd), 0);
    fx->n_immutable = 0;

    /* while running: the files turn read-only under the station */
    pid_t pid = start_busy_station(fx, fx->db, NULL);
    snprintf(wal, sizeof(wal), "%s-wal", fx->db);
    assert_true(chattr(fx, wal));
    assert_true(chattr(fx, fx->db));
    expect_db_error(fx, pid, "write: Operation not permitted");
}

/* Overwrite every page but the first (the schema) with garbage. */
static void corrupt_pages(const char *path)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    static char junk[4096];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(0xa5 ^ (i * 31));
    for (off_t off = 4096; off + 4096 <= sb.st_size; off += 4096)
        assert_int_equal(pwrite(fd, junk, sizeof(junk), off), (ssize_t)sizeof(junk));
    fsync(fd);
    close(fd);
}

static void test_db_corrupt(void **state)
{
    struct fx *fx = *state;

    /* at start */
    char *first[] = {"run",    "--simulate", "4",    "--exit-after", "4",
                     "--pace", "0",          "--db", fx->db,         NULL};
    assert_int_equal(wait_exit(spawn(fx, fx->out, first), 60), 0);
    corrupt_pages(fx->db);
    assert_int_equal(wait_exit(spawn(fx, fx->out, first), 60), 2);
    char *err = slurp(fx->err);
    if (!strstr(err, fx->db) || !strstr(err, "malformed"))
        fail_msg("stderr \"%s\" should name the file and say malformed", err);
    free(err);
    /* QA's reader refuses it too, naming it */
    char *rep[] = {"report", "--db", fx->db, NULL};
    assert_int_equal(wait_exit(spawn(fx, fx->out, rep), 60), 2);
    err = slurp(fx->err);
    assert_non_null(strstr(err, fx->db));
    free(err);
    unlink(fx->db);

    /* while running: stop the station, move every page into the main file,
     * spoil them, leave a new WAL frame so its cache is dropped, go on */
    pid_t pid = start_busy_station(fx, fx->db, NULL);
    sqlite3 *c;
    assert_int_equal(sqlite3_open_v2(fx->db, &c, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(c, 100);
    /* a first read opens the WAL (a checkpoint before it reports -1) */
    assert_true(q_int(c, "SELECT COUNT(*) FROM sessions") > 0);
    bool done = false;
    for (int tries = 0; tries < 50 && !done; tries++) {
        kill(pid, SIGSTOP);
        int log = -1, ckpt = -2;
        int rc = sqlite3_wal_checkpoint_v2(c, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &ckpt);
        if (rc == SQLITE_OK && log == 0) {
            corrupt_pages(fx->db);
            int64_t v = q_int(c, "PRAGMA user_version");
            char sql[64];
            snprintf(sql, sizeof(sql), "PRAGMA user_version = %lld", (long long)v);
            assert_int_equal(sqlite3_exec(c, sql, NULL, NULL, NULL), SQLITE_OK);
            done = true;
        }
        if (!done && tries % 10 == 0)
            print_message("checkpoint: rc %d, log %d, ckpt %d\n", rc, log, ckpt);
        kill(pid, SIGCONT); /* it may have held the lock: let it go on */
        if (!done)
            sleep_ms(20);
    }
    sqlite3_close(c);
    assert_true(done);
    expect_db_error(fx, pid, "malformed");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill_9_twenty_times, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_locked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_corrupt, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
