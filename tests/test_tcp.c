/*
 * Fastboot over TCP: engine/tcp (the transport and its device source) and
 * `station sim` (virtual devices served over TCP).
 *
 * In-process tests run the engine, TCP sources and the sim (or a small
 * misbehaving server) on one loop and end with uv_loop_close() == 0.
 * Integration tests spawn the real binaries: the AOSP `fastboot` client
 * (Debian's, version 29) against `station sim`, and `station run --tcp`
 * against `station sim`, comparing what the devices received byte for
 * byte with the images and with libsparse's own pieces.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
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
#include <xxhash.h>

#include <android/sparse/sparse.h>

#include "common/st_error.h"
#include "engine/engine.h"
#include "engine/image.h"
#include "engine/sparse.h"
#include "engine/tcp.h"
#include "engine/virt/vfb.h"
#include "station/sim.h"
#include "helpers.h"

/* ---- shared helpers ---- */

static uint16_t random_port_base(void)
{
    static unsigned salt;
    unsigned r = (unsigned)getpid() * 7919u + (unsigned)time(NULL) * 31u + salt++ * 104729u;
    return (uint16_t)(20000 + (r % 2000) * 16);
}

static char *slurp(const char *path)
{
    return th_slurp_or_empty(path, NULL);
}

/* The file at `path` holds exactly `want` (`len` bytes). */
static void assert_file_equals(const char *path, const void *want, size_t len)
{
    size_t n;
    char *got = th_slurp(path, &n);
    if (n != len)
        fail_msg("%s: %zu bytes, expected %zu", path, n, len);
    if (memcmp(got, want, len) != 0) {
        size_t i = 0;
        while (((const char *)want)[i] == got[i])
            i++;
        fail_msg("%s differs from the expected bytes at offset %zu", path, i);
    }
    free(got);
}

static void assert_files_equal(const char *a, const char *b)
{
    size_t n;
    char *want = th_slurp(b, &n);
    assert_file_equals(a, want, n);
    free(want);
}

static uint8_t *demo(size_t len, uint32_t seed)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    eng_image_demo_fill(buf, len, seed);
    return buf;
}

/* ======================================================================
 * In-process: engine + TCP sources + sim (or a raw server) on one loop.
 * ====================================================================== */

#define MAX_ENDS 16

struct end {
    char slot[64];
    enum eng_result result;
    char reason[512];
};

struct ip {
    uv_loop_t loop;
    struct eng_engine *eng;
    struct st_sim *sim;
    uint16_t port;
    struct eng_tcp_source *src[8];
    unsigned n_src, src_stopped;
    struct cfg_recipe recipe;
    unsigned want_ends, n_ends;
    struct end ends[MAX_ENDS];
    char step_text[16][256];
    unsigned arrived, left;
    uv_timer_t guard, pause;
    bool engine_closed, sim_stopped, done;
    /* a raw, misbehaving server (instead of the sim) */
    uv_tcp_t raw_listener;
    bool raw_open;
    uv_tcp_t *raw_client;
    unsigned raw_connections;
    int raw_mode;
    uint8_t raw_hs[4];
    size_t raw_hs_got, raw_in;
    uint8_t raw_rbuf[4096];
};

static void ip_on_event(const struct eng_event *ev, void *user_data)
{
    struct ip *ip = user_data;
    if (ev->type == ENG_EV_ARRIVED)
        ip->arrived++;
    if (ev->type == ENG_EV_LEFT)
        ip->left++;
    if (ev->type == ENG_EV_STEP_END && ev->step_index < 16)
        snprintf(ip->step_text[ev->step_index], sizeof(ip->step_text[0]), "%s",
                 ev->text ? ev->text : "");
    if (ev->type != ENG_EV_SESSION_END || ip->n_ends == MAX_ENDS)
        return;
    struct end *e = &ip->ends[ip->n_ends++];
    snprintf(e->slot, sizeof(e->slot), "%s", ev->slot);
    e->result = ev->result;
    snprintf(e->reason, sizeof(e->reason), "%s", ev->text ? ev->text : "");
    if (ip->n_ends == ip->want_ends)
        uv_stop(&ip->loop);
}

static void ip_on_guard(uv_timer_t *t)
{
    struct ip *ip = t->data;
    ip->done = false;
    uv_stop(&ip->loop);
}

static int ip_setup(void **state)
{
    struct ip *ip = calloc(1, sizeof(*ip));
    uv_loop_init(&ip->loop);
    uv_timer_init(&ip->loop, &ip->guard);
    uv_timer_init(&ip->loop, &ip->pause);
    ip->guard.data = ip->pause.data = ip;
    cfg_recipe_default(&ip->recipe, 0);
    signal(SIGPIPE, SIG_IGN);
    *state = ip;
    return 0;
}

static void ip_sim(struct ip *ip, struct st_sim_options *o)
{
    char err[300];
    int rc = ST_EBUSY;
    for (int tries = 0; tries < 10 && rc == ST_EBUSY; tries++) {
        o->port = random_port_base();
        rc = st_sim_new(&ip->loop, o, &ip->sim, err, sizeof(err));
    }
    if (rc)
        fail_msg("st_sim_new: %s", err);
    ip->port = o->port;
}

static void ip_engine_opts(struct ip *ip, bool load, struct eng_options eo)
{
    assert_int_equal(eng_engine_new(&ip->loop, &eo, ip_on_event, ip, &ip->eng), 0);
    if (load)
        assert_int_equal(eng_engine_load(ip->eng, &ip->recipe, NULL, NULL), 0);
}

