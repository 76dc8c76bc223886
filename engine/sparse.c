/*
 * Sparse split planning. libsparse does the deciding (import, resparse,
 * write with sparse=true, crc=false, the client's own calls); we watch the
 * byte stream it writes for each piece and record where every byte comes
 * from. Stream layout (shared/notes/fastboot.md): a 28-byte file header,
 * then per chunk a 12-byte header followed by RAW data (chunk_sz blocks),
 * a 4-byte FILL value, nothing (DONT_CARE) or a 4-byte CRC32.
 */
#include "engine/sparse.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <android/sparse/sparse.h>

#include "common/st_error.h"

#define SPARSE_MAGIC 0xed26ff3au
#define RESPARSE_LIMIT (1ull << 30)
#define SPARSE_MAX_BLOCK (1u << 20) /* images use 4 KiB; ext4 allows up to 64 KiB */

/* A range while planning: offsets, resolved to pointers at the end. */
struct seg {
    uint64_t off;
    uint64_t len;
    bool in_plan; /* in the plan's buffer, else in the image */
};

struct raw_src { /* sparse input: where RAW blocks live in the file */
    uint64_t blk, n, off;
};

struct eng_sparse_plan {
    uint64_t limit;
    unsigned n_pieces;
    struct eng_sparse_piece *pieces;
    struct eng_iov *iov;
    uint8_t *buf; /* headers, fill values, padding */
};

struct builder {
    const uint8_t *map;
    uint64_t size;
    uint32_t bs;
    bool sparse_input;
    struct raw_src *src;
    unsigned n_src;
    /* output */
    struct seg *segs;
    size_t n_segs, cap_segs;
    uint8_t *buf;
    size_t buf_len, buf_cap;
    /* stream parser state for the current piece */
    enum { P_FILE_HDR, P_CHUNK_HDR, P_RAW, P_INLINE } state;
    uint8_t hdr[28];
    size_t hdr_have, want;
    uint64_t blk; /* block position of the current chunk */
    uint32_t chunk_blocks;
    uint64_t raw_done; /* bytes of the current RAW chunk seen */
    uint64_t piece_bytes;
    size_t piece_first; /* first range of the current piece: never merge below */
    int error;
    char *err;
    size_t errlen;
};

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

bool eng_sparse_is_sparse(const uint8_t *data, uint64_t size)
{
    return size >= 28 && le32(data) == SPARSE_MAGIC;
}

uint64_t eng_sparse_piece_limit(uint64_t max_download)
{
    return max_download < RESPARSE_LIMIT ? max_download : RESPARSE_LIMIT;
}

static int fail(struct builder *b, int code, const char *msg)
{
    if (!b->error) {
        b->error = code;
        snprintf(b->err, b->errlen, "%s", msg);
    }
    return -1;
}

static int add_seg(struct builder *b, uint64_t off, uint64_t len, bool in_plan)
{
    if (len == 0)
        return 0;
    if (b->n_segs > b->piece_first) {
        struct seg *last = &b->segs[b->n_segs - 1];
        if (last->in_plan == in_plan && last->off + last->len == off) {
            last->len += len;
            return 0;
        }
    }
    if (b->n_segs == b->cap_segs) {
        size_t cap = b->cap_segs ? b->cap_segs * 2 : 64;
        struct seg *n = realloc(b->segs, cap * sizeof(*n));
        if (!n)
            return fail(b, ST_ENOMEM, "out of memory planning a sparse split");
        b->segs = n;
        b->cap_segs = cap;
    }
    b->segs[b->n_segs++] = (struct seg){off, len, in_plan};
    return 0;
}

/* Copy bytes into the plan's buffer and reference them. */
static int add_bytes(struct builder *b, const void *data, size_t len)
{
    if (b->buf_len + len > b->buf_cap) {
        size_t cap = b->buf_cap ? b->buf_cap : 4096;
        while (cap < b->buf_len + len)
            cap *= 2;
        uint8_t *n = realloc(b->buf, cap);
        if (!n)
            return fail(b, ST_ENOMEM, "out of memory planning a sparse split");
        b->buf = n;
        b->buf_cap = cap;
    }
    if (data)
        memcpy(b->buf + b->buf_len, data, len);
    else
        memset(b->buf + b->buf_len, 0, len);
    int rc = add_seg(b, b->buf_len, len, true);
    b->buf_len += len;
    return rc;
}

/* Where input block `blk` lives in the image file; *run = blocks left in
 * that contiguous run. UINT64_MAX when the input has no data there. */
