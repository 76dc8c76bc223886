/*
 * fuzz_sparse: images into the sparse split planner (engine/sparse.c),
 * which hands them to libsparse and reads back what it writes.
 *
 * Input: one byte choosing the device's max-download-size (16 KiB to
 * 4 MiB), then the image: Android sparse or raw, as the planner sees
 * either. The image is given as it is in production: a mapping (here the
 * input bytes) and a descriptor of the same content (a memfd).
 *
 * Checked: every piece is at most the limit, its ranges add up to its
 * size, and every range points into the image or the plan's own buffer
 * (each byte is read, so ASan sees a range that points elsewhere).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/sparse.h"
#include "fuzz_util.h"

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint64_t limit = (16u * 1024) << (data[0] % 9);
    const uint8_t *img = data + 1;
    size_t len = size - 1;
    int fd = memfd_create("fuzz-image", MFD_CLOEXEC);
    fail_if(fd < 0);
    fail_if(len && write(fd, img, len) != (ssize_t)len);
    fail_if(lseek(fd, 0, SEEK_SET) != 0);

    struct eng_sparse_plan *plan = NULL;
    char err[256];
    int rc = eng_sparse_plan_new(fd, img, len, limit, &plan, err, sizeof(err));
    if (rc)
        fuzz_debug("plan: %s", err);
    else
        fuzz_debug("plan: %u pieces for limit %llu", eng_sparse_plan_count(plan),
                   (unsigned long long)limit);
    if (rc == 0) {
        unsigned n = eng_sparse_plan_count(plan);
        volatile uint8_t sink = 0;
        fail_if(eng_sparse_plan_limit(plan) != limit);
        for (unsigned i = 0; i < n; i++) {
            const struct eng_sparse_piece *pc = eng_sparse_plan_piece(plan, i);
            uint64_t sum = 0;
            fail_if(pc == NULL || pc->bytes > limit);
            for (unsigned k = 0; k < pc->n_iov; k++) {
                const uint8_t *b = pc->iov[k].base;
                for (size_t j = 0; j < pc->iov[k].len; j++)
                    sink ^= b[j];
                sum += pc->iov[k].len;
            }
            fail_if(sum != pc->bytes);
        }
        fail_if(eng_sparse_plan_piece(plan, n) != NULL);
        (void)sink;
        eng_sparse_plan_free(plan);
    } else {
        fail_if(rc > 0 || memchr(err, '\0', sizeof(err)) == NULL);
    }
    close(fd);
    return 0;
}
