/*
 * test_dfu: the DFU 1.1 / DfuSe host driver (engine/dfu.c) against the
 * virtual DFU device (engine/virt/vdfu.c) through its in-process control
 * transport (engine/virt/vdfu_transport.c), then the engine running DFU
 * recipes on a rack of virtual DFU devices (session.c, rack.c).
 *
 * Each test has its own uv loop, a SIGALRM limit and a guard timer; the
 * teardown closes the driver and the transport and fails when a handle
 * is left open (uv_loop_close() != 0) or an operation that started did
 * not call back exactly once. The device model counts GETSTATUS requests
 * that came before bwPollTimeout had passed: every test checks there
 * were none (the driver waits on timers, never early and never asleep).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "common/st_error.h"
#include "engine/dfu.h"
#include "engine/dfu_file.h"
#include "engine/engine.h"
#include "engine/transport.h"
#include "engine/virt/rack.h"
#include "engine/virt/vdfu.h"
#include "engine/virt/vdfu_transport.h"
#include "helpers.h"

#define ALARM_S 30
#define GUARD_MS 10000
#define STM32F4 "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"

struct fx;

struct done {
    struct fx *fx;
    int calls;
    int status;
    char text[400];
    uint64_t at_ms; /* uv_now when it called back */
};

struct fx {
    uv_loop_t loop;
    struct eng_vdfu_config cfg;
    struct eng_vdfu *dev;
    struct eng_transport *t;
    struct eng_dfu *d;
    int started, finished;
    int n_gone, n_reenum, n_closed;
    int n_progress;
    uint64_t last_done, last_total;
    bool progress_monotonic;
    bool unplug_on_progress;
    unsigned unplug_after;
    bool close_on_progress;
    int d_closed;
    uint8_t *img[4];
};

/* ---- fixture ---- */

static void on_note(struct eng_transport *t, enum eng_vt_note note, void *user_data)
{
    struct fx *fx = user_data;
    switch (note) {
    case ENG_VT_GONE:
        fx->n_gone++;
        break;
    case ENG_VT_REENUMERATE:
        fx->n_reenum++;
        break;
    case ENG_VT_CLOSED:
        fx->n_closed++;
        if (fx->t == t)
            fx->t = NULL;
        break;
    }
}

static void on_progress(struct eng_dfu *d, uint64_t done, uint64_t total, void *user_data)
{
    struct fx *fx = user_data;
    if (done < fx->last_done || done > total)
        fx->progress_monotonic = false;
    fx->last_done = done;
    fx->last_total = total;
    fx->n_progress++;
    if (fx->unplug_on_progress && (unsigned)fx->n_progress == fx->unplug_after)
        eng_vdt_unplug(fx->t);
    if (fx->close_on_progress && (unsigned)fx->n_progress == fx->unplug_after)
        eng_dfu_close(fx->d, NULL, NULL), fx->d = NULL;
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    fx->progress_monotonic = true;
    fx->cfg.block_busy_ms = 2;
    fx->cfg.erase_busy_ms = 3;
    fx->cfg.manifest_ms = 5;
    alarm(ALARM_S);
    *state = fx;
    return 0;
}

static void attach(struct fx *fx)
{
    struct eng_dfu_hooks hooks = {.progress = on_progress, .user_data = fx};
    assert_int_equal(eng_vdt_new(&fx->loop, fx->dev, "virt-01", 0, on_note, fx, &fx->t), 0);
    assert_int_equal(fx->t->protocol_kind, ENG_PROTO_DFU);
    assert_int_equal(eng_dfu_new(&fx->loop, fx->t, &hooks, &fx->d), 0);
}

static void start_dev(struct fx *fx)
{
    assert_int_equal(eng_vdfu_new(&fx->cfg, &fx->dev), 0);
    attach(fx);
}

