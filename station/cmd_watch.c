/*
 * `station watch`: the dashboard of a running station, read-only, for a
 * supervisor at another desk. It connects to the station's watch socket
 * (station/publish.h), rebuilds the model from each snapshot
 * (ui/remote.h) and draws it with the station's own dashboard code in
 * read-only mode: selection, detail and help are local; p does nothing;
 * q ends the watcher, never the station. The watcher never writes to the
 * socket, so it has no way to ask the station for anything.
 *
 * If the station goes away the screen keeps its last state, says so, and
 * the watcher reconnects every second (systemd restarts the station).
 *
 * Exit codes: 0 quit (q, or SIGINT/SIGTERM/SIGHUP), 2 usage error, a
 * config that does not load, not a terminal, or no station to attach to
 * at start, 3 internal error.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "common/st_error.h"
#include "config/config.h"
#include "engine/engine.h"
#include "station/commands.h"
#include "station/publish.h"
#include "station/station.h"
#include "ui/dashboard.h"
#include "ui/model.h"
#include "ui/remote.h"

static const char watch_usage[] =
    "usage: station watch [options]\n"
    "Show a running station's dashboard, read-only: arrows, Enter and ? work here;\n"
    "p does nothing; q quits the watcher, not the station. Several may watch at once.\n"
    "  --socket PATH   the station's watch socket (default: DB.sock, beside the database;\n"
    "                  the same as 'station run --socket')\n"
    "  -c, --config FILE  take the database (and so the socket) from station.ini\n"
    "  --db FILE       the station's database (default station.db)\n"
    "\n"
    "The socket is open to the station's group only: be in that group (station).\n"
    "exit codes: 0 quit, 2 usage error or no station to attach to, 3 internal error\n";

#define READ_CHUNK 65536
#define RETRY_MS 1000

struct watch {
    uv_loop_t loop;
    const char *path;
    struct ui_model model;
    struct ui_dash *dash;
    uv_pipe_t pipe;
    bool pipe_open; /* initialised and not yet closed */
    uv_connect_t connect;
    uv_timer_t retry;
    uv_signal_t sig[3];
    uint8_t *buf; /* bytes read, not yet a whole frame */
    size_t len, cap;
    bool quitting;
    bool lost; /* the connection went; retrying */
    unsigned long frames;
};

static void start_retry(struct watch *w);

static void note_local(struct watch *w, enum ui_note_kind kind, const char *text)
{
    ui_model_note(&w->model, eng_now_ms(), kind, "%s", text);
}

static void on_pipe_closed(uv_handle_t *h)
{
    struct watch *w = h->data;
    w->pipe_open = false;
    w->len = 0;
    if (!w->quitting)
        start_retry(w);
}

