/*
 * The TCP server for virtual fastboot devices (station/sim.h). Per
 * device: a listening socket (closed while the device is away, so that
 * connections are refused as they would be by a rebooting phone), at most
 * one client, and a timer for coming back. Handles are counted so that
 * st_sim_stop() can report when the last one is closed.
 */
#include "station/sim.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/st_error.h"

#define RBUF_SIZE (256u << 10)
#define COMMAND_ROOM 65 /* a 64-byte command, or 65 bytes to say "too long" */
#define MAX_FAULTS_PER_DEVICE 8
#define FAULT_MAX 80
#define REBIND_RETRY_MS 500

struct st_sim;
struct simdev;

enum client_state { C_HANDSHAKE, C_HEADER, C_PAYLOAD };

struct client {
    struct st_sim *sim;
    struct client *next, *prev; /* every client not yet freed */
    struct simdev *d;           /* NULL once detached from its device */
    uv_tcp_t tcp;
    uv_timer_t pace;
    uv_shutdown_t shut;
    int open_handles;
    bool closing, reading;
    enum client_state st;
    uint8_t hs[4];
    size_t hs_got;
    uint8_t hdr[8];
    size_t hdr_got;
    uint64_t left;   /* payload bytes still to come in this frame */
    bool data_frame; /* this frame started in the data phase */
    char cmd[COMMAND_ROOM + 1];
    size_t cmd_len; /* saturates at COMMAND_ROOM */
    double busy_until_ms;
    uint8_t rbuf[RBUF_SIZE];
};

struct simdev {
    struct st_sim *sim;
    unsigned n; /* 1-based */
    uint16_t port;
    struct eng_vfb *dev;
    unsigned units;
    bool away;
    bool fresh_next; /* come back as a new unit */
    uv_tcp_t *listener;
    bool pending; /* a connection waits to be accepted */
    struct client *client;
    uv_timer_t timer;
    unsigned connections;
    unsigned downloads;
    FILE *dl;
    unsigned n_faults;
    char faults[MAX_FAULTS_PER_DEVICE][FAULT_MAX];
    /* "fail-at=K:CMD" for the current unit */
    char failat_cmd[64];
    unsigned failat_k, failat_seen;
};

struct st_sim {
    uv_loop_t *loop;
    struct st_sim_options opts;
    char host[64];
    struct sockaddr_storage addr;
    bool v6;
    char product[32];
    char dump_dir[512];
    struct simdev *devs;
    struct client *clients;
    unsigned open_handles;
    bool stopping;
    void (*stop_cb)(struct st_sim *sim, void *user_data);
    void *stop_user_data;
};

struct wreq {
    uv_write_t req;
    uint8_t buf[8 + ENG_VFB_REPLY_MAX];
};

