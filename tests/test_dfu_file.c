/*
 * test_dfu_file: DFU suffix, DfuSe container and DfuSe layouts
 * (engine/dfu_file.c), and eng_dfu_plan() (engine/dfu_plan.c) which
 * turns a file and a device into segments.
 *
 * Files come from two sources: built here byte by byte (to reach every
 * error branch), and made by the real tools Debian's dfu-util ships,
 * `dfu-suffix -a` and `dfuse-pack -b` (scripts/setup.sh installs them;
 * the tests that need them are skipped when they are missing).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/st_error.h"
#include "engine/dfu.h"
#include "engine/dfu_file.h"

#define STM32F4 "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"

static uint8_t *pattern(size_t len, unsigned seed)
{
    uint8_t *b = malloc(len + 64 * 1024);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        b[i] = (uint8_t)(x >> 16);
    }
    return b;
}

/* Append a suffix in place (buf has room). Returns the new length. */
static size_t add_suffix(uint8_t *buf, size_t len, uint16_t vid, uint16_t pid, uint16_t bcd_dfu)
{
    eng_dfu_suffix_make(buf + len, buf, len, vid, pid, 0x0200, bcd_dfu);
    return len + ENG_DFU_SUFFIX_LEN;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* A DfuSe file with one target (alt) and the given elements, suffix included. */
static size_t build_dfuse(uint8_t *out, uint8_t alt, unsigned n, const uint32_t *addr,
                          const uint32_t *size, const uint8_t *const *data)
{
    size_t off = 11;
    memcpy(out, "DfuSe", 5);
    out[5] = 1;
    out[10] = 1;
    uint8_t *tp = out + off;
    memset(tp, 0, 274);
    memcpy(tp, "Target", 6);
    tp[6] = alt;
    put32(tp + 7, 1);
    snprintf((char *)tp + 11, 255, "ST...");
    off += 274;
    uint32_t tsize = 0;
    for (unsigned i = 0; i < n; i++) {
        put32(out + off, addr[i]);
        put32(out + off + 4, size[i]);
        memcpy(out + off + 8, data[i], size[i]);
        off += 8 + size[i];
        tsize += 8 + size[i];
    }
    put32(tp + 266, tsize);
    put32(tp + 270, n);
    put32(out + 6, (uint32_t)(off + ENG_DFU_SUFFIX_LEN));
    return add_suffix(out, off, 0x0483, 0xdf11, ENG_DFU_BCD_DFUSE);
}

static void test_crc_is_inverted_crc32(void **state)
{
    /* CRC-32 of "123456789" is 0xCBF43926; the suffix keeps it uninverted. */
    assert_int_equal(eng_dfu_crc("123456789", 9), 0x340bc6d9u);
}

static void test_suffix_round_trip(void **state)
{
    uint8_t *b = pattern(5000, 1);
    size_t len = add_suffix(b, 5000, 0x0483, 0xdf11, 0x0110);
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(b, len, "fw.dfu", &f, err, sizeof(err)), 0);
    assert_true(f.has_suffix);
    assert_false(f.dfuse);
    assert_int_equal(f.vid, 0x0483);
    assert_int_equal(f.pid, 0xdf11);
    assert_int_equal(f.bcd_dfu, 0x0110);
    assert_int_equal(f.bcd_device, 0x0200);
    assert_ptr_equal(f.payload, b);
    assert_int_equal(f.payload_len, 5000);
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.dfu", 0x0483, 0xdf11, false, err, sizeof(err)), 0);
    eng_dfu_file_free(&f);
    free(b);
}

static void test_bad_crc_refused(void **state)
{
    uint8_t *b = pattern(3000, 2);
    size_t len = add_suffix(b, 3000, 0x0483, 0xdf11, 0x0110);
    b[100] ^= 1;
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(b, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "fw.dfu: DFU suffix CRC mismatch (file says 0x"));
    assert_non_null(strstr(err, ", computed 0x"));
    free(b);
}

