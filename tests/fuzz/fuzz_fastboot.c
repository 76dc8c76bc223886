/*
 * fuzz_fastboot: fastboot replies, as a device sends them, into the host
 * driver (engine/fastboot.c) through the scripted transport.
 *
 * Input: one header byte (chunk size, number of operations), then per
 * operation one byte (which operation, what the hooks do, time limit),
 * with the transport's events (fuzz_transport.h) interleaved as the
 * driver submits: replies such as "OKAY", "INFO...", "DATA00001000",
 * short writes, errors, stalls, silence.
 *
 * Checked beyond the sanitizers: each operation that started calls back
 * exactly once with a text; a second start while busy is refused; after
 * close the loop holds no handle (uv_loop_close() succeeds).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/st_error.h"
#include "engine/fastboot.h"
#include "fuzz_transport.h"
#include "fuzz_util.h"

#define MAX_OPS 4
#define DATA_MAX 8192

enum action { ACT_NONE, ACT_ABORT_INFO, ACT_ABORT_PROGRESS, ACT_CLOSE_INFO };

struct run {
    struct eng_fb *fb;
    enum action act;
    unsigned act_after; /* act on this many hook calls */
    unsigned hook_calls;
    int started, done;
    bool fb_closing, fb_closed, t_closed;
};

static uint8_t pattern[DATA_MAX];

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

static void on_done(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    fuzz_debug("done: %s: %s", st_errname(status), text ? text : "(null)");
    struct run *r = user_data;
    (void)fb;
    fail_if(text == NULL);
    fail_if(strlen(text) > 4096);
    fail_if(status > 0);
    r->done++;
    fail_if(r->done > r->started);
}

static void on_fb_closed(void *user_data)
{
    struct run *r = user_data;
    r->fb_closed = true;
}

static void act(struct run *r, enum action when)
{
    if (r->fb_closing || r->act != when || ++r->hook_calls != r->act_after)
        return;
    switch (when) {
    case ACT_ABORT_INFO:
        eng_fb_abort(r->fb, ST_ECANCELED, "stopped by the hook");
        break;
    case ACT_ABORT_PROGRESS:
        eng_fb_abort(r->fb, ST_ENODEV, NULL);
        break;
    case ACT_CLOSE_INFO:
        r->fb_closing = true;
        eng_fb_close(r->fb, on_fb_closed, r);
        break;
    default:
        break;
    }
}

static void on_info(struct eng_fb *fb, const char *line, void *user_data)
{
    struct run *r = user_data;
    fail_if(line == NULL || strlen(line) > ENG_FB_REPLY_MAX);
    /* one operation at a time */
    fail_if(eng_fb_command(fb, "getvar:x", 10, on_done, r) == 0);
    act(r, ACT_ABORT_INFO);
    act(r, ACT_CLOSE_INFO);
}

static void on_progress(struct eng_fb *fb, uint64_t done, uint64_t total, void *user_data)
{
    struct run *r = user_data;
    (void)fb;
    fail_if(done > total);
    act(r, ACT_ABORT_PROGRESS);
}

static int start_op(struct run *r, uint8_t o, struct fz *in)
{
    static const char *const cmds[] = {"getvar:max-download-size", "flash:boot", "reboot",
                                       "oem unlock"};
    unsigned timeout_ms = (o & 0x80) ? 5000 : 300; /* virtual time (ft_run) */
    struct eng_iov iov[3];
    switch (o & 3) {
    case 0:
    case 1:
        return eng_fb_command(r->fb, cmds[(o >> 2) & 3], timeout_ms, on_done, r);
    case 2: {
        uint64_t len = 1 + fz_u16(in) % DATA_MAX;
        return eng_fb_download(r->fb, pattern, len, timeout_ms, on_done, r);
    }
    default: {
        /* three ranges, one of them maybe empty; valid until the callback */
        static struct eng_iov keep[3];
        size_t a = fz_u8(in) * 8u, b = fz_u8(in), c = fz_u8(in) * 16u;
        iov[0] = (struct eng_iov){pattern, a};
        iov[1] = (struct eng_iov){pattern + a, b};
        iov[2] = (struct eng_iov){pattern + a + b, c};
        memcpy(keep, iov, sizeof(keep));
        return eng_fb_download_iov(r->fb, keep, 3, a + b + c, timeout_ms, on_done, r);
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz in = {data, size};
    struct run r;
    uv_loop_t loop;
    memset(&r, 0, sizeof(r));
    if (pattern[1] == 0)
        for (size_t i = 0; i < sizeof(pattern); i++)
            pattern[i] = (uint8_t)(i * 131 + 7);

    uint8_t h = fz_u8(&in);
    size_t chunk = 1 + (size_t)(h & 0x3f) * 64;
    unsigned n_ops = 1 + (h >> 6);
    fail_if(uv_loop_init(&loop) != 0);
    struct ft *t = ft_new(&loop, &in, false);
    struct eng_fb_hooks hooks = {.info = on_info, .progress = on_progress, .user_data = &r};
    fail_if(eng_fb_new(&loop, ft_transport(t), &hooks, chunk, &r.fb) != 0);

    for (unsigned i = 0; i < n_ops && i < MAX_OPS && !r.fb_closing; i++) {
        uint8_t o = fz_u8(&in);
        uint8_t a = fz_u8(&in);
        r.act = (enum action)(a & 3);
        r.act_after = 1 + (a >> 2);
        r.hook_calls = 0;
        if (start_op(&r, o, &in) == 0) {
            r.started++;
            fail_if(!eng_fb_busy(r.fb));
        }
        ft_run(&loop);
        fail_if(r.done != r.started);
        fail_if(!r.fb_closing && eng_fb_busy(r.fb));
    }
    if (!r.fb_closing) {
        r.fb_closing = true;
        eng_fb_close(r.fb, on_fb_closed, &r);
    }
    ft_close(t, &r.t_closed);
    ft_run(&loop);
    fail_if(!r.fb_closed || !r.t_closed || r.done != r.started);
    fail_if(uv_loop_close(&loop) != 0);
    return 0;
}
