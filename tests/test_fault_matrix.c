/*
 * The fault matrix: for each protocol (fastboot, DFU), each step and each
 * kind of fault, one run of the real station binary on a simulated rack
 * of four devices where device 2 has that one fault. Each run must end
 * with exit code 1, device 2's session FAIL with a reason that names the
 * step and the fault, within the step's time limit, and the three other
 * sessions PASS. Leaks: a build with sanitizers checks every run (a leak
 * changes the exit code); a plain build runs two cells under valgrind.
 * The runs go several at a time. The matrix is printed as a table.
 */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

#define DEVICES "4"
#define FAULTY "virt-02"
#define TIMEOUT_MS 500      /* --timeout-ms: every command's reply limit */
#define PIECE_LIMIT_MS 1600 /* a 1 MiB piece: 500 ms + 1 MiB at the 1 MB/s minimum rate */
#define DFU_TOTAL_MS 1000   /* a DFU step: 500 ms + 8 KiB at 16 KiB/s */
#define REENUM_MS 10000     /* the engine's wait for a device to come back */
#define PARALLEL 6
#define RUN_LIMIT_S 120
#ifdef STATION_SANITIZED
#define SLACK_MS 3000
#else
#define SLACK_MS 1500
#endif

enum proto { FASTBOOT, DFU };

static const char *const fault_names[] = {"FAIL reply", "disconnect", "silence", "garbage",
                                          "oversize",   "slow",       "short",   "stall"};
#define N_FAULTS 8

struct cell {
    enum proto proto;
    const char *row;    /* the step, as the table shows it */
    unsigned fault;     /* index into fault_names */
    const char *spec;   /* "--fault 2:SPEC"; NULL: does not apply */
    const char *step;   /* the recipe step that must fail (failed_step) */
    const char *expect; /* must appear in the reason (after the step's name); '*'
                           stands for any text */
    unsigned limit_ms;  /* the time limit of what fails */
    bool valgrind;      /* also run under valgrind (plain builds) */
    /* results */
    int exit_code, vg_exit;
    char dir[300], vg_dir[300];
    char reason[512];
    long long fail_ms, clean_ms;
    int n_pass, n_fail, n_sessions;
    char failed_slot[32], failed_step[64];
};

/* fastboot: getvar:product, flash:system (4 Android sparse pieces of at most 1 MiB:
 * each a download, then flash), erase:userdata, reboot. Data-phase faults count bytes from
 * the first download: 1500000 is inside piece 2. */
#define FB(row_, f, spec_, step_, expect_, limit_)                                                 \
    {                                                                                              \
        .proto = FASTBOOT, .row = row_, .fault = f, .spec = spec_, .step = step_,                  \
        .expect = expect_, .limit_ms = limit_                                                      \
    }
/* DFU: detach (run-time device), dfu-download:0 (8 blocks of 1 KiB, then
 * manifestation), dfu-verify:0 (UPLOAD). Requests are counted from the
 * plug: GETSTATUS #0 prepares the download, #1..#8 follow blocks 0..7,
 * #9 follows the zero-length DNLOAD that starts manifestation. */
#define DF(row_, f, spec_, step_, expect_, limit_)                                                 \
    {                                                                                              \
        .proto = DFU, .row = row_, .fault = f, .spec = spec_, .step = step_, .expect = expect_,    \
        .limit_ms = limit_                                                                         \
    }