static void ip_engine(struct ip *ip, bool load)
{
    struct eng_options eo = {.reply_timeout_ms = 300, .reenum_timeout_ms = 3000};
    assert_int_equal(eng_engine_new(&ip->loop, &eo, ip_on_event, ip, &ip->eng), 0);
    if (load)
        assert_int_equal(eng_engine_load(ip->eng, &ip->recipe, NULL, NULL), 0);
}

static void ip_source(struct ip *ip, uint16_t port, const struct eng_tcp_options *o)
{
    assert_int_equal(
        eng_tcp_source_new(&ip->loop, ip->eng, "127.0.0.1", port, o, &ip->src[ip->n_src]), 0);
    ip->n_src++;
}

/* Run until `ends` sessions ended, or for `ms` when ends is 0. */
static void ip_run(struct ip *ip, unsigned ends, unsigned ms)
{
    ip->want_ends = ends;
    ip->done = true;
    uv_timer_start(&ip->guard, ip_on_guard, ends ? 20000 : ms, 0);
    uv_run(&ip->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&ip->guard);
    if (ends && !ip->done)
        fail_msg("only %u of %u sessions ended within 20 s", ip->n_ends, ends);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* Shutdown in the station's order: sources, engine, then the servers. */
static void ip_sim_stopped(struct st_sim *sim, void *user_data)
{
    struct ip *ip = user_data;
    ip->sim_stopped = true;
}

static void ip_servers_stop(struct ip *ip)
{
    if (ip->sim)
        st_sim_stop(ip->sim, ip_sim_stopped, ip);
    if (ip->raw_client && !uv_is_closing((uv_handle_t *)ip->raw_client))
        uv_close((uv_handle_t *)ip->raw_client, free_handle);
    if (ip->raw_open)
        uv_close((uv_handle_t *)&ip->raw_listener, NULL);
    uv_close((uv_handle_t *)&ip->guard, NULL);
    uv_close((uv_handle_t *)&ip->pause, NULL);
}

static void ip_engine_closed(struct eng_engine *eng, void *user_data)
{
    struct ip *ip = user_data;
    ip->engine_closed = true;
    ip_servers_stop(ip);
}

static void ip_src_stopped(struct eng_tcp_source *src, void *user_data)
{
    struct ip *ip = user_data;
    if (++ip->src_stopped == ip->n_src) {
        if (ip->eng)
            eng_engine_close(ip->eng, ip_engine_closed, ip);
        else
            ip_servers_stop(ip);
    }
}

static int ip_teardown(void **state)
{
    struct ip *ip = *state;
    if (ip->n_src)
        for (unsigned i = 0; i < ip->n_src; i++)
            eng_tcp_source_stop(ip->src[i], ip_src_stopped, ip);
    else if (ip->eng)
        eng_engine_close(ip->eng, ip_engine_closed, ip);
    else
        ip_servers_stop(ip);
    uv_run(&ip->loop, UV_RUN_DEFAULT);
    if (ip->eng)
        assert_true(ip->engine_closed);
    if (ip->sim)
        assert_true(ip->sim_stopped);
    for (unsigned i = 0; i < ip->n_src; i++)
        eng_tcp_source_free(ip->src[i]);
    eng_engine_free(ip->eng);
    st_sim_free(ip->sim);
    assert_int_equal(uv_loop_close(&ip->loop), 0); /* no handle leaked */
    free(ip);
    return 0;
}

static const struct eng_vfb_part *find_part(struct eng_vfb *dev, const char *name)
{
    unsigned n;
    const struct eng_vfb_part *parts = eng_vfb_parts(dev, &n);
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(parts[i].name, name))
            return &parts[i];
    return NULL;
}

static void test_reboot_bootloader_continues_over_tcp(void **state)
{
    /* The device closes the connection after OKAY and listens again on the
     * same port; the source reconnects and the session carries on. */
    struct ip *ip = *state;
    struct cfg_recipe *r = &ip->recipe;
    r->n_steps = 0;
    th_add_step(r, CFG_STEP_GETVAR, "product", -1);
    th_add_step(r, CFG_STEP_REBOOT_BOOTLOADER, "", -1);
    th_add_step(r, CFG_STEP_FLASH, "boot", 0);
    th_add_step(r, CFG_STEP_SET_ACTIVE, "b", -1);
    th_add_step(r, CFG_STEP_ERASE, "userdata", -1);
    struct st_sim_options so = {.count = 1, .keep_data = true, .reenum_ms = 100};
    ip_sim(ip, &so);
    ip_engine(ip, true);
    struct eng_tcp_options to = {.retry_ms = 100};
    ip_source(ip, ip->port, &to);
    ip_run(ip, 1, 0);
    if (ip->ends[0].result != ENG_RESULT_PASS)
        fail_msg("session failed: %s", ip->ends[0].reason);
    if (strncmp(ip->step_text[1], "back after ", 11) != 0)
        fail_msg("reboot-bootloader step: \"%s\"", ip->step_text[1]);
    char want_port[64];
    snprintf(want_port, sizeof(want_port), "tcp:127.0.0.1:%u", (unsigned)ip->port);
    assert_string_equal(ip->ends[0].slot, want_port);
    assert_int_equal(eng_tcp_source_arrivals(ip->src[0]), 2);
    assert_int_equal(st_sim_connections(ip->sim, 1), 2);
    assert_int_equal(ip->arrived, 1); /* the return continued the session: no new arrival */
    struct eng_vfb *dev = st_sim_device(ip->sim, 1);
    const struct eng_vfb_part *boot = find_part(dev, "boot");
    assert_non_null(boot);
    uint8_t *want = demo(1u << 20, 0xb007u);
    assert_int_equal(boot->size, 1u << 20);
    assert_memory_equal(boot->data, want, 1u << 20);
    free(want);
    assert_string_equal(eng_vfb_active_slot(dev), "b");
    assert_true(find_part(dev, "userdata")->erased);
}