static void logf_(struct st_sim *sim, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(struct st_sim *sim, const char *fmt, ...)
{
    if (!sim->opts.log)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(sim->opts.log, fmt, ap);
    va_end(ap);
    fputc('\n', sim->opts.log);
    fflush(sim->opts.log);
}

static void maybe_stopped(struct st_sim *sim)
{
    if (!sim->stopping || sim->open_handles > 0 || !sim->stop_cb)
        return;
    void (*cb)(struct st_sim *, void *) = sim->stop_cb;
    sim->stop_cb = NULL;
    cb(sim, sim->stop_user_data);
}

static int listen_on(struct simdev *d);
static void on_back(uv_timer_t *t);

/* ---- units ---- */

static int new_unit(struct simdev *d, bool with_faults)
{
    struct st_sim *sim = d->sim;
    struct eng_vfb_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    d->units++;
    snprintf(cfg.serial, sizeof(cfg.serial), "TCP%u-%u", (unsigned)d->port, d->units);
    if (sim->opts.product)
        snprintf(cfg.product, sizeof(cfg.product), "%s", sim->opts.product);
    cfg.max_download = sim->opts.max_download;
    cfg.pace_mbps = sim->opts.pace_mbps;
    cfg.info_lines = sim->opts.info_lines;
    cfg.ab_slots = sim->opts.ab_slots;
    cfg.keep_data = sim->opts.keep_data || sim->opts.dump_dir;
    cfg.no_hash = sim->opts.no_hash;
    d->failat_cmd[0] = '\0';
    d->failat_k = d->failat_seen = 0;
    for (unsigned i = 0; with_faults && i < d->n_faults; i++) {
        const char *f = d->faults[i];
        if (!strncmp(f, "fail-at=", 8)) {
            char *end;
            d->failat_k = (unsigned)strtoul(f + 8, &end, 10);
            snprintf(d->failat_cmd, sizeof(d->failat_cmd), "%s", end + 1);
        } else if (eng_vfb_parse_fault(&cfg, f) != 0) {
            return ST_EINVAL;
        }
    }
    return eng_vfb_new(&cfg, &d->dev);
}

/* ---- dumps (tests only: blocking file I/O on the loop) ---- */

static bool safe_name(const char *s)
{
    if (!s[0] || s[0] == '.')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return false;
    return true;
}

static void dump_partition(struct simdev *d, const char *name)
{
    const char *dir = d->sim->opts.dump_dir;
    char path[1024];
    unsigned n;
    const struct eng_vfb_part *parts = eng_vfb_parts(d->dev, &n);
    if (!dir || !safe_name(name))
        return;
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(parts[i].name, name) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/dev%u/%s.img", dir, d->n, name);
        FILE *f = fopen(path, "wb");
        if (!f) {
            logf_(d->sim, "dev%u: cannot write %s: %s", d->n, path, strerror(errno));
            return;
        }
        if (parts[i].data && parts[i].size)
            fwrite(parts[i].data, 1, (size_t)parts[i].size, f);
        fclose(f);
    }
    snprintf(path, sizeof(path), "%s/dev%u/stats", dir, d->n);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "writes=%u bytes=%" PRIu64 "\n", eng_vfb_writes(d->dev),
                eng_vfb_bytes_received(d->dev));
        fclose(f);
    }
}

static void dump_download_begin(struct simdev *d)
{
    char path[1024];
    if (!d->sim->opts.dump_dir || !d->sim->opts.dump_downloads)
        return;
    if (d->dl)
        fclose(d->dl);
    snprintf(path, sizeof(path), "%s/dev%u/download-%u.bin", d->sim->opts.dump_dir, d->n,
             ++d->downloads);
    d->dl = fopen(path, "wb");
}

static void dump_download_end(struct simdev *d)
{
    if (d->dl) {
        fclose(d->dl);
        d->dl = NULL;
    }
}

/* ---- clients ---- */

static void client_handle_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    struct st_sim *sim = c->sim;
    sim->open_handles--;
    if (--c->open_handles == 0) {
        if (c->prev)
            c->prev->next = c->next;
        else
            sim->clients = c->next;
        if (c->next)
            c->next->prev = c->prev;
        free(c);
    }
    maybe_stopped(sim);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct client *c = req->data;
    (void)status;
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, client_handle_closed);
}

/* Detach the client from its device and close it: gracefully (what was
 * written goes out first) or at once. */