static void test_foreign_ids_refused_ffff_accepted(void **state)
{
    uint8_t *b = pattern(1000, 3);
    size_t len = add_suffix(b, 1000, 0x0483, 0xdf11, 0x0110);
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(b, len, "fw.dfu", &f, err, sizeof(err)), 0);
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.dfu", 0x1234, 0x5678, true, err, sizeof(err)), ST_EINVAL);
    assert_string_equal(err, "fw.dfu: made for 0483:df11, device is 1234:5678");
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.dfu", 0x0483, 0x5678, false, err, sizeof(err)),
        ST_EINVAL);
    eng_dfu_file_free(&f);

    /* station check: with the configured ids, and with none known */
    assert_int_equal(eng_dfu_file_check(b, len, "fw.dfu", 0x1234, 0x5678, false, err, sizeof(err)),
                     ST_EINVAL);
    assert_string_equal(err, "fw.dfu: made for 0483:df11, device is 1234:5678");
    assert_int_equal(eng_dfu_file_check(b, len, "fw.dfu", ENG_DFU_ID_ANY, ENG_DFU_ID_ANY, false,
                                        err, sizeof(err)),
                     0);
    b[5] ^= 1;
    assert_int_equal(eng_dfu_file_check(b, len, "fw.dfu", ENG_DFU_ID_ANY, ENG_DFU_ID_ANY, false,
                                        err, sizeof(err)),
                     ST_EINVAL);
    assert_non_null(strstr(err, "CRC mismatch"));
    b[5] ^= 1;

    len = add_suffix(b, 1000, 0xffff, 0xffff, 0x0110);
    assert_int_equal(eng_dfu_file_parse(b, len, "any.dfu", &f, err, sizeof(err)), 0);
    assert_int_equal(
        eng_dfu_file_check_device(&f, "any.dfu", 0x1234, 0x5678, false, err, sizeof(err)), 0);
    eng_dfu_file_free(&f);
    free(b);
}

static void test_raw_bin_only_when_allowed(void **state)
{
    uint8_t *b = pattern(2048, 4);
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(b, 2048, "fw.bin", &f, err, sizeof(err)), 0);
    assert_false(f.has_suffix);
    assert_int_equal(f.payload_len, 2048);
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.bin", 0x0483, 0xdf11, false, err, sizeof(err)),
        ST_EINVAL);
    assert_non_null(strstr(err, "fw.bin: no DFU suffix"));
    assert_non_null(strstr(err, "allow-raw-dfu"));
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.bin", 0x0483, 0xdf11, true, err, sizeof(err)), 0);
    eng_dfu_file_free(&f);
    free(b);
}

static void test_suffix_only_is_not_firmware(void **state)
{
    uint8_t b[ENG_DFU_SUFFIX_LEN];
    struct eng_dfu_file f;
    char err[256] = "";
    eng_dfu_suffix_make(b, NULL, 0, 0x0483, 0xdf11, 0, 0x0110);
    assert_int_equal(eng_dfu_file_parse(b, sizeof(b), "empty.dfu", &f, err, sizeof(err)),
                     ST_EINVAL);
    assert_non_null(strstr(err, "empty.dfu: no firmware bytes"));
}

static void test_dfuse_built_here(void **state)
{
    uint8_t *d0 = pattern(1000, 5), *d1 = pattern(300, 6);
    uint8_t *out = malloc(4096);
    uint32_t addr[] = {0x08000000, 0x08004000}, size[] = {1000, 300};
    const uint8_t *data[] = {d0, d1};
    size_t len = build_dfuse(out, 0, 2, addr, size, data);
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), 0);
    assert_true(f.dfuse);
    assert_int_equal(f.n_targets, 1);
    assert_int_equal(f.n_elements, 2);
    assert_int_equal(f.targets[0].alt, 0);
    assert_string_equal(f.targets[0].name, "ST...");
    assert_int_equal(f.elements[1].address, 0x08004000);
    assert_int_equal(f.elements[1].size, 300);
    assert_memory_equal(f.elements[1].data, d1, 300);
    eng_dfu_file_free(&f);

    /* dwTargetSize too small for its elements (CRC fixed so only sizes are wrong) */
    put32(out + 11 + 266, 1000);
    add_suffix(out, len - ENG_DFU_SUFFIX_LEN, 0x0483, 0xdf11, ENG_DFU_BCD_DFUSE);
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_string_equal(
        err, "fw.dfu: DfuSe target 0 element 0: 1000 bytes, only 992 left in the target");

    /* dwNbElements that leaves bytes of the target unused */
    len = build_dfuse(out, 0, 2, addr, size, data);
    put32(out + 11 + 270, 1);
    add_suffix(out, len - ENG_DFU_SUFFIX_LEN, 0x0483, 0xdf11, ENG_DFU_BCD_DFUSE);
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_string_equal(err,
                        "fw.dfu: DfuSe target 0: size says 1316 bytes, its elements take 1008");

    /* an element longer than the file */
    len = build_dfuse(out, 0, 2, addr, size, data);
    put32(out + 11 + 274 + 4, 100000);
    add_suffix(out, len - ENG_DFU_SUFFIX_LEN, 0x0483, 0xdf11, ENG_DFU_BCD_DFUSE);
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "element 0: 100000 bytes"));

    /* overlapping elements */
    uint32_t addr2[] = {0x08000000, 0x08000100};
    len = build_dfuse(out, 0, 2, addr2, size, data);
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "overlap"));

    /* a DfuSe prefix with a plain bcdDFU in the suffix */
    len = build_dfuse(out, 0, 2, addr, size, data);
    add_suffix(out, len - ENG_DFU_SUFFIX_LEN, 0x0483, 0xdf11, 0x0110);
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "bcdDFU 0x0110"));

    /* the image size field must match */
    len = build_dfuse(out, 0, 2, addr, size, data);
    put32(out + 6, 12);
    add_suffix(out, len - ENG_DFU_SUFFIX_LEN, 0x0483, 0xdf11, ENG_DFU_BCD_DFUSE);
    assert_int_equal(eng_dfu_file_parse(out, len, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "image size says 12 bytes"));
    free(out);
    free(d0);
    free(d1);
}