/* The station is gone, or said something we cannot read. */
static void lose(struct watch *w, const char *why)
{
    char text[300];
    if (!w->pipe_open || uv_is_closing((uv_handle_t *)&w->pipe))
        return;
    uv_close((uv_handle_t *)&w->pipe, on_pipe_closed);
    if (w->quitting || w->lost)
        return;
    w->lost = true;
    /* what is on screen is the past now: say so where the state is */
    w->model.stopping = true;
    snprintf(text, sizeof(text), "watch: %s (%s); reconnecting every second", why, w->path);
    note_local(w, UI_NOTE_ERROR, text);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct watch *w = h->data;
    if (w->cap - w->len < READ_CHUNK) {
        size_t cap = w->len + READ_CHUNK;
        uint8_t *p = realloc(w->buf, cap);
        if (!p) {
            *b = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
            return;
        }
        w->buf = p;
        w->cap = cap;
    }
    *b = uv_buf_init((char *)w->buf + w->len, (unsigned)(w->cap - w->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct watch *w = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        lose(w, nread == UV_EOF ? "the station closed the connection" : uv_strerror((int)nread));
        return;
    }
    w->len += (size_t)nread;
    /* Only the newest whole frame matters: older ones are skipped. */
    size_t off = 0, last = 0, last_len = 0;
    while (w->len - off >= UI_REMOTE_HEADER) {
        uint32_t n = ui_remote_frame_len(w->buf + off);
        if (n > UI_REMOTE_MAX_FRAME) {
            lose(w, "the station sent a frame too large to be a snapshot");
            return;
        }
        if (w->len - off - UI_REMOTE_HEADER < n)
            break;
        last = off + UI_REMOTE_HEADER;
        last_len = n;
        off += UI_REMOTE_HEADER + n;
    }
    if (last_len || off) {
        int rc = ui_remote_decode(w->buf + last, last_len, &w->model);
        if (rc) {
            lose(w, rc == ST_EPROTO ? "a snapshot this watcher cannot read (station and "
                                      "watcher from different versions?)"
                                    : st_strerror(rc));
            return;
        }
        w->frames++;
        w->lost = false;
    }
    memmove(w->buf, w->buf + off, w->len - off);
    w->len -= off;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct watch *w = req->data;
    if (status < 0) {
        if (w->pipe_open && !uv_is_closing((uv_handle_t *)&w->pipe))
            uv_close((uv_handle_t *)&w->pipe, on_pipe_closed);
        return;
    }
    if (w->quitting)
        return;
    if (uv_read_start((uv_stream_t *)&w->pipe, on_alloc, on_read) != 0)
        lose(w, "cannot read the socket");
}

static void on_retry(uv_timer_t *t)
{
    struct watch *w = t->data;
    if (w->quitting || w->pipe_open)
        return;
    uv_pipe_init(&w->loop, &w->pipe, 0);
    w->pipe.data = w;
    w->pipe_open = true;
    w->connect.data = w;
    uv_pipe_connect(&w->connect, &w->pipe, w->path, on_connect);
}

static void start_retry(struct watch *w)
{
    uv_timer_start(&w->retry, on_retry, RETRY_MS, 0);
}

static void stop(struct watch *w)
{
    if (w->quitting)
        return;
    w->quitting = true;
    uv_close((uv_handle_t *)&w->retry, NULL);
    for (int i = 0; i < 3; i++)
        uv_close((uv_handle_t *)&w->sig[i], NULL);
    if (w->pipe_open && !uv_is_closing((uv_handle_t *)&w->pipe))
        uv_close((uv_handle_t *)&w->pipe, on_pipe_closed);
    if (w->dash)
        ui_dash_close(w->dash, NULL, NULL);
}

static void on_action(enum ui_action action, void *user_data)
{
    /* read-only: the dashboard hands out nothing but quit */
    if (action == UI_ACTION_QUIT)
        stop(user_data);
}

static void on_signal(uv_signal_t *h, int signum)
{
    stop(h->data);
}

/* Connect before taking the terminal, so that a wrong path or missing
 * permission is a plain message. Returns the socket or -1. */
static int connect_now(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        st_usage_error("watch: socket path %s is too long for a Unix socket", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "station: watch: socket: %s\n", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return fd;
    int e = errno;
    close(fd);
    if (e == ENOENT || e == ECONNREFUSED)
        fprintf(stderr,
                "station: watch: no station is running at %s (%s)\n"
                "'station run' listens beside its database (DB.sock) or at --socket PATH\n",
                path, strerror(e));
    else if (e == EACCES || e == EPERM)
        fprintf(stderr,
                "station: watch: %s: %s: the socket is open to the station's group only\n"
                "(add this user to it, e.g. 'adduser $USER station', and log in again)\n",
                path, strerror(e));
    else
        fprintf(stderr, "station: watch: %s: %s\n", path, strerror(e));
    return -1;
}

static int watch_run(const char *path)
{
    struct watch wst, *w = &wst;
    int rc, exit_code = ST_EXIT_OK;

    if (!isatty(STDOUT_FILENO))
        return st_usage_error("%s", "watch: shows the dashboard, so it needs a terminal; "
                                    "for lines, read the station's log (journalctl -u station)");
    int fd = connect_now(path);
    if (fd < 0)
        return ST_EXIT_USAGE;
    memset(w, 0, sizeof(*w));
    w->path = path;
    ui_model_init(&w->model);
    ui_model_set_station(&w->model, "(connecting)", "", "", 0);
    uv_loop_init(&w->loop);
    uv_pipe_init(&w->loop, &w->pipe, 0);
    w->pipe.data = w;
    w->pipe_open = true;
    rc = uv_pipe_open(&w->pipe, fd);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&w->pipe, on_alloc, on_read);
    if (rc) {
        fprintf(stderr, "station: watch: %s: %s\n", path, uv_strerror(rc));
        exit_code = ST_EXIT_INTERNAL;
        uv_close((uv_handle_t *)&w->pipe, NULL);
        goto out_loop;
    }
    uv_timer_init(&w->loop, &w->retry);
    w->retry.data = w;
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&w->loop, &w->sig[i]);
        w->sig[i].data = w;
        uv_signal_start(&w->sig[i], on_signal, sigs[i]);
    }
    struct ui_dash_options dopts = {.in_fd = STDIN_FILENO, .out = stdout, .read_only = true};
    rc = ui_dash_new(&w->loop, &w->model, &dopts, on_action, w, &w->dash);
    if (rc) {
        fprintf(stderr, "station: watch: cannot start the dashboard: %s\n", st_strerror(rc));
        exit_code = ST_EXIT_INTERNAL;
        stop(w);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    ui_dash_free(w->dash);
out_loop:
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0) {
        fprintf(stderr, "station: watch: internal error: handles left open at exit\n");
        exit_code = ST_EXIT_INTERNAL;
    }
    ui_model_free(&w->model);
    free(w->buf);
    return exit_code;
}

int st_cmd_watch(int argc, char **argv)
{
    enum { O_SOCKET = 1000, O_DB, O_HELP };
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, O_SOCKET},
        {"config", required_argument, NULL, 'c'},
        {"db", required_argument, NULL, O_DB},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *socket_path = NULL, *db = NULL, *config = NULL;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":c:", longopts, NULL)) != -1) {
        switch (c) {
        case O_SOCKET:
            socket_path = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case O_DB:
            db = optarg;
            break;
        case O_HELP:
            fputs(watch_usage, stdout);
            return ST_EXIT_OK;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            return st_usage_error("unknown option '%s' for 'station watch'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s' for 'station watch'", argv[optind]);
    if (socket_path)
        return watch_run(socket_path);
    struct cfg_config *cfg = NULL;
    if (config && !db) {
        char err[CFG_ERROR_MAX];
        if (cfg_load(config, &cfg, err, sizeof(err)) != 0) {
            fprintf(stderr, "station: %s\n", err);
            return ST_EXIT_USAGE;
        }
        db = cfg->db;
    }
    int rc = st_publisher_default_path(db ? db : "station.db", path, sizeof(path));
    if (rc)
        rc = st_usage_error("watch: the socket beside database %s would be too long for a "
                            "Unix socket; give --socket PATH",
                            db ? db : "station.db");
    cfg_free(cfg);
    return rc ? rc : watch_run(path);
}
