/*
 * The sparse split against its oracle: for each image and limit, every
 * piece our plan describes must equal, byte for byte, what libsparse's
 * own import + resparse + write produce (the AOSP fastboot client's path).
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <android/sparse/sparse.h>

#include "common/st_error.h"
#include "engine/sparse.h"
#include "helpers.h"

static void compare(const char *path, unsigned limit)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    assert_true(fd >= 0);
    fstat(fd, &st);
    const uint8_t *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(map != MAP_FAILED);
    struct eng_sparse_plan *plan = NULL;
    char err[200] = "";
    int rc = eng_sparse_plan_new(fd, map, (uint64_t)st.st_size, limit, &plan, err, sizeof(err));
    if (rc)
        fail_msg("plan failed: %s", err);
    struct th_buf *want;
    int n = th_oracle(path, limit, &want);
    assert_int_equal(eng_sparse_plan_count(plan), (unsigned)n);
    for (int i = 0; i < n; i++) {
        const struct eng_sparse_piece *pc = eng_sparse_plan_piece(plan, (unsigned)i);
        assert_int_equal(pc->bytes, want[i].len);
        assert_true(pc->bytes <= limit);
        size_t off = 0;
        for (unsigned k = 0; k < pc->n_iov; k++) {
            assert_true(off + pc->iov[k].len <= want[i].len);
            if (memcmp(pc->iov[k].base, want[i].p + off, pc->iov[k].len) != 0)
                fail_msg("piece %d/%d differs in range %u (offset %zu)", i + 1, n, k, off);
            off += pc->iov[k].len;
        }
        assert_int_equal(off, want[i].len);
    }
    th_oracle_free(want, n);
    eng_sparse_plan_free(plan);
    munmap((void *)map, (size_t)st.st_size);
    close(fd);
}

static char dir[256];

static void test_raw_images_split_like_libsparse(void **state)
{
    static const size_t sizes[] = {5 * 4096 + 123, 300 * 4096, 1000 * 4096 + 7};
    static const unsigned limits[] = {64 * 1024, 100 * 1024 + 3, 256 * 1024, 1024 * 1024};
    char path[300];
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        uint8_t *img = th_sparse_test_image(sizes[s], (unsigned)s + 1);
        snprintf(path, sizeof(path), "%s/raw%zu.img", dir, s);
        th_spit(path, img, sizes[s]);
        free(img);
        for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++)
            compare(path, limits[l]);
    }
}

static void test_sparse_input_resparsed_like_libsparse(void **state)
{
    char raw[300], simg[300];
    uint8_t *img = th_sparse_test_image(700 * 4096 + 99, 42);
    snprintf(raw, sizeof(raw), "%s/in.img", dir);
    snprintf(simg, sizeof(simg), "%s/in.simg", dir);
    th_spit(raw, img, 700 * 4096 + 99);
    free(img);
    assert_int_equal(th_sh("img2simg '%s' '%s'", raw, simg), 0);
    compare(simg, 128 * 1024);
    compare(simg, 1024 * 1024);
}

static void test_sixteen_mib_pieces_match_the_client(void **state)
{
    /* 40 MiB of random data with a 16 MiB limit: fastboot sends pieces of
     * 0xfff034 bytes (shared/notes/fastboot.md). */
    char path[300];
    size_t len = 40u << 20;
    uint8_t *img = malloc(len);
    srand(7);
    for (size_t i = 0; i < len; i += 4) {
        uint32_t r = (uint32_t)rand();
        memcpy(img + i, &r, 4);
    }
    snprintf(path, sizeof(path), "%s/big.img", dir);
    th_spit(path, img, len);
    free(img);
    compare(path, 16u << 20);
    int fd = open(path, O_RDONLY);
    const uint8_t *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    struct eng_sparse_plan *plan;
    char err[200];
    assert_int_equal(eng_sparse_plan_new(fd, map, len, 16u << 20, &plan, err, sizeof(err)), 0);
    assert_int_equal(eng_sparse_plan_piece(plan, 0)->bytes, 0xfff034);
    eng_sparse_plan_free(plan);
    munmap((void *)map, len);
    close(fd);
}

static void test_limits_and_detection(void **state)
{
    uint8_t hdr[28] = {0x3a, 0xff, 0x26, 0xed};
    assert_true(eng_sparse_is_sparse(hdr, sizeof(hdr)));
    assert_false(eng_sparse_is_sparse(hdr, 10));
    hdr[0] = 0;
    assert_false(eng_sparse_is_sparse(hdr, sizeof(hdr)));
    assert_int_equal(eng_sparse_piece_limit(16u << 20), 16u << 20);
    assert_int_equal(eng_sparse_piece_limit(3ull << 30), 1ull << 30);
    struct eng_sparse_plan *plan = NULL;
    char err[200];
    uint8_t data[4096] = {0};
    assert_int_equal(eng_sparse_plan_new(0, data, sizeof(data), 100, &plan, err, sizeof(err)),
                     ST_ERANGE);
    assert_null(plan);
}

static int group_setup(void **state)
{
    th_tmpdir("sparse", dir, sizeof(dir));
    return 0;
}

static int group_teardown(void **state)
{
    return th_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_images_split_like_libsparse),
        cmocka_unit_test(test_sparse_input_resparsed_like_libsparse),
        cmocka_unit_test(test_sixteen_mib_pieces_match_the_client),
        cmocka_unit_test(test_limits_and_detection),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
