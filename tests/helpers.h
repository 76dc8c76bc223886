/*
 * helpers: what the station's test programs share. Temporary folders,
 * whole-file reads and writes, shell commands, a monotonic clock, child
 * processes with a time limit, text in files, one-value SQLite queries,
 * tmux on a private server socket, deterministic test data and the
 * libsparse oracle.
 *
 * Every function runs inside a cmocka test and may fail it (fail_msg or an
 * assert_*) where its comment says so; none may be called in a child
 * between fork() and exec. Strings returned as `char *` are malloc'd and
 * the caller frees them. Nothing here keeps state between calls.
 *
 * Compiled once (the test_helpers library in tests/CMakeLists.txt) and
 * linked into every tests/test_*.c program.
 */
#ifndef TEST_HELPERS_H
#define TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>
#include <sqlite3.h>

#include <uv.h>

#include "config/recipe.h"
#include "engine/engine.h"
#include "engine/virt/rack.h"

/* ---- folders and paths ---- */

/* Makes a new, empty folder TEST_TMPDIR/<prefix>XXXXXX (and TEST_TMPDIR
 * itself if needed) and writes its path into buf. Fails the test if it
 * cannot. */
void th_tmpdir(const char *prefix, char *buf, size_t len);

/* Removes path and everything below it (`rm -rf`). Returns 0, or -1 after
 * saying on stderr that it could not. */
int th_rmtree(const char *path);

/* "dir/name" into buf; fails the test if it does not fit. */
void th_path(char *buf, size_t len, const char *dir, const char *name);

/* ---- whole files ---- */

/* The whole file as a NUL-terminated string; its length (without the NUL)
 * in *len unless len is NULL. Fails the test if it cannot be read. */
char *th_slurp(const char *path, size_t *len);

/* As th_slurp, but a file that cannot be opened reads as "" (length 0):
 * for output files a child may not have written yet. */
char *th_slurp_or_empty(const char *path, size_t *len);

/* Writes len bytes to path (created or truncated). Fails the test on any
 * error. */
void th_spit(const char *path, const void *data, size_t len);

/* Writes the string text to dir/name, as th_spit. */
void th_spit_in(const char *dir, const char *name, const char *text);

/* Prints "--- label" and the file's text to stderr (nothing when the file
 * is missing): what a failing test shows of a child's output. */
void th_show(const char *label, const char *path);

/* ---- text in files ---- */

/* How many times needle occurs in text, not overlapping. */
unsigned th_count(const char *text, const char *needle);

/* th_count over the file's text (0 for a missing file). */
unsigned th_file_count(const char *path, const char *needle);

/* Whether the file contains needle (false for a missing file). */
bool th_file_has(const char *path, const char *needle);

/* Polls the file every 10 ms until it contains needle; false if it did
 * not within limit_s seconds. */
bool th_await_file(const char *path, const char *needle, int limit_s);

/* ---- shell commands ---- */

/* Runs a printf-formatted command line with sh -c. Returns its exit code,
 * or 128+N if signal N ended it. */
int th_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* As th_sh, and fails the test (naming the command) unless it exits 0. */
void th_sh_ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* As th_sh, with what the command writes to stdout in *out (unless out is
 * NULL); add 2>&1 to the command to have stderr too. */
