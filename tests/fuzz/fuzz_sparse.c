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
 * (each byte is read, so ASan sees a range that points elsewhere); and
 * the pieces are, byte for byte, what libsparse's own import, resparse
 * and write give for the same file (the planner builds a raw image's
 * chunk list from the mapping itself, and must end up the same).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <android/sparse/sparse.h>

#include "engine/sparse.h"
#include "fuzz_util.h"

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

struct stream {
    uint8_t *p;
    size_t len, cap;
};

static int collect(void *priv, const void *data, size_t len)
{
    struct stream *b = priv;
    if (b->len + len > b->cap) {
        size_t cap = (b->len + len) * 2;
        uint8_t *n = realloc(b->p, cap);
        fail_if(n == NULL);
        b->p = n;
        b->cap = cap;
    }
    if (data)
        memcpy(b->p + b->len, data, len);
    else
        memset(b->p + b->len, 0, len);
    b->len += len;
    return 0;
}

/* libsparse's own import, resparse and write of the file: its pieces in
 * want[] (*n of them), or -1 where libsparse itself refuses. */
static int oracle(int fd, uint64_t limit, struct stream **want, int *n)
{
    *want = NULL;
    *n = 0;
    fail_if(lseek(fd, 0, SEEK_SET) != 0);
    struct sparse_file *in = sparse_file_import_auto(fd, false, false);
    if (!in)
        return -1;
    int rc = 0, k = sparse_file_resparse(in, (unsigned)limit, NULL, 0);
    struct sparse_file **pieces = k > 0 ? calloc((size_t)k, sizeof(*pieces)) : NULL;
    *want = k > 0 ? calloc((size_t)k, sizeof(**want)) : NULL;
    if (k <= 0 || !pieces || !*want || sparse_file_resparse(in, (unsigned)limit, pieces, k) != k)
        rc = -1;
    for (int i = 0; i < k && pieces; i++) {
        if (rc == 0 && sparse_file_callback(pieces[i], true, false, collect, &(*want)[i]) < 0)
            rc = -1;
        if (pieces[i])
            sparse_file_destroy(pieces[i]);
    }
    free(pieces);
    sparse_file_destroy(in);
    *n = k;
    return rc;
}

static void free_oracle(struct stream *want, int n)
{
    for (int i = 0; want && i < n; i++)
        free(want[i].p);
    free(want);
}

/* The plan's pieces, byte for byte, against libsparse's. */
static void same_as_libsparse(const struct eng_sparse_plan *plan, const struct stream *want, int n)
{
    fail_if(n != (int)eng_sparse_plan_count(plan));
    for (int i = 0; i < n; i++) {
        const struct eng_sparse_piece *pc = eng_sparse_plan_piece(plan, (unsigned)i);
        fail_if(pc->bytes != want[i].len);
        size_t off = 0;
        for (unsigned k = 0; k < pc->n_iov; k++) {
            fail_if(off + pc->iov[k].len > want[i].len ||
                    memcmp(pc->iov[k].base, want[i].p + off, pc->iov[k].len) != 0);
            off += pc->iov[k].len;
        }
    }
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
    /* What libsparse makes of the same file: the plan must give the same
     * pieces, and for a raw image it must fail exactly where libsparse
     * does. A sparse image the planner refused is not given to libsparse
     * here: the planner checks headers first because libsparse trusts
     * them (block sizes it then allocates). */
    bool raw = len > 0 && !eng_sparse_is_sparse(img, len);
    if (rc == 0 || raw) {
        struct stream *want;
        int n_want;
        int orc = oracle(fd, limit, &want, &n_want);
        if (rc == 0) {
            fail_if(orc != 0);
            same_as_libsparse(plan, want, n_want);
        } else {
            fail_if(orc == 0);
        }
        free_oracle(want, n_want);
    }
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