static struct cell cells[] = {
    FB("getvar", 0, "fail=getvar:product", "getvar:product", "device replied FAIL", TIMEOUT_MS),
    FB("getvar", 1, "disconnect=getvar:product", "getvar:product", "device disconnected",
       TIMEOUT_MS),
    FB("getvar", 2, "silent=getvar:product", "getvar:product", "no reply within 0.5 s", TIMEOUT_MS),
    FB("getvar", 3, "garbage=getvar:product", "getvar:product", "garbage reply", TIMEOUT_MS),
    FB("getvar", 4, "oversize=getvar:product", "getvar:product", "reply longer than 256 bytes",
       TIMEOUT_MS),
    FB("getvar", 5, "slow=getvar:product", "getvar:product", "command not taken within 0.5 s",
       TIMEOUT_MS),
    FB("getvar", 6, "short=getvar:product", "getvar:product", "short write of command (7 of 14",
       TIMEOUT_MS),
    FB("getvar", 7, "stall=getvar:product", "getvar:product", "device stalled the bulk IN endpoint",
       TIMEOUT_MS),
    FB("download", 0, "fail=download", "flash:system", "piece 1/*: download: device replied FAIL",
       PIECE_LIMIT_MS),
    FB("download", 1, "disconnect=1500000", "flash:system",
       "piece 2/*: download: device disconnected after", PIECE_LIMIT_MS),
    FB("download", 2, "silent=download", "flash:system", "piece 1/*: download: no reply within",
       PIECE_LIMIT_MS),
    FB("download", 3, "garbage=download", "flash:system", "piece 1/*: download: garbage reply",
       PIECE_LIMIT_MS),
    FB("download", 4, "oversize=download", "flash:system", "piece 1/*: download: reply longer than",
       PIECE_LIMIT_MS),
    FB("download", 5, "slow=1500000", "flash:system",
       "piece 2/*: download: data phase timed out after", PIECE_LIMIT_MS),
    FB("download", 6, "short=1500000", "flash:system", "piece 2/*: download: short transfer after",
       PIECE_LIMIT_MS),
    FB("download", 7, "stall=1500000", "flash:system",
       "piece 2/*: download: device stalled the bulk OUT endpoint after", PIECE_LIMIT_MS),
    FB("flash", 0, "fail=flash:system", "flash:system", "piece 1/*: flash: device replied FAIL",
       PIECE_LIMIT_MS),
    FB("flash", 1, "disconnect=flash:system", "flash:system",
       "piece 1/*: flash: device disconnected", PIECE_LIMIT_MS),
    FB("flash", 2, "silent=flash:system", "flash:system", "piece 1/*: flash: no reply within",
       PIECE_LIMIT_MS),
    FB("flash", 3, "garbage=flash:system", "flash:system", "piece 1/*: flash: garbage reply",
       PIECE_LIMIT_MS),
    FB("flash", 4, "oversize=flash:system", "flash:system", "piece 1/*: flash: reply longer than",
       PIECE_LIMIT_MS),
    FB("flash", 5, "slow=flash:system", "flash:system", "piece 1/*: flash: command not taken",
       PIECE_LIMIT_MS),
    FB("flash", 6, "short=flash:system", "flash:system", "piece 1/*: flash: short write of command",
       PIECE_LIMIT_MS),
    FB("flash", 7, "stall=flash:system", "flash:system",
       "piece 1/*: flash: device stalled the bulk IN endpoint", PIECE_LIMIT_MS),
    FB("erase", 0, "fail=erase", "erase:userdata", "device replied FAIL", TIMEOUT_MS),
    FB("erase", 1, "disconnect=erase", "erase:userdata", "device disconnected", TIMEOUT_MS),
    FB("erase", 2, "silent=erase", "erase:userdata", "no reply within 0.5 s", TIMEOUT_MS),
    FB("erase", 3, "garbage=erase", "erase:userdata", "garbage reply", TIMEOUT_MS),
    FB("erase", 4, "oversize=erase", "erase:userdata", "reply longer than 256 bytes", TIMEOUT_MS),
    FB("erase", 5, "slow=erase", "erase:userdata", "command not taken within 0.5 s", TIMEOUT_MS),
    FB("erase", 6, "short=erase", "erase:userdata", "short write of command (7 of 14", TIMEOUT_MS),
    FB("erase", 7, "stall=erase", "erase:userdata", "device stalled the bulk IN endpoint",
       TIMEOUT_MS),
    FB("reboot", 0, "fail=reboot", "reboot", "device replied FAIL", TIMEOUT_MS),
    FB("reboot", 1, "disconnect=reboot", "reboot", "device disconnected", TIMEOUT_MS),
    FB("reboot", 2, "silent=reboot", "reboot", "no reply within 0.5 s", TIMEOUT_MS),
    FB("reboot", 3, "garbage=reboot", "reboot", "garbage reply", TIMEOUT_MS),
    FB("reboot", 4, "oversize=reboot", "reboot", "reply longer than 256 bytes", TIMEOUT_MS),
    FB("reboot", 5, "slow=reboot", "reboot", "command not taken within 0.5 s", TIMEOUT_MS),
    FB("reboot", 6, "short=reboot", "reboot", "short write of command (3 of 6", TIMEOUT_MS),
    FB("reboot", 7, "stall=reboot", "reboot", "device stalled the bulk IN endpoint", TIMEOUT_MS),