static void on_guard(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void run_until(struct fx *fx, const int *count, int want)
{
    uv_timer_t guard;
    bool expired = false;
    uv_timer_init(&fx->loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&guard); /* a loop left idle returns at once */
    while (*count < want && !expired)
        uv_run(&fx->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_false(expired);
}

static void d_closed(void *user_data)
{
    struct fx *fx = user_data;
    fx->d_closed++;
}

static void t_closed(struct eng_transport *t, void *user_data) {}

/* Close driver and transport (the device stays), as the engine does. */
static void detach_all(struct fx *fx)
{
    if (fx->d) {
        int want = fx->d_closed + 1;
        eng_dfu_close(fx->d, d_closed, fx);
        fx->d = NULL;
        run_until(fx, &fx->d_closed, want);
    }
    if (fx->t) {
        int want = fx->n_closed + 1;
        fx->t->ops->close(fx->t, t_closed, fx);
        run_until(fx, &fx->n_closed, want);
    }
}

/* The device re-enumerated: a new transport and driver, as the rack and
 * the session do. */
static void reattach(struct fx *fx)
{
    detach_all(fx);
    attach(fx);
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    detach_all(fx);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    assert_int_equal(fx->started, fx->finished);
    if (fx->dev)
        assert_int_equal(eng_vdfu_stats(fx->dev)->early_polls, 0);
    eng_vdfu_free(fx->dev);
    for (unsigned i = 0; i < 4; i++)
        free(fx->img[i]);
    free(fx);
    alarm(0);
    return 0;
}

static void on_done(struct eng_dfu *d, int status, const char *text, void *user_data)
{
    struct done *dn = user_data;
    dn->calls++;
    dn->fx->finished++;
    dn->status = status;
    dn->at_ms = uv_now(&dn->fx->loop);
    snprintf(dn->text, sizeof(dn->text), "%s", text ? text : "(null)");
}

static uint8_t *pattern(struct fx *fx, unsigned slot, size_t len, unsigned seed)
{
    uint8_t *b = malloc(len);
    uint32_t x = seed * 2654435761u + 7;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        b[i] = (uint8_t)(x >> 16);
    }
    free(fx->img[slot]);
    fx->img[slot] = b;
    return b;
}

/* `len` bytes of pattern `seed` (image slot 0) as one segment at 0. */
static struct eng_dfu_segment one_segment(struct fx *fx, size_t len, unsigned seed)
{
    return (struct eng_dfu_segment){.data = pattern(fx, 0, len, seed), .len = len};
}

/* The operation ended with `status` and, unless text is NULL, said
 * exactly `text`. */
static void expect_done(const struct done *dn, int status, const char *text)
{
    assert_int_equal(dn->status, status);
    if (text)
        assert_string_equal(dn->text, text);
}

static const struct eng_dfu_limits quick = {.request_ms = 500, .busy_ms = 1000, .total_ms = 8000};

/* dn, cleared, for one operation of the driver. */
static void begin_op(struct fx *fx, struct done *dn)
{
    memset(dn, 0, sizeof(*dn));
    dn->fx = fx;
}

/* The operation started: run until it calls back, exactly once. */
static void end_op(struct fx *fx, struct done *dn)
{
    fx->started++;
    run_until(fx, &dn->calls, 1);
    assert_int_equal(dn->calls, 1);
}

static void download(struct fx *fx, unsigned alt, const struct eng_dfu_segment *segs, unsigned n,
                     const struct eng_dfu_limits *lim, struct done *dn)
{
    begin_op(fx, dn);
    assert_int_equal(eng_dfu_download(fx->d, alt, segs, n, lim ? lim : &quick, on_done, dn), 0);
    assert_int_equal(dn->calls, 0); /* never from inside the call */
    end_op(fx, dn);
}

static void verify(struct fx *fx, unsigned alt, const struct eng_dfu_segment *segs, unsigned n,
                   struct done *dn)
{
    begin_op(fx, dn);
    assert_int_equal(eng_dfu_verify(fx->d, alt, segs, n, &quick, on_done, dn), 0);
    end_op(fx, dn);
}

static void detach(struct fx *fx, struct done *dn)
{
    begin_op(fx, dn);
    assert_int_equal(eng_dfu_detach(fx->d, &quick, on_done, dn), 0);
    end_op(fx, dn);
}

static void assert_memory_holds(struct fx *fx, unsigned alt, uint32_t addr, const uint8_t *want,
                                size_t len)
{
    uint32_t size, base;
    const uint8_t *mem = eng_vdfu_memory(fx->dev, alt, &size, &base);
    assert_non_null(mem);
    assert_true(addr >= base && addr - base + len <= size);
    assert_memory_equal(mem + (addr - base), want, len);
}

/* ---- plain DFU ---- */

static void test_plain_download_and_verify(void **state)
{
    struct fx *fx = *state;
    start_dev(fx);
    assert_int_equal(fx->t->dfu.mode, 2);
    assert_int_equal(fx->t->dfu.transfer_size, 1024);
    assert_int_equal(fx->t->dfu.bcd_dfu, 0x0110);
    assert_int_equal(fx->t->vid, 0x0483);
    assert_int_equal(fx->t->pid, 0xdf11);
    assert_string_equal(fx->t->dfu.alt_names[0], "Flash");
    struct eng_dfu_segment seg = one_segment(fx, 10000, 1);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, 0, "10000 bytes in 10 blocks, manifested");
    assert_false(eng_dfu_device_left(fx->d));
    assert_memory_holds(fx, 0, 0, seg.data, 10000);
    assert_int_equal(eng_vdfu_firmware_len(fx->dev, 0), 10000);
    assert_int_equal(eng_vdfu_stats(fx->dev)->manifests, 1);
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE);
    assert_int_equal(fx->n_progress, 10);
    assert_true(fx->progress_monotonic);
    assert_int_equal(fx->last_done, 10000);

    verify(fx, 0, &seg, 1, &dn);
    expect_done(&dn, 0, "10000 bytes match");
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE);
}

static void test_plain_exact_blocks_and_longer_memory(void **state)
{
    struct fx *fx = *state;
    fx->cfg.transfer_size = 512;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 8192, 2);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, 0, "8192 bytes in 16 blocks, manifested");
    /* Upload returns full blocks up to the end: the driver stops with ABORT. */
    verify(fx, 0, &seg, 1, &dn);
    assert_int_equal(dn.status, 0);
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE);
    /* Verifying a longer image: the device ends short. */
    uint8_t *longer = pattern(fx, 1, 9000, 2);
    struct eng_dfu_segment seg2 = {.data = longer, .len = 9000};
    verify(fx, 0, &seg2, 1, &dn);
    expect_done(&dn, ST_EIO, "verify alt 0: device returned 8192 of 9000 bytes");
}

