/*
 * DFU suffix, DfuSe container and DfuSe memory layouts (engine/dfu_file.h).
 *
 * Suffix, DFU 1.1 Appendix B, in file order (last 16 bytes):
 *   bcdDevice u16, idProduct u16, idVendor u16, bcdDFU u16, ucDfuSignature
 *   "UFD", bLength 16, dwCRC u32; all little-endian.
 * DfuSe container, ST UM0391:
 *   prefix (11): "DfuSe", bVersion 1, DFUImageSize u32, bTargets u8
 *   target prefix (274): "Target", bAlternateSetting u8, bTargetNamed u32,
 *     szTargetName[255], dwTargetSize u32, dwNbElements u32
 *   element: dwElementAddress u32, dwElementSize u32, data
 */
#include "engine/dfu_file.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/st_error.h"

#define DFUSE_PREFIX_LEN 11
#define DFUSE_TARGET_LEN 274
#define DFUSE_ELEMENT_LEN 8
#define DFUSE_MAX_ELEMENTS 4096

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static int failf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int failf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return ST_EINVAL;
}

uint32_t eng_dfu_crc(const void *buf, size_t len)
{
    /* zlib's crc32() takes uInt lengths: feed it in pieces. */
    uLong crc = crc32(0L, Z_NULL, 0);
    const Bytef *p = buf;
    while (len > 0) {
        uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = crc32(crc, p, n);
        p += n;
        len -= n;
    }
    return ~(uint32_t)crc;
}

void eng_dfu_suffix_make(uint8_t out[ENG_DFU_SUFFIX_LEN], const void *file, size_t len,
                         uint16_t vid, uint16_t pid, uint16_t bcd_device, uint16_t bcd_dfu)
{
    put16(out + 0, bcd_device);
    put16(out + 2, pid);
    put16(out + 4, vid);
    put16(out + 6, bcd_dfu);
    out[8] = 'U';
    out[9] = 'F';
    out[10] = 'D';
    out[11] = ENG_DFU_SUFFIX_LEN;
    /* The CRC covers the file and the first 12 suffix bytes. */
    uLong crc = crc32(0L, Z_NULL, 0);
    const Bytef *p = file;
    size_t left = len;
    while (left > 0) {
        uInt n = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, p, n);
        p += n;
        left -= n;
    }
    crc = crc32(crc, out, 12);
    uint32_t v = ~(uint32_t)crc;
    out[12] = (uint8_t)v;
    out[13] = (uint8_t)(v >> 8);
    out[14] = (uint8_t)(v >> 16);
    out[15] = (uint8_t)(v >> 24);
}

static bool overlaps(const struct eng_dfu_element *a, const struct eng_dfu_element *b)
{
    uint64_t a0 = a->address, a1 = a0 + a->size, b0 = b->address, b1 = b0 + b->size;
    return a->size && b->size && a0 < b1 && b0 < a1;
}