static void client_close(struct client *c, bool graceful)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->d && c->d->client == c)
        c->d->client = NULL;
    c->d = NULL;
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
    uv_close((uv_handle_t *)&c->pace, client_handle_closed);
    c->shut.data = c;
    if (!graceful || uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        uv_close((uv_handle_t *)&c->tcp, client_handle_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a broken connection shows up on the read side */
    free(req->data);
}

static void send_raw(struct client *c, const void *bytes, size_t len, bool framed)
{
    if (c->closing)
        return;
    struct wreq *w = malloc(sizeof(*w));
    if (!w)
        return;
    size_t off = 0;
    if (framed) {
        uint64_t v = len;
        for (int i = 7; i >= 0; i--) {
            w->buf[i] = (uint8_t)v;
            v >>= 8;
        }
        off = 8;
    }
    memcpy(w->buf + off, bytes, len);
    w->req.data = w;
    uv_buf_t b = uv_buf_init((char *)w->buf, (unsigned)(off + len));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        free(w);
}

static void device_away(struct simdev *d, bool fresh, bool graceful, unsigned ms);

static void flush_replies(struct client *c)
{
    uint8_t reply[ENG_VFB_REPLY_MAX];
    struct eng_vfb *dev = c->d->dev;
    while (eng_vfb_reply_pending(dev)) {
        size_t n = eng_vfb_host_read(dev, reply, sizeof(reply));
        send_raw(c, reply, n < sizeof(reply) ? n : sizeof(reply), true);
    }
}

/* What the model did with the last write decides whether the device stays. */
static void after_write(struct client *c, int rc, const char *cmd)
{
    struct simdev *d = c->d;
    struct st_sim *sim = d->sim;
    flush_replies(c);
    if (rc == ST_ENODEV || eng_vfb_gone(d->dev)) {
        logf_(sim, "dev%u: disconnected (fault); back as a new unit in %u ms", d->n,
              sim->opts.offline_ms);
        device_away(d, true, false, sim->opts.offline_ms);
    } else if (eng_vfb_take_reenumerate(d->dev)) {
        logf_(sim, "dev%u: rebooting to the bootloader; back in %u ms", d->n, sim->opts.reenum_ms);
        device_away(d, false, true, sim->opts.reenum_ms);
    } else if (cmd && (!strcmp(cmd, "reboot") || !strcmp(cmd, "continue")) &&
               eng_vfb_silent(d->dev)) {
        logf_(sim, "dev%u: %s; a new unit in %u ms", d->n, cmd, sim->opts.offline_ms);
        device_away(d, true, true, sim->opts.offline_ms);
    }
}

static void feed_data(struct client *c, const uint8_t *p, size_t n)
{
    struct simdev *d = c->d;
    if (!eng_vfb_in_data_phase(d->dev))
        return; /* the rest of a frame that outran the download: dropped */
    size_t accepted = 0;
    int rc = eng_vfb_host_write(d->dev, p, n, &accepted);
    if (d->dl && accepted)
        fwrite(p, 1, accepted, d->dl);
    if (!eng_vfb_in_data_phase(d->dev))
        dump_download_end(d);
    after_write(c, rc, NULL);
}

static void command(struct client *c)
{
    struct simdev *d = c->d;
    size_t len = c->cmd_len;
    c->cmd[len < COMMAND_ROOM ? len : COMMAND_ROOM] = '\0';
    if (d->failat_cmd[0] && len <= 64 && !strncmp(c->cmd, d->failat_cmd, strlen(d->failat_cmd)) &&
        ++d->failat_seen == d->failat_k) {
        static const char fail[] = "FAILinjected fault";
        send_raw(c, fail, sizeof(fail) - 1, true);
        return;
    }
    unsigned writes = eng_vfb_writes(d->dev);
    size_t accepted;
    int rc = eng_vfb_host_write(d->dev, c->cmd, len, &accepted);
    if (!strncmp(c->cmd, "download:", 9) && eng_vfb_in_data_phase(d->dev))
        dump_download_begin(d);
    if (eng_vfb_writes(d->dev) != writes) {
        if (!strncmp(c->cmd, "flash:", 6) || !strncmp(c->cmd, "erase:", 6))
            dump_partition(d, c->cmd + 6);
    }
    after_write(c, rc, c->cmd);
}

static void end_frame(struct client *c)
{
    c->st = C_HEADER;
    if (!c->data_frame)
        command(c);
}

/* Parse what arrived: handshake, frame headers, payloads. */
static void process(struct client *c, const uint8_t *p, size_t n)
{
    while (n > 0 && !c->closing) {
        size_t take = n;
        switch (c->st) {
        case C_HANDSHAKE:
            take = sizeof(c->hs) - c->hs_got < n ? sizeof(c->hs) - c->hs_got : n;
            memcpy(c->hs + c->hs_got, p, take);
            c->hs_got += take;
            if (c->hs_got == sizeof(c->hs)) {
                if (c->hs[0] != 'F' || c->hs[1] != 'B' || c->hs[2] < '0' || c->hs[2] > '9' ||
                    c->hs[3] < '0' || c->hs[3] > '9') {
                    logf_(c->sim, "dev%u: bad handshake; closing", c->d->n);
                    client_close(c, false);
                    return;
                }
                send_raw(c, "FB01", 4, false);
                c->st = C_HEADER;
            }
            break;
        case C_HEADER:
            take = sizeof(c->hdr) - c->hdr_got < n ? sizeof(c->hdr) - c->hdr_got : n;
            memcpy(c->hdr + c->hdr_got, p, take);
            c->hdr_got += take;
            if (c->hdr_got == sizeof(c->hdr)) {
                c->hdr_got = 0;
                c->left = 0;
                for (int i = 0; i < 8; i++)
                    c->left = c->left << 8 | c->hdr[i];
                c->data_frame = eng_vfb_in_data_phase(c->d->dev);
                c->cmd_len = 0;
                c->st = C_PAYLOAD;
                if (c->left == 0)
                    end_frame(c);
            }
            break;
        case C_PAYLOAD:
            take = c->left < n ? (size_t)c->left : n;
            if (c->data_frame) {
                feed_data(c, p, take);
            } else if (c->cmd_len < COMMAND_ROOM) {
                size_t k = COMMAND_ROOM - c->cmd_len < take ? COMMAND_ROOM - c->cmd_len : take;
                memcpy(c->cmd + c->cmd_len, p, k);
                c->cmd_len += k;
            }
            c->left -= take;
            if (c->left == 0 && !c->closing)
                end_frame(c);
            break;
        }
        p += take;
        n -= take;
    }
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct client *c = h->data;
    size_t cap = sizeof(c->rbuf);
    double pace = c->sim->opts.pace_mbps;
    (void)suggested;
    if (pace > 0) {
        /* about 10 ms worth of bytes per read keeps the pace smooth */
        double want = pace * 1e4;
        if (want < 4096)
            want = 4096;
        if (want < (double)cap)
            cap = (size_t)want;
    }
    *buf = uv_buf_init((char *)c->rbuf, (unsigned)cap);
}

static void maybe_accept(struct simdev *d);
static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_pace(uv_timer_t *t)
{
    struct client *c = t->data;
    if (c->closing || c->reading)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read) == 0)
        c->reading = true;
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        struct simdev *d = c->d;
        /* The host went away: the link resets, storage stays. */
        if (d && d->dev)
            eng_vfb_reset_link(d->dev);
        if (d)
            dump_download_end(d);
        client_close(c, false);
        if (d)
            maybe_accept(d);
        return;
    }
    process(c, (const uint8_t *)buf->base, (size_t)nread);
    double pace = c->sim->opts.pace_mbps;
    if (pace > 0 && !c->closing) {
        double now = (double)uv_now(c->sim->loop);
        if (c->busy_until_ms < now)
            c->busy_until_ms = now;
        c->busy_until_ms += (double)nread / (pace * 1e3);
        double delay = c->busy_until_ms - now;
        if (delay >= 1) {
            uv_read_stop(s);
            c->reading = false;
            uv_timer_start(&c->pace, on_pace, (uint64_t)delay, 0);
        }
    }
}