static void test_manifestation_wait_reset(void **state)
{
    struct fx *fx = *state;
    fx->cfg.attributes = ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD;
    fx->cfg.manifest_ms = 20;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 3000, 3);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, 0, "3000 bytes in 3 blocks, manifested; device reset");
    assert_true(eng_dfu_device_left(fx->d));
    run_until(fx, &fx->n_reenum, 1);
    assert_int_equal(eng_vdfu_stats(fx->dev)->resets, 1);
    assert_int_equal(eng_vdfu_stats(fx->dev)->manifests, 1);
    /* No run-time firmware interface: it comes back in DFU mode. */
    reattach(fx);
    assert_int_equal(fx->t->dfu.mode, 2);
    verify(fx, 0, &seg, 1, &dn);
    assert_int_equal(dn.status, 0);
}

static void test_manifestation_wait_reset_into_runtime(void **state)
{
    struct fx *fx = *state;
    fx->cfg.attributes = ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD;
    fx->cfg.runtime_app = true;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 2048, 4);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    run_until(fx, &fx->n_reenum, 1);
    reattach(fx);
    /* The new firmware runs and shows its run-time DFU interface. */
    assert_int_equal(fx->t->dfu.mode, 1);
    assert_int_equal(fx->t->pid, 0x5740);
    assert_int_equal(eng_dfu_verify(fx->d, 0, &seg, 1, &quick, on_done, &dn), ST_EINVAL);
}

static void test_several_alt_settings(void **state)
{
    struct fx *fx = *state;
    fx->cfg.n_alts = 2;
    snprintf(fx->cfg.alts[0].name, sizeof(fx->cfg.alts[0].name), "Flash");
    fx->cfg.alts[0].size = 32 * 1024;
    snprintf(fx->cfg.alts[1].name, sizeof(fx->cfg.alts[1].name), "Bootloader");
    fx->cfg.alts[1].size = 8 * 1024;
    start_dev(fx);
    assert_int_equal(fx->t->dfu.n_alts, 2);
    assert_string_equal(fx->t->dfu.alt_names[1], "Bootloader");
    uint8_t *a = pattern(fx, 0, 20000, 5), *b = pattern(fx, 1, 5000, 6);
    struct eng_dfu_segment sa = {.data = a, .len = 20000}, sb = {.data = b, .len = 5000};
    struct done dn;
    download(fx, 1, &sb, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    download(fx, 0, &sa, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    assert_memory_holds(fx, 0, 0, a, 20000);
    assert_memory_holds(fx, 1, 0, b, 5000);
    verify(fx, 1, &sb, 1, &dn);
    assert_int_equal(dn.status, 0);
    verify(fx, 0, &sa, 1, &dn);
    assert_int_equal(dn.status, 0);
    /* too big for the bootloader alt */
    download(fx, 1, &sa, 1, NULL, &dn);
    expect_done(&dn, ST_EDEVFAIL, "download alt 1 block 8: errADDRESS");
    /* no such alt */
    assert_int_equal(eng_dfu_download(fx->d, 2, &sa, 1, &quick, on_done, &dn), ST_EINVAL);
    assert_true(eng_vdfu_stats(fx->dev)->set_interface >= 5);
}

/* ---- run-time mode and detach ---- */

static void test_runtime_detach_then_download(void **state)
{
    struct fx *fx = *state;
    fx->cfg.start_runtime = true;
    start_dev(fx);
    assert_int_equal(fx->t->dfu.mode, 1);
    assert_int_equal(fx->t->pid, 0x5740);
    struct eng_dfu_segment seg = one_segment(fx, 4000, 7);
    struct done dn;
    /* nothing but detach works in run-time mode */
    assert_int_equal(eng_dfu_download(fx->d, 0, &seg, 1, &quick, on_done, &dn), ST_EINVAL);
    detach(fx, &dn);
    expect_done(&dn, 0, "detached and reset");
    assert_true(eng_dfu_device_left(fx->d));
    run_until(fx, &fx->n_reenum, 1);
    assert_int_equal(eng_vdfu_stats(fx->dev)->detaches, 1);
    assert_int_equal(eng_vdfu_stats(fx->dev)->resets, 1);
    reattach(fx);
    assert_int_equal(fx->t->dfu.mode, 2);
    assert_int_equal(fx->t->pid, 0xdf11);
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    /* detach in DFU mode: nothing to do */
    detach(fx, &dn);
    expect_done(&dn, 0, "already in DFU mode (dfuIDLE)");
    assert_false(eng_dfu_device_left(fx->d));
}

static void test_runtime_will_detach(void **state)
{
    struct fx *fx = *state;
    fx->cfg.start_runtime = true;
    fx->cfg.attributes = ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD |
                         ENG_DFU_ATTR_MANIFEST_TOLERANT | ENG_DFU_ATTR_WILL_DETACH;
    start_dev(fx);
    struct done dn;
    detach(fx, &dn);
    assert_int_equal(dn.status, 0);
    assert_non_null(strstr(dn.text, "re-enumerates by itself"));
    run_until(fx, &fx->n_reenum, 1);
    assert_int_equal(eng_vdfu_stats(fx->dev)->resets, 0);
    assert_int_equal(eng_vdfu_mode(fx->dev), 2);
}

/* ---- DfuSe ---- */

static void test_dfuse_download_with_erase(void **state)
{
    struct fx *fx = *state;
    fx->cfg.dfuse = true;
    fx->cfg.dirty = true; /* nothing lands unless the driver erases */
    fx->cfg.transfer_size = 2048;
    start_dev(fx);
    assert_int_equal(fx->t->dfu.bcd_dfu, ENG_DFU_BCD_DFUSE);
    assert_string_equal(fx->t->dfu.alt_names[0], STM32F4);
    uint8_t *a = pattern(fx, 0, 40000, 8), *c = pattern(fx, 1, 3000, 9);
    struct eng_dfu_segment segs[] = {
        {.address = 0x08000000, .data = a, .len = 40000},
        {.address = 0x08020000, .data = c, .len = 3000},
    };
    struct done dn;
    download(fx, 0, segs, 2, NULL, &dn);
    assert_int_equal(dn.status, 0);
    /* 0x08000000, 0x08004000, 0x08008000 (16 KiB each) and 0x08020000 (128 KiB) */
    assert_string_equal(dn.text, "43000 bytes in 22 blocks, 4 pages erased");
    assert_int_equal(eng_vdfu_stats(fx->dev)->erases, 4);
    assert_memory_holds(fx, 0, 0x08000000, a, 40000);
    assert_memory_holds(fx, 0, 0x08020000, c, 3000);
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE);
    assert_int_equal(eng_vdfu_stats(fx->dev)->manifests, 0); /* still in DFU mode */
    verify(fx, 0, segs, 2, &dn);
    expect_done(&dn, 0, "43000 bytes match");

    /* outside the layout: refused before anything is sent */
    struct eng_dfu_segment out = {.address = 0x08100000, .data = a, .len = 16};
    download(fx, 0, &out, 1, NULL, &dn);
    assert_int_equal(dn.status, ST_EINVAL);
    assert_string_equal(dn.text,
                        "download alt 0: 0x08100000 is outside the memory of \"" STM32F4 "\"");
}

static void test_dfuse_leave(void **state)
{
    struct fx *fx = *state;
    fx->cfg.dfuse = true;
    fx->cfg.runtime_app = true;
    start_dev(fx);
    uint8_t *a = pattern(fx, 0, 5000, 10);
    struct eng_dfu_segment seg = {.address = 0x08000000, .data = a, .len = 5000};
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    begin_op(fx, &dn);
    assert_int_equal(eng_dfu_leave(fx->d, 0, 0x08000000, &quick, on_done, &dn), 0);
    end_op(fx, &dn);
    assert_int_equal(dn.status, 0);
    assert_non_null(strstr(dn.text, "left DFU mode at 0x08000000"));
    assert_true(eng_dfu_device_left(fx->d));
    run_until(fx, &fx->n_reenum, 1);
    assert_int_equal(eng_vdfu_mode(fx->dev), 1);
}

/* ---- faults ---- */

static void test_err_write_names_block_and_status(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "errwrite=37"), 0);
    fx->cfg.transfer_size = 256;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 20000, 11);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, ST_EDEVFAIL, "download alt 0 block 37: errWRITE");
    /* CLRSTATUS was sent: the device is ready for a retry */
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE);
    assert_int_equal(eng_vdfu_stats(fx->dev)->requests[ENG_DFU_CLRSTATUS], 1);
}

