/*
 * fuzz_vfb_sparse: Android sparse images into the virtual fastboot
 * device (eng_vfb_apply_sparse, engine/virt/vfb.c), which writes them
 * onto a partition's bytes the way a device's flash would.
 *
 * Input: one control byte (bit 0: keep the bytes, as tests do; bit 1:
 * apply a second image onto the result, as the pieces of a split image
 * arrive; bits 2-3: start from a fresh, an erased or a raw-written
 * partition), then the first image, then (bit 1) a u16 length and the
 * second.
 *
 * The harness never asks for more than 1 MiB of kept partition: the model
 * allocates what the header declares (up to its 4 GiB limit), which is
 * by design for a test device and not a finding.
 *
 * Checked: after success the partition's recorded size is what the
 * header declares and, when kept, its bytes are all writable.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/virt/vfb.h"
#include "fuzz_util.h"

#define KEEP_MAX (1ull << 20)

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void apply(struct eng_vfb_part *part, const uint8_t *p, size_t len, bool keep)
{
    uint8_t *img = malloc(len ? len : 1); /* exact size: ASan sees overreads */
    char err[256];
    fail_if(!img);
    if (len)
        memcpy(img, p, len);
    uint64_t declared = len >= 20 ? (uint64_t)le32(img + 16) * le32(img + 12) : 0;
    if (keep && declared > KEEP_MAX)
        keep = false;
    int rc = eng_vfb_apply_sparse(part, img, len, keep, err, sizeof(err));
    fuzz_debug("apply (keep %d): %s, size %llu", keep, rc ? err : "ok",
               (unsigned long long)part->size);
    if (rc == 0) {
        fail_if(part->size != declared || !part->sparse || part->erased);
        if (keep && part->size)
            memset(part->data, 0x5a, part->size);
    } else {
        fail_if(memchr(err, '\0', sizeof(err)) == NULL);
    }
    free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz in = {data, size};
    uint8_t ctl = fz_u8(&in);
    bool keep = ctl & 1;
    struct eng_vfb_part part;
    memset(&part, 0, sizeof(part));
    strcpy(part.name, "system");
    switch ((ctl >> 2) & 3) {
    case 1: /* erased */
        part.erased = true;
        break;
    case 2: /* written raw before: 8 KiB of bytes */
        part.size = 8192;
        if (keep) {
            part.data = calloc(1, part.size);
            fail_if(!part.data);
        }
        break;
    default:
        break;
    }
    size_t first_len = in.n, got;
    if (ctl & 2)
        first_len = fz_u16(&in);
    const uint8_t *first = fz_bytes(&in, first_len, &got);
    apply(&part, first, got, keep);
    if (ctl & 2)
        apply(&part, in.p, in.n, keep);
    free(part.data);
    return 0;
}
