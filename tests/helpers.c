/*
 * The helpers of helpers.h. Each one fails the running test itself rather
 * than returning an error its callers would all check the same way.
 */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include <android/sparse/sparse.h>

/* ---- folders and paths ---- */

void th_tmpdir(const char *prefix, char *buf, size_t len)
{
    mkdir(TEST_TMPDIR, 0755);
    int n = snprintf(buf, len, "%s/%sXXXXXX", TEST_TMPDIR, prefix);
    assert_true(n > 0 && (size_t)n < len);
    if (!mkdtemp(buf))
        fail_msg("mkdtemp %s: %s", buf, strerror(errno));
}

int th_rmtree(const char *path)
{
    if (th_sh("rm -rf '%s'", path) != 0) {
        fprintf(stderr, "could not remove %s\n", path);
        return -1;
    }
    return 0;
}

void th_path(char *buf, size_t len, const char *dir, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len)
        fail_msg("path %s/%s is longer than %zu bytes", dir, name, len - 1);
}

/* ---- whole files ---- */

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 14, n = 0, got;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            buf = realloc(buf, cap *= 2);
            assert_non_null(buf);
        }
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

char *th_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot read %s: %s", path, strerror(errno));
    char *text = read_all(f, len);
    fclose(f);
    return text;
}

char *th_slurp_or_empty(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (len)
            *len = 0;
        char *empty = calloc(1, 1);
        assert_non_null(empty);
        return empty;
    }
    char *text = read_all(f, len);
    fclose(f);
    return text;
}

void th_spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

void th_spit_in(const char *dir, const char *name, const char *text)
{
    char path[1024];
    th_path(path, sizeof(path), dir, name);
    th_spit(path, text, strlen(text));
}

void th_show(const char *label, const char *path)
{
    size_t n;
    char *text = th_slurp_or_empty(path, &n);
    fprintf(stderr, "--- %s\n%s%s", label, text, n && text[n - 1] != '\n' ? "\n" : "");
    free(text);
}

/* ---- text in files ---- */

unsigned th_count(const char *text, const char *needle)
{
    unsigned n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

unsigned th_file_count(const char *path, const char *needle)
{
    char *text = th_slurp_or_empty(path, NULL);
    unsigned n = th_count(text, needle);
    free(text);
    return n;
}

bool th_file_has(const char *path, const char *needle)
{
    char *text = th_slurp_or_empty(path, NULL);
    bool hit = strstr(text, needle) != NULL;
    free(text);
    return hit;
}

bool th_await_file(const char *path, const char *needle, int limit_s)
{
    for (int i = 0; i < limit_s * 100; i++) {
        if (th_file_has(path, needle))
            return true;
        th_sleep_ms(10);
    }
    return false;
}

/* ---- shell commands ---- */

static int decode(int status)
{
    if (status == -1)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int vsh(char **out, const char *fmt, va_list ap)
{
    char cmd[8192];
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    assert_true(n >= 0 && (size_t)n < sizeof(cmd));
    if (!out)
        return decode(system(cmd));
    FILE *p = popen(cmd, "r");
    if (!p)
        fail_msg("popen %s: %s", cmd, strerror(errno));
    *out = read_all(p, NULL);
    return decode(pclose(p));
}

int th_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vsh(NULL, fmt, ap);
    va_end(ap);
    return rc;
}

void th_sh_ok(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (th_sh("%s", cmd) != 0)
        fail_msg("command failed: %s", cmd);
}

int th_sh_out(char **out, const char *fmt, ...)
{
    char *text = NULL;
    va_list ap;
    va_start(ap, fmt);
    int rc = vsh(&text, fmt, ap);
    va_end(ap);
    if (out)
        *out = text;
    else
        free(text);
    return rc;
}

bool th_have(const char *tool)
{
    return th_sh("command -v %s >/dev/null 2>&1", tool) == 0;
}

/* ---- time ---- */

double th_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void th_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- child processes ---- */

void th_argv(const char **argv, size_t n, const char *prog, const char *const *args)
{
    size_t k = 0;
    argv[k++] = prog;
    for (size_t i = 0; args && args[i]; i++) {
        if (k + 1 >= n)
            fail_msg("more than %zu arguments for %s", n - 2, prog);
        argv[k++] = args[i];
    }
    argv[k] = NULL;
}

/* In the child: fd `to` from path (/dev/null when NULL), or from `same`
 * when it is already that file. */
static void redirect(const char *path, int to, int flags)
{
    int fd = open(path ? path : "/dev/null", flags, 0644);
    if (fd < 0)
        _exit(126);
    if (fd != to) {
        dup2(fd, to);
        close(fd);
    }
}

pid_t th_spawn(const char *const *argv, const char *out_path, const char *err_path, const char *cwd)
{
    fflush(NULL); /* nothing buffered here is written twice by the child */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        redirect(NULL, 0, O_RDONLY);
        redirect(out_path, 1, O_WRONLY | O_CREAT | O_TRUNC);
        if (out_path && err_path && !strcmp(out_path, err_path))
            dup2(1, 2);
        else
            redirect(err_path, 2, O_WRONLY | O_CREAT | O_TRUNC);
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    setpgid(pid, pid); /* either side may run first */
    return pid;
}

bool th_wait_for(pid_t pid, int limit_s, int *status)
{
    int st;
    for (int i = 0; i < limit_s * 200; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            *status = decode(st);
            return true;
        }
        th_sleep_ms(5);
    }
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return false;
}