static void accept_client(struct simdev *d)
{
    struct st_sim *sim = d->sim;
    struct client *c = calloc(1, sizeof(*c));
    d->pending = false;
    if (!c)
        return;
    c->sim = sim;
    c->d = d;
    c->next = sim->clients;
    if (c->next)
        c->next->prev = c;
    sim->clients = c;
    uv_tcp_init(sim->loop, &c->tcp);
    uv_timer_init(sim->loop, &c->pace);
    c->tcp.data = c;
    c->pace.data = c;
    c->open_handles = 2;
    sim->open_handles += 2;
    if (uv_accept((uv_stream_t *)d->listener, (uv_stream_t *)&c->tcp) != 0) {
        client_close(c, false);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    d->client = c;
    d->connections++;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read) != 0) {
        client_close(c, false);
        return;
    }
    c->reading = true;
    logf_(sim, "dev%u: client connected (%u)", d->n, d->connections);
}

static void maybe_accept(struct simdev *d)
{
    if (d->pending && !d->client && d->listener && !d->away && !d->sim->stopping)
        accept_client(d);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct simdev *d = server->data;
    if (status < 0)
        return;
    d->pending = true;
    /* One client at a time: the next one waits (libuv holds it and stops
     * accepting) until the current one has gone. */
    maybe_accept(d);
}