static uint64_t block_offset(struct builder *b, uint64_t blk, uint64_t *run)
{
    if (!b->sparse_input) {
        *run = UINT64_MAX;
        return blk * b->bs;
    }
    unsigned lo = 0, hi = b->n_src;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        const struct raw_src *s = &b->src[mid];
        if (blk < s->blk)
            hi = mid;
        else if (blk >= s->blk + s->n)
            lo = mid + 1;
        else {
            *run = s->blk + s->n - blk;
            return s->off + (blk - s->blk) * b->bs;
        }
    }
    *run = 0;
    return UINT64_MAX;
}

/* `len` bytes of RAW data at byte `pos` of the current chunk. */
/* The bytes libsparse wrote are the image's own (tests/test_sparse.c checks
 * every piece against libsparse byte for byte), so they are not compared
 * again here: that was a second full pass before the first byte went out. */
static int raw_bytes(struct builder *b, const uint8_t *data, size_t len)
{
    while (len > 0) {
        uint64_t in_chunk = b->raw_done;
        uint64_t blk = b->blk + in_chunk / b->bs;
        uint64_t within = in_chunk % b->bs;
        uint64_t run;
        uint64_t off = block_offset(b, blk, &run);
        if (off == UINT64_MAX)
            return fail(b, ST_EPROTO, "sparse split: data for a block the image does not have");
        uint64_t avail = run == UINT64_MAX ? UINT64_MAX : run * b->bs - within;
        uint64_t n = len < avail ? len : avail;
        off += within;
        if (off >= b->size) {
            /* padding of the last partial block */
            if (add_bytes(b, NULL, n))
                return -1;
        } else {
            uint64_t img = off + n <= b->size ? n : b->size - off;
            if (add_seg(b, off, img, false) || add_bytes(b, NULL, n - img))
                return -1;
        }
        if (data)
            data += n;
        len -= n;
        b->raw_done += n;
    }
    return 0;
}

static int on_write(void *priv, const void *data, size_t len)
{
    struct builder *b = priv;
    const uint8_t *p = data;
    if (b->error)
        return -1;
    b->piece_bytes += len;
    while (len > 0) {
        size_t n = 0;
        switch (b->state) {
        case P_FILE_HDR:
        case P_CHUNK_HDR:
            n = b->want - b->hdr_have < len ? b->want - b->hdr_have : len;
            if (p)
                memcpy(b->hdr + b->hdr_have, p, n);
            else
                memset(b->hdr + b->hdr_have, 0, n);
            if (add_bytes(b, p, n))
                return -1;
            b->hdr_have += n;
            if (b->hdr_have == b->want) {
                if (b->state == P_FILE_HDR) {
                    if (le32(b->hdr) != SPARSE_MAGIC || le16(b->hdr + 10) != 12)
                        return fail(b, ST_EPROTO, "sparse split: unexpected file header");
                    b->state = P_CHUNK_HDR;
                    b->want = 12;
                } else {
                    uint16_t type = le16(b->hdr);
                    uint32_t blocks = le32(b->hdr + 4), total = le32(b->hdr + 8);
                    if (type == 0xCAC1) {
                        b->state = P_RAW;
                        b->raw_done = 0;
                        b->want = total - 12;
                    } else if (type == 0xCAC2 || type == 0xCAC4) {
                        b->state = P_INLINE;
                        b->want = total - 12;
                    } else if (type == 0xCAC3) {
                        b->blk += blocks;
                        b->want = 12;
                    } else {
                        return fail(b, ST_EPROTO, "sparse split: unknown chunk type");
                    }
                    b->chunk_blocks = blocks;
                }
                b->hdr_have = 0;
            }
            break;
        case P_RAW:
            n = b->want < len ? b->want : len;
            if (raw_bytes(b, p, n))
                return -1;
            b->want -= n;
            if (b->want == 0) {
                b->blk += b->chunk_blocks;
                b->state = P_CHUNK_HDR;
                b->want = 12;
            }
            break;
        case P_INLINE:
            n = b->want < len ? b->want : len;
            if (add_bytes(b, p, n))
                return -1;
            b->want -= n;
            if (b->want == 0) {
                b->blk += b->chunk_blocks;
                b->state = P_CHUNK_HDR;
                b->want = 12;
            }
            break;
        }
        if (p)
            p += n;
        len -= n;
    }
    return 0;
}

