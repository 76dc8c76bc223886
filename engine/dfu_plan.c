/*
 * eng_dfu_plan(): from a recipe step (ALT, IMAGE) and the device's
 * descriptors to the segments the DFU driver sends (engine/dfu.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/dfu.h"
#include "engine/dfu_file.h"

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

/* ALT as a number, the whole alt name, or a DfuSe layout's name part. */
static int resolve_alt(const struct eng_dfu_info *info, const char *arg, unsigned *alt, char *err,
                       size_t errlen)
{
    char *end;
    unsigned long n = strtoul(arg, &end, 10);
    if (end != arg && *end == '\0') {
        if (n >= info->n_alts)
            return failf(err, errlen, "no alt setting %lu (the device has %u)", n, info->n_alts);
        *alt = (unsigned)n;
        return 0;
    }
    for (unsigned a = 0; a < info->n_alts; a++) {
        struct eng_dfuse_layout l;
        if (!strcmp(info->alt_names[a], arg) ||
            (eng_dfuse_layout_parse(info->alt_names[a], &l) == 0 && !strcmp(l.name, arg))) {
            *alt = a;
            return 0;
        }
    }
    char have[256] = "";
    size_t o = 0;
    for (unsigned a = 0; a < info->n_alts && o + 1 < sizeof(have); a++) {
        int k = snprintf(have + o, sizeof(have) - o, "%s%u \"%.60s\"", a ? ", " : "", a,
                         info->alt_names[a]);
        if (k < 0)
            break;
        o += (size_t)k;
    }
    return failf(err, errlen, "no alt setting named \"%s\" (the device has %s)", arg, have);
}

int eng_dfu_plan_file(const struct eng_transport *t, const char *alt_arg,
                      const struct eng_dfu_file *fp, const char *image_name, bool allow_raw,
                      struct eng_dfu_plan *out, char *err, size_t errlen)
{
    const struct eng_dfu_info *info = &t->dfu;
    const struct eng_dfu_file f = *fp;
    unsigned alt = 0;
    int rc;
    if (t->protocol_kind != ENG_PROTO_DFU)
        return failf(err, errlen, "not a DFU device");
    if (info->mode != 2)
        return failf(err, errlen,
                     "the device is in run-time mode (a detach step must come before this one)");
    if ((rc = resolve_alt(info, alt_arg, &alt, err, errlen)) != 0)
        return rc;
    rc = eng_dfu_file_check_device(&f, image_name, t->vid, t->pid, allow_raw, err, errlen);
    if (rc)
        return rc;

    memset(out, 0, sizeof(*out));
    out->alt = alt;
    bool dfuse_device = info->bcd_dfu == ENG_DFU_BCD_DFUSE;
    if (f.dfuse) {
        if (!dfuse_device) {
            return failf(err, errlen,
                         "%s: a DfuSe file, and the device is plain DFU (bcdDFU 0x%04x)",
                         image_name, info->bcd_dfu);
        }
        for (unsigned i = 0; i < f.n_targets; i++) {
            const struct eng_dfu_target *tg = &f.targets[i];
            if (tg->alt != alt)
                continue;
            for (unsigned e = 0; e < tg->count; e++) {
                const struct eng_dfu_element *el = &f.elements[tg->first + e];
                if (el->size == 0)
                    continue;
                if (out->n_segs == ENG_DFU_PLAN_MAX_SEGS) {
                    return failf(err, errlen, "%s: more than %d elements for alt %u", image_name,
                                 ENG_DFU_PLAN_MAX_SEGS, alt);
                }
                out->segs[out->n_segs++] = (struct eng_dfu_segment){
                    .address = el->address, .data = el->data, .len = el->size};
                out->bytes += el->size;
            }
        }
        if (out->n_segs == 0) {
            char alts[64] = "";
            size_t o = 0;
            for (unsigned i = 0; i < f.n_targets && o + 8 < sizeof(alts); i++)
                o += (size_t)snprintf(alts + o, sizeof(alts) - o, "%s%u", i ? ", " : "",
                                      f.targets[i].alt);
            return failf(err, errlen, "%s: no DfuSe data for alt %u (the file has alt %s)",
                         image_name, alt, alts);
        }
    } else {
        uint32_t address = 0;
        if (dfuse_device) {
            /* A raw image on a DfuSe device goes to the start of the alt's memory. */
            struct eng_dfuse_layout l;
            if (eng_dfuse_layout_parse(info->alt_names[alt], &l) != 0) {
                return failf(err, errlen, "alt %u (\"%s\") has no DfuSe memory layout", alt,
                             info->alt_names[alt]);
            }
            address = l.regions[0].address;
        }
        out->n_segs = 1;
        out->segs[0] =
            (struct eng_dfu_segment){.address = address, .data = f.payload, .len = f.payload_len};
        out->bytes = f.payload_len;
    }
    return 0;
}

int eng_dfu_plan(const struct eng_transport *t, const char *alt_arg, const uint8_t *image,
                 size_t len, const char *image_name, bool allow_raw, struct eng_dfu_plan *out,
                 char *err, size_t errlen)
{
    struct eng_dfu_file f;
    int rc = eng_dfu_file_parse(image, len, image_name, &f, err, errlen);
    if (rc)
        return rc;
    rc = eng_dfu_plan_file(t, alt_arg, &f, image_name, allow_raw, out, err, errlen);
    eng_dfu_file_free(&f);
    return rc;
}