    DF("detach", 0, NULL, "run-time DETACH has no status stage: a refusal is a stall", NULL, 0),
    DF("detach", 1, "disconnect=detach", "detach", "device did not come back within 10 s",
       REENUM_MS),
    DF("detach", 2, "silent=detach", "detach", "no answer to DETACH within 0.5 s", TIMEOUT_MS),
    DF("detach", 3, NULL, "DETACH has no data stage to spoil", NULL, 0),
    DF("detach", 4, NULL, "DETACH has no data stage to spoil", NULL, 0),
    DF("detach", 5, "slow=detach", "detach", "no answer to DETACH within 0.5 s", TIMEOUT_MS),
    DF("detach", 6, NULL, "DETACH has no data stage to cut short", NULL, 0),
    DF("detach", 7, "stall=detach", "detach", "device stalled DETACH", TIMEOUT_MS),
    DF("dnload", 0, "errwrite=2", "dfu-download:0", "download alt 0 block 2: errWRITE", TIMEOUT_MS),
    DF("dnload", 1, "disconnect=dnload@2", "dfu-download:0",
       "download alt 0 block 2: device disconnected", TIMEOUT_MS),
    DF("dnload", 2, "silent=dnload@2", "dfu-download:0",
       "download alt 0 block 2: no answer to DNLOAD within 0.5 s", TIMEOUT_MS),
    DF("dnload", 3, "garbage=getstatus@3", "dfu-download:0",
       "download alt 0 block 2: GETSTATUS answered garbage", TIMEOUT_MS),
    DF("dnload", 4, "oversize=getstatus@3", "dfu-download:0",
       "download alt 0 block 2: GETSTATUS failed: reply too long", TIMEOUT_MS),
    DF("dnload", 5, "slow=dnload@2", "dfu-download:0",
       "download alt 0 block 2: device asks to stay 60 s in dfuDNBUSY", TIMEOUT_MS),
    DF("dnload", 6, "short=dnload@2", "dfu-download:0",
       "download alt 0 block 2: DNLOAD took 512 of 1024 bytes", TIMEOUT_MS),
    DF("dnload", 7, "stall=dnload@2", "dfu-download:0",
       "download alt 0 block 2: device stalled DNLOAD", TIMEOUT_MS),
    DF("manifest", 0, "fail=manifest", "dfu-download:0", "manifestation failed: errFIRMWARE",
       DFU_TOTAL_MS),
    DF("manifest", 1, "disconnect=manifest", "dfu-download:0",
       "device disconnected during manifestation", DFU_TOTAL_MS),
    DF("manifest", 2, "silent=getstatus@9", "dfu-download:0",
       "manifestation: no answer to GETSTATUS within 0.5 s", DFU_TOTAL_MS),
    DF("manifest", 3, "garbage=getstatus@9", "dfu-download:0",
       "manifestation: GETSTATUS answered garbage", DFU_TOTAL_MS),
    DF("manifest", 4, "oversize=getstatus@9", "dfu-download:0",
       "manifestation: GETSTATUS failed: reply too long", DFU_TOTAL_MS),
    DF("manifest", 5, "slow=manifest", "dfu-download:0",
       "manifestation: device asks to stay 60 s in dfuMANIFEST", DFU_TOTAL_MS),
    DF("manifest", 6, "short=getstatus@9", "dfu-download:0",
       "manifestation: GETSTATUS answered 3 bytes, not 6", DFU_TOTAL_MS),
    DF("manifest", 7, "stall=getstatus@9", "dfu-download:0",
       "manifestation: device stalled GETSTATUS", DFU_TOTAL_MS),
    DF("verify", 0, NULL, "UPLOAD has no status stage: a refusal is a stall, wrong bytes garbage",
       NULL, 0),
    DF("verify", 1, "disconnect=upload@2", "dfu-verify:0",
       "verify alt 0 block 2: device disconnected", DFU_TOTAL_MS),
    DF("verify", 2, "silent=upload@2", "dfu-verify:0",
       "verify alt 0 block 2: no answer to UPLOAD within 0.5 s", DFU_TOTAL_MS),
    DF("verify", 3, "garbage=upload@2", "dfu-verify:0", "verify alt 0: byte 2048 differs",
       DFU_TOTAL_MS),
    DF("verify", 4, "oversize=upload@2", "dfu-verify:0",
       "verify alt 0 block 2: UPLOAD failed: reply too long", DFU_TOTAL_MS),
    DF("verify", 5, "slow=upload@2", "dfu-verify:0",
       "verify alt 0 block 2: no answer to UPLOAD within 0.5 s", DFU_TOTAL_MS),
    DF("verify", 6, "short=upload@2", "dfu-verify:0",
       "verify alt 0: device returned 2560 of 8192 bytes", DFU_TOTAL_MS),
    DF("verify", 7, "stall=upload@2", "dfu-verify:0", "verify alt 0 block 2: device stalled UPLOAD",
       DFU_TOTAL_MS),
};
#define N_CELLS (sizeof(cells) / sizeof(cells[0]))