/* Flash boot (1 MiB, raw) and system (4 MiB in sparse pieces of at most
 * 1 MiB) to one device, the transport sending from the image files or,
 * with no_sendfile, from memory; returns the payload bytes it sent from
 * files. Either way the partitions must hold the images exactly. */
static uint64_t flash_boot_and_system(struct ip *ip, bool no_sendfile, bool no_hash)
{
    cfg_recipe_default(&ip->recipe, 4u << 20);
    ip->recipe.n_steps = 0;
    th_add_step(&ip->recipe, CFG_STEP_FLASH, "boot", 0);
    th_add_step(&ip->recipe, CFG_STEP_FLASH, "system", 1);
    struct st_sim_options so = {
        .count = 1, .keep_data = true, .max_download = 1u << 20, .no_hash = no_hash};
    ip_sim(ip, &so);
    ip_engine(ip, true);
    struct eng_tcp_options to = {.retry_ms = 5000, .no_sendfile = no_sendfile};
    ip_source(ip, ip->port, &to);
    ip_run(ip, 1, 0);
    if (ip->ends[0].result != ENG_RESULT_PASS)
        fail_msg("session failed: %s", ip->ends[0].reason);
    struct eng_vfb *dev = st_sim_device(ip->sim, 1);
    const struct {
        const char *name;
        uint32_t seed;
        size_t size;
    } want[] = {{"boot", 0xb007u, 1u << 20}, {"system", 0x5157u, 4u << 20}};
    for (size_t i = 0; i < 2; i++) {
        const struct eng_vfb_part *part = find_part(dev, want[i].name);
        assert_non_null(part);
        assert_int_equal(part->size, want[i].size);
        uint8_t *bytes = demo(want[i].size, want[i].seed);
        assert_memory_equal(part->data, bytes, want[i].size);
        /* boot went raw: the device hashed it, unless told not to */
        if (i == 0)
            assert_true(part->hash == (no_hash ? 0 : XXH3_64bits(bytes, want[i].size)));
        free(bytes);
    }
    return eng_tcp_source_file_bytes(ip->src[0]);
}

static void test_image_bytes_are_sent_from_the_file(void **state)
{
    /* Every data byte of boot and at least the raw data of system's
     * pieces (all but their sparse headers) left through sendfile. */
    uint64_t from_file = flash_boot_and_system(*state, false, false);
    if (from_file < (1u << 20) + (3u << 20) || from_file > 5u << 20)
        fail_msg("%llu bytes sent from the image files", (unsigned long long)from_file);
}

static void test_image_bytes_are_sent_from_memory_without_sendfile(void **state)
{
    assert_int_equal(flash_boot_and_system(*state, true, false), 0);
}

static void test_sim_devices_can_skip_hashing(void **state)
{
    /* station sim --no-hash: the same bytes written, no hash kept */
    assert_true(flash_boot_and_system(*state, false, true) > 0);
}

static void test_wrong_product_over_tcp_is_never_written(void **state)
{
    struct ip *ip = *state;
    struct st_sim_options so = {.count = 1, .product = "walleye"};
    ip_sim(ip, &so);
    ip_engine(ip, true);
    ip_source(ip, ip->port, NULL);
    ip_run(ip, 1, 0);
    assert_int_equal(ip->ends[0].result, ENG_RESULT_FAIL);
    assert_string_equal(ip->ends[0].reason,
                        "getvar:product: wrong product: walleye (recipe needs simphone)");
    assert_int_equal(eng_vfb_writes(st_sim_device(ip->sim, 1)), 0);
    assert_int_equal(eng_vfb_bytes_received(st_sim_device(ip->sim, 1)), 0);
}

static void test_replies_too_long_or_garbage_fail_their_step(void **state)
{
    struct ip *ip = *state;
    struct st_sim_options so = {
        .count = 3, .n_faults = 2, .faults = {"1:oversize=getvar:product", "2:garbage=flash:boot"}};
    ip_sim(ip, &so);
    ip_engine(ip, true);
    for (unsigned i = 0; i < 3; i++)
        ip_source(ip, (uint16_t)(ip->port + i), NULL);
    ip_run(ip, 3, 0);
    for (unsigned i = 0; i < 3; i++) {
        struct end *e = &ip->ends[i];
        char p1[64], p2[64];
        snprintf(p1, sizeof(p1), "tcp:127.0.0.1:%u", (unsigned)ip->port);
        snprintf(p2, sizeof(p2), "tcp:127.0.0.1:%u", (unsigned)ip->port + 1);
        if (!strcmp(e->slot, p1))
            assert_string_equal(e->reason, "getvar:product: reply longer than 256 bytes");
        else if (!strcmp(e->slot, p2))
            assert_non_null(strstr(e->reason, "flash:boot: flash: garbage reply"));
        else
            assert_int_equal(e->result, ENG_RESULT_PASS);
    }
}