int th_wait_exit(pid_t pid, int limit_s, const char *what)
{
    int status = -1; /* fail_msg does not return */
    if (!th_wait_for(pid, limit_s, &status))
        fail_msg("%s did not exit within %d s", what, limit_s);
    return status;
}

bool th_run_for(const char *const *argv, const char *out_path, const char *err_path,
                const char *cwd, int limit_s, int *status, double *seconds)
{
    double t0 = th_now_s();
    if (!th_wait_for(th_spawn(argv, out_path, err_path, cwd), limit_s, status))
        return false;
    if (seconds)
        *seconds = th_now_s() - t0;
    return true;
}

int th_run(const char *const *argv, const char *out_path, const char *err_path, const char *cwd,
           int limit_s)
{
    return th_wait_exit(th_spawn(argv, out_path, err_path, cwd), limit_s, argv[0]);
}

/* ---- the usbsim harness ---- */

bool th_stats_line(const char *stats_path, const char *path, char *buf, size_t cap)
{
    char *text = th_slurp_or_empty(stats_path, NULL);
    char key[128];
    snprintf(key, sizeof(key), "%s serial=", path);
    const char *p = text;
    while ((p = strstr(p, key)) && p != text && p[-1] != '\n')
        p++;
    bool found = p != NULL;
    if (found)
        snprintf(buf, cap, "%.*s", (int)strcspn(p, "\n"), p);
    free(text);
    return found;
}

/* ---- SQLite ---- */

sqlite3 *th_db_open(const char *path, bool writable)
{
    sqlite3 *c = NULL;
    int flags = writable ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
    if (sqlite3_open_v2(path, &c, flags, NULL) != SQLITE_OK) {
        char why[256];
        snprintf(why, sizeof(why), "%s", c ? sqlite3_errmsg(c) : "out of memory");
        sqlite3_close(c);
        fail_msg("cannot open %s: %s", path, why);
    }
    sqlite3_busy_timeout(c, 5000);
    return c;
}

/* sql prepared and stepped to its first row. */
static sqlite3_stmt *first_row(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(c));
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    return st;
}

long long th_q_int(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st = first_row(c, sql);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

char *th_q_text(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st = first_row(c, sql);
    const unsigned char *t = sqlite3_column_text(st, 0);
    char *v = strdup(t ? (const char *)t : "");
    assert_non_null(v);
    sqlite3_finalize(st);
    return v;
}

long long th_db_int(const char *path, const char *sql)
{
    sqlite3 *c = th_db_open(path, false);
    long long v = th_q_int(c, sql);
    sqlite3_close(c);
    return v;
}

/* ---- test data ---- */

void th_fill_xorshift(uint8_t *buf, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        buf[i] = (uint8_t)seed;
    }
}

