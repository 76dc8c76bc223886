/*
 * fuzz_usb_desc: USB descriptors as a device returns them.
 *
 * engine/usb.c keeps its libusb-side code static (match(), decode_string(),
 * rebuild_config()); what it does with a device's bytes is hand the
 * configuration descriptor to eng_dfu_parse_config() and each DFU alt's
 * iInterface string to the DfuSe layout parser via the driver and
 * eng_dfu_plan(). This target feeds exactly those: a configuration
 * descriptor, then alt name strings, then an ALT argument to resolve.
 *
 * Input: u16 length of the configuration descriptor, its bytes, then up
 * to ENG_DFU_MAX_ALTS NUL-separated alt names, then the ALT argument.
 * Checked: the parse never claims more alts than fit; a layout that
 * parses has sectors that eng_dfuse_layout_find() finds again.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dfu.h"
#include "engine/dfu_file.h"
#include "engine/transport.h"
#include "fuzz_util.h"

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

static void check_layout(const char *name)
{
    struct eng_dfuse_layout l;
    if (eng_dfuse_layout_parse(name, &l) != 0)
        return;
    fuzz_debug("layout \"%s\": %u regions", l.name, l.n_regions);
    fail_if(l.n_regions == 0 || l.n_regions > ENG_DFUSE_MAX_REGIONS);
    fail_if(memchr(l.name, '\0', sizeof(l.name)) == NULL);
    for (unsigned i = 0; i < l.n_regions; i++) {
        const struct eng_dfuse_region *rg = &l.regions[i];
        fail_if(rg->n_groups == 0 || rg->n_groups > ENG_DFUSE_MAX_GROUPS);
        fail_if((uint64_t)rg->address + rg->size > 0x100000000ull);
        uint32_t start, size;
        uint8_t type;
        /* the first and the last byte of the region are in a sector */
        fail_if(!eng_dfuse_layout_find(&l, rg->address, &start, &size, &type));
        fail_if(start > rg->address || (uint64_t)start + size <= rg->address);
        uint32_t last = (uint32_t)(rg->address + rg->size - 1);
        fail_if(!eng_dfuse_layout_find(&l, last, &start, &size, &type));
        fail_if(start > last || (uint64_t)start + size <= last);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz in = {data, size};
    size_t len;
    size_t want = fz_u16(&in);
    const uint8_t *p = fz_bytes(&in, want, &len);
    /* an exact-size copy, so that ASan sees any read past the descriptor */
    uint8_t *desc = malloc(len ? len : 1);
    fail_if(!desc);
    if (len)
        memcpy(desc, p, len);

    struct eng_transport t;
    uint8_t strings[ENG_DFU_MAX_ALTS];
    memset(&t, 0, sizeof(t));
    memset(strings, 0xee, sizeof(strings));
    int rc = eng_dfu_parse_config(desc, len, &t.dfu, strings);
    free(desc);
    fuzz_debug("parse_config: %d, mode %u, %u alts, attributes 0x%02x, wTransferSize %u, "
               "bcdDFU 0x%04x",
               rc, t.dfu.mode, t.dfu.n_alts, t.dfu.attributes, t.dfu.transfer_size, t.dfu.bcd_dfu);
    if (rc != 0)
        return 0;
    fail_if(t.dfu.n_alts > ENG_DFU_MAX_ALTS);

    /* iInterface strings, decoded to ASCII by the transport */
    for (unsigned a = 0; a < t.dfu.n_alts; a++) {
        fz_str(&in, t.dfu.alt_names[a], ENG_DFU_ALT_NAME_MAX);
        check_layout(t.dfu.alt_names[a]);
    }

    /* an ALT argument against those names, with a small raw image */
    char alt_arg[64];
    fz_str(&in, alt_arg, sizeof(alt_arg));
    static const uint8_t image[64] = {1, 2, 3, 4};
    struct eng_dfu_plan *plan = malloc(sizeof(*plan));
    char err[512];
    fail_if(!plan);
    t.protocol_kind = ENG_PROTO_DFU;
    t.vid = 0x0483;
    t.pid = 0xdf11;
    if (eng_dfu_plan(&t, alt_arg, image, sizeof(image), "fw.bin", true, plan, err, sizeof(err)) ==
        0) {
        fail_if(plan->alt >= t.dfu.n_alts || plan->n_segs != 1);
        fail_if(plan->segs[0].len != sizeof(image));
        fuzz_debug("plan: alt %u at 0x%08x", plan->alt, plan->segs[0].address);
    } else {
        fuzz_debug("plan: %s", err);
        fail_if(memchr(err, '\0', sizeof(err)) == NULL);
    }
    free(plan);
    return 0;
}