static void test_data_phase_timeout_drops_the_link(void **state)
{
    /* 32 MiB at 2 MB/s cannot finish within 0.3 s + 32 MiB at 100 MB/s,
     * and it is more than the socket buffers hold: a write is still in
     * flight at the deadline. Cancelling it closes the connection. */
    struct ip *ip = *state;
    cfg_recipe_default(&ip->recipe, 32u << 20);
    ip->recipe.n_steps = 0;
    th_add_step(&ip->recipe, CFG_STEP_FLASH, "system", 1);
    struct st_sim_options so = {.count = 1, .pace_mbps = 2};
    ip_sim(ip, &so);
    struct eng_options eo = {.reply_timeout_ms = 300, .min_rate_bps = 100000000};
    ip_engine_opts(ip, true, eo);
    struct eng_tcp_options to = {.retry_ms = 5000};
    ip_source(ip, ip->port, &to);
    ip_run(ip, 1, 0);
    struct end *e = &ip->ends[0];
    assert_int_equal(e->result, ENG_RESULT_FAIL);
    if (strncmp(e->reason, "flash:system: download: data phase timed out after ", 51) != 0)
        fail_msg("reason: %s", e->reason);
    /* the link went down with the cancelled write: the slot emptied */
    ip_run(ip, 0, 200);
    assert_int_equal(ip->left, 1);
}

static void on_pause_over(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void test_refused_connections_are_retried_quietly(void **state)
{
    struct ip *ip = *state;
    ip_engine(ip, true);
    struct eng_tcp_options to = {.retry_ms = 50};
    /* a port nobody listens on: take one from the sim and stop it */
    uint16_t port = random_port_base();
    ip_source(ip, port, &to);
    uv_timer_start(&ip->pause, on_pause_over, 400, 0);
    uv_run(&ip->loop, UV_RUN_DEFAULT);
    assert_int_equal(eng_tcp_source_arrivals(ip->src[0]), 0);
    assert_int_equal(ip->arrived, 0);
    /* a device that appears later is found by the retries */
    struct st_sim_options so = {.count = 1, .port = port};
    char err[200];
    if (st_sim_new(&ip->loop, &so, &ip->sim, err, sizeof(err)) != 0)
        skip(); /* someone else took the port meanwhile */
    ip->port = port;
    ip_run(ip, 1, 0);
    assert_int_equal(ip->ends[0].result, ENG_RESULT_PASS);
}

/* ---- a raw server that misbehaves on purpose ---- */

enum raw_mode {
    RAW_MUTE,     /* accepts, never answers the handshake */
    RAW_OVERSIZE, /* answers the first command with a 2 MiB frame header */
    RAW_FLOOD,    /* sends 32 MiB of INFO frames right after the handshake */
};

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ip *ip = h->data;
    *buf = uv_buf_init((char *)ip->raw_rbuf, sizeof(ip->raw_rbuf));
}

static void raw_written(uv_write_t *req, int status)
{
    free(req->data);
    free(req);
}

static void raw_send(struct ip *ip, const void *bytes, size_t len)
{
    uv_write_t *req = malloc(sizeof(*req));
    void *copy = malloc(len);
    memcpy(copy, bytes, len);
    req->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    assert_int_equal(uv_write(req, (uv_stream_t *)ip->raw_client, &b, 1, raw_written), 0);
}

static void raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ip *ip = s->data;
    if (nread < 0) {
        uv_close((uv_handle_t *)s, free_handle);
        if (ip->raw_client == (uv_tcp_t *)s)
            ip->raw_client = NULL;
        return;
    }
    size_t n = (size_t)nread;
    const uint8_t *p = (const uint8_t *)buf->base;
    while (n && ip->raw_hs_got < 4) {
        ip->raw_hs[ip->raw_hs_got++] = *p++;
        n--;
        if (ip->raw_hs_got == 4 && ip->raw_mode != RAW_MUTE) {
            raw_send(ip, "FB01", 4);
            if (ip->raw_mode == RAW_FLOOD) {
                size_t frames = (32u << 20) / 20, len = frames * 20;
                uint8_t *big = malloc(len);
                for (size_t i = 0; i < frames; i++) {
                    memset(big + i * 20, 0, 8);
                    big[i * 20 + 7] = 12;
                    memcpy(big + i * 20 + 8, "INFOflooding", 12);
                }
                raw_send(ip, big, len);
                free(big);
            }
        }
    }
    ip->raw_in += n;
    if (n && ip->raw_mode == RAW_OVERSIZE) {
        static const uint8_t hdr[8] = {0, 0, 0, 0, 0, 0x20, 0, 0}; /* 2 MiB */
        raw_send(ip, hdr, sizeof(hdr));
        raw_send(ip, "OKAY", 4);
    }
}

static void raw_connection(uv_stream_t *server, int status)
{
    struct ip *ip = server->data;
    uv_tcp_t *c = malloc(sizeof(*c));
    uv_tcp_init(server->loop, c);
    c->data = ip;
    assert_int_equal(uv_accept(server, (uv_stream_t *)c), 0);
    if (ip->raw_client && !uv_is_closing((uv_handle_t *)ip->raw_client))
        uv_close((uv_handle_t *)ip->raw_client, free_handle);
    ip->raw_client = c;
    ip->raw_hs_got = 0;
    ip->raw_connections++;
    uv_read_start((uv_stream_t *)c, raw_alloc, raw_read);
}