static void test_err_verify_read_back_differs(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "errverify=4096"), 0);
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 10000, 12);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    verify(fx, 0, &seg, 1, &dn);
    assert_int_equal(dn.status, ST_EIO);
    char want[128];
    snprintf(want, sizeof(want), "verify alt 0: byte 4096 differs (image 0x%02x, device 0x%02x)",
             seg.data[4096], seg.data[4096] ^ 0xa5);
    assert_string_equal(dn.text, want);
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE); /* ABORT ended the upload */
}

static void test_stalled_request(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "stall=dnload@3"), 0);
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 8000, 13);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, ST_EPIPE, "download alt 0 block 3: device stalled DNLOAD");
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_IDLE); /* CLRSTATUS after the stall */
    /* a second try starts clean and passes */
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
}

static void test_silent_request_times_out(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "silent=getstatus@2"), 0);
    fx->cfg.block_busy_ms = 0; /* one GETSTATUS per block */
    fx->cfg.erase_busy_ms = 0;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 8000, 14);
    struct eng_dfu_limits lim = {.request_ms = 150, .busy_ms = 1000};
    struct done dn;
    uint64_t t0 = uv_now(&fx->loop);
    download(fx, 0, &seg, 1, &lim, &dn);
    assert_int_equal(dn.status, ST_ETIMEDOUT);
    /* GETSTATUS #0 is the preparation, #1 follows block 0, #2 block 1 */
    assert_string_equal(dn.text, "download alt 0 block 1: no answer to GETSTATUS within 0.15 s");
    assert_true(dn.at_ms - t0 < 1000);
}

static void test_disconnect_during_manifestation(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "disconnect=manifest"), 0);
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 3000, 15);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, ST_ENODEV, "download alt 0: device disconnected during manifestation");
    assert_int_equal(fx->n_gone, 1);
    assert_true(eng_vdfu_gone(fx->dev));
}

static void test_disconnect_in_manifestation_is_the_reset_when_not_tolerant(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "disconnect=manifest"), 0);
    fx->cfg.attributes = ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 3000, 16);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, 0);
    assert_non_null(strstr(dn.text, "the device reset itself after manifestation"));
    assert_true(eng_dfu_device_left(fx->d));
}