/* UM0391 container inside `p` (the file without its suffix). */
static int parse_dfuse(struct eng_dfu_file *f, size_t file_len, const char *name, char *err,
                       size_t errlen)
{
    const uint8_t *p = f->payload;
    size_t len = f->payload_len;
    if (len < DFUSE_PREFIX_LEN)
        return failf(err, errlen, "%s: DfuSe prefix cut short (%zu bytes)", name, len);
    if (p[5] != 0x01)
        return failf(err, errlen, "%s: DfuSe format version %u not supported (only 1)", name, p[5]);
    uint32_t image_size = le32(p + 6);
    /* UM0391 calls it the total file length; dfuse-pack counts the suffix,
     * some tools do not: both are accepted, nothing else. */
    if (image_size != file_len && image_size != len)
        return failf(err, errlen,
                     "%s: DfuSe image size says %u bytes, the file has %zu (%zu without suffix)",
                     name, image_size, file_len, len);
    unsigned n_targets = p[10];
    if (n_targets == 0)
        return failf(err, errlen, "%s: DfuSe file has no targets", name);
    size_t off = DFUSE_PREFIX_LEN;

    /* First pass: count and check, so one allocation holds every element. */
    unsigned total_elements = 0;
    for (unsigned t = 0; t < n_targets; t++) {
        if (len - off < DFUSE_TARGET_LEN)
            return failf(err, errlen, "%s: DfuSe target %u prefix cut short at offset %zu", name, t,
                         off);
        const uint8_t *tp = p + off;
        if (memcmp(tp, "Target", 6) != 0)
            return failf(err, errlen, "%s: DfuSe target %u: no \"Target\" signature at offset %zu",
                         name, t, off);
        uint32_t target_size = le32(tp + 266);
        uint32_t n_el = le32(tp + 270);
        off += DFUSE_TARGET_LEN;
        if (target_size > len - off)
            return failf(err, errlen,
                         "%s: DfuSe target %u claims %u bytes, only %zu left in the file", name, t,
                         target_size, len - off);
        if (n_el > DFUSE_MAX_ELEMENTS || total_elements + n_el > DFUSE_MAX_ELEMENTS)
            return failf(err, errlen, "%s: DfuSe target %u: too many elements (%u)", name, t, n_el);
        uint64_t sum = 0;
        size_t eoff = off;
        for (uint32_t e = 0; e < n_el; e++) {
            if (off + target_size - eoff < DFUSE_ELEMENT_LEN)
                return failf(err, errlen,
                             "%s: DfuSe target %u element %u header outside the target", name, t,
                             e);
            uint32_t esize = le32(p + eoff + 4);
            eoff += DFUSE_ELEMENT_LEN;
            if (esize > off + target_size - eoff)
                return failf(
                    err, errlen,
                    "%s: DfuSe target %u element %u: %u bytes, only %zu left in the target", name,
                    t, e, esize, off + target_size - eoff);
            eoff += esize;
            sum += DFUSE_ELEMENT_LEN + (uint64_t)esize;
        }
        if (sum != target_size)
            return failf(err, errlen,
                         "%s: DfuSe target %u: size says %u bytes, its elements take %llu", name, t,
                         target_size, (unsigned long long)sum);
        total_elements += n_el;
        off += target_size;
    }
    if (off != len)
        return failf(err, errlen, "%s: %zu unexpected bytes after the last DfuSe target", name,
                     len - off);

    f->targets = calloc(n_targets, sizeof(*f->targets));
    f->elements = calloc(total_elements ? total_elements : 1, sizeof(*f->elements));
    if (!f->targets || !f->elements) {
        failf(err, errlen, "%s: out of memory", name);
        return ST_ENOMEM;
    }
    f->n_targets = n_targets;
    off = DFUSE_PREFIX_LEN;
    for (unsigned t = 0; t < n_targets; t++) {
        const uint8_t *tp = p + off;
        struct eng_dfu_target *tg = &f->targets[t];
        tg->alt = tp[6];
        tg->named = le32(tp + 7) != 0;
        memcpy(tg->name, tp + 11, 255);
        tg->name[255] = '\0';
        tg->first = f->n_elements;
        tg->count = le32(tp + 270);
        off += DFUSE_TARGET_LEN;
        for (unsigned e = 0; e < tg->count; e++) {
            struct eng_dfu_element *el = &f->elements[f->n_elements++];
            el->address = le32(p + off);
            el->size = le32(p + off + 4);
            el->data = p + off + DFUSE_ELEMENT_LEN;
            off += DFUSE_ELEMENT_LEN + el->size;
            if ((uint64_t)el->address + el->size > 0x100000000ull)
                return failf(err, errlen, "%s: DfuSe target %u element %u runs past 4 GiB", name, t,
                             e);
            for (unsigned o = tg->first; o + 1 < f->n_elements; o++)
                if (overlaps(&f->elements[o], el))
                    return failf(err, errlen,
                                 "%s: DfuSe target %u: elements %u and %u overlap at 0x%08x", name,
                                 t, o - tg->first, e, el->address);
        }
    }
    return 0;
}