void th_sha256_hex(const void *data, size_t len, char hex[65])
{
    unsigned char sum[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(sum, data, len);
    sodium_bin2hex(hex, 65, sum, sizeof(sum));
}

uint64_t th_random_file(const char *path, size_t len)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    uint64_t s = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid() ^ len;
    for (size_t i = 0; i < len; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        buf[i] = (uint8_t)(s >> 24);
    }
    th_spit(path, buf, len);
    uint64_t h = XXH3_64bits(buf, len);
    free(buf);
    return h;
}

uint8_t *th_sparse_test_image(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len);
    assert_non_null(p);
    srand(seed);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)rand();
    for (size_t blk = 0; blk * 4096 + 4096 <= len; blk++) {
        int r = rand() % 10;
        if (r < 3)
            memset(p + blk * 4096, 0, 4096);
        else if (r == 3)
            for (size_t i = 0; i < 4096; i += 4)
                memcpy(p + blk * 4096 + i, "\xde\xad\xbe\xef", 4);
    }
    return p;
}

/* ---- libsparse as the oracle ---- */

static int collect(void *priv, const void *data, size_t len)
{
    struct th_buf *b = priv;
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (data)
        memcpy(b->p + b->len, data, len);
    else
        memset(b->p + b->len, 0, len);
    b->len += len;
    return 0;
}

int th_oracle(const char *path, unsigned limit, struct th_buf **out)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct sparse_file *s = sparse_file_import_auto(fd, false, false);
    assert_non_null(s);
    int n = sparse_file_resparse(s, limit, NULL, 0);
    struct sparse_file **pieces = calloc((size_t)n, sizeof(*pieces));
    assert_int_equal(sparse_file_resparse(s, limit, pieces, n), n);
    struct th_buf *bufs = calloc((size_t)n, sizeof(*bufs));
    for (int i = 0; i < n; i++) {
        assert_true(sparse_file_callback(pieces[i], true, false, collect, &bufs[i]) >= 0);
        sparse_file_destroy(pieces[i]);
    }
    free(pieces);
    sparse_file_destroy(s);
    close(fd);
    *out = bufs;
    return n;
}

void th_oracle_free(struct th_buf *b, int n)
{
    for (int i = 0; i < n; i++)
        free(b[i].p);
    free(b);
}

/* ---- recipes ---- */

void th_add_step(struct cfg_recipe *r, enum cfg_step_kind kind, const char *arg, int image)
{
    struct cfg_step *s = &r->steps[r->n_steps++];
    memset(s, 0, sizeof(*s));
    s->kind = kind;
    s->image = image;
    snprintf(s->arg, sizeof(s->arg), "%s", arg);
}

/* ---- the engine on the virtual rack ---- */

static void rack_loaded(int status, const char *message, void *user_data)
{
    struct th_rack *h = user_data;
    h->load_status = status;
    if (status == 0)
        eng_rack_start(h->rack);
    else
        uv_stop(h->loop);
}

static void rack_guard(uv_timer_t *t)
{
    fail_msg("test did not finish in time");
}