static void test_never_leaves_dnbusy_fails_within_limit(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vdfu_parse_fault(&fx->cfg, "stuck=2"), 0);
    fx->cfg.block_busy_ms = 20;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 8000, 17);
    struct eng_dfu_limits lim = {.request_ms = 500, .busy_ms = 300};
    struct done dn;
    uint64_t t0 = uv_now(&fx->loop);
    download(fx, 0, &seg, 1, &lim, &dn);
    expect_done(&dn, ST_ETIMEDOUT,
                "download alt 0 block 2: device stays in dfuDNBUSY beyond 0.3 s");
    uint64_t took = dn.at_ms - t0;
    assert_true(took >= 250 && took < 550); /* blocks 0-1 take ~45 ms, then the limit */
}

static void test_whole_download_limit(void **state)
{
    struct fx *fx = *state;
    fx->cfg.block_busy_ms = 10;
    fx->cfg.transfer_size = 64;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 64 * 100, 18);
    struct eng_dfu_limits lim = {.request_ms = 500, .busy_ms = 500, .total_ms = 200};
    struct done dn;
    download(fx, 0, &seg, 1, &lim, &dn);
    assert_int_equal(dn.status, ST_ETIMEDOUT);
    assert_non_null(strstr(dn.text, "download alt 0: not finished within 0.2 s ("));
    assert_non_null(strstr(dn.text, " of 6400 bytes)"));
}

static void test_unplug_mid_download(void **state)
{
    struct fx *fx = *state;
    start_dev(fx);
    fx->unplug_on_progress = true;
    fx->unplug_after = 3;
    struct eng_dfu_segment seg = one_segment(fx, 10000, 19);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    expect_done(&dn, ST_ENODEV, "download alt 0 block 3: device disconnected");
    assert_int_equal(fx->n_gone, 1);
    /* a new operation on the gone device fails at once, without a callback */
    assert_int_equal(eng_dfu_verify(fx->d, 0, &seg, 1, &quick, on_done, &dn), ST_ENODEV);
}

static void test_close_mid_download(void **state)
{
    struct fx *fx = *state;
    start_dev(fx);
    fx->close_on_progress = true;
    fx->unplug_after = 2;
    struct eng_dfu_segment seg = one_segment(fx, 10000, 20);
    struct done dn;
    download(fx, 0, &seg, 1, NULL, &dn);
    assert_int_equal(dn.status, ST_ECANCELED);
    assert_non_null(strstr(dn.text, "cancelled"));
}

static void test_abort_while_waiting_on_poll_timer(void **state)
{
    struct fx *fx = *state;
    fx->cfg.block_busy_ms = 200;
    start_dev(fx);
    struct eng_dfu_segment seg = one_segment(fx, 3000, 21);
    struct done dn = {.fx = fx};
    assert_int_equal(eng_dfu_download(fx->d, 0, &seg, 1, &quick, on_done, &dn), 0);
    fx->started++;
    /* let it reach the first dfuDNBUSY wait */
    for (int i = 0; i < 50 && eng_vdfu_state(fx->dev) != ENG_DFU_DNBUSY; i++)
        uv_run(&fx->loop, UV_RUN_ONCE);
    assert_int_equal(eng_vdfu_state(fx->dev), ENG_DFU_DNBUSY);
    eng_dfu_abort(fx->d, ST_ECANCELED, "operator pulled the plug");
    assert_int_equal(dn.calls, 1);
    assert_true(!strncmp(dn.text, "download alt 0 block ", 21));
    assert_non_null(strstr(dn.text, ": operator pulled the plug"));
    assert_false(eng_dfu_busy(fx->d));
}

static void test_fault_specs(void **state)
{
    struct eng_vdfu_config c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(eng_vdfu_parse_fault(&c, "stall=getstatus"), 0);
    assert_int_equal(c.stall_request, ENG_DFU_GETSTATUS + 1);
    assert_int_equal(c.stall_at, 0);
    assert_int_equal(eng_vdfu_parse_fault(&c, "silent=upload@4"), 0);
    assert_int_equal(c.silent_request, ENG_DFU_UPLOAD + 1);
    assert_int_equal(c.silent_at, 4);
    assert_int_equal(eng_vdfu_parse_fault(&c, "corrupt=0x100"), 0);
    assert_int_equal(c.corrupt_offset, 0x100);
    assert_int_equal(eng_vdfu_parse_fault(&c, "stall=reboot"), ST_EINVAL);
    assert_int_equal(eng_vdfu_parse_fault(&c, "errwrite="), ST_EINVAL);
    assert_int_equal(eng_vdfu_parse_fault(&c, "disconnect=now"), ST_EINVAL);
    assert_int_equal(eng_vdfu_parse_fault(&c, "stuck=x"), ST_EINVAL);
}

/* The exported descriptors are what a USB host would read (for the
 * usbdevfs harness), and standard requests reach them through ep0. */
