/*
 * test_vfb: the virtual fastboot device model (engine/virt/vfb.c), driven
 * directly through eng_vfb_host_write()/eng_vfb_host_read() with no loop
 * and no transport. test_fastboot covers the model through the driver;
 * this file pins the model's own edges: the fault-spec parser, command
 * and size checks, data-phase accounting, the reply queue, sparse pieces
 * and link resets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/st_error.h"
#include "engine/virt/vfb.h"

#define ALARM_S 20

struct fx {
    struct eng_vfb_config cfg;
    struct eng_vfb *dev;
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    alarm(ALARM_S);
    snprintf(fx->cfg.serial, sizeof(fx->cfg.serial), "SIM0002");
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    eng_vfb_free(fx->dev);
    free(fx);
    alarm(0);
    return 0;
}

static struct eng_vfb *open_dev(struct fx *fx)
{
    assert_int_equal(eng_vfb_new(&fx->cfg, &fx->dev), 0);
    return fx->dev;
}

/* Send one host message; returns the model's status. */
static int host_send(struct eng_vfb *d, const void *buf, size_t len)
{
    size_t accepted = 0;
    int rc = eng_vfb_host_write(d, buf, len, &accepted);
    if (rc == 0)
        assert_int_equal(accepted, len);
    return rc;
}

static void send_cmd(struct eng_vfb *d, const char *cmd)
{
    assert_int_equal(host_send(d, cmd, strlen(cmd)), 0);
}

/* Pop the next reply as a string ("" when none is queued). */
static const char *reply(struct eng_vfb *d)
{
    static char buf[ENG_VFB_REPLY_MAX + 1];
    size_t n = 0;
    if (eng_vfb_reply_pending(d))
        n = eng_vfb_host_read(d, buf, ENG_VFB_REPLY_MAX);
    assert_true(n <= ENG_VFB_REPLY_MAX);
    buf[n] = '\0';
    return buf;
}

/* One command, one reply. */
static const char *ask(struct eng_vfb *d, const char *cmd)
{
    send_cmd(d, cmd);
    return reply(d);
}

/* download:N and the bytes; the final reply is left queued. */
static void download(struct eng_vfb *d, const void *data, size_t len)
{
    char cmd[32], want[16];
    snprintf(cmd, sizeof(cmd), "download:%08zx", len);
    snprintf(want, sizeof(want), "DATA%08zx", len);
    assert_string_equal(ask(d, cmd), want);
    assert_true(eng_vfb_in_data_phase(d));
    assert_int_equal(host_send(d, data, len), 0);
    assert_false(eng_vfb_in_data_phase(d));
}

static const struct eng_vfb_part *find_part(struct eng_vfb *d, const char *name)
{
    unsigned n;
    const struct eng_vfb_part *p = eng_vfb_parts(d, &n);
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(p[i].name, name))
            return &p[i];
    return NULL;
}

/* ---- configuration and parsing ------------------------------------------ */

static void test_defaults(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    const struct eng_vfb_config *c = eng_vfb_config(d);
    assert_string_equal(c->product, "simphone");
    assert_string_equal(c->version_bootloader, "sim-bl-1.0");
    assert_int_equal(c->max_download, 256u << 20);
    assert_string_equal(eng_vfb_active_slot(d), "a");
    assert_int_equal(eng_vfb_writes(d), 0);
    assert_int_equal(eng_vfb_command_count(d), 0);
    assert_false(eng_vfb_reply_pending(d));
    assert_false(eng_vfb_gone(d));
    assert_false(eng_vfb_silent(d));
}