void th_rack_run(struct th_rack *h, uv_loop_t *loop, const struct eng_options *eo,
                 const struct eng_rack_options *ro, const struct cfg_recipe *recipe,
                 const char **faults, eng_event_cb on_event, void *user_data, unsigned guard_ms)
{
    h->loop = loop;
    assert_int_equal(eng_engine_new(loop, eo, on_event, user_data, &h->eng), 0);
    assert_int_equal(eng_rack_new(loop, h->eng, ro, &h->rack), 0);
    for (const char **f = faults; f && *f; f++)
        assert_int_equal(eng_rack_add_fault_spec(h->rack, *f), 0);
    assert_int_equal(eng_engine_load(h->eng, recipe, rack_loaded, h), 0);
    uv_timer_init(loop, &h->guard);
    if (guard_ms)
        uv_timer_start(&h->guard, rack_guard, guard_ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void rack_engine_closed(struct eng_engine *eng, void *user_data)
{
    struct th_rack *h = user_data;
    h->closed = true;
}

static void rack_stopped(struct eng_rack *rack, void *user_data)
{
    struct th_rack *h = user_data;
    eng_engine_close(h->eng, rack_engine_closed, h);
}

void th_rack_close(struct th_rack *h)
{
    if (!h->eng)
        return;
    uv_close((uv_handle_t *)&h->guard, NULL);
    eng_rack_stop(h->rack, rack_stopped, h);
    uv_run(h->loop, UV_RUN_DEFAULT);
    assert_true(h->closed);
    eng_rack_free(h->rack);
    eng_engine_free(h->eng);
}

/* ---- tmux ---- */

int th_tmux(const char *sock, ...)
{
    const char *argv[32] = {"tmux", "-L", sock, "-f", "/dev/null"};
    int n = 5;
    va_list ap;
    va_start(ap, sock);
    for (const char *a; n < 31 && (a = va_arg(ap, const char *));)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return th_run(argv, NULL, NULL, NULL, 20);
}

char *th_tmux_capture(const char *sock, const char *target, bool escapes)
{
    char *screen;
    th_sh_out(&screen, "tmux -L %s -f /dev/null capture-pane -p %s -t %s 2>/dev/null", sock,
              escapes ? "-e" : "", target);
    return screen;
}

void th_tmux_keys(const char *sock, const char *target, const char *keys)
{
    assert_int_equal(th_tmux(sock, "send-keys", "-t", target, keys, NULL), 0);
}

bool th_screen_line(const char *s, int n, char *buf, size_t size)
{
    for (int i = 0; i < n; i++) {
        s = strchr(s, '\n');
        if (!s)
            return false;
        s++;
    }
    size_t len = strcspn(s, "\n");
    snprintf(buf, size, "%.*s", (int)len, s);
    return true;
}

bool th_header_counts(const char *s, struct th_counts *c)
{
    char line[1024];
    if (!th_screen_line(s, 1, line, sizeof(line)))
        return false;
    const char *p = strstr(line, "passed ");
    if (!p || sscanf(p, "passed %u failed %u aborted %u", &c->passed, &c->failed, &c->aborted) != 3)
        return false;
    p = strstr(line, "in progress ");
    return p && sscanf(p, "in progress %u", &c->in_progress) == 1;
}

/* ---- a scratch folder per test, and the usbsim harness ---- */

struct th_fx *th_fx_new(const char *prefix, unsigned alarm_s)
{
    struct th_fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    alarm(alarm_s);
    th_tmpdir(prefix, fx->dir, sizeof(fx->dir));
    th_path(fx->out, sizeof(fx->out), fx->dir, "out.txt");
    th_path(fx->err, sizeof(fx->err), fx->dir, "err.txt");
    th_path(fx->stats, sizeof(fx->stats), fx->dir, "stats.txt");
    th_path(fx->db, sizeof(fx->db), fx->dir, "station.db");
    return fx;
}

void th_fx_free(struct th_fx *fx)
{
    th_rmtree(fx->dir);
    free(fx);
    alarm(0);
}

int th_usbsim(struct th_fx *fx, int limit_s, const char *const *args)
{
    const char *argv[96];
    int rc;
    th_argv(argv, 96, USBSIM_BIN, args);
    if (!th_run_for(argv, fx->out, fx->err, fx->dir, limit_s, &rc, &fx->seconds)) {
        th_show("stdout of the harness run", fx->out);
        th_show("stderr", fx->err);
        fail_msg("usbsim did not exit within %d s", limit_s);
    }
    return rc;
}

void th_fx_show(const struct th_fx *fx)
{
    th_show("stdout", fx->out);
    th_show("stderr", fx->err);
    if (access(fx->stats, F_OK) == 0)
        th_show("stats", fx->stats);
    fputs("---\n", stderr);
}

void th_fx_expect_in(const struct th_fx *fx, const char *file, const char *needle)
{
    if (!th_file_has(file, needle)) {
        th_fx_show(fx);
        if (strcmp(file, fx->out) && strcmp(file, fx->err) && strcmp(file, fx->stats))
            th_show(file, file);
        fail_msg("expected \"%s\" in %s", needle, file);
    }
}