static void test_layout_parse(void **state)
{
    struct eng_dfuse_layout l;
    uint32_t start, size;
    uint8_t type;
    assert_int_equal(eng_dfuse_layout_parse(STM32F4, &l), 0);
    assert_string_equal(l.name, "Internal Flash");
    assert_int_equal(l.n_regions, 1);
    assert_int_equal(l.regions[0].address, 0x08000000);
    assert_int_equal(l.regions[0].n_groups, 3);
    assert_int_equal(l.regions[0].size, 1024 * 1024);
    assert_true(eng_dfuse_layout_find(&l, 0x08005000, &start, &size, &type));
    assert_int_equal(start, 0x08004000);
    assert_int_equal(size, 16 * 1024);
    assert_int_equal(type, ENG_DFUSE_READABLE | ENG_DFUSE_ERASABLE | ENG_DFUSE_WRITEABLE);
    assert_true(eng_dfuse_layout_find(&l, 0x08010000, &start, &size, NULL));
    assert_int_equal(size, 64 * 1024);
    assert_true(eng_dfuse_layout_find(&l, 0x080fffff, &start, &size, NULL));
    assert_int_equal(start, 0x080e0000);
    assert_int_equal(size, 128 * 1024);
    assert_false(eng_dfuse_layout_find(&l, 0x08100000, NULL, NULL, NULL));
    assert_false(eng_dfuse_layout_find(&l, 0x07ffffff, NULL, NULL, NULL));

    assert_int_equal(eng_dfuse_layout_parse("@Option Bytes  /0x1FFFC000/01*016 e", &l), 0);
    assert_int_equal(l.regions[0].groups[0].size, 16);
    assert_int_equal(l.regions[0].groups[0].type, 5);
    assert_int_equal(eng_dfuse_layout_parse("@SRAM /0x20000000/64*0001Kg/0x10000000/2*032Ka", &l),
                     0);
    assert_int_equal(l.n_regions, 2);
    assert_int_equal(l.regions[1].address, 0x10000000);
    assert_int_equal(l.regions[1].size, 64 * 1024);

    assert_int_equal(eng_dfuse_layout_parse("Flash", &l), ST_EINVAL);
    assert_int_equal(eng_dfuse_layout_parse("@Flash/0x0800000", &l), ST_EINVAL);
    assert_int_equal(eng_dfuse_layout_parse("@Flash/0x08000000/x*16Kg", &l), ST_EINVAL);
    assert_int_equal(eng_dfuse_layout_parse("@Flash/0x08000000/4*16Kg junk", &l), ST_EINVAL);
}

/* ---- the real tools ---- */

static bool have_tool(const char *name)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", name);
    return system(cmd) == 0;
}

static void write_file(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/dfu_file_%d_%s", TEST_TMPDIR, (int)getpid(), name);
}

static void run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void run(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("command failed (%d): %s", rc, cmd);
}