static void test_descriptors_and_standard_requests(void **state)
{
    struct eng_vdfu_config c;
    memset(&c, 0, sizeof(c));
    c.dfuse = true;
    snprintf(c.serial, sizeof(c.serial), "ABC123");
    struct eng_vdfu *dev;
    assert_int_equal(eng_vdfu_new(&c, &dev), 0);
    uint8_t d[256];
    assert_int_equal(eng_vdfu_descriptor(dev, 1, 0, d, sizeof(d)), 18);
    assert_int_equal(d[1], 1);
    size_t n = eng_vdfu_descriptor(dev, 2, 0, d, sizeof(d));
    assert_int_equal(n, 27);
    assert_int_equal(d[2] | d[3] << 8, 27);
    struct eng_dfu_info info;
    uint8_t alt_string[ENG_DFU_MAX_ALTS];
    assert_int_equal(eng_dfu_parse_config(d, n, &info, alt_string), 0);
    assert_int_equal(info.mode, 2);
    assert_int_equal(info.n_alts, 1);
    assert_int_equal(info.bcd_dfu, 0x011a);
    assert_int_equal(alt_string[0], 4);
    /* GET_DESCRIPTOR(string 3) over ep0 */
    uint8_t setup[8] = {0x80, 6, 3, 3, 0x09, 0x04, 255, 0};
    size_t actual = 0;
    assert_int_equal(eng_vdfu_control(dev, 0, setup, d, &actual), 0);
    assert_int_equal(actual, 2 + 2 * 6);
    assert_int_equal(d[2], 'A');
    /* a truncated read, as hosts do first */
    uint8_t setup9[8] = {0x80, 6, 0, 2, 0, 0, 9, 0};
    assert_int_equal(eng_vdfu_control(dev, 0, setup9, d, &actual), 0);
    assert_int_equal(actual, 9);
    /* SET_INTERFACE to a missing alt stalls */
    uint8_t setalt[8] = {0x01, 11, 1, 0, 0, 0, 0, 0};
    assert_int_equal(eng_vdfu_control(dev, 0, setalt, NULL, &actual), ST_EPIPE);
    /* DfuSe Get Commands: UPLOAD block 0 */
    uint8_t getcmd[8] = {0xa1, ENG_DFU_UPLOAD, 0, 0, 0, 0, 16, 0};
    assert_int_equal(eng_vdfu_control(dev, 0, getcmd, d, &actual), 0);
    assert_int_equal(actual, 4);
    assert_int_equal(d[1], 0x21);
    /* a class request to another interface stalls */
    uint8_t other[8] = {0xa1, ENG_DFU_GETSTATE, 0, 0, 1, 0, 1, 0};
    assert_int_equal(eng_vdfu_control(dev, 0, other, d, &actual), ST_EPIPE);
    eng_vdfu_free(dev);
}

/* ---- the engine: DFU recipes on a rack of virtual DFU devices ---- */

#define MAX_ENDS 16

struct efx {
    uv_loop_t loop;
    struct th_rack h; /* the engine and the rack */
    struct cfg_recipe recipe;
    struct eng_rack_options ro;
    struct eng_vdfu_config dcfg;
    unsigned want_ends, n_ends;
    struct {
        char slot[64];
        enum eng_result result;
        char reason[512];
    } ends[MAX_ENDS];
    char path[256];
    uint8_t *payload;
    size_t payload_len;
};

static void e_on_event(const struct eng_event *ev, void *user_data)
{
    struct efx *fx = user_data;
    if (ev->type != ENG_EV_SESSION_END || fx->n_ends == MAX_ENDS)
        return;
    unsigned i = fx->n_ends++;
    snprintf(fx->ends[i].slot, sizeof(fx->ends[i].slot), "%s", ev->slot);
    fx->ends[i].result = ev->result;
    snprintf(fx->ends[i].reason, sizeof(fx->ends[i].reason), "%s", ev->text ? ev->text : "");
    if (fx->n_ends == fx->want_ends)
        uv_stop(&fx->loop);
}

/* A firmware file with a DFU suffix for 0483:df11, written to disk. */
static void write_firmware(struct efx *fx, size_t len, uint16_t vid, uint16_t pid)
{
    fx->payload = malloc(len + ENG_DFU_SUFFIX_LEN);
    uint32_t x = 99;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        fx->payload[i] = (uint8_t)(x >> 16);
    }
    eng_dfu_suffix_make(fx->payload + len, fx->payload, len, vid, pid, 0x2200, 0x0100);
    fx->payload_len = len;
    snprintf(fx->path, sizeof(fx->path), "%s/test_dfu_%d.dfu", TEST_TMPDIR, (int)getpid());
    FILE *f = fopen(fx->path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(fx->payload, 1, len + ENG_DFU_SUFFIX_LEN, f), len + ENG_DFU_SUFFIX_LEN);
    fclose(f);
}

static int e_setup(void **state)
{
    struct efx *fx = calloc(1, sizeof(*fx));
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    snprintf(fx->recipe.name, sizeof(fx->recipe.name), "dfu-board");
    snprintf(fx->recipe.version, sizeof(fx->recipe.version), "1.0");
    fx->recipe.n_images = 1;
    snprintf(fx->recipe.images[0].name, sizeof(fx->recipe.images[0].name), "fw");
    fx->dcfg.block_busy_ms = 2;
    fx->dcfg.manifest_ms = 5;
    fx->ro.dfu = true;
    fx->ro.dfu_config = &fx->dcfg;
    fx->ro.reenum_ms = 30;
    fx->ro.seed = 0x1234;
    alarm(ALARM_S);
    *state = fx;
    return 0;
}