int th_sh_out(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Whether `tool` is a command on PATH. */
bool th_have(const char *tool);

/* ---- time ---- */

/* Monotonic clock, in seconds and in milliseconds. */
double th_now_s(void);
int64_t th_now_ms(void);

/* Sleeps ms milliseconds, signals or not. */
void th_sleep_ms(long ms);

/* ---- child processes ---- */

/* argv = {prog, args..., NULL} in a vector with room for n pointers; fails
 * the test if it does not fit. args is NULL-terminated (or NULL). */
void th_argv(const char **argv, size_t n, const char *prog, const char *const *args);

/* Starts argv (NULL-terminated; argv[0] a path or a command on PATH) in a
 * process group of its own, stdin from /dev/null, stdout to out_path and
 * stderr to err_path (truncated first; NULL for /dev/null; one path for
 * both shares the file), in the folder cwd (NULL: this one). Returns the
 * child's pid; the caller waits for it (th_wait_for, th_wait_exit). */
pid_t th_spawn(const char *const *argv, const char *out_path, const char *err_path,
               const char *cwd);

/* Waits at most limit_s seconds for the child pid. Returns true with its
 * status in *status: the exit code, or 128+N if signal N ended it. At the
 * limit, kills its process group with SIGKILL, reaps it and returns false. */
bool th_wait_for(pid_t pid, int limit_s, int *status);

/* th_wait_for that fails the test, naming `what`, at the limit. Returns the
 * status. */
int th_wait_exit(pid_t pid, int limit_s, const char *what);

/* th_spawn and th_wait_for: true with the status in *status and the wall
 * time it took in *seconds (unless seconds is NULL); false at the limit,
 * the child killed, for the caller to show what it said and fail. */
bool th_run_for(const char *const *argv, const char *out_path, const char *err_path,
                const char *cwd, int limit_s, int *status, double *seconds);

/* th_spawn and th_wait_exit (argv[0] names the child). */
int th_run(const char *const *argv, const char *out_path, const char *err_path, const char *cwd,
           int limit_s);

/* ---- the usbsim harness (tests/usbsim) ---- */

/* The first line of usbsim's --stats file that describes the unit on port
 * path ("PATH serial=..."), copied into buf; false if there is none. */
bool th_stats_line(const char *stats_path, const char *path, char *buf, size_t cap);

/* ---- SQLite ---- */

/* A connection to the database at path, read-only unless `writable`, with
 * a 5 s busy timeout. Fails the test if it cannot be opened. */
sqlite3 *th_db_open(const char *path, bool writable);

/* The first column of the first row of sql, as an integer or as a string
 * ("" for NULL). Fail the test if sql does not compile or has no row. */
long long th_q_int(sqlite3 *c, const char *sql);
char *th_q_text(sqlite3 *c, const char *sql);

/* th_q_int on a read-only connection of its own to the file at path. */
long long th_db_int(const char *path, const char *sql);

/* ---- test data ---- */

/* len bytes of xorshift32 from seed (the low byte of each state). */
void th_fill_xorshift(uint8_t *buf, size_t len, uint32_t seed);

/* The SHA-256 of data in lower-case hex. */
void th_sha256_hex(const void *data, size_t len, char hex[65]);

/* len bytes, different at each call, written to path; returns their
 * XXH3-64. */
uint64_t th_random_file(const char *path, size_t len);

/* len bytes from seed (rand()) with runs of zero blocks and fill blocks:
 * an image that sparse splitting has something to do with. */
uint8_t *th_sparse_test_image(size_t len, unsigned seed);

/* ---- libsparse, the AOSP client's own code, as the oracle ---- */

struct th_buf {
    uint8_t *p;
    size_t len, cap;
};

/* The pieces libsparse makes of the file at path for a download limit:
 * import, resparse and write, as the fastboot client does. Returns their
 * number; *out holds them (free with th_oracle_free). */
int th_oracle(const char *path, unsigned limit, struct th_buf **out);
void th_oracle_free(struct th_buf *b, int n);

/* ---- recipes ---- */

/* Appends a step of `kind` with arg (and image index, or -1). */
void th_add_step(struct cfg_recipe *r, enum cfg_step_kind kind, const char *arg, int image);

/* ---- the engine on the in-process virtual rack ---- */

/* An engine and a rack of virtual devices on the test's loop. All fields
 * are th_rack_run's and th_rack_close's; the test reads eng, rack and
 * load_status. Zero it before th_rack_run. */
struct th_rack {
    uv_loop_t *loop;
    struct eng_engine *eng;
    struct eng_rack *rack;
    int load_status; /* what the recipe's load called back with */
    bool closed;
    uv_timer_t guard;
};

/* Creates the engine (eo; its events to on_event with user_data) and the
 * rack (ro) on loop, adds the fault specs (NULL-terminated, or NULL),
 * loads the recipe, starts the rack once it loaded and runs the loop until
 * it is stopped (by on_event, or at once by a failed load). A guard timer
 * fails the test after guard_ms (0: no guard). */
void th_rack_run(struct th_rack *h, uv_loop_t *loop, const struct eng_options *eo,
                 const struct eng_rack_options *ro, const struct cfg_recipe *recipe,
                 const char **faults, eng_event_cb on_event, void *user_data, unsigned guard_ms);

/* Stops the rack, closes the engine and frees both, if th_rack_run made
 * them; fails the test unless the engine closed. */
void th_rack_close(struct th_rack *h);

/* ---- tmux on a private server socket (tmux -L sock -f /dev/null) ---- */

/* Runs `tmux -L sock -f /dev/null ARGS...` (NULL-terminated), its output
 * dropped, within 20 s; returns its exit status. */
int th_tmux(const char *sock, ...) __attribute__((sentinel));

/* What the pane `target` shows (`capture-pane -p`, with -e when
 * `escapes`). */
char *th_tmux_capture(const char *sock, const char *target, bool escapes);

/* Sends keys to the pane `target`; fails the test if tmux refuses. */
void th_tmux_keys(const char *sock, const char *target, const char *keys);

/* Line n (from 0) of a captured screen into buf; false past the end. */
bool th_screen_line(const char *s, int n, char *buf, size_t size);

/* The counters in the header line (line 1) of the station's dashboard. */
struct th_counts {
    unsigned passed, failed, aborted, in_progress;
};
bool th_header_counts(const char *screen, struct th_counts *c);

/* ---- a scratch folder per test, and the usbsim harness ---- */

/* A test's folder under TEST_TMPDIR and the paths the harness tests use
 * in it (only the folder is created). */
struct th_fx {
    char dir[256];
    char out[300], err[300], stats[300], db[300];
    double seconds; /* wall time of the last th_usbsim() */
};

/* A new fixture in TEST_TMPDIR/PREFIXxxxxxx with alarm(alarm_s) armed;
 * th_fx_free() removes the folder and disarms the alarm. */
struct th_fx *th_fx_new(const char *prefix, unsigned alarm_s);
void th_fx_free(struct th_fx *fx);

/* Run the usbsim harness with args (NULL-terminated, without argv[0]) in
 * the fixture's folder, stdout and stderr to fx->out and fx->err. After
 * limit_s the whole process group is killed, both files are shown and the
 * test fails. Returns the exit status. */
int th_usbsim(struct th_fx *fx, int limit_s, const char *const *args);

/* Show the fixture's stdout, stderr and (when there is one) stats files. */
void th_fx_show(const struct th_fx *fx);

/* Fail, after th_fx_show() and the file itself, unless `needle` is in it. */
void th_fx_expect_in(const struct th_fx *fx, const char *file, const char *needle);

#endif