/* For a sparse input: where each RAW chunk's data sits in the file. */
static int index_sparse_input(struct builder *b)
{
    const uint8_t *m = b->map;
    uint32_t hdr = le16(m + 8), chdr = le16(m + 10), chunks = le32(m + 20);
    b->bs = le32(m + 12);
    if (hdr < 28 || chdr < 12 || b->bs == 0)
        return fail(b, ST_EPROTO, "sparse image: bad header");
    /* libsparse allocates a block-sized buffer per piece and keeps block
     * sizes in an int: refuse what no image uses before it sees them. */
    if (b->bs % 4 != 0 || b->bs > SPARSE_MAX_BLOCK)
        return fail(b, ST_EPROTO, "sparse image: unsupported block size");
    /* Each chunk takes at least a chunk header: the count in the file
     * header must not size the index beyond what the file can hold. */
    if (hdr > b->size || chunks > (b->size - hdr) / chdr)
        return fail(b, ST_EPROTO, "sparse image: truncated chunk header");
    b->src = calloc(chunks ? chunks : 1, sizeof(*b->src));
    if (!b->src)
        return fail(b, ST_ENOMEM, "out of memory");
    uint64_t off = hdr, blk = 0;
    for (uint32_t c = 0; c < chunks; c++) {
        if (off + chdr > b->size)
            return fail(b, ST_EPROTO, "sparse image: truncated chunk header");
        uint16_t type = le16(m + off);
        uint32_t n = le32(m + off + 4), total = le32(m + off + 8);
        if (total < chdr || off + total > b->size)
            return fail(b, ST_EPROTO, "sparse image: chunk out of bounds");
        /* The size a chunk declares must be what its type carries:
         * libsparse trusts the block count and reads elsewhere if not. */
        uint64_t body = type == 0xCAC1                     ? (uint64_t)n * b->bs
                        : type == 0xCAC2 || type == 0xCAC4 ? 4
                        : type == 0xCAC3                   ? 0
                                                           : UINT64_MAX;
        if (body == UINT64_MAX)
            return fail(b, ST_EPROTO, "sparse image: unknown chunk type");
        if ((uint64_t)total != chdr + body)
            return fail(b, ST_EPROTO, "sparse image: a chunk's size does not match its blocks");
        if (type == 0xCAC1)
            b->src[b->n_src++] = (struct raw_src){blk, n, off + chdr};
        blk += n;
        off += total;
    }
    return 0;
}

/* True when the whole block's 32-bit words all equal the first. */
static bool fill_block(const uint8_t *p, uint32_t bs, uint32_t *value)
{
    uint32_t first;
    memcpy(&first, p, 4);
    for (uint32_t i = 4; i < bs; i += 4)
        if (memcmp(p + i, &first, 4) != 0)
            return false;
    *value = first;
    return true;
}

/*
 * A raw image for libsparse, classified from the mapping instead of letting
 * sparse_file_import_auto() read() the whole file through a buffer to do
 * it (a full copy of the image, a third of the plan's cost). The blocks
 * go to libsparse as its own reader gives them, one call per block in
 * order: a whole block whose 32-bit words all equal the first is a fill
 * of that value; anything else (the last partial block included) is a
 * range of the file. libsparse merges them exactly as it merges its
 * reader's, so the chunk list and every piece written from it are the
 * same: tests/test_sparse.c and tests/fuzz/fuzz_sparse.c compare them
 * with libsparse's own import, byte for byte.
 */
static struct sparse_file *import_raw(int fd, const uint8_t *map, uint64_t size)
{
    const uint32_t bs = 4096;
    struct sparse_file *s = sparse_file_new(bs, (int64_t)size);
    if (!s)
        return NULL;
    uint64_t blocks = (size + bs - 1) / bs;
    for (uint64_t blk = 0; blk < blocks; blk++) {
        uint64_t off = blk * bs;
        uint32_t len = size - off < bs ? (uint32_t)(size - off) : bs, value;
        int rc = len == bs && fill_block(map + off, bs, &value)
                     ? sparse_file_add_fill(s, value, len, (unsigned)blk)
                     : sparse_file_add_fd(s, fd, (int64_t)off, len, (unsigned)blk);
        if (rc < 0) {
            sparse_file_destroy(s);
            return NULL;
        }
    }
    return s;
}

int eng_sparse_plan_new(int fd, const uint8_t *map, uint64_t size, uint64_t limit,
                        struct eng_sparse_plan **out, char *err, size_t errlen)
{
    struct builder b = {.map = map, .size = size, .bs = 4096, .err = err, .errlen = errlen};
    struct sparse_file *in = NULL, **pieces = NULL;
    struct eng_sparse_plan *plan = NULL;
    size_t *piece_first = NULL;
    int n = 0, rc = 0;
    char path[64];