static void raw_listen(struct ip *ip, enum raw_mode mode)
{
    struct sockaddr_in a;
    ip->raw_mode = mode;
    uv_tcp_init(&ip->loop, &ip->raw_listener);
    ip->raw_listener.data = ip;
    ip->raw_open = true;
    for (int tries = 0; tries < 10; tries++) {
        ip->port = random_port_base();
        uv_ip4_addr("127.0.0.1", ip->port, &a);
        if (uv_tcp_bind(&ip->raw_listener, (const struct sockaddr *)&a, 0) == 0 &&
            uv_listen((uv_stream_t *)&ip->raw_listener, 8, raw_connection) == 0)
            return;
        uv_close((uv_handle_t *)&ip->raw_listener, NULL);
        uv_run(&ip->loop, UV_RUN_NOWAIT);
        uv_tcp_init(&ip->loop, &ip->raw_listener);
        ip->raw_listener.data = ip;
    }
    fail_msg("no free port for the raw server");
}

static void test_handshake_timeout_is_retried(void **state)
{
    struct ip *ip = *state;
    raw_listen(ip, RAW_MUTE);
    ip_engine(ip, true);
    struct eng_tcp_options to = {.handshake_timeout_ms = 100, .retry_ms = 50};
    ip_source(ip, ip->port, &to);
    uv_timer_start(&ip->pause, on_pause_over, 600, 0);
    uv_run(&ip->loop, UV_RUN_DEFAULT);
    assert_int_equal(eng_tcp_source_arrivals(ip->src[0]), 0);
    assert_true(ip->raw_connections >= 2);
}

static void test_oversized_frame_is_a_protocol_error(void **state)
{
    struct ip *ip = *state;
    raw_listen(ip, RAW_OVERSIZE);
    ip_engine(ip, true);
    struct eng_tcp_options to = {.retry_ms = 5000};
    ip_source(ip, ip->port, &to);
    ip_run(ip, 1, 0);
    assert_int_equal(ip->ends[0].result, ENG_RESULT_FAIL);
    assert_string_equal(ip->ends[0].reason, "getvar:product: cannot transfer: protocol error");
    ip_run(ip, 0, 100);
    assert_int_equal(ip->left, 1);
}

static void test_flooding_device_is_held_back(void **state)
{
    /* Nobody reads (no recipe loaded, so no session): the transport stops
     * reading after a few frames and the device's writes pile up on its
     * own side, not in the station's memory. */
    struct ip *ip = *state;
    raw_listen(ip, RAW_FLOOD);
    ip_engine(ip, false);
    ip_source(ip, ip->port, NULL);
    uv_timer_start(&ip->pause, on_pause_over, 500, 0);
    uv_run(&ip->loop, UV_RUN_DEFAULT);
    assert_int_equal(eng_tcp_source_arrivals(ip->src[0]), 1);
    assert_non_null(ip->raw_client);
    size_t pending = uv_stream_get_write_queue_size((uv_stream_t *)ip->raw_client);
    if (pending < (16u << 20))
        fail_msg("only %zu of 32 MiB still queued at the device: the host kept reading", pending);
}