static void e_run(struct efx *fx, unsigned ends, const char **faults)
{
    struct eng_options eo = {.reply_timeout_ms = 1000, .reenum_timeout_ms = 3000};
    snprintf(fx->recipe.images[0].path, sizeof(fx->recipe.images[0].path), "%s", fx->path);
    fx->want_ends = ends;
    th_rack_run(&fx->h, &fx->loop, &eo, &fx->ro, &fx->recipe, faults, e_on_event, fx, 20000);
    assert_int_equal(fx->h.load_status, 0);
    assert_int_equal(fx->n_ends, ends);
}

static int e_teardown(void **state)
{
    struct efx *fx = *state;
    th_rack_close(&fx->h);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    if (fx->path[0])
        unlink(fx->path);
    free(fx->payload);
    free(fx);
    alarm(0);
    return 0;
}

static const char *reason_of(struct efx *fx, const char *slot)
{
    for (unsigned i = 0; i < fx->n_ends; i++)
        if (!strcmp(fx->ends[i].slot, slot))
            return fx->ends[i].reason;
    return "(no session)";
}

static enum eng_result result_of(struct efx *fx, const char *slot)
{
    for (unsigned i = 0; i < fx->n_ends; i++)
        if (!strcmp(fx->ends[i].slot, slot))
            return fx->ends[i].result;
    return ENG_RESULT_NONE;
}

static void test_engine_eight_devices_half_need_detach(void **state)
{
    struct efx *fx = *state;
    write_firmware(fx, 50000, 0x0483, 0xdf11);
    fx->ro.count = 8;
    fx->ro.runtime_share = 0.5;
    th_add_step(&fx->recipe, CFG_STEP_DETACH, "", -1);
    th_add_step(&fx->recipe, CFG_STEP_DFU_DOWNLOAD, "0", 0);
    th_add_step(&fx->recipe, CFG_STEP_DFU_VERIFY, "Flash", 0);
    e_run(fx, 8, NULL);
    unsigned detached = 0;
    for (unsigned p = 1; p <= 8; p++) {
        char slot[16];
        snprintf(slot, sizeof(slot), "virt-%02u", p);
        assert_int_equal(result_of(fx, slot), ENG_RESULT_PASS);
        struct eng_vdfu *dev = eng_rack_dfu_device(fx->h.rack, p);
        assert_non_null(dev);
        uint32_t size;
        const uint8_t *mem = eng_vdfu_memory(dev, 0, &size, NULL);
        assert_memory_equal(mem, fx->payload, fx->payload_len);
        assert_int_equal(eng_vdfu_stats(dev)->early_polls, 0);
        assert_true(eng_vdfu_stats(dev)->upload_blocks >= 49);
        detached += eng_vdfu_stats(dev)->detaches;
        assert_int_equal(eng_vdfu_config(dev)->start_runtime, eng_vdfu_stats(dev)->detaches == 1);
    }
    assert_int_equal(detached, 4);
}

static void test_engine_faults_name_status_and_block(void **state)
{
    struct efx *fx = *state;
    write_firmware(fx, 20000, 0x0483, 0xdf11);
    fx->ro.count = 4;
    th_add_step(&fx->recipe, CFG_STEP_DETACH, "", -1);
    th_add_step(&fx->recipe, CFG_STEP_DFU_DOWNLOAD, "0", 0);
    th_add_step(&fx->recipe, CFG_STEP_DFU_VERIFY, "0", 0);
    const char *faults[] = {"2:errwrite=7", "3:errverify=12345", NULL};
    e_run(fx, 4, faults);
    assert_int_equal(result_of(fx, "virt-01"), ENG_RESULT_PASS);
    assert_int_equal(result_of(fx, "virt-02"), ENG_RESULT_FAIL);
    assert_string_equal(reason_of(fx, "virt-02"),
                        "dfu-download:0: download alt 0 block 7: errWRITE");
    assert_int_equal(result_of(fx, "virt-03"), ENG_RESULT_FAIL);
    assert_non_null(
        strstr(reason_of(fx, "virt-03"), "dfu-verify:0: verify alt 0: byte 12345 differs"));
    assert_int_equal(result_of(fx, "virt-04"), ENG_RESULT_PASS);
}

static void test_engine_wait_reset_manifestation_continues_session(void **state)
{
    struct efx *fx = *state;
    write_firmware(fx, 9000, 0x0483, 0xdf11);
    fx->ro.count = 2;
    fx->ro.runtime_share = 1.0;
    fx->dcfg.attributes = ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD;
    /* run-time → detach → download → reset into the new firmware (run-time)
     * → detach again → verify */
    th_add_step(&fx->recipe, CFG_STEP_DETACH, "", -1);
    th_add_step(&fx->recipe, CFG_STEP_DFU_DOWNLOAD, "0", 0);
    th_add_step(&fx->recipe, CFG_STEP_DETACH, "", -1);
    th_add_step(&fx->recipe, CFG_STEP_DFU_VERIFY, "0", 0);
    e_run(fx, 2, NULL);
    for (unsigned p = 1; p <= 2; p++) {
        char slot[16];
        snprintf(slot, sizeof(slot), "virt-%02u", p);
        assert_int_equal(result_of(fx, slot), ENG_RESULT_PASS);
        struct eng_vdfu *dev = eng_rack_dfu_device(fx->h.rack, p);
        assert_int_equal(eng_vdfu_stats(dev)->detaches, 2);
        assert_int_equal(eng_vdfu_stats(dev)->resets, 3);
    }
}