/* ---- devices ---- */

static void listener_closed(uv_handle_t *h)
{
    struct simdev *d = h->data;
    free(h);
    if (!d)
        return; /* never counted: st_sim_new() failed */
    d->sim->open_handles--;
    maybe_stopped(d->sim);
}

static void close_listener(struct simdev *d)
{
    if (!d->listener)
        return;
    uv_close((uv_handle_t *)d->listener, listener_closed);
    d->listener = NULL;
    d->pending = false;
}

static int listen_on(struct simdev *d)
{
    struct st_sim *sim = d->sim;
    struct sockaddr_storage addr = sim->addr;
    uv_tcp_t *l = malloc(sizeof(*l));
    if (!l)
        return ST_ENOMEM;
    if (sim->v6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(d->port);
    else
        ((struct sockaddr_in *)&addr)->sin_port = htons(d->port);
    uv_tcp_init(sim->loop, l);
    l->data = d;
    sim->open_handles++;
    int rc = uv_tcp_bind(l, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)l, 16, on_connection);
    if (rc) {
        sim->open_handles--;
        l->data = NULL;
        uv_close((uv_handle_t *)l, listener_closed);
        return rc == UV_EADDRINUSE ? ST_EBUSY : st_error_from_errno(-rc);
    }
    d->listener = l;
    return 0;
}

/* The device leaves: its client and listening socket close; it comes back
 * after `ms`, as a new unit when `fresh`. */
static void device_away(struct simdev *d, bool fresh, bool graceful, unsigned ms)
{
    if (d->client)
        client_close(d->client, graceful);
    close_listener(d);
    dump_download_end(d);
    d->away = true;
    d->fresh_next = fresh;
    uv_timer_start(&d->timer, on_back, ms, 0);
}

static void on_back(uv_timer_t *t)
{
    struct simdev *d = t->data;
    struct st_sim *sim = d->sim;
    if (sim->stopping)
        return;
    if (d->fresh_next) {
        eng_vfb_free(d->dev);
        d->dev = NULL;
        if (new_unit(d, false) != 0) {
            logf_(sim, "dev%u: cannot create a new unit; retrying", d->n);
            uv_timer_start(&d->timer, on_back, REBIND_RETRY_MS, 0);
            return;
        }
        d->fresh_next = false;
    }
    int rc = listen_on(d);
    if (rc) {
        logf_(sim, "dev%u: cannot listen on port %u again: %s; retrying", d->n, (unsigned)d->port,
              st_strerror(rc));
        uv_timer_start(&d->timer, on_back, REBIND_RETRY_MS, 0);
        return;
    }
    d->away = false;
    logf_(sim, "dev%u: back on port %u, serial %s", d->n, (unsigned)d->port,
          eng_vfb_config(d->dev)->serial);
}

static int errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
        return a[0] == 127;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    static const uint8_t one[16] = {[15] = 1};
    return !memcmp(a6, one, 16);
}

static int add_fault(struct st_sim *sim, const char *spec, char *err, size_t errlen)
{
    char *end;
    unsigned long n = strtoul(spec, &end, 10);
    if (end == spec || *end != ':' || n < 1 || n > sim->opts.count)
        return errf(err, errlen, ST_EINVAL, "--fault %s: expected N:KIND=ARG with N from 1 to %u",
                    spec, sim->opts.count);
    const char *kind = end + 1;
    struct simdev *d = &sim->devs[n - 1];
    if (strlen(kind) >= FAULT_MAX || d->n_faults == MAX_FAULTS_PER_DEVICE)
        return errf(err, errlen, ST_EINVAL, "--fault %s: too long or too many faults", spec);
    if (!strncmp(kind, "fail-at=", 8)) {
        unsigned long k = strtoul(kind + 8, &end, 10);
        if (end == kind + 8 || *end != ':' || k == 0 || !end[1] || strlen(end + 1) >= 64)
            return errf(err, errlen, ST_EINVAL, "--fault %s: expected N:fail-at=K:CMD", spec);
    } else {
        struct eng_vfb_config probe;
        memset(&probe, 0, sizeof(probe));
        if (eng_vfb_parse_fault(&probe, kind) != 0)
            return errf(err, errlen, ST_EINVAL,
                        "--fault %s: unknown fault (expected fail=CMD, fail-at=K:CMD, silent=CMD, "
                        "garbage=CMD, oversize=CMD or disconnect=BYTES)",
                        spec);
    }
    snprintf(d->faults[d->n_faults++], FAULT_MAX, "%s", kind);
    return 0;
}

