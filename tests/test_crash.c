/*
 * test_crash: records that are never lost, against the real binary.
 *
 * - kill -9 of a 32-device simulated run 50 times (seeded; the seed is
 *   printed and STATION_CRASH_SEED sets it), at startup, mid-run, right
 *   after a result, during shutdown, and 12 times inside a WAL checkpoint
 *   (the writer's, or the one of the close at shutdown), where a test hook
 *   of the station stops it so the kill lands there for certain. After
 *   each kill: the file passes integrity_check and every session printed
 *   PASS is PASS in it once; a restart closes what was running as ABORTED
 *   (and says how many) and, stopping cleanly, folds the WAL into the file,
 *   which alone then holds every PASS, those only the WAL held included;
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
    void *scratch; /* a test's buffer, freed at teardown even on failure */
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
    free(fx->scratch);
    free(fx);
    return 0;
}

/* ---- processes ---------------------------------------------------------- */

/* Run the station with `args`; `env` (NULL or "NAME=value" strings, NULL
 * ended) is added to the environment it inherits. */
static pid_t spawn_env(struct fx *fx, const char *out, char *const args[], char *const env[])
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
        for (int i = 0; env && env[i]; i++)
            putenv(env[i]);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static pid_t spawn(struct fx *fx, const char *out, char *const args[])
{
    return spawn_env(fx, out, args, NULL);
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

/*
 * Where a kill lands. The checkpoint moments run the station with the test
 * hook of db/ckpt_pause.c: it stops inside a WAL checkpoint, after a chosen
 * page has been copied into the database file, and writes a marker file
 * saying so. The kill then lands there by construction, not by luck, and
 * SQLite's own -shm confirms it afterwards.
 */
enum moment {
    AT_STARTUP,          /* opening, recovery, the first sessions */
    MID_RUN,             /* flashing */
    AFTER_RESULT,        /* right after a PASS line: results being written */
    IN_SHUTDOWN,         /* after SIGTERM: ABORTED ends written, file closed */
    IN_CHECKPOINT,       /* inside the writer thread's checkpoint */
    IN_CLOSE_CHECKPOINT, /* inside the checkpoint of the close at shutdown */
};

static const char *const moment_names[] = {
    [AT_STARTUP] = "startup",
    [MID_RUN] = "mid-run",
    [AFTER_RESULT] = "after a result",
    [IN_SHUTDOWN] = "shutdown",
    [IN_CHECKPOINT] = "in the writer's checkpoint",
    [IN_CLOSE_CHECKPOINT] = "in the shutdown checkpoint",
};

struct trial {
    enum moment moment;
    long ms;       /* AT_STARTUP, MID_RUN: the kill; IN_SHUTDOWN, IN_CLOSE_CHECKPOINT: SIGTERM,
                    * counted from the first session */
    long us;       /* IN_SHUTDOWN: from SIGTERM to the kill */
    int results;   /* AFTER_RESULT: PASS lines before the kill */
    unsigned page; /* IN_*CHECKPOINT: the checkpoint's page to stop after */
};

struct tally {
    int kills, checkpoint_kills, late; /* late: the station had exited first */
    long long printed, only_in_wal, aborted;
    int main_unreadable; /* kills after which the main file alone was no database */
};

/* Every fourth trial stops in a checkpoint, one in three of those in the
 * close at shutdown; the others cycle through the rest of the run. */
static void plan_trials(struct trial *t, int n, unsigned *seed)
{
    static const enum moment cycle[] = {MID_RUN, AFTER_RESULT, AT_STARTUP, IN_SHUTDOWN};
    int others = 0, checkpoints = 0;

    for (int i = 0; i < n; i++) {
        memset(&t[i], 0, sizeof(t[i]));
        if (i % 4 == 3)
            t[i].moment = checkpoints++ % 3 == 2 ? IN_CLOSE_CHECKPOINT : IN_CHECKPOINT;
        else
            t[i].moment = cycle[others++ % 4];
        switch (t[i].moment) {
        case AT_STARTUP:
            t[i].ms = (long)(rand_r(seed) % 60);
            break;
        case MID_RUN:
            t[i].ms = 60 + (long)(rand_r(seed) % 2500);
            break;
        case AFTER_RESULT:
            t[i].results = 1 + (int)(rand_r(seed) % 120);
            break;
        case IN_SHUTDOWN:
            t[i].ms = 100 + (long)(rand_r(seed) % 2000);
            t[i].us = (long)(rand_r(seed) % 12000); /* a stop takes ~15 ms */
            break;
        case IN_CLOSE_CHECKPOINT:
            /* well before the WAL holds the writer's 1000 frames */
            t[i].ms = 100 + (long)(rand_r(seed) % 400);
            /* fall through */
        case IN_CHECKPOINT:
            t[i].page = 1 + (unsigned)(rand_r(seed) % 30);
            break;
        }
    }
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Like wait_for_text, polling every `step_us`. */
static bool poll_text(const char *path, const char *needle, int times, int limit_ms, long step_us)
{
    for (long waited = 0; waited < limit_ms * 1000L; waited += step_us) {
        if (access(path, R_OK) == 0) {
            char *text = slurp(path);
            int n = count_of(text, needle);
            free(text);
            if (n >= times)
                return true;
        }
        sleep_us(step_us);
    }
    return false;
}

static long long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

static void copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char buf[65536];
    ssize_t n;
    assert_true(in >= 0 && out >= 0);
    while ((n = read(in, buf, sizeof(buf))) > 0)
        assert_int_equal(write(out, buf, (size_t)n), n);
    assert_int_equal(n, 0);
    close(in);
    close(out);
}

/*
 * A checkpoint's progress as the wal-index (-shm) records it, native byte
 * order, at the offsets of https://sqlite.org/walformat.html (2.2, "The
 * WAL-Index Header"): mxFrame, the last committed frame of the WAL;
 * nBackfill, how many frames checkpoints have copied into the database
 * and recorded as copied; nBackfillAttempted, how far the latest
 * checkpoint set out to copy (it is set before the copy starts).
 */
struct shm_state {
    uint32_t mx_frame, backfill, attempted;
};

static bool read_shm(const char *db, struct shm_state *s)
{
    char path[320];
    unsigned char hdr[136];
    snprintf(path, sizeof(path), "%s-shm", db);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return false;
    ssize_t n = pread(fd, hdr, sizeof(hdr), 0);
    close(fd);
    if (n != (ssize_t)sizeof(hdr))
        return false;
    memcpy(&s->mx_frame, hdr + 16, 4);
    memcpy(&s->backfill, hdr + 96, 4);
    memcpy(&s->attempted, hdr + 128, 4);
    return true;
}

/* How many of `serials` are not PASS in the database file read alone,
 * without its WAL, as the kill left it: the rows only the WAL held. -1 when
 * the file alone is no readable database (a checkpoint stopped halfway
 * leaves pages of two moments in it). Reads a copy, never the file. */
static int only_in_wal(struct fx *fx, char (*serials)[64], int n)
{
    char copy[320], side[340];
    sqlite3 *c;
    sqlite3_stmt *st = NULL;
    int missing = 0, rc;

    snprintf(copy, sizeof(copy), "%s/main-only.db", fx->dir);
    unlink(copy);
    snprintf(side, sizeof(side), "%s-wal", copy);
    unlink(side);
    snprintf(side, sizeof(side), "%s-shm", copy);
    unlink(side);
    copy_file(fx->db, copy);
    assert_int_equal(sqlite3_open_v2(copy, &c, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    rc = sqlite3_prepare_v2(c, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sessions'", -1,
                            &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW &&
        sqlite3_column_int(st, 0) == 0) {
        missing = n; /* even the schema was only in the WAL */
        goto out;
    }
    if (rc != SQLITE_ROW)
        goto out_unreadable;
    sqlite3_finalize(st);
    rc = sqlite3_prepare_v2(c, "SELECT COUNT(*) FROM sessions WHERE serial = ? AND result = 'PASS'",
                            -1, &st, NULL);
    for (int i = 0; rc == SQLITE_OK && i < n; i++) {
        sqlite3_bind_text(st, 1, serials[i], -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW) {
            rc = SQLITE_CORRUPT;
            break;
        }
        missing += sqlite3_column_int(st, 0) == 0;
        sqlite3_reset(st);
    }
    if (rc != SQLITE_OK)
        goto out_unreadable;
out:
    sqlite3_finalize(st);
    sqlite3_close(c);
    return missing;
out_unreadable:
    sqlite3_finalize(st);
    sqlite3_close(c);
    return -1;
}

/* Each serial is PASS in exactly one row of `c`. */
static void assert_each_pass_once(sqlite3 *c, char (*serials)[64], int n, int no, const char *when)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(c,
                                        "SELECT COUNT(*) FROM sessions WHERE serial = ? AND"
                                        " result = 'PASS' AND ended_ms IS NOT NULL",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 0; i < n; i++) {
        sqlite3_bind_text(st, 1, serials[i], -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        if (sqlite3_column_int64(st, 0) != 1)
            fail_msg("trial %d, %s: %s was printed PASS but the file has %lld PASS rows", no, when,
                     serials[i], (long long)sqlite3_column_int64(st, 0));
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
}

/* The WAL may not grow without bound: the writer checkpoints it at 1000
 * frames of 4 KiB, and a batch adds far less than that on top. */
#define WAL_MAX_BYTES (6LL << 20)

/* Wait for the first session: from then on SIGTERM is a clean stop (a
 * slow start, under a sanitizer, may not have its handler yet). */
static void running(const char *out, pid_t pid)
{
    if (!poll_text(out, " started: ", 1, 60000, 2000)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("no session started within 60 s");
    }
}

/* Start the 32-device run and kill -9 it at the trial's moment. False when
 * the station stopped by itself before the kill came. */
static bool kill_at(struct fx *fx, const struct trial *t, int attempt, const char *out,
                    unsigned run_seed, pid_t *pid_out)
{
    char seed_arg[16], page_env[64];
    char *args[] = {"run", "--simulate", "32",     "--pace", "20",   "--replug-ms",
                    "200", "--seed",     seed_arg, "--db",   fx->db, NULL};
    char *pause_env[] = {"STATION_TEST_CHECKPOINT_PAUSE_MS=30000", page_env, NULL};
    bool checkpoint = t->moment == IN_CHECKPOINT || t->moment == IN_CLOSE_CHECKPOINT;
    char marker[320];
    pid_t pid;

    snprintf(seed_arg, sizeof(seed_arg), "%u", run_seed);
    snprintf(page_env, sizeof(page_env), "STATION_TEST_CHECKPOINT_PAUSE_PAGE=%u", t->page);
    snprintf(marker, sizeof(marker), "%s.checkpoint-paused", fx->db);
    unlink(marker);
    unlink(out); /* the last trial's lines are not this one's */
    pid = spawn_env(fx, out, args, checkpoint ? pause_env : NULL);
    *pid_out = pid;
    switch (t->moment) {
    case AT_STARTUP:
    case MID_RUN:
        sleep_ms(t->ms);
        break;
    case AFTER_RESULT:
        if (!poll_text(out, " PASS ", t->results, 60000, 2000))
            fail_msg("no %d PASS lines within 60 s", t->results);
        break;
    case IN_SHUTDOWN:
        running(out, pid);
        sleep_ms(t->ms);
        kill(pid, SIGTERM);
        sleep_us(t->us >> attempt); /* too late before: sooner */
        break;
    case IN_CLOSE_CHECKPOINT:
        running(out, pid);
        sleep_ms(t->ms);
        kill(pid, SIGTERM);
        /* fall through */
    case IN_CHECKPOINT:
        for (int waited = 0; access(marker, F_OK) != 0; waited++) {
            if (waited == 60000 / 2 || waitpid(pid, NULL, WNOHANG) == pid) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                fail_msg("the station never stopped in a checkpoint (%s)", moment_names[t->moment]);
            }
            sleep_us(2000);
        }
        break;
    }
    kill(pid, SIGKILL);
    int rc = wait_exit(pid, 30);
    if (rc == -SIGKILL)
        return true;
    /* only a shutdown can end by itself before the kill */
    assert_int_equal(t->moment, IN_SHUTDOWN);
    assert_int_equal(rc, 0);
    return false;
}

/* The marker says which process and thread stopped where; the -shm, that a
 * checkpoint had set out to copy frames and never recorded them copied. */
static void assert_killed_in_checkpoint(struct fx *fx, const struct trial *t, int no, pid_t pid,
                                        char *evidence, size_t len)
{
    char marker[320];
    long mpid = 0, tid = 0;
    struct shm_state s = {0};

    snprintf(marker, sizeof(marker), "%s.checkpoint-paused", fx->db);
    char *text = slurp(marker);
    char *eol = strchr(text, '\n');
    if (eol)
        *eol = '\0';
    if (sscanf(text, "pid %ld tid %ld paused in a checkpoint", &mpid, &tid) != 2 || mpid != pid)
        fail_msg("trial %d: marker \"%s\" is not from pid %ld", no, text, (long)pid);
    /* the close at shutdown runs on the main thread, the writer on its own */
    if (t->moment == IN_CLOSE_CHECKPOINT && tid != pid)
        fail_msg("trial %d: \"%s\": not the close on the main thread", no, text);
    if (t->moment == IN_CHECKPOINT && tid == pid)
        fail_msg("trial %d: \"%s\": not the writer thread", no, text);
    assert_true(read_shm(fx->db, &s));
    if (!(s.attempted > s.backfill && s.mx_frame > s.backfill))
        fail_msg("trial %d: the -shm shows no unfinished checkpoint: mxFrame %u, nBackfill %u,"
                 " nBackfillAttempted %u",
                 no, s.mx_frame, s.backfill, s.attempted);
    snprintf(evidence, len, "%s; -shm: %u frames, %u recorded copied, copying up to %u",
             strstr(text, "paused"), s.mx_frame, s.backfill, s.attempted);
    free(text);
}

/* The ids of the sessions without an end in the file at the kill. */
static int open_sessions(sqlite3 *c, long long *ids, int max)
{
    sqlite3_stmt *st;
    int n = 0;
    assert_int_equal(
        sqlite3_prepare_v2(c, "SELECT id FROM sessions WHERE ended_ms IS NULL", -1, &st, NULL),
        SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        assert_true(n < max);
        ids[n++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return n;
}

static bool has_schema(const char *db)
{
    if (access(db, F_OK) != 0)
        return false;
    sqlite3 *c = db_ro(db);
    bool yes = q_int(c, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sessions'") > 0;
    sqlite3_close(c);
    return yes;
}

/* One trial: the kill, the file as the kill left it, a clean restart of
 * the station on it, and the file after that restart. */
static void run_trial(struct fx *fx, const struct trial *t, int no, unsigned *runs,
                      char (*serials)[64], int max_pass, struct tally *tl)
{
    enum { MAX_OPEN = 256 };
    bool checkpoint = t->moment == IN_CHECKPOINT || t->moment == IN_CLOSE_CHECKPOINT;
    char out[320], wal[320], evidence[300] = "", want[96];
    long long open_ids[MAX_OPEN];
    int n_open = 0, wal_only = 0, attempt = 0;
    bool landed;
    pid_t pid;

    snprintf(out, sizeof(out), "%s/run.txt", fx->dir);
    snprintf(wal, sizeof(wal), "%s-wal", fx->db);
    do {
        landed = kill_at(fx, t, attempt++, out, 7000 + (*runs)++, &pid);
        if (!landed) /* checked all the same, then tried again sooner */
            tl->late++;
        char *text = slurp(out);
        int n = passed_serials(text, serials, max_pass);
        free(text);
        tl->printed += n;

        /* as the kill left the files */
        long long wal_bytes = file_size(wal);
        if (wal_bytes > WAL_MAX_BYTES)
            fail_msg("trial %d: the WAL has grown to %lld bytes", no, wal_bytes);
        if (checkpoint)
            assert_killed_in_checkpoint(fx, t, no, pid, evidence, sizeof(evidence));
        if (!has_schema(fx->db)) {
            assert_int_equal(n, 0); /* killed before the schema existed */
            n_open = 0;
            wal_only = 0;
        } else {
            wal_only = only_in_wal(fx, serials, n);
            if (wal_only < 0)
                tl->main_unreadable++;
            else
                tl->only_in_wal += wal_only;
            /* what QA sees before anyone restarts: the WAL is read, not
             * applied (a read-only connection never checkpoints) */
            sqlite3 *c = db_ro(fx->db);
            assert_text(c, "PRAGMA integrity_check", "ok");
            assert_each_pass_once(c, serials, n, no, "before the restart");
            n_open = open_sessions(c, open_ids, MAX_OPEN);
            sqlite3_close(c);
            /* (an empty one may appear where there was none) */
            long long after = file_size(wal);
            if (after != wal_bytes && !(wal_bytes < 0 && after == 0))
                fail_msg("trial %d: the WAL went from %lld to %lld bytes while only read", no,
                         wal_bytes, after);
        }

        /* the restart: one unit, then a clean stop */
        char seed_arg[16];
        snprintf(seed_arg, sizeof(seed_arg), "%u", 7000 + (*runs)++);
        char *args[] = {"run", "--simulate", "1",      "--exit-after", "1",    "--pace",
                        "0",   "--seed",     seed_arg, "--db",         fx->db, NULL};
        char restart_out[320];
        snprintf(restart_out, sizeof(restart_out), "%s/restart.txt", fx->dir);
        assert_int_equal(wait_exit(spawn(fx, restart_out, args), 60), 0);
        text = slurp(restart_out);
        snprintf(want, sizeof(want), "recovered %d interrupted session(s) as ABORTED", n_open);
        if (n_open > 0 ? !strstr(text, want) : strstr(text, "recovered ") != NULL)
            fail_msg("trial %d: restart after %d left running:\n%.2000s", no, n_open, text);
        free(text);

        /* the clean stop checkpointed the WAL into the file and removed
         * it: the file alone now holds what only the WAL held at the kill */
        if (access(wal, F_OK) == 0)
            fail_msg("trial %d: %s is still there after a clean stop (%lld bytes)", no, wal,
                     file_size(wal));
        sqlite3 *c = db_ro(fx->db);
        assert_text(c, "PRAGMA integrity_check", "ok");
        assert_each_pass_once(c, serials, n, no, "after the restart");
        assert_int_equal(q_int(c, "SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL"), 0);
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(c,
                                            "SELECT result = 'ABORTED' AND reason LIKE 'station"
                                            " stopped during %' FROM sessions WHERE id = ?",
                                            -1, &st, NULL),
                         SQLITE_OK);
        for (int i = 0; i < n_open; i++) {
            sqlite3_bind_int64(st, 1, open_ids[i]);
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            if (sqlite3_column_int(st, 0) != 1)
                fail_msg("trial %d: session %lld, running at the kill, is not ABORTED", no,
                         open_ids[i]);
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
        sqlite3_close(c);
        tl->aborted += n_open;

        char wal_note[48] = "main file alone unreadable";
        if (wal_only >= 0)
            snprintf(wal_note, sizeof(wal_note), "%d only in the WAL", wal_only);
        print_message("trial %2d %-27s %s: %3d printed PASS (%s), %2d running -> ABORTED%s%s\n", no,
                      moment_names[t->moment], landed ? "killed" : "exited first", n, wal_note,
                      n_open, *evidence ? "\n         " : "", evidence);
    } while (!landed);
    tl->kills++;
    tl->checkpoint_kills += checkpoint;
}

static void test_kill_9_fifty_times(void **state)
{
    enum { TRIALS = 50, MAX_PASS = 4096 };
    struct fx *fx = *state;
    char(*serials)[64] = fx->scratch = calloc(MAX_PASS, 64);
    struct trial trials[TRIALS];
    struct tally tl = {0};
    unsigned seed = 20261122, runs = 0;
    const char *env = getenv("STATION_CRASH_SEED");
    assert_non_null(serials);

    if (env && *env) {
        char *end;
        seed = (unsigned)strtoul(env, &end, 0);
        if (*end)
            fail_msg("STATION_CRASH_SEED=\"%s\" is not a number", env);
    }
    print_message("seed %u (STATION_CRASH_SEED=%u repeats this plan)\n", seed, seed);
    plan_trials(trials, TRIALS, &seed);
    for (int i = 0; i < TRIALS; i++)
        run_trial(fx, &trials[i], i, &runs, serials, MAX_PASS, &tl);

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
    print_message("%d kills (%d in a checkpoint, %d shutdowns too late to kill and retried): %lld"
                  " printed PASS, %lld of them only in the WAL at the kill, %d kills left the"
                  " main file alone unreadable; %lld PASS rows, %lld ABORTED rows\n",
                  tl.kills, tl.checkpoint_kills, tl.late, tl.printed, tl.only_in_wal,
                  tl.main_unreadable, pass, aborted);
    assert_int_equal(tl.kills, TRIALS);
    assert_true(tl.checkpoint_kills >= 10);
    assert_true(tl.printed > 100);   /* the kills did land mid-run */
    assert_true(tl.only_in_wal > 0); /* and the WAL held results */
    assert_true(tl.aborted > 0 && aborted >= tl.aborted);
    assert_true(pass >= tl.printed);
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
        cmocka_unit_test_setup_teardown(test_kill_9_fifty_times, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_locked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_corrupt, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