static void test_parse_fault(void **state)
{
    struct eng_vfb_config c;
    char long_val[80];
    (void)state;
    memset(&c, 0, sizeof(c));
    assert_int_equal(eng_vfb_parse_fault(&c, "fail=flash:boot"), 0);
    assert_string_equal(c.fail_on, "flash:boot");
    assert_int_equal(eng_vfb_parse_fault(&c, "silent=getvar"), 0);
    assert_string_equal(c.silent_on, "getvar");
    assert_int_equal(eng_vfb_parse_fault(&c, "garbage=oem"), 0);
    assert_string_equal(c.garbage_on, "oem");
    assert_int_equal(eng_vfb_parse_fault(&c, "oversize=erase"), 0);
    assert_string_equal(c.oversize_on, "erase");
    assert_int_equal(eng_vfb_parse_fault(&c, "disconnect=1048576"), 0);
    assert_true(c.disconnect_enabled);
    assert_int_equal(c.disconnect_after, 1048576);
    assert_int_equal(eng_vfb_parse_fault(&c, "disconnect=0x200"), 0);
    assert_int_equal(c.disconnect_after, 512);

    assert_int_equal(eng_vfb_parse_fault(&c, "fail"), ST_EINVAL);
    assert_int_equal(eng_vfb_parse_fault(&c, "fail="), ST_EINVAL);
    assert_int_equal(eng_vfb_parse_fault(&c, "=x"), ST_EINVAL);
    assert_int_equal(eng_vfb_parse_fault(&c, "explode=now"), ST_EINVAL);
    assert_int_equal(eng_vfb_parse_fault(&c, "failx=flash"), ST_EINVAL);
    assert_int_equal(eng_vfb_parse_fault(&c, "disconnect=12x"), ST_EINVAL);
    memset(long_val, 'a', sizeof(long_val));
    memcpy(long_val, "fail=", 5);
    long_val[5 + 64] = '\0'; /* a 64-byte value does not fit */
    assert_int_equal(eng_vfb_parse_fault(&c, long_val), ST_EINVAL);
    long_val[5 + 63] = '\0';
    assert_int_equal(eng_vfb_parse_fault(&c, long_val), 0);
    assert_int_equal(strlen(c.fail_on), 63);
}

/* ---- commands ------------------------------------------------------------ */

static void test_getvars(void **state)
{
    struct fx *fx = *state;
    fx->cfg.max_download = 0x1234;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "getvar:product"), "OKAYsimphone");
    assert_string_equal(ask(d, "getvar:serialno"), "OKAYSIM0002");
    assert_string_equal(ask(d, "getvar:max-download-size"), "OKAY0x00001234");
    assert_string_equal(ask(d, "getvar:version-bootloader"), "OKAYsim-bl-1.0");
    assert_string_equal(ask(d, "getvar:slot-count"), "OKAY2");
    assert_string_equal(ask(d, "getvar:has-slot:boot"), "OKAYno");
    assert_string_equal(ask(d, "getvar:nope"), "FAILGetVar Variable Not found");
    assert_int_equal(eng_vfb_command_count(d), 7);
}

static void test_has_slot_ab(void **state)
{
    struct fx *fx = *state;
    fx->cfg.ab_slots = true;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "getvar:has-slot:boot"), "OKAYyes");
    assert_string_equal(ask(d, "getvar:has-slot:userdata"), "OKAYno");
    assert_string_equal(ask(d, "getvar:has-slot:misc"), "OKAYno");
}

static void test_getvar_all(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    send_cmd(d, "getvar:all");
    assert_string_equal(reply(d), "INFOproduct:simphone");
    int n = 1;
    const char *r;
    while (strlen(r = reply(d)) >= 4 && !memcmp(r, "INFO", 4))
        n++;
    assert_string_equal(r, "OKAY");
    assert_int_equal(n, 10);
    assert_false(eng_vfb_reply_pending(d));
}

static void test_command_too_long(void **state)
{
    struct fx *fx = *state;
    char cmd[66];
    struct eng_vfb *d = open_dev(fx);
    memset(cmd, 'x', sizeof(cmd));
    memcpy(cmd, "oem ", 4);
    assert_int_equal(host_send(d, cmd, 65), 0);
    assert_string_equal(reply(d), "FAILcommand too long");
    assert_int_equal(host_send(d, cmd, 64), 0);
    assert_int_equal(strncmp(reply(d), "INFOoem: xxx", 12), 0);
    assert_string_equal(reply(d), "OKAY");
}

static void test_unknown_and_slots(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "frob"), "FAILunknown command");
    assert_string_equal(ask(d, "set_active:c"), "FAILinvalid slot");
    assert_string_equal(ask(d, "set_active:"), "FAILinvalid slot");
    assert_string_equal(ask(d, "set_active:b"), "OKAY");
    assert_string_equal(eng_vfb_active_slot(d), "b");
    assert_string_equal(ask(d, "getvar:current-slot"), "OKAYb");
}

static void test_download_sizes(void **state)
{
    struct fx *fx = *state;
    fx->cfg.max_download = 4096;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "download:123"), "FAILbad download size");
    assert_string_equal(ask(d, "download:0000100g"), "FAILbad download size");
    assert_string_equal(ask(d, "download:000001000"), "FAILbad download size");
    assert_string_equal(ask(d, "download:00001001"), "FAILdata too large");
    assert_string_equal(ask(d, "download:00000000"), "FAILdata too large");
    assert_false(eng_vfb_in_data_phase(d));
    assert_string_equal(ask(d, "download:00001000"), "DATA00001000");
    assert_true(eng_vfb_in_data_phase(d));
}