/* For a cell that does not apply, `step` holds why. */
static bool applies(const struct cell *c)
{
    return c->spec != NULL;
}

static char base_dir[256];

/* dir/name: n pseudo-random bytes (not compressible, not sparse). */
static void write_bytes(const char *dir, const char *name, size_t n, uint32_t seed)
{
    char path[400];
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    th_fill_xorshift(buf, n, seed);
    th_spit(path, buf, n);
    free(buf);
}

/* Recipes and images shared by every run. */
static void make_line(void)
{
    th_tmpdir("fm", base_dir, sizeof(base_dir));
    write_bytes(base_dir, "system.img", 3u << 20, 7);
    write_bytes(base_dir, "fw.bin", 8192, 11);
    th_spit_in(base_dir, "phone.recipe",
               "recipe fm-phone 1\n"
               "protocol fastboot\n"
               "image system system.img\n"
               "require product=simphone\n"
               "flash system system\n"
               "erase userdata\n"
               "reboot\n");
    th_spit_in(base_dir, "board.recipe",
               "recipe fm-board 1\n"
               "protocol dfu\n"
               "allow-raw-dfu\n"
               "image firmware fw.bin\n"
               "detach\n"
               "dfu-download 0 firmware\n"
               "dfu-verify 0 firmware\n");
    th_spit_in(base_dir, "phone.ini",
               "[station]\nid = fm\n"
               "[profile phone]\nmatch = class FF/42/03\nrecipe = phone.recipe\n"
               "[simulate]\nprofile = phone\n");
    th_spit_in(base_dir, "board.ini",
               "[station]\nid = fm\n"
               "[profile board]\nmatch = class FE/01/02\nprotocol = dfu\n"
               "recipe = board.recipe\n"
               "[simulate]\nprofile = board\n");
}