static void test_address_parsing(void **state)
{
    char host[ENG_TCP_HOST_MAX];
    uint16_t a, b;
    assert_int_equal(eng_tcp_parse_address("127.0.0.1:5554", host, sizeof(host), &a, &b), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(a, 5554);
    assert_int_equal(b, 5554);
    assert_int_equal(eng_tcp_parse_address("10.1.2.3:6000-6015", host, sizeof(host), &a, &b), 0);
    assert_int_equal(a, 6000);
    assert_int_equal(b, 6015);
    assert_int_equal(eng_tcp_parse_address("[::1]:7000", host, sizeof(host), &a, &b), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(eng_tcp_parse_address("localhost:7000", host, sizeof(host), &a, &b), 0);
    static const char *const bad[] = {"127.0.0.1",       "127.0.0.1:",          "127.0.0.1:0",
                                      "127.0.0.1:65536", "127.0.0.1:6000-5000", "127.0.0.1:5x",
                                      "::1:5554",        "phone.example:5554",  ":5554",
                                      "127.0.0.1:6000-"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (eng_tcp_parse_address(bad[i], host, sizeof(host), &a, &b) != ST_EINVAL)
            fail_msg("\"%s\" was accepted", bad[i]);
}

/* ======================================================================
 * Integration: the real binaries.
 * ====================================================================== */

struct fx {
    char dir[256];
    char db[300];
    uint16_t port;
    pid_t sim;
    char sim_out[300], sim_err[300];
};

static int fx_setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    th_tmpdir("tcp", fx->dir, sizeof(fx->dir));
    th_path(fx->db, sizeof(fx->db), fx->dir, "t.db");
    th_path(fx->sim_out, sizeof(fx->sim_out), fx->dir, "sim.out");
    th_path(fx->sim_err, sizeof(fx->sim_err), fx->dir, "sim.err");
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *fx = *state;
    if (fx->sim > 0) {
        kill(fx->sim, SIGKILL);
        waitpid(fx->sim, NULL, 0);
    }
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

/* Start `station sim --tcp 127.0.0.1:PORT ARGS...` on a free port and wait
 * until it listens. */
static void start_sim(struct fx *fx, const char *const extra[])
{
    for (int tries = 0; tries < 10; tries++) {
        char tcp[64];
        const char *argv[64] = {STATION_BIN, "sim", "--tcp"};
        fx->port = random_port_base();
        snprintf(tcp, sizeof(tcp), "127.0.0.1:%u", (unsigned)fx->port);
        th_argv(argv + 3, 61, tcp, extra);
        fx->sim = th_spawn(argv, fx->sim_out, fx->sim_err, NULL);
        for (int i = 0; i < 500; i++) {
            if (th_file_has(fx->sim_out, "; ready"))
                return;
            int status;
            if (waitpid(fx->sim, &status, WNOHANG) == fx->sim) {
                fx->sim = 0;
                char *err = slurp(fx->sim_err);
                bool busy = strstr(err, "already in use") != NULL;
                if (!busy)
                    fail_msg("station sim exited: %s", err);
                free(err);
                break;
            }
            th_sleep_ms(10);
        }
        if (fx->sim)
            fail_msg("station sim did not get ready");
    }
    fail_msg("no free ports for station sim");
}

/* SIGTERM: the sim must stop cleanly (exit 0, no handle left open). */
static void stop_sim(struct fx *fx)
{
    kill(fx->sim, SIGTERM);
    int rc = th_wait_exit(fx->sim, 10, "station sim");
    fx->sim = 0;
    if (rc != 0) {
        char *err = slurp(fx->sim_err);
        fail_msg("station sim exited %d after SIGTERM: %s", rc, err);
    }
}

/* `fastboot -s tcp:127.0.0.1:PORT ARGS...`; returns its exit code and
 * leaves its stderr (where client 29 prints everything) in *err. */
static int fastboot(struct fx *fx, char **err, const char *const args[])
{
    char serial[64], out[300], errp[300];
    const char *argv[32] = {"fastboot", "-s"};
    snprintf(serial, sizeof(serial), "tcp:127.0.0.1:%u", (unsigned)fx->port);
    th_path(out, sizeof(out), fx->dir, "fb.out");
    th_path(errp, sizeof(errp), fx->dir, "fb.err");
    th_argv(argv + 2, 30, serial, args);
    int rc = th_wait_exit(th_spawn(argv, out, errp, NULL), 60, "fastboot");
    char *e = slurp(errp);
    if (err)
        *err = e;
    else
        free(e);
    return rc;
}

static void expect_fastboot_ok(struct fx *fx, char **err, const char *const args[])
{
    char *e = NULL;
    int rc = fastboot(fx, &e, args);
    if (rc != 0)
        fail_msg("fastboot %s %s exited %d: %s", args[0], args[1] ? args[1] : "", rc, e);
    if (err)
        *err = e;
    else
        free(e);
}

static void test_fastboot_client_against_sim(void **state)
{
    struct fx *fx = *state;
    char dump[300], p[8][400], cmd[2000];
    if (!th_have("fastboot"))
        fail_msg("fastboot is not installed (scripts/setup.sh installs it)");
    snprintf(dump, sizeof(dump), "%s/dump", fx->dir);
    const char *sim_args[] = {"--keep-data",    "--dump",  dump, "--ab",
                              "--max-download", "1048576", NULL};
    start_sim(fx, sim_args);

    /* small raw (fits), big raw (split into sparse pieces by the client),
     * and a sparse image made by img2simg */
    snprintf(p[0], sizeof(p[0]), "%s/small.img", fx->dir);
    snprintf(p[1], sizeof(p[1]), "%s/big.img", fx->dir);
    snprintf(p[2], sizeof(p[2]), "%s/vendor.raw", fx->dir);
    snprintf(p[3], sizeof(p[3]), "%s/s.img", fx->dir);
    snprintf(p[4], sizeof(p[4]), "%s/vendor.out", fx->dir);
    uint8_t *small = th_sparse_test_image(300000, 1);
    th_spit(p[0], small, 300000);
    size_t big_len = (3u << 20) + 3 * 4096;
    uint8_t *big = th_sparse_test_image(big_len, 2);
    th_spit(p[1], big, big_len);
    uint8_t *vraw = calloc(1, 2u << 20);
    memcpy(vraw, big, 4096);
    memcpy(vraw + 400 * 4096, big + 8192, 8192);
    th_spit(p[2], vraw, 2u << 20);
    free(vraw);
    snprintf(cmd, sizeof(cmd), "img2simg '%s' '%s' && simg2img '%s' '%s'", p[2], p[3], p[3], p[4]);
    assert_int_equal(system(cmd), 0);

    char *err;
    const char *a1[] = {"getvar", "product", NULL};
    expect_fastboot_ok(fx, &err, a1);
    assert_non_null(strstr(err, "product: simphone"));
    free(err);
    const char *a2[] = {"getvar", "all", NULL};
    expect_fastboot_ok(fx, &err, a2);
    assert_non_null(strstr(err, "(bootloader) max-download-size:0x00100000"));
    assert_non_null(strstr(err, "(bootloader) current-slot:a"));
    free(err);
    const char *a3[] = {"flash", "boot", p[0], NULL};
    expect_fastboot_ok(fx, NULL, a3);
    const char *a4[] = {"flash", "system", p[1], NULL};
    expect_fastboot_ok(fx, &err, a4);
    assert_non_null(strstr(err, "Sending sparse 'system_a' 1/")); /* the client split it */
    free(err);
    const char *a5[] = {"flash", "vendor", p[3], NULL};
    expect_fastboot_ok(fx, NULL, a5);
    const char *a6[] = {"erase", "userdata", NULL};
    expect_fastboot_ok(fx, NULL, a6);
    const char *a7[] = {"--set-active=a", NULL};
    expect_fastboot_ok(fx, NULL, a7);

    /* what the virtual partitions hold now */
    snprintf(p[5], sizeof(p[5]), "%s/dev1/boot_a.img", dump);
    assert_file_equals(p[5], small, 300000);
    snprintf(p[5], sizeof(p[5]), "%s/dev1/system_a.img", dump);
    assert_file_equals(p[5], big, big_len);
    snprintf(p[5], sizeof(p[5]), "%s/dev1/vendor_a.img", dump);
    assert_files_equal(p[5], p[4]);
    snprintf(p[5], sizeof(p[5]), "%s/dev1/userdata.img", dump);
    assert_file_equals(p[5], "", 0);
    snprintf(p[5], sizeof(p[5]), "%s/dev1/stats", dump);
    char *stats = slurp(p[5]);
    assert_true(!strncmp(stats, "writes=", 7));
    free(stats);
    free(small);
    free(big);

    const char *a8[] = {"reboot", NULL};
    expect_fastboot_ok(fx, NULL, a8);
    stop_sim(fx);
    char *out = slurp(fx->sim_out);
    assert_non_null(strstr(out, "dev1: reboot; a new unit in 3000 ms"));
    free(out);
}

/* `station run --tcp 127.0.0.1:FIRST-LAST ARGS...`; returns the exit code. */
static int run_station(struct fx *fx, unsigned count, const char *const extra[], int limit_s)
{
    char tcp[64], out[300], err[300];
    const char *argv[64] = {STATION_BIN, "run", "--tcp", tcp, "--headless", "--db"};
    snprintf(tcp, sizeof(tcp), "127.0.0.1:%u-%u", (unsigned)fx->port,
             (unsigned)fx->port + count - 1);
    th_path(out, sizeof(out), fx->dir, "run.out");
    th_path(err, sizeof(err), fx->dir, "run.err");
    th_argv(argv + 6, 58, fx->db, extra);
    return th_wait_exit(th_spawn(argv, out, err, NULL), limit_s, "station run");
}

static void test_station_flashes_sim_devices_like_libsparse(void **state)
{
    /* The same demo recipe as the in-process rack, over TCP, with a 1 MiB
     * max-download-size: boot goes raw, system (4 MiB) in sparse pieces
     * that must equal libsparse's resparse output byte for byte. */
    struct fx *fx = *state;
    char dump[300], path[400], sysimg[300];
    snprintf(dump, sizeof(dump), "%s/dump", fx->dir);
    const char *sim_args[] = {"--count", "4",  "--max-download",   "1048576",
                              "--dump",  dump, "--dump-downloads", "--offline-ms",
                              "60000",   NULL};
    start_sim(fx, sim_args);
    const char *run_args[] = {"--exit-after", "4", "--system-mib", "4", "--timeout-ms",
                              "2000",         NULL};
    int rc = run_station(fx, 4, run_args, 60);
    if (rc != 0) {
        snprintf(path, sizeof(path), "%s/run.out", fx->dir);
        char *out = slurp(path);
        fail_msg("station run exited %d:\n%s", rc, out);
    }
    stop_sim(fx);

    sqlite3 *c = th_db_open(fx->db, false);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='PASS'"), 4);
    assert_int_equal(th_q_int(c, "SELECT COUNT(DISTINCT slot) FROM sessions WHERE slot LIKE "
                                 "'tcp:127.0.0.1:%'"),
                     4);
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE serial LIKE 'TCP%'"), 4);
    sqlite3_close(c);

    uint8_t *boot = demo(1u << 20, 0xb007u);
    uint8_t *sys = demo(4u << 20, 0x5157u);
    snprintf(sysimg, sizeof(sysimg), "%s/system.img", fx->dir);
    th_spit(sysimg, sys, 4u << 20);
    struct th_buf *pieces;
    int n = th_oracle(sysimg, (unsigned)eng_sparse_piece_limit(1u << 20), &pieces);
    assert_int_equal(n, 5);
    for (unsigned d = 1; d <= 4; d++) {
        snprintf(path, sizeof(path), "%s/dev%u/boot.img", dump, d);
        assert_file_equals(path, boot, 1u << 20);
        snprintf(path, sizeof(path), "%s/dev%u/system.img", dump, d);
        assert_file_equals(path, sys, 4u << 20);
        /* download 1 is boot (exactly max-download-size: sent raw), then
         * one download per sparse piece */
        snprintf(path, sizeof(path), "%s/dev%u/download-1.bin", dump, d);
        assert_file_equals(path, boot, 1u << 20);
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof(path), "%s/dev%u/download-%d.bin", dump, d, i + 2);
            assert_file_equals(path, pieces[i].p, pieces[i].len);
        }
        snprintf(path, sizeof(path), "%s/dev%u/download-%d.bin", dump, d, n + 2);
        assert_int_equal(access(path, F_OK), -1);
    }
    th_oracle_free(pieces, n);
    free(boot);
    free(sys);
}

static void test_faults_over_tcp_name_step_and_piece(void **state)
{
    /* Five devices, 1 MiB max-download-size, so system goes in 5 pieces:
     * 1 FAILs the second flash:system, 2 disconnects between pieces 1 and 2,
     * 3 goes silent after the first data phase, 4 disconnects inside piece
     * 3, 5 passes. */
    struct fx *fx = *state;
    char sysimg[300], f2[80], f4[80];
    uint8_t *sys = demo(4u << 20, 0x5157u);
    snprintf(sysimg, sizeof(sysimg), "%s/system.img", fx->dir);
    th_spit(sysimg, sys, 4u << 20);
    free(sys);
    struct th_buf *pieces;
    int n = th_oracle(sysimg, 1u << 20, &pieces);
    assert_int_equal(n, 5);
    uint64_t boot = 1u << 20;
    snprintf(f2, sizeof(f2), "2:disconnect=%llu", (unsigned long long)(boot + pieces[0].len));
    snprintf(f4, sizeof(f4), "4:disconnect=%llu",
             (unsigned long long)(boot + pieces[0].len + pieces[1].len + pieces[2].len / 2));
    th_oracle_free(pieces, n);
    const char *sim_args[] = {"--count",
                              "5",
                              "--max-download",
                              "1048576",
                              "--offline-ms",
                              "60000",
                              "--fault",
                              "1:fail-at=2:flash:system",
                              "--fault",
                              f2,
                              "--fault",
                              "3:silent=flash:system",
                              "--fault",
                              f4,
                              NULL};
    start_sim(fx, sim_args);
    const char *run_args[] = {"--exit-after", "5", "--timeout-ms", "1000", NULL};
    time_t t0 = time(NULL);
    int rc = run_station(fx, 5, run_args, 60);
    assert_int_equal(rc, 1);
    assert_true(time(NULL) - t0 < 15);
    stop_sim(fx);

    sqlite3 *c;
    char sql[300];
    assert_int_equal(sqlite3_open_v2(fx->db, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    static const char *const want[5] = {
        "flash:system piece 2/5: flash: device replied FAIL: injected fault",
        "flash:system piece 2/5: download: device disconnected",
        "flash:system piece 1/5: flash: no reply within ",
        "flash:system piece 3/5: download: device disconnected",
        NULL,
    };
    for (unsigned d = 0; d < 5; d++) {
        snprintf(sql, sizeof(sql),
                 "SELECT result || '|' || COALESCE(reason, '') FROM sessions "
                 "WHERE slot='tcp:127.0.0.1:%u' ORDER BY id LIMIT 1",
                 (unsigned)fx->port + d);
        char *r = th_q_text(c, sql);
        if (!want[d]) {
            assert_string_equal(r, "PASS|");
        } else if (strncmp(r, "FAIL|", 5) != 0 || strncmp(r + 5, want[d], strlen(want[d])) != 0) {
            fail_msg("device %u: \"%s\", expected FAIL \"%s...\"", d + 1, r, want[d]);
        }
        free(r);
    }
    assert_int_equal(th_q_int(c, "SELECT COUNT(*) FROM sessions WHERE result='FAIL' AND "
                                 "failed_step='flash:system'"),
                     4);
    sqlite3_close(c);
}

static void expect_usage(struct fx *fx, char *const args[], const char *needle)
{
    const char *argv[32];
    char out[300], err[300];
    th_argv(argv, 32, STATION_BIN, (const char *const *)args);
    th_path(out, sizeof(out), fx->dir, "u.out");
    th_path(err, sizeof(err), fx->dir, "u.err");
    assert_int_equal(th_wait_exit(th_spawn(argv, out, err, NULL), 20, "station"), 2);
    char *e = slurp(err);
    if (!strstr(e, needle))
        fail_msg("stderr \"%s\" does not mention \"%s\"", e, needle);
    free(e);
}

static void test_usage_errors(void **state)
{
    struct fx *fx = *state;
    char *a1[] = {"sim", NULL};
    expect_usage(fx, a1, "--tcp");
    char *a2[] = {"sim", "--tcp", "nonsense", NULL};
    expect_usage(fx, a2, "--tcp nonsense");
    char *a3[] = {"sim", "--tcp", "192.0.2.1:5554", NULL};
    expect_usage(fx, a3, "--any-address");
    char *a4[] = {"sim", "--tcp", "127.0.0.1:5554", "--fault", "3:fail=x", NULL};
    expect_usage(fx, a4, "--fault 3:fail=x");
    char *a5[] = {"sim", "--tcp", "127.0.0.1:5554", "--fault", "1:explode=now", NULL};
    expect_usage(fx, a5, "--fault 1:explode=now");
    char *a6[] = {"sim", "--tcp", "127.0.0.1:65535", "--count", "2", NULL};
    expect_usage(fx, a6, "65536");
    char *a7[] = {"sim", "--tcp", "127.0.0.1:5554", "--pace", "fast", NULL};
    expect_usage(fx, a7, "--pace");
    char *a8[] = {"run", "--tcp", "127.0.0.1:99999", "--db", fx->db, NULL};
    expect_usage(fx, a8, "--tcp 127.0.0.1:99999");
    char *a9[] = {"run", "--db", fx->db, NULL};
    expect_usage(fx, a9, "--tcp");
    /* a port already taken */
    const char *sim_args[] = {"--quiet", NULL};
    start_sim(fx, sim_args);
    char tcp[64];
    snprintf(tcp, sizeof(tcp), "127.0.0.1:%u", (unsigned)fx->port);
    char *a10[] = {"sim", "--tcp", tcp, NULL};
    expect_usage(fx, a10, "already in use");
    stop_sim(fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address_parsing),
        cmocka_unit_test_setup_teardown(test_reboot_bootloader_continues_over_tcp, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_image_bytes_are_sent_from_the_file, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_image_bytes_are_sent_from_memory_without_sendfile,
                                        ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(test_sim_devices_can_skip_hashing, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_product_over_tcp_is_never_written, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_replies_too_long_or_garbage_fail_their_step, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_data_phase_timeout_drops_the_link, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_refused_connections_are_retried_quietly, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_handshake_timeout_is_retried, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(test_oversized_frame_is_a_protocol_error, ip_setup,
                                        ip_teardown),
        cmocka_unit_test_setup_teardown(test_flooding_device_is_held_back, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(test_fastboot_client_against_sim, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_station_flashes_sim_devices_like_libsparse, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_faults_over_tcp_name_step_and_piece, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_usage_errors, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