static void test_dfu_suffix_tool_accepted(void **state)
{
    if (!have_tool("dfu-suffix"))
        skip();
    char path[512];
    tmp_path(path, sizeof(path), "fw.bin");
    uint8_t *b = pattern(7777, 7);
    write_file(path, b, 7777);
    run("dfu-suffix -v 0483 -p df11 -d 0x0200 -a %s >/dev/null 2>&1", path);
    size_t n;
    uint8_t *file = read_file(path, &n);
    assert_int_equal(n, 7777 + 16);
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(file, n, "fw.bin", &f, err, sizeof(err)), 0);
    assert_true(f.has_suffix);
    assert_int_equal(f.vid, 0x0483);
    assert_int_equal(f.pid, 0xdf11);
    assert_int_equal(f.bcd_device, 0x0200);
    assert_int_equal(f.payload_len, 7777);
    assert_memory_equal(f.payload, b, 7777);
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.bin", 0x0483, 0xdf11, false, err, sizeof(err)), 0);
    assert_int_equal(
        eng_dfu_file_check_device(&f, "fw.bin", 0x1234, 0x5678, false, err, sizeof(err)),
        ST_EINVAL);
    assert_string_equal(err, "fw.bin: made for 0483:df11, device is 1234:5678");
    eng_dfu_file_free(&f);

    /* our own suffix is byte for byte what the tool writes */
    uint8_t mine[ENG_DFU_SUFFIX_LEN];
    eng_dfu_suffix_make(mine, b, 7777, 0x0483, 0xdf11, 0x0200, 0x0100);
    assert_memory_equal(mine, file + 7777, ENG_DFU_SUFFIX_LEN);

    /* a flipped byte is refused, and dfu-suffix agrees */
    file[10] ^= 0x40;
    write_file(path, file, n);
    assert_int_equal(eng_dfu_file_parse(file, n, "fw.bin", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "CRC mismatch"));
    unlink(path);
    free(file);
    free(b);
}