static void test_engine_dfuse_and_file_checks(void **state)
{
    struct efx *fx = *state;
    fx->dcfg.dfuse = true;
    fx->dcfg.dirty = true;
    fx->dcfg.transfer_size = 2048;
    fx->recipe.allow_raw_dfu = true;
    fx->ro.count = 2;
    /* a raw .bin (allowed) goes to 0x08000000 after its pages are erased */
    write_firmware(fx, 70000, 0x0483, 0xdf11);
    FILE *f = fopen(fx->path, "wb");
    fwrite(fx->payload, 1, fx->payload_len, f); /* no suffix */
    fclose(f);
    th_add_step(&fx->recipe, CFG_STEP_DFU_DOWNLOAD, "Internal Flash", 0);
    th_add_step(&fx->recipe, CFG_STEP_DFU_VERIFY, "0", 0);
    e_run(fx, 2, NULL);
    for (unsigned p = 1; p <= 2; p++) {
        char slot[16];
        snprintf(slot, sizeof(slot), "virt-%02u", p);
        assert_int_equal(result_of(fx, slot), ENG_RESULT_PASS);
        struct eng_vdfu *dev = eng_rack_dfu_device(fx->h.rack, p);
        const uint8_t *mem = eng_vdfu_memory(dev, 0, NULL, NULL);
        assert_memory_equal(mem, fx->payload, fx->payload_len);
        assert_int_equal(eng_vdfu_stats(dev)->erases, 5); /* 4 x 16 KiB + the 64 KiB sector */
    }
}

static void test_engine_foreign_file_never_sent(void **state)
{
    struct efx *fx = *state;
    write_firmware(fx, 4000, 0x1234, 0x5678);
    fx->ro.count = 1;
    th_add_step(&fx->recipe, CFG_STEP_DFU_DOWNLOAD, "0", 0);
    e_run(fx, 1, NULL);
    assert_int_equal(result_of(fx, "virt-01"), ENG_RESULT_FAIL);
    char want[512];
    snprintf(want, sizeof(want), "dfu-download:0: %s: made for 1234:5678, device is 0483:df11",
             fx->path);
    assert_string_equal(reason_of(fx, "virt-01"), want);
    struct eng_vdfu *dev = eng_rack_dfu_device(fx->h.rack, 1);
    assert_int_equal(eng_vdfu_stats(dev)->requests[ENG_DFU_DNLOAD], 0);
}

static void test_engine_protocol_mismatch(void **state)
{
    struct efx *fx = *state;
    write_firmware(fx, 4000, 0x0483, 0xdf11);
    fx->ro.count = 1;
    th_add_step(&fx->recipe, CFG_STEP_GETVAR, "product", -1);
    e_run(fx, 1, NULL);
    assert_int_equal(result_of(fx, "virt-01"), ENG_RESULT_FAIL);
    assert_string_equal(reason_of(fx, "virt-01"),
                        "getvar:product: a fastboot step cannot run on a DFU device");
}

static void test_engine_runtime_device_without_detach_step(void **state)
{
    struct efx *fx = *state;
    write_firmware(fx, 4000, 0x0483, 0xdf11);
    fx->ro.count = 1;
    fx->ro.runtime_share = 1.0;
    th_add_step(&fx->recipe, CFG_STEP_DFU_DOWNLOAD, "0", 0);
    e_run(fx, 1, NULL);
    assert_int_equal(result_of(fx, "virt-01"), ENG_RESULT_FAIL);
    assert_non_null(strstr(reason_of(fx, "virt-01"), "run-time mode (a detach step must come"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_plain_download_and_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_exact_blocks_and_longer_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifestation_wait_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifestation_wait_reset_into_runtime, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_several_alt_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_detach_then_download, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_will_detach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dfuse_download_with_erase, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dfuse_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_err_write_names_block_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_err_verify_read_back_differs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stalled_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_request_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_during_manifestation, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_disconnect_in_manifestation_is_the_reset_when_not_tolerant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_leaves_dnbusy_fails_within_limit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_whole_download_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unplug_mid_download, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_mid_download, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_while_waiting_on_poll_timer, setup, teardown),
        cmocka_unit_test(test_fault_specs),
        cmocka_unit_test(test_descriptors_and_standard_requests),
        cmocka_unit_test_setup_teardown(test_engine_eight_devices_half_need_detach, e_setup,
                                        e_teardown),
        cmocka_unit_test_setup_teardown(test_engine_faults_name_status_and_block, e_setup,
                                        e_teardown),
        cmocka_unit_test_setup_teardown(test_engine_wait_reset_manifestation_continues_session,
                                        e_setup, e_teardown),
        cmocka_unit_test_setup_teardown(test_engine_dfuse_and_file_checks, e_setup, e_teardown),
        cmocka_unit_test_setup_teardown(test_engine_foreign_file_never_sent, e_setup, e_teardown),
        cmocka_unit_test_setup_teardown(test_engine_protocol_mismatch, e_setup, e_teardown),
        cmocka_unit_test_setup_teardown(test_engine_runtime_device_without_detach_step, e_setup,
                                        e_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