static void free_devices(struct st_sim *sim)
{
    for (unsigned i = 0; i < sim->opts.count; i++) {
        eng_vfb_free(sim->devs[i].dev);
        if (sim->devs[i].dl)
            fclose(sim->devs[i].dl);
    }
    free(sim->devs);
}

static void timer_closed(uv_handle_t *h)
{
    struct st_sim *sim = ((struct simdev *)h->data)->sim;
    sim->open_handles--;
    maybe_stopped(sim);
}

int st_sim_new(uv_loop_t *loop, const struct st_sim_options *opts, struct st_sim **out, char *err,
               size_t errlen)
{
    struct st_sim *sim = calloc(1, sizeof(*sim));
    int rc;
    if (!sim)
        return errf(err, errlen, ST_ENOMEM, "out of memory");
    sim->loop = loop;
    sim->opts = *opts;
    if (!sim->opts.host)
        sim->opts.host = "127.0.0.1";
    if (!sim->opts.count)
        sim->opts.count = 1;
    if (!sim->opts.offline_ms)
        sim->opts.offline_ms = 3000;
    if (!sim->opts.reenum_ms)
        sim->opts.reenum_ms = 300;
    snprintf(sim->host, sizeof(sim->host), "%s", sim->opts.host);
    /* keep our own copies of the strings used after this call */
    if (opts->product) {
        snprintf(sim->product, sizeof(sim->product), "%s", opts->product);
        sim->opts.product = sim->product;
    }
    if (opts->dump_dir) {
        if (strlen(opts->dump_dir) >= sizeof(sim->dump_dir) - 64) {
            free(sim);
            return errf(err, errlen, ST_EINVAL, "--dump %s: path too long", opts->dump_dir);
        }
        snprintf(sim->dump_dir, sizeof(sim->dump_dir), "%s", opts->dump_dir);
        sim->opts.dump_dir = sim->dump_dir;
    }
    sim->opts.host = sim->host;
    sim->opts.n_faults = 0; /* the fault strings are copied into the devices */
    const char *num = strcmp(sim->host, "localhost") ? sim->host : "127.0.0.1";
    if (sim->opts.count > ST_SIM_MAX_DEVICES) {
        rc = errf(err, errlen, ST_EINVAL, "--count %u: at most %u devices", sim->opts.count,
                  ST_SIM_MAX_DEVICES);
        goto out_free;
    }
    if (opts->port == 0 || (unsigned)opts->port + sim->opts.count - 1 > 65535) {
        rc = errf(err, errlen, ST_EINVAL, "--tcp %s:%u: %u ports from there do not fit below 65536",
                  sim->host, (unsigned)opts->port, sim->opts.count);
        goto out_free;
    }
    if (uv_ip4_addr(num, opts->port, (struct sockaddr_in *)&sim->addr) != 0) {
        if (uv_ip6_addr(num, opts->port, (struct sockaddr_in6 *)&sim->addr) != 0) {
            rc = errf(err, errlen, ST_EINVAL, "--tcp %s: not a numeric IPv4 or IPv6 address",
                      sim->host);
            goto out_free;
        }
        sim->v6 = true;
    }
    if (!is_loopback(&sim->addr) && !sim->opts.any_address) {
        rc = errf(err, errlen, ST_EACCES,
                  "--tcp %s: not a loopback address; add --any-address to serve virtual devices "
                  "on the network",
                  sim->host);
        goto out_free;
    }
    if (sim->opts.pace_mbps < 0) {
        rc = errf(err, errlen, ST_EINVAL, "--pace: must not be negative");
        goto out_free;
    }
    sim->devs = calloc(sim->opts.count, sizeof(*sim->devs));
    if (!sim->devs) {
        rc = errf(err, errlen, ST_ENOMEM, "out of memory");
        goto out_free;
    }
    for (unsigned i = 0; i < sim->opts.count; i++) {
        sim->devs[i].sim = sim;
        sim->devs[i].n = i + 1;
        sim->devs[i].port = (uint16_t)(opts->port + i);
    }
    for (unsigned i = 0; i < opts->n_faults; i++)
        if ((rc = add_fault(sim, opts->faults[i], err, errlen)) != 0)
            goto out_devs;
    if (sim->opts.dump_dir) {
        char path[1024];
        if (mkdir(sim->opts.dump_dir, 0755) != 0 && errno != EEXIST) {
            rc = errf(err, errlen, st_error_from_errno(errno), "--dump %s: %s", sim->opts.dump_dir,
                      strerror(errno));
            goto out_devs;
        }
        for (unsigned i = 0; i < sim->opts.count; i++) {
            snprintf(path, sizeof(path), "%s/dev%u", sim->opts.dump_dir, i + 1);
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                rc = errf(err, errlen, st_error_from_errno(errno), "--dump %s: %s", path,
                          strerror(errno));
                goto out_devs;
            }
        }
    }
    for (unsigned i = 0; i < sim->opts.count; i++) {
        if ((rc = new_unit(&sim->devs[i], true)) != 0) {
            errf(err, errlen, rc, "device %u: %s", i + 1, st_strerror(rc));
            goto out_devs;
        }
    }
    /* Bind every port first: on failure nothing is left listening. */
    for (unsigned i = 0; i < sim->opts.count; i++) {
        struct simdev *d = &sim->devs[i];
        rc = listen_on(d);
        if (rc) {
            errf(err, errlen, rc, "--tcp %s:%u: cannot listen on port %u: %s", sim->host,
                 (unsigned)opts->port, (unsigned)d->port,
                 rc == ST_EBUSY ? "address already in use" : st_strerror(rc));
            /* The closes complete on the caller's next uv_run(); they do
             * not touch the sim, which is freed now. */
            for (unsigned j = 0; j < i; j++) {
                sim->devs[j].listener->data = NULL;
                uv_close((uv_handle_t *)sim->devs[j].listener, listener_closed);
            }
            goto out_devs;
        }
    }
    for (unsigned i = 0; i < sim->opts.count; i++) {
        uv_timer_init(loop, &sim->devs[i].timer);
        sim->devs[i].timer.data = &sim->devs[i];
        sim->open_handles++;
    }
    *out = sim;
    return 0;