static void test_dfuse_pack_tool_accepted(void **state)
{
    if (!have_tool("dfuse-pack"))
        skip();
    char a[512], c[512], out[512];
    tmp_path(a, sizeof(a), "a.bin");
    tmp_path(c, sizeof(c), "c.bin");
    tmp_path(out, sizeof(out), "fw.dfu");
    uint8_t *da = pattern(40000, 8), *dc = pattern(3000, 9);
    write_file(a, da, 40000);
    write_file(c, dc, 3000);
    run("dfuse-pack -b 0x08000000:%s -b 0x08020000:%s %s >/dev/null 2>&1", a, c, out);
    size_t n;
    uint8_t *file = read_file(out, &n);
    struct eng_dfu_file f;
    char err[256] = "";
    assert_int_equal(eng_dfu_file_parse(file, n, "fw.dfu", &f, err, sizeof(err)), 0);
    assert_true(f.dfuse);
    assert_int_equal(f.bcd_dfu, ENG_DFU_BCD_DFUSE);
    assert_int_equal(f.vid, 0x0483);
    assert_int_equal(f.pid, 0xdf11);
    assert_int_equal(f.n_targets, 1);
    assert_int_equal(f.n_elements, 2);
    assert_int_equal(f.elements[0].address, 0x08000000);
    assert_int_equal(f.elements[0].size, 40000);
    assert_memory_equal(f.elements[0].data, da, 40000);
    assert_int_equal(f.elements[1].address, 0x08020000);
    assert_memory_equal(f.elements[1].data, dc, 3000);
    eng_dfu_file_free(&f);

    /* planned for a DfuSe device in DFU mode: two segments at their addresses */
    struct eng_transport t;
    memset(&t, 0, sizeof(t));
    t.vid = 0x0483;
    t.pid = 0xdf11;
    t.protocol_kind = ENG_PROTO_DFU;
    t.dfu.mode = 2;
    t.dfu.n_alts = 2;
    t.dfu.transfer_size = 2048;
    t.dfu.bcd_dfu = ENG_DFU_BCD_DFUSE;
    snprintf(t.dfu.alt_names[0], sizeof(t.dfu.alt_names[0]), "%s", STM32F4);
    snprintf(t.dfu.alt_names[1], sizeof(t.dfu.alt_names[1]), "@Option Bytes  /0x1FFFC000/01*016 e");
    struct eng_dfu_plan plan;
    assert_int_equal(
        eng_dfu_plan(&t, "Internal Flash", file, n, "fw.dfu", false, &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.alt, 0);
    assert_int_equal(plan.n_segs, 2);
    assert_int_equal(plan.bytes, 43000);
    assert_int_equal(plan.segs[1].address, 0x08020000);
    /* the file has nothing for alt 1 */
    assert_int_equal(eng_dfu_plan(&t, "1", file, n, "fw.dfu", false, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_string_equal(err, "fw.dfu: no DfuSe data for alt 1 (the file has alt 0)");
    /* a plain DFU device refuses a DfuSe file */
    t.dfu.bcd_dfu = 0x0110;
    assert_int_equal(eng_dfu_plan(&t, "0", file, n, "fw.dfu", false, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_non_null(strstr(err, "a DfuSe file, and the device is plain DFU"));

    /* a bad CRC is refused */
    file[300] ^= 1;
    assert_int_equal(eng_dfu_file_parse(file, n, "fw.dfu", &f, err, sizeof(err)), ST_EINVAL);
    assert_non_null(strstr(err, "fw.dfu: DFU suffix CRC mismatch"));

    /* built for another device (-D) */
    run("dfuse-pack -D 0x1234:0x5678 -b 0x08000000:%s %s >/dev/null 2>&1", a, out);
    free(file);
    file = read_file(out, &n);
    t.dfu.bcd_dfu = ENG_DFU_BCD_DFUSE;
    assert_int_equal(eng_dfu_plan(&t, "0", file, n, "fw.dfu", false, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_string_equal(err, "fw.dfu: made for 1234:5678, device is 0483:df11");
    unlink(a);
    unlink(c);
    unlink(out);
    free(file);
    free(da);
    free(dc);
}

static void test_plan_alts_and_modes(void **state)
{
    struct eng_transport t;
    memset(&t, 0, sizeof(t));
    t.vid = 0x0483;
    t.pid = 0xdf11;
    t.protocol_kind = ENG_PROTO_DFU;
    t.dfu.mode = 2;
    t.dfu.n_alts = 2;
    t.dfu.transfer_size = 1024;
    t.dfu.bcd_dfu = 0x0110;
    snprintf(t.dfu.alt_names[0], sizeof(t.dfu.alt_names[0]), "Flash");
    snprintf(t.dfu.alt_names[1], sizeof(t.dfu.alt_names[1]), "Bootloader");
    uint8_t *b = pattern(4096, 10);
    size_t len = add_suffix(b, 4096, 0x0483, 0xdf11, 0x0110);
    struct eng_dfu_plan plan;
    char err[256] = "";
    assert_int_equal(
        eng_dfu_plan(&t, "Bootloader", b, len, "fw.dfu", false, &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.alt, 1);
    assert_int_equal(plan.n_segs, 1);
    assert_int_equal(plan.segs[0].len, 4096);
    assert_int_equal(eng_dfu_plan(&t, "3", b, len, "fw.dfu", false, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_string_equal(err, "no alt setting 3 (the device has 2)");
    assert_int_equal(eng_dfu_plan(&t, "Radio", b, len, "fw.dfu", false, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_non_null(strstr(
        err, "no alt setting named \"Radio\" (the device has 0 \"Flash\", 1 \"Bootloader\")"));
    t.dfu.mode = 1;
    assert_int_equal(eng_dfu_plan(&t, "0", b, len, "fw.dfu", false, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_non_null(strstr(err, "run-time mode"));
    /* a raw image on a DfuSe device lands at the start of the layout */
    t.dfu.mode = 2;
    t.dfu.bcd_dfu = ENG_DFU_BCD_DFUSE;
    snprintf(t.dfu.alt_names[0], sizeof(t.dfu.alt_names[0]), "%s", STM32F4);
    assert_int_equal(eng_dfu_plan(&t, "0", b, 4096, "fw.bin", true, &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.segs[0].address, 0x08000000);
    assert_int_equal(eng_dfu_plan(&t, "1", b, 4096, "fw.bin", true, &plan, err, sizeof(err)),
                     ST_EINVAL);
    assert_string_equal(err, "alt 1 (\"Bootloader\") has no DfuSe memory layout");
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc_is_inverted_crc32),
        cmocka_unit_test(test_suffix_round_trip),
        cmocka_unit_test(test_bad_crc_refused),
        cmocka_unit_test(test_foreign_ids_refused_ffff_accepted),
        cmocka_unit_test(test_raw_bin_only_when_allowed),
        cmocka_unit_test(test_suffix_only_is_not_firmware),
        cmocka_unit_test(test_dfuse_built_here),
        cmocka_unit_test(test_layout_parse),
        cmocka_unit_test(test_dfu_suffix_tool_accepted),
        cmocka_unit_test(test_dfuse_pack_tool_accepted),
        cmocka_unit_test(test_plan_alts_and_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