int eng_dfu_file_parse(const uint8_t *buf, size_t len, const char *name, struct eng_dfu_file *out,
                       char *err, size_t errlen)
{
    struct eng_dfu_file f;
    memset(&f, 0, sizeof(f));
    if (!name)
        name = "(image)";
    if (!buf && len)
        return failf(err, errlen, "%s: no data", name);
    f.payload = buf;
    f.payload_len = len;
    if (len >= ENG_DFU_SUFFIX_LEN) {
        const uint8_t *s = buf + len - ENG_DFU_SUFFIX_LEN;
        if (s[8] == 'U' && s[9] == 'F' && s[10] == 'D') {
            if (s[11] != ENG_DFU_SUFFIX_LEN)
                return failf(err, errlen, "%s: DFU suffix length %u not supported (only 16)", name,
                             s[11]);
            f.has_suffix = true;
            f.bcd_device = le16(s);
            f.pid = le16(s + 2);
            f.vid = le16(s + 4);
            f.bcd_dfu = le16(s + 6);
            f.crc = le32(s + 12);
            uint32_t computed = eng_dfu_crc(buf, len - 4);
            if (computed != f.crc)
                return failf(err, errlen,
                             "%s: DFU suffix CRC mismatch (file says 0x%08x, computed 0x%08x)",
                             name, f.crc, computed);
            f.payload_len = len - ENG_DFU_SUFFIX_LEN;
        }
    }
    if (f.payload_len >= 5 && memcmp(f.payload, "DfuSe", 5) == 0) {
        if (!f.has_suffix)
            return failf(err, errlen, "%s: DfuSe file without a DFU suffix", name);
        if (f.bcd_dfu != ENG_DFU_BCD_DFUSE)
            return failf(err, errlen,
                         "%s: DfuSe file, but its suffix says bcdDFU 0x%04x (not 0x011a)", name,
                         f.bcd_dfu);
        f.dfuse = true;
        int rc = parse_dfuse(&f, len, name, err, errlen);
        if (rc) {
            eng_dfu_file_free(&f);
            return rc;
        }
    }
    if (f.payload_len == 0 && !f.dfuse)
        return failf(err, errlen, "%s: no firmware bytes%s", name,
                     f.has_suffix ? " before the DFU suffix" : "");
    *out = f;
    return 0;
}

void eng_dfu_file_free(struct eng_dfu_file *f)
{
    if (!f)
        return;
    free(f->targets);
    free(f->elements);
    f->targets = NULL;
    f->elements = NULL;
    f->n_targets = f->n_elements = 0;
}

int eng_dfu_file_check_device(const struct eng_dfu_file *f, const char *name, uint16_t vid,
                              uint16_t pid, bool allow_raw, char *err, size_t errlen)
{
    if (!name)
        name = "(image)";
    if (!f->has_suffix) {
        if (allow_raw)
            return 0;
        return failf(err, errlen,
                     "%s: no DFU suffix (add one with dfu-suffix -a, or put allow-raw-dfu in the "
                     "recipe)",
                     name);
    }
    bool vid_ok = f->vid == ENG_DFU_ID_ANY || vid == ENG_DFU_ID_ANY || f->vid == vid;
    bool pid_ok = f->pid == ENG_DFU_ID_ANY || pid == ENG_DFU_ID_ANY || f->pid == pid;
    if (vid_ok && pid_ok)
        return 0;
    return failf(err, errlen, "%s: made for %04x:%04x, device is %04x:%04x", name, f->vid, f->pid,
                 vid, pid);
}

int eng_dfu_file_check(const uint8_t *buf, size_t len, const char *name, uint16_t vid, uint16_t pid,
                       bool allow_raw, char *err, size_t errlen)
{
    struct eng_dfu_file f = {0}; /* the compiler cannot see that parse fills it on 0 */
    int rc = eng_dfu_file_parse(buf, len, name, &f, err, errlen);
    if (rc)
        return rc;
    rc = eng_dfu_file_check_device(&f, name, vid, pid, allow_raw, err, errlen);
    eng_dfu_file_free(&f);
    return rc;
}

/* ---- DfuSe memory layout ---- */

static const char *skip_spaces(const char *s)
{
    while (*s == ' ')
        s++;
    return s;
}

