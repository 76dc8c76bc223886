/*
 * eng_sparse_plan: how an image is cut into Android sparse pieces that a
 * device with a given max-download-size accepts, exactly as AOSP fastboot
 * cuts it (shared/notes/fastboot.md): libsparse imports the image and
 * resparses it; we keep only the layout. Each piece is a list of byte
 * ranges: headers, fill values and padding live in the plan's own small
 * buffer, RAW data points into the image's mapping. Sending a piece copies
 * nothing.
 *
 * A plan is built once per (image, limit) on the libuv thread pool (it
 * reads the whole image once) and then shared read-only by every session;
 * it must not outlive the image mapping it points into.
 */
#ifndef ENG_SPARSE_H
#define ENG_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One contiguous range of bytes to send. */
struct eng_iov {
    const void *base;
    size_t len;
};

struct eng_sparse_piece {
    uint64_t bytes; /* the piece's size on the wire */
    const struct eng_iov *iov;
    unsigned n_iov;
};

struct eng_sparse_plan;

/* True if `data` starts with the Android sparse magic. */
bool eng_sparse_is_sparse(const uint8_t *data, uint64_t size);

/*
 * The largest piece fastboot sends for a device limit: the limit itself,
 * but at most 1 GiB (the client's resparse limit).
 */
uint64_t eng_sparse_piece_limit(uint64_t max_download);

/*
 * Plan the split of the image mapped at `map` (`size` bytes; `fd` is an
 * open descriptor of the same content, read by libsparse) into pieces of
 * at most `limit` bytes. Blocking: run it off the loop thread. Returns 0
 * and *out, or a negative code with a message in `err`.
 */
int eng_sparse_plan_new(int fd, const uint8_t *map, uint64_t size, uint64_t limit,
                        struct eng_sparse_plan **out, char *err, size_t errlen);

unsigned eng_sparse_plan_count(const struct eng_sparse_plan *plan);
const struct eng_sparse_piece *eng_sparse_plan_piece(const struct eng_sparse_plan *plan,
                                                     unsigned i);
uint64_t eng_sparse_plan_limit(const struct eng_sparse_plan *plan);
void eng_sparse_plan_free(struct eng_sparse_plan *plan);

#endif