out_devs:
    free_devices(sim);
out_free:
    free(sim);
    return rc;
}

struct eng_vfb *st_sim_device(struct st_sim *sim, unsigned n)
{
    if (n < 1 || n > sim->opts.count)
        return NULL;
    return sim->devs[n - 1].dev;
}

unsigned st_sim_connections(const struct st_sim *sim, unsigned n)
{
    if (n < 1 || n > sim->opts.count)
        return 0;
    return sim->devs[n - 1].connections;
}

void st_sim_stop(struct st_sim *sim, void (*cb)(struct st_sim *sim, void *user_data),
                 void *user_data)
{
    sim->stopping = true;
    sim->stop_cb = cb;
    sim->stop_user_data = user_data;
    for (unsigned i = 0; i < sim->opts.count; i++) {
        struct simdev *d = &sim->devs[i];
        if (d->client)
            client_close(d->client, false);
        close_listener(d);
        dump_download_end(d);
        uv_close((uv_handle_t *)&d->timer, timer_closed);
    }
    /* Clients still shutting down gracefully (a peer that does not read
     * would keep them forever) are closed now. */
    for (struct client *c = sim->clients; c; c = c->next)
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, client_handle_closed);
    maybe_stopped(sim);
}

void st_sim_free(struct st_sim *sim)
{
    if (!sim)
        return;
    free_devices(sim);
    free(sim);
}