static void test_data_phase_pieces(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[1000];
    size_t acc;
    struct eng_vfb *d = open_dev(fx);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 7 + 3);
    assert_string_equal(ask(d, "download:000003e8"), "DATA000003e8");
    /* any split of the bytes; commands are data while in the data phase */
    assert_int_equal(eng_vfb_host_write(d, buf, 1, &acc), 0);
    assert_int_equal(acc, 1);
    assert_int_equal(eng_vfb_host_write(d, buf + 1, 499, &acc), 0);
    assert_false(eng_vfb_reply_pending(d));
    assert_true(eng_vfb_in_data_phase(d));
    /* more than announced: only what was announced is taken */
    assert_int_equal(eng_vfb_host_write(d, buf + 500, 600, &acc), 0);
    assert_int_equal(acc, 500);
    assert_false(eng_vfb_in_data_phase(d));
    assert_string_equal(reply(d), "OKAY");
    assert_int_equal(eng_vfb_bytes_received(d), 1000);
    assert_int_equal(eng_vfb_writes(d), 0);
    assert_string_equal(ask(d, "flash:boot"), "OKAY");
    const struct eng_vfb_part *p = find_part(d, "boot");
    assert_non_null(p);
    assert_int_equal(p->size, 1000);
    assert_true(p->hash == XXH3_64bits(buf, 1000));
    assert_null(p->data); /* not kept without keep_data */
    assert_int_equal(eng_vfb_writes(d), 1);
}

static void test_flash_info_lines_and_keep_data(void **state)
{
    struct fx *fx = *state;
    static const char img[] = "hello, partition";
    fx->cfg.info_lines = 2;
    fx->cfg.keep_data = true;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "flash:boot"), "FAILno image downloaded");
    download(d, img, sizeof(img));
    assert_string_equal(reply(d), "OKAY");
    send_cmd(d, "flash:boot");
    assert_string_equal(reply(d), "INFOwriting 'boot' 1/2");
    assert_string_equal(reply(d), "INFOwriting 'boot' 2/2");
    assert_string_equal(reply(d), "OKAY");
    const struct eng_vfb_part *p = find_part(d, "boot");
    assert_non_null(p);
    assert_non_null(p->data);
    assert_memory_equal(p->data, img, sizeof(img));
    assert_false(p->sparse);
}

static void test_erase_and_partition_limit(void **state)
{
    struct fx *fx = *state;
    char cmd[32];
    struct eng_vfb *d = open_dev(fx);
    for (unsigned i = 0; i < ENG_VFB_MAX_PARTS; i++) {
        snprintf(cmd, sizeof(cmd), "erase:p%u", i);
        assert_string_equal(ask(d, cmd), "OKAY");
    }
    assert_string_equal(ask(d, "erase:one-too-many"), "FAILtoo many partitions");
    assert_string_equal(ask(d, "erase:p3"), "OKAY"); /* existing: fine */
    assert_int_equal(eng_vfb_writes(d), ENG_VFB_MAX_PARTS + 1);
    const struct eng_vfb_part *p = find_part(d, "p3");
    assert_non_null(p);
    assert_true(p->erased);
    assert_int_equal(p->size, 0);
}

static void test_reboot_modes(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "reboot-bootloader"), "OKAY");
    assert_true(eng_vfb_take_reenumerate(d));
    assert_false(eng_vfb_take_reenumerate(d)); /* cleared on read */
    assert_false(eng_vfb_silent(d));
    assert_string_equal(ask(d, "reboot"), "OKAY");
    assert_true(eng_vfb_silent(d));
    assert_false(eng_vfb_gone(d));
    assert_string_equal(ask(d, "getvar:product"), ""); /* no answer any more */
    assert_int_equal(eng_vfb_command_count(d), 3);
}

static void test_continue_is_silent(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "continue"), "OKAY");
    assert_true(eng_vfb_silent(d));
    assert_string_equal(ask(d, "getvar:product"), "");
}

/* ---- faults -------------------------------------------------------------- */