/* Start one run of `c` (under valgrind when asked); its files go to c->dir. */
static pid_t start_run(struct cell *c, bool valgrind, unsigned index)
{
    char ini[400], db[400], fault[100], out[400], err[400];
    char *dir = valgrind ? c->vg_dir : c->dir;
    snprintf(dir, sizeof(c->dir), "%s/%s%u", base_dir, valgrind ? "vg" : "cell", index);
    mkdir(dir, 0755);
    snprintf(ini, sizeof(ini), "%s/%s", base_dir, c->proto == DFU ? "board.ini" : "phone.ini");
    snprintf(db, sizeof(db), "%s/t.db", dir);
    snprintf(fault, sizeof(fault), "2:%s", c->spec);
    snprintf(out, sizeof(out), "%s/out.txt", dir);
    snprintf(err, sizeof(err), "%s/err.txt", dir);
    const char *argv[40];
    int n = 0;
    if (valgrind) {
        argv[n++] = "valgrind";
        argv[n++] = "-q";
        argv[n++] = "--error-exitcode=99";
        argv[n++] = "--leak-check=full";
        argv[n++] = "--errors-for-leak-kinds=definite,indirect,possible";
    }
    argv[n++] = STATION_BIN;
    argv[n++] = "run";
    argv[n++] = "-c";
    argv[n++] = ini;
    argv[n++] = "--simulate";
    argv[n++] = DEVICES;
    argv[n++] = "--exit-after";
    argv[n++] = DEVICES;
    argv[n++] = "--headless";
    argv[n++] = "--db";
    argv[n++] = db;
    argv[n++] = "--timeout-ms";
    argv[n++] = "500";
    argv[n++] = "--fault";
    argv[n++] = fault;
    if (c->proto == FASTBOOT) {
        argv[n++] = "--pace";
        argv[n++] = "50";
        argv[n++] = "--max-download";
        argv[n++] = "1048576";
    }
    argv[n] = NULL;
    return th_spawn(argv, out, err, NULL);
}