    if (limit < 4 * 4096 || limit > 0xffffffffu) {
        snprintf(err, errlen, "max-download-size %llu is too small or too large to split for",
                 (unsigned long long)limit);
        return ST_ERANGE;
    }
    /* A private file position: plans for several limits may run at once. */
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int own = open(path, O_RDONLY | O_CLOEXEC);
    if (own < 0) {
        snprintf(err, errlen, "cannot reopen the image: %s", strerror(errno));
        return st_error_from_errno(errno);
    }
    b.sparse_input = eng_sparse_is_sparse(map, size);
    if (b.sparse_input && index_sparse_input(&b) != 0) {
        rc = b.error;
        goto out;
    }
    if (!b.sparse_input && size / 4096 < 0xffffffffull) /* block numbers are 32-bit there */
        in = import_raw(own, map, size);
    else
        in = sparse_file_import_auto(own, false, false);
    if (!in) {
        rc = ST_EPROTO;
        snprintf(err, errlen, "libsparse could not read the image");
        goto out;
    }
    n = sparse_file_resparse(in, (unsigned)limit, NULL, 0);
    if (n <= 0) {
        rc = ST_EPROTO;
        snprintf(err, errlen, "libsparse could not split the image");
        goto out;
    }
    pieces = calloc((size_t)n, sizeof(*pieces));
    piece_first = calloc((size_t)n + 1, sizeof(*piece_first));
    plan = calloc(1, sizeof(*plan));
    if (!pieces || !piece_first || !plan) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    plan->pieces = calloc((size_t)n, sizeof(*plan->pieces));
    if (!plan->pieces || sparse_file_resparse(in, (unsigned)limit, pieces, n) != n) {
        rc = plan->pieces ? ST_EPROTO : ST_ENOMEM;
        snprintf(err, errlen, "libsparse could not split the image");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        b.state = P_FILE_HDR;
        b.want = 28;
        b.hdr_have = 0;
        b.blk = 0;
        b.piece_bytes = 0;
        piece_first[i] = b.n_segs;
        b.piece_first = b.n_segs;
        if (sparse_file_callback(pieces[i], true, false, on_write, &b) < 0 || b.error) {
            rc = b.error ? b.error : ST_EPROTO;
            if (!b.error)
                snprintf(err, errlen, "libsparse could not write piece %d", i + 1);
            goto out;
        }
        plan->pieces[i].bytes = b.piece_bytes;
        if (b.piece_bytes > limit) {
            rc = ST_EPROTO;
            snprintf(err, errlen, "sparse piece %d is larger than the limit", i + 1);
            goto out;
        }
    }
    piece_first[n] = b.n_segs;
    plan->iov = calloc(b.n_segs ? b.n_segs : 1, sizeof(*plan->iov));
    if (!plan->iov) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    plan->buf = b.buf;
    b.buf = NULL;
    for (size_t i = 0; i < b.n_segs; i++)
        plan->iov[i] = (struct eng_iov){
            .base = b.segs[i].in_plan ? (const void *)(plan->buf + b.segs[i].off)
                                      : (const void *)(map + b.segs[i].off),
            .len = (size_t)b.segs[i].len,
        };
    for (int i = 0; i < n; i++) {
        plan->pieces[i].iov = plan->iov + piece_first[i];
        plan->pieces[i].n_iov = (unsigned)(piece_first[i + 1] - piece_first[i]);
    }
    plan->n_pieces = (unsigned)n;
    plan->limit = limit;
    *out = plan;
    plan = NULL;
out:
    if (pieces)
        for (int i = 0; i < n; i++)
            if (pieces[i])
                sparse_file_destroy(pieces[i]);
    if (in)
        sparse_file_destroy(in);
    free(pieces);
    free(piece_first);
    free(b.segs);
    free(b.buf);
    free(b.src);
    eng_sparse_plan_free(plan);
    close(own);
    return rc;
}

unsigned eng_sparse_plan_count(const struct eng_sparse_plan *plan)
{
    return plan->n_pieces;
}

const struct eng_sparse_piece *eng_sparse_plan_piece(const struct eng_sparse_plan *plan, unsigned i)
{
    return i < plan->n_pieces ? &plan->pieces[i] : NULL;
}

uint64_t eng_sparse_plan_limit(const struct eng_sparse_plan *plan)
{
    return plan->limit;
}

void eng_sparse_plan_free(struct eng_sparse_plan *plan)
{
    if (!plan)
        return;
    free(plan->pieces);
    free(plan->iov);
    free(plan->buf);
    free(plan);
}