/* NN*SSSu[t] */
static const char *parse_group(const char *s, struct eng_dfuse_group *g)
{
    char *end;
    s = skip_spaces(s);
    if (!isdigit((unsigned char)*s))
        return NULL;
    unsigned long count = strtoul(s, &end, 10);
    if (*end != '*' || count == 0 || count > 0xffff)
        return NULL;
    s = end + 1;
    if (!isdigit((unsigned char)*s))
        return NULL;
    unsigned long size = strtoul(s, &end, 10);
    s = end;
    uint64_t mult = 1;
    if (*s == 'K') {
        mult = 1024;
        s++;
    } else if (*s == 'M') {
        mult = 1024 * 1024;
        s++;
    } else if (*s == 'B' || *s == ' ') {
        s++;
    }
    uint8_t type = 0;
    if (*s >= 'a' && *s <= 'g')
        type = (uint8_t)(*s++ - 'a' + 1);
    uint64_t bytes = (uint64_t)size * mult;
    if (bytes == 0 || bytes > 0x80000000ull)
        return NULL;
    g->count = (uint32_t)count;
    g->size = (uint32_t)bytes;
    g->type = type;
    return s;
}

int eng_dfuse_layout_parse(const char *alt_name, struct eng_dfuse_layout *out)
{
    struct eng_dfuse_layout l;
    memset(&l, 0, sizeof(l));
    if (!alt_name || alt_name[0] != '@')
        return ST_EINVAL;
    const char *s = alt_name + 1;
    const char *slash = strchr(s, '/');
    if (!slash)
        return ST_EINVAL;
    size_t n = (size_t)(slash - s);
    while (n > 0 && s[n - 1] == ' ')
        n--;
    if (n >= sizeof(l.name))
        n = sizeof(l.name) - 1;
    memcpy(l.name, s, n);
    s = slash;
    while (*s == '/') {
        if (l.n_regions == ENG_DFUSE_MAX_REGIONS)
            return ST_EINVAL;
        struct eng_dfuse_region *r = &l.regions[l.n_regions];
        char *end;
        s = skip_spaces(s + 1);
        unsigned long long addr = strtoull(s, &end, 0);
        if (end == s || addr > 0xffffffffull)
            return ST_EINVAL;
        s = skip_spaces(end);
        if (*s != '/')
            return ST_EINVAL;
        s++;
        for (;;) {
            if (r->n_groups == ENG_DFUSE_MAX_GROUPS)
                return ST_EINVAL;
            struct eng_dfuse_group *g = &r->groups[r->n_groups];
            s = parse_group(s, g);
            if (!s)
                return ST_EINVAL;
            r->n_groups++;
            r->size += (uint64_t)g->count * g->size;
            s = skip_spaces(s);
            if (*s != ',')
                break;
            s++;
        }
        r->address = (uint32_t)addr;
        if (r->address + r->size > 0x100000000ull)
            return ST_EINVAL;
        l.n_regions++;
    }
    if (*s != '\0' || l.n_regions == 0)
        return ST_EINVAL;
    *out = l;
    return 0;
}

bool eng_dfuse_layout_find(const struct eng_dfuse_layout *l, uint32_t address,
                           uint32_t *sector_start, uint32_t *sector_size, uint8_t *type)
{
    for (unsigned i = 0; i < l->n_regions; i++) {
        const struct eng_dfuse_region *r = &l->regions[i];
        if (address < r->address || address - r->address >= r->size)
            continue;
        uint64_t base = r->address;
        for (unsigned g = 0; g < r->n_groups; g++) {
            uint64_t span = (uint64_t)r->groups[g].count * r->groups[g].size;
            if (address < base + span) {
                uint64_t k = (address - base) / r->groups[g].size;
                if (sector_start)
                    *sector_start = (uint32_t)(base + k * r->groups[g].size);
                if (sector_size)
                    *sector_size = r->groups[g].size;
                if (type)
                    *type = r->groups[g].type;
                return true;
            }
            base += span;
        }
    }
    return false;
}