static long long q_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    long long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void q_text(sqlite3 *db, const char *sql, char *out, size_t cap)
{
    sqlite3_stmt *st;
    out[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

/* Read back what the run recorded. */
static void collect(struct cell *c)
{
    char path[400], sql[300];
    sqlite3 *db;
    snprintf(path, sizeof(path), "%s/t.db", c->dir);
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return;
    }
    c->n_sessions = (int)q_int(db, "SELECT COUNT(*) FROM sessions");
    c->n_pass = (int)q_int(db, "SELECT COUNT(*) FROM sessions WHERE result='PASS'");
    c->n_fail = (int)q_int(db, "SELECT COUNT(*) FROM sessions WHERE result='FAIL'");
    q_text(db, "SELECT slot FROM sessions WHERE result='FAIL'", c->failed_slot,
           sizeof(c->failed_slot));
    q_text(db, "SELECT failed_step FROM sessions WHERE result='FAIL'", c->failed_step,
           sizeof(c->failed_step));
    q_text(db, "SELECT reason FROM sessions WHERE result='FAIL'", c->reason, sizeof(c->reason));
    c->fail_ms = q_int(db, "SELECT steps.ended_ms - steps.started_ms FROM steps JOIN sessions "
                           "ON sessions.id = session_id WHERE steps.result = 'FAIL'");
    snprintf(sql, sizeof(sql),
             "SELECT MAX(steps.ended_ms - steps.started_ms) FROM steps JOIN sessions ON "
             "sessions.id = session_id WHERE sessions.result = 'PASS' AND steps.name = '%s'",
             c->step);
    c->clean_ms = q_int(db, sql);
    sqlite3_close(db);
}

struct job {
    struct cell *c;
    bool valgrind;
    pid_t pid;
    time_t started;
};

/* Run every job, PARALLEL at a time; a run that outlives RUN_LIMIT_S is
 * killed (and fails its checks). */
static void run_all(struct job *jobs, unsigned n)
{
    unsigned next = 0, running = 0, done = 0;
    while (done < n) {
        while (running < PARALLEL && next < n) {
            jobs[next].pid = start_run(jobs[next].c, jobs[next].valgrind, next);
            jobs[next].started = time(NULL);
            next++;
            running++;
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
            for (unsigned i = 0; i < next; i++)
                if (jobs[i].pid > 0 && time(NULL) - jobs[i].started > RUN_LIMIT_S)
                    kill(jobs[i].pid, SIGKILL);
            continue;
        }
        for (unsigned i = 0; i < next; i++) {
            if (jobs[i].pid != pid)
                continue;
            jobs[i].pid = 0;
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
            if (jobs[i].valgrind)
                jobs[i].c->vg_exit = code;
            else
                jobs[i].c->exit_code = code;
        }
        running--;
        done++;
    }
}

/* The reason without the step's name, cut for a table cell. */
static void short_form(const struct cell *c, char *out, size_t cap)
{
    const char *r = c->reason;
    size_t n = strlen(c->step);
    if (!strncmp(r, c->step, n))
        r += n;
    while (*r == ':' || *r == ' ')
        r++;
    snprintf(out, cap, "%.60s%s", r, strlen(r) > 60 ? "…" : "");
    for (char *p = out; *p; p++)
        if (*p == '|')
            *p = '/';
}

static void print_matrix(void)
{
    char line[4096], cellbuf[128];
    print_message("fault matrix: device 2 of 4 has the fault; the cell is its FAIL reason "
                  "(after the step's name) and how long the failing step took\n\n");
    int o = snprintf(line, sizeof(line), "| protocol / step |");
    for (unsigned f = 0; f < N_FAULTS; f++)
        o += snprintf(line + o, sizeof(line) - (size_t)o, " %s |", fault_names[f]);
    print_message("%s\n", line);
    o = snprintf(line, sizeof(line), "| --- |");
    for (unsigned f = 0; f < N_FAULTS; f++)
        o += snprintf(line + o, sizeof(line) - (size_t)o, " --- |");
    print_message("%s\n", line);
    const char *last_row = NULL;
    for (size_t i = 0; i < N_CELLS; i++) {
        const struct cell *c = &cells[i];
        if (last_row && !strcmp(last_row, c->row))
            continue;
        last_row = c->row;
        o = snprintf(line, sizeof(line), "| %s %s |", c->proto == DFU ? "DFU" : "fastboot", c->row);
        for (unsigned f = 0; f < N_FAULTS; f++) {
            const struct cell *x = NULL;
            for (size_t j = 0; j < N_CELLS; j++)
                if (cells[j].proto == c->proto && !strcmp(cells[j].row, c->row) &&
                    cells[j].fault == f)
                    x = &cells[j];
            if (!x)
                snprintf(cellbuf, sizeof(cellbuf), "?");
            else if (!applies(x))
                snprintf(cellbuf, sizeof(cellbuf), "- (%s)", x->step);
            else if (x->reason[0]) {
                char sf[100];
                short_form(x, sf, sizeof(sf));
                snprintf(cellbuf, sizeof(cellbuf), "%s (%.1f s)", sf, x->fail_ms / 1000.0);
            } else
                snprintf(cellbuf, sizeof(cellbuf), "FAILED: no FAIL recorded (exit %d)",
                         x->exit_code);
            o += snprintf(line + o, sizeof(line) - (size_t)o, " %s |", cellbuf);
        }
        print_message("%s\n", line);
    }
    print_message("\n");
}

/* Does `text` hold the parts of `pattern` between its '*'s, in order? */
static bool matches(const char *text, const char *pattern)
{
    char part[200];
    while (*pattern) {
        size_t n = strcspn(pattern, "*");
        snprintf(part, sizeof(part), "%.*s", (int)n, pattern);
        const char *at = strstr(text, part);
        if (!at)
            return false;
        text = at + n;
        pattern += n;
        if (*pattern == '*')
            pattern++;
    }
    return true;
}

/* What is wrong with a cell's run, or "" when it is right. */
static void judge(const struct cell *c, char *why, size_t cap)
{
    char want[200];
    why[0] = '\0';
    if (c->exit_code != 1) {
        snprintf(why, cap, "exit code %d, not 1", c->exit_code);
        return;
    }
    if (c->n_sessions != 4 || c->n_pass != 3 || c->n_fail != 1) {
        snprintf(why, cap, "%d sessions, %d PASS, %d FAIL (want 4, 3, 1)", c->n_sessions, c->n_pass,
                 c->n_fail);
        return;
    }
    if (strcmp(c->failed_slot, FAULTY) != 0) {
        snprintf(why, cap, "%s failed, not %s", c->failed_slot, FAULTY);
        return;
    }
    if (strcmp(c->failed_step, c->step) != 0) {
        snprintf(why, cap, "failed step %s, not %s", c->failed_step, c->step);
        return;
    }
    snprintf(want, sizeof(want), "%s", c->step);
    if (strncmp(c->reason, want, strlen(want)) != 0 || !matches(c->reason, c->expect)) {
        snprintf(why, cap, "reason \"%s\" does not name %s and \"%s\"", c->reason, c->step,
                 c->expect);
        return;
    }
    long long bound = (long long)c->limit_ms + (c->clean_ms > 0 ? c->clean_ms : 0) + SLACK_MS;
    if (c->fail_ms < 0 || c->fail_ms > bound)
        snprintf(why, cap, "the failing step took %lld ms, more than %lld ms", c->fail_ms, bound);
}

static void test_fault_matrix(void **state)
{
    (void)state;
    struct job jobs[N_CELLS + 2];
    unsigned n = 0;
    bool use_valgrind = false;
#ifndef STATION_SANITIZED
    if (system("command -v valgrind >/dev/null 2>&1") != 0)
        fail_msg("valgrind is not installed (scripts/setup.sh installs it)");
    use_valgrind = true;
#endif
    make_line();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* The slow cells cancel transfers held back for a minute: the leak
     * checks go there. Valgrind runs first, they take longest. */
    for (size_t i = 0; i < N_CELLS && use_valgrind; i++)
        if (applies(&cells[i]) && cells[i].fault == 5 &&
            ((cells[i].proto == FASTBOOT && !strcmp(cells[i].row, "flash")) ||
             (cells[i].proto == DFU && !strcmp(cells[i].row, "detach")))) {
            cells[i].valgrind = true;
            jobs[n++] = (struct job){.c = &cells[i], .valgrind = true};
        }
    unsigned first_plain = n;
    for (size_t i = 0; i < N_CELLS; i++)
        if (applies(&cells[i]))
            jobs[n++] = (struct job){.c = &cells[i]};
    run_all(jobs, n);
    for (unsigned i = first_plain; i < n; i++)
        collect(jobs[i].c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_matrix();
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    print_message("%u runs (%u under valgrind), %d at a time, in %.1f s\n", n, first_plain,
                  PARALLEL, took);

    unsigned bad = 0;
    for (unsigned i = first_plain; i < n; i++) {
        char why[700];
        const struct cell *c = jobs[i].c;
        judge(c, why, sizeof(why));
        if (why[0]) {
            bad++;
            print_error("%s %s x %s (--fault 2:%s): %s\n", c->proto == DFU ? "DFU" : "fastboot",
                        c->row, fault_names[c->fault], c->spec, why);
        }
    }
    for (unsigned i = 0; i < first_plain; i++) {
        const struct cell *c = jobs[i].c;
        /* 1 is "a session failed"; 99 is a valgrind error or leak */
        if (c->vg_exit != 1) {
            bad++;
            print_error("%s %s x %s under valgrind: exit %d (see %s/err.txt)\n",
                        c->proto == DFU ? "DFU" : "fastboot", c->row, fault_names[c->fault],
                        c->vg_exit, c->vg_dir);
        }
    }
    if (bad)
        fail_msg("%u of %u runs went wrong (files kept in %s)", bad, n, base_dir);
    th_rmtree(base_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_matrix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
