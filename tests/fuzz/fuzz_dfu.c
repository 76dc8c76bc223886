/*
 * fuzz_dfu: what a DFU device answers (GETSTATUS's six bytes, UPLOAD
 * blocks, stalls, resets, silence) into the host driver (engine/dfu.c)
 * through the scripted transport, for all four operations, plain DFU and
 * DfuSe.
 *
 * Input: a header that describes the device as its descriptors would
 * (mode, bmAttributes, wTransferSize, bcdDFU, alt names: a DfuSe layout
 * string may come from the input) and the operation (download, verify,
 * detach, leave; alt; segments; limits; what the progress hook does),
 * then the transport's events (fuzz_transport.h).
 *
 * Checked beyond the sanitizers: an operation that started calls back
 * exactly once, never from inside the start call; after close the loop
 * holds no handle.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/st_error.h"
#include "engine/dfu.h"
#include "engine/dfu_file.h"
#include "fuzz_transport.h"
#include "fuzz_util.h"

#define DATA_MAX 4096
#define MAX_SEGS 3

static const char *const layouts[] = {
    "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg",
    "@Option Bytes  /0x1FFFC000/01*016 e",
    "@SRAM /0x20000000/64*001Ke/0x20010000/2*32Kg",
};

struct run {
    struct eng_dfu *d;
    int hook; /* 0: nothing, 1: abort, 2: abort ENODEV, 3: close */
    unsigned hook_after, hook_calls;
    bool in_start;
    int started, done;
    bool d_closing, d_closed, t_closed;
};

static uint8_t pattern[DATA_MAX];

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

static void on_done(struct eng_dfu *d, int status, const char *text, void *user_data)
{
    fuzz_debug("done: %s: %s", st_errname(status), text ? text : "(null)");
    struct run *r = user_data;
    (void)d;
    fail_if(r->in_start); /* never from inside the start call */
    fail_if(text == NULL || strlen(text) > 4096 || status > 0);
    r->done++;
    fail_if(r->done > r->started);
}

static void on_closed(void *user_data)
{
    ((struct run *)user_data)->d_closed = true;
}

static void on_progress(struct eng_dfu *d, uint64_t done, uint64_t total, void *user_data)
{
    struct run *r = user_data;
    fail_if(done > total);
    if (r->d_closing || !r->hook || ++r->hook_calls != r->hook_after)
        return;
    if (r->hook == 1) {
        eng_dfu_abort(d, ST_ECANCELED, "stopped by the hook");
    } else if (r->hook == 2) {
        eng_dfu_abort(d, ST_ENODEV, NULL);
    } else {
        r->d_closing = true;
        eng_dfu_close(d, on_closed, r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz in = {data, size};
    struct run r;
    uv_loop_t loop;
    struct eng_dfu_segment segs[MAX_SEGS];
    memset(&r, 0, sizeof(r));
    if (pattern[1] == 0)
        for (size_t i = 0; i < sizeof(pattern); i++)
            pattern[i] = (uint8_t)(i * 131 + 7);

    /* the device */
    uint8_t b0 = fz_u8(&in), b1 = fz_u8(&in), b2 = fz_u8(&in), b3 = fz_u8(&in);
    fail_if(uv_loop_init(&loop) != 0);
    struct ft *t = ft_new(&loop, &in, (b3 & 0x80) != 0);
    struct eng_transport *tp = ft_transport(t);
    struct eng_dfu_info *info = &tp->dfu;
    tp->protocol_kind = ENG_PROTO_DFU;
    info->mode = (b0 & 0x40) ? 1 : 2;
    if ((b0 & 0xc0) == 0xc0)
        info->mode = 0; /* neither: the driver must refuse */
    info->attributes = b0 & 0x0f;
    info->transfer_size = (uint16_t)((b1 & 0x3f) + 1) * ((b1 & 0x40) ? 16 : 1);
    if ((b1 & 0xc0) == 0xc0)
        info->transfer_size = 0;
    info->bcd_dfu = (b0 & 0x10) ? ENG_DFU_BCD_DFUSE : 0x0110;
    info->detach_timeout_ms = (uint16_t)(b0 & 0x20 ? 0 : 1000);
    info->n_alts = (uint8_t)(1 + (b2 & 3));
    for (unsigned a = 0; a < info->n_alts; a++)
        snprintf(info->alt_names[a], ENG_DFU_ALT_NAME_MAX, "%s", layouts[a % 3]);
    if (b2 & 0x80)
        fz_str(&in, info->alt_names[0], ENG_DFU_ALT_NAME_MAX);

    /* the operation */
    unsigned op = (b2 >> 2) & 3, alt = (b2 >> 4) & 3;
    /* virtual time (ft_run): limits cost nothing to reach */
    static const unsigned busy_ms[4] = {0, 20, 500, 5000};
    struct eng_dfu_limits lim = {.request_ms = (b3 & 1) ? 100 : 0,
                                 .busy_ms = busy_ms[(b3 >> 1) & 3],
                                 .total_ms = (b3 & 0x08) ? 250 : 0};
    r.hook = (b3 >> 4) & 3;
    r.hook_after = 1 + (fz_u8(&in) & 7);
    unsigned n = 1 + fz_u8(&in) % MAX_SEGS;
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        uint32_t addr = fz_u32(&in);
        size_t len = 1 + fz_u16(&in) % 1024;
        if (addr & 1) /* mostly inside the layout of alt 0 */
            addr = 0x08000000u + ((addr >> 1) & 0x3ffff);
        if (off + len > DATA_MAX)
            len = DATA_MAX - off;
        segs[i] = (struct eng_dfu_segment){.address = addr, .data = pattern + off, .len = len};
        off += len;
    }

    struct eng_dfu_hooks hooks = {.progress = on_progress, .user_data = &r};
    fail_if(eng_dfu_new(&loop, tp, &hooks, &r.d) != 0);
    int rc;
    r.in_start = true;
    switch (op) {
    case 0:
        rc = eng_dfu_download(r.d, alt, segs, n, &lim, on_done, &r);
        break;
    case 1:
        rc = eng_dfu_verify(r.d, alt, segs, n, &lim, on_done, &r);
        break;
    case 2:
        rc = eng_dfu_detach(r.d, &lim, on_done, &r);
        break;
    default:
        rc = eng_dfu_leave(r.d, alt, segs[0].address, &lim, on_done, &r);
        break;
    }
    r.in_start = false;
    if (rc == 0) {
        r.started++;
        fail_if(!eng_dfu_busy(r.d));
        /* one operation at a time */
        fail_if(eng_dfu_detach(r.d, &lim, on_done, &r) == 0);
    }
    ft_run(&loop);
    fail_if(r.done != r.started);
    if (!r.d_closing) {
        fail_if(eng_dfu_busy(r.d));
        (void)eng_dfu_device_left(r.d);
        r.d_closing = true;
        eng_dfu_close(r.d, on_closed, &r);
    }
    ft_close(t, &r.t_closed);
    ft_run(&loop);
    fail_if(!r.d_closed || !r.t_closed);
    fail_if(uv_loop_close(&loop) != 0);
    return 0;
}