static void test_fault_prefixes(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vfb_parse_fault(&fx->cfg, "fail=erase:boot"), 0);
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "erase:boot"), "FAILinjected fault");
    assert_string_equal(ask(d, "erase:boot_a"), "FAILinjected fault"); /* prefix */
    assert_string_equal(ask(d, "erase:system"), "OKAY");
    assert_int_equal(eng_vfb_writes(d), 1);
}

static void test_fault_silent_sticks(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(eng_vfb_parse_fault(&fx->cfg, "silent=oem"), 0);
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "getvar:product"), "OKAYsimphone");
    assert_string_equal(ask(d, "oem x"), "");
    assert_true(eng_vfb_silent(d));
    assert_string_equal(ask(d, "getvar:product"), ""); /* from this command on */
}

static void test_fault_garbage_and_oversize(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[ENG_VFB_REPLY_MAX];
    assert_int_equal(eng_vfb_parse_fault(&fx->cfg, "garbage=getvar:a"), 0);
    assert_int_equal(eng_vfb_parse_fault(&fx->cfg, "oversize=getvar:b"), 0);
    struct eng_vfb *d = open_dev(fx);
    send_cmd(d, "getvar:a");
    size_t n = eng_vfb_host_read(d, buf, sizeof(buf));
    assert_int_equal(n, 13);
    assert_memory_equal(buf, "\x01\x7fZQ\xff garbage", 13);
    send_cmd(d, "getvar:b");
    n = eng_vfb_host_read(d, buf, 256);
    assert_int_equal(n, 300); /* full length; only 256 copied */
    assert_memory_equal(buf, "OKAYxxxx", 8);
}

static void test_fault_disconnect(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[150] = {0};
    size_t acc = 99;
    assert_int_equal(eng_vfb_parse_fault(&fx->cfg, "disconnect=100"), 0);
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "download:00000096"), "DATA00000096");
    assert_int_equal(eng_vfb_host_write(d, buf, 60, &acc), 0);
    assert_int_equal(acc, 60);
    assert_int_equal(eng_vfb_host_write(d, buf, 90, &acc), ST_ENODEV);
    assert_int_equal(acc, 40);
    assert_true(eng_vfb_gone(d));
    assert_int_equal(eng_vfb_bytes_received(d), 100);
    assert_int_equal(eng_vfb_host_write(d, "getvar:product", 14, &acc), ST_ENODEV);
    assert_int_equal(acc, 0);
    assert_false(eng_vfb_reply_pending(d));
}

static void test_reply_queue_full_drops(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    /* 7 x 11 replies never read: the queue (64) keeps the oldest. */
    for (int i = 0; i < 7; i++)
        send_cmd(d, "getvar:all");
    int n = 0;
    while (eng_vfb_reply_pending(d)) {
        reply(d);
        n++;
    }
    assert_int_equal(n, 64);
}

static void test_reset_link(void **state)
{
    struct fx *fx = *state;
    struct eng_vfb *d = open_dev(fx);
    assert_string_equal(ask(d, "download:00000010"), "DATA00000010");
    assert_int_equal(host_send(d, "12345678", 8), 0);
    assert_int_equal(host_send(d, "abcd", 4), 0); /* 12 of 16 bytes */
    eng_vfb_reset_link(d);
    assert_false(eng_vfb_in_data_phase(d));
    assert_false(eng_vfb_reply_pending(d));
    assert_string_equal(ask(d, "flash:boot"), "FAILno image downloaded");
    assert_string_equal(ask(d, "getvar:product"), "OKAYsimphone");
}

/* ---- sparse pieces ------------------------------------------------------- */

#define BLK 4096

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static size_t sparse_header(uint8_t *p, uint32_t total_blks, uint32_t chunks)
{
    put32(p, 0xed26ff3a);
    put16(p + 4, 1);
    put16(p + 6, 0);
    put16(p + 8, 28);
    put16(p + 10, 12);
    put32(p + 12, BLK);
    put32(p + 16, total_blks);
    put32(p + 20, chunks);
    put32(p + 24, 0);
    return 28;
}

static size_t chunk(uint8_t *p, uint16_t type, uint32_t blocks, uint32_t payload)
{
    put16(p, type);
    put16(p + 2, 0);
    put32(p + 4, blocks);
    put32(p + 8, 12 + payload);
    return 12;
}

/* 4 blocks: RAW 'A', FILL 0xdeadbeef, DONT_CARE, RAW 'B', then a CRC32 chunk. */
static size_t sparse_image(uint8_t *img)
{
    size_t o = sparse_header(img, 4, 5);
    o += chunk(img + o, 0xCAC1, 1, BLK);
    memset(img + o, 'A', BLK);
    o += BLK;
    o += chunk(img + o, 0xCAC2, 1, 4);
    put32(img + o, 0xdeadbeef);
    o += 4;
    o += chunk(img + o, 0xCAC3, 1, 0);
    o += chunk(img + o, 0xCAC1, 1, BLK);
    memset(img + o, 'B', BLK);
    o += BLK;
    o += chunk(img + o, 0xCAC4, 0, 4);
    put32(img + o, 0);
    return o + 4;
}

static void test_sparse_pieces(void **state)
{
    struct fx *fx = *state;
    static uint8_t img[3 * BLK];
    fx->cfg.keep_data = true;
    struct eng_vfb *d = open_dev(fx);
    size_t len = sparse_image(img);
    download(d, img, len);
    assert_string_equal(reply(d), "OKAY");
    assert_string_equal(ask(d, "flash:super"), "OKAY");
    const struct eng_vfb_part *p = find_part(d, "super");
    assert_non_null(p);
    assert_true(p->sparse);
    assert_int_equal(p->pieces, 1);
    assert_int_equal(p->size, 4 * BLK);
    assert_non_null(p->data);
    assert_int_equal(p->data[0], 'A');
    assert_int_equal(p->data[BLK - 1], 'A');
    assert_memory_equal(p->data + BLK, "\xef\xbe\xad\xde\xef\xbe\xad\xde", 8);
    assert_int_equal(p->data[2 * BLK], 0); /* DONT_CARE on a new partition */
    assert_int_equal(p->data[3 * BLK], 'B');

    /* A second piece only touches its own blocks. */
    size_t o = sparse_header(img, 4, 2);
    o += chunk(img + o, 0xCAC3, 3, 0);
    o += chunk(img + o, 0xCAC1, 1, BLK);
    memset(img + o, 'C', BLK);
    o += BLK;
    download(d, img, o);
    assert_string_equal(reply(d), "OKAY");
    assert_string_equal(ask(d, "flash:super"), "OKAY");
    p = find_part(d, "super");
    assert_int_equal(p->pieces, 2);
    assert_int_equal(p->data[0], 'A');
    assert_int_equal(p->data[3 * BLK], 'C');
    assert_int_equal(eng_vfb_writes(d), 2);
}

static void test_sparse_malformed(void **state)
{
    struct fx *fx = *state;
    static uint8_t img[64];
    fx->cfg.keep_data = true;
    struct eng_vfb *d = open_dev(fx);
    size_t o = sparse_header(img, 1, 1);
    o += chunk(img + o, 0x1234, 1, 0);
    download(d, img, o);
    assert_string_equal(reply(d), "OKAY");
    assert_string_equal(ask(d, "flash:super"), "FAILunknown sparse chunk type 0x1234");
    assert_int_equal(eng_vfb_writes(d), 0);
}

/* Without keep_data (as the rack builds its devices) only the header is
 * kept: the partition gets its size, and no bytes. */
static void test_sparse_without_keep_data(void **state)
{
    struct fx *fx = *state;
    static uint8_t img[3 * BLK];
    struct eng_vfb *d = open_dev(fx); /* keep_data false, as in the rack */
    size_t len = sparse_image(img);
    download(d, img, len);
    assert_string_equal(reply(d), "OKAY");
    assert_string_equal(ask(d, "flash:super"), "OKAY");
    const struct eng_vfb_part *p = find_part(d, "super");
    assert_non_null(p);
    assert_true(p->sparse);
    assert_int_equal(p->pieces, 1);
    assert_int_equal(p->size, 4 * BLK);
    assert_null(p->data);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_parse_fault),
        T(test_getvars),
        T(test_has_slot_ab),
        T(test_getvar_all),
        T(test_command_too_long),
        T(test_unknown_and_slots),
        T(test_download_sizes),
        T(test_data_phase_pieces),
        T(test_flash_info_lines_and_keep_data),
        T(test_erase_and_partition_limit),
        T(test_reboot_modes),
        T(test_continue_is_silent),
        T(test_fault_prefixes),
        T(test_fault_silent_sticks),
        T(test_fault_garbage_and_oversize),
        T(test_fault_disconnect),
        T(test_reply_queue_full_drops),
        T(test_reset_link),
        T(test_sparse_pieces),
        T(test_sparse_malformed),
        T(test_sparse_without_keep_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
