/*
 * fuzz_dfu_file: DFU files (engine/dfu_file.c): the DFU suffix, ST's DfuSe
 * container, and planning a download of one onto a device
 * (engine/dfu_plan.c).
 *
 * Input: one control byte, then the file. Control bit 0 asks the harness
 * to write the right suffix CRC before parsing (the fuzzer cannot forge a
 * CRC, and everything past the CRC check would stay unreached); bits 1-2
 * pick the device (plain DFU, DfuSe, ids that match or not); bit 3 is the
 * recipe's allow-raw-dfu; bits 4-5 the ALT argument.
 *
 * Checked: a parsed file's payload, targets and elements lie inside the
 * input; a plan's segments lie inside the input and add up to its bytes.
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

static bool inside(const uint8_t *buf, size_t len, const uint8_t *p, uint64_t n)
{
    return p >= buf && p <= buf + len && n <= (uint64_t)(buf + len - p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    size_t len = size - 1;
    uint8_t *buf = malloc(len ? len : 1); /* exact size: ASan sees overreads */
    fail_if(!buf);
    if (len)
        memcpy(buf, data + 1, len);
    if ((ctl & 1) && len >= ENG_DFU_SUFFIX_LEN) {
        uint32_t crc = eng_dfu_crc(buf, len - 4);
        for (int i = 0; i < 4; i++)
            buf[len - 4 + i] = (uint8_t)(crc >> (8 * i));
    }

    char err[512];
    struct eng_dfu_file f;
    int rc = eng_dfu_file_parse(buf, len, "fw.dfu", &f, err, sizeof(err));
    fuzz_debug("parse: %s", rc ? err : "ok");
    if (rc == 0) {
        fuzz_debug("suffix %d, dfuse %d, %u targets, %u elements", f.has_suffix, f.dfuse,
                   f.n_targets, f.n_elements);
        fail_if(!inside(buf, len, f.payload, f.payload_len));
        for (unsigned i = 0; i < f.n_targets; i++) {
            const struct eng_dfu_target *tg = &f.targets[i];
            fail_if(memchr(tg->name, '\0', sizeof(tg->name)) == NULL);
            fail_if(tg->first + (uint64_t)tg->count > f.n_elements);
        }
        for (unsigned i = 0; i < f.n_elements; i++)
            fail_if(!inside(buf, len, f.elements[i].data, f.elements[i].size));
        (void)eng_dfu_file_check_device(&f, "fw.dfu", 0x0483, 0xdf11, ctl & 8, err, sizeof(err));
        eng_dfu_file_free(&f);
    }

    /* planning onto a device */
    static const char *const alt_args[] = {"0", "1", "Internal Flash", "@Option Bytes"};
    struct eng_transport t;
    memset(&t, 0, sizeof(t));
    t.protocol_kind = ENG_PROTO_DFU;
    t.dfu.mode = 2;
    t.dfu.n_alts = 2;
    t.dfu.transfer_size = 2048;
    t.dfu.bcd_dfu = (ctl & 2) ? ENG_DFU_BCD_DFUSE : 0x0110;
    t.vid = (ctl & 4) ? 0x0483 : 0x1234;
    t.pid = (ctl & 4) ? 0xdf11 : ENG_DFU_ID_ANY;
    strcpy(t.dfu.alt_names[0], "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg");
    strcpy(t.dfu.alt_names[1], "@Option Bytes  /0x1FFFC000/01*016 e");
    struct eng_dfu_plan *plan = malloc(sizeof(*plan));
    fail_if(!plan);
    rc = eng_dfu_plan(&t, alt_args[(ctl >> 4) & 3], buf, len, "fw.dfu", ctl & 8, plan, err,
                      sizeof(err));
    if (rc)
        fuzz_debug("plan: %s", err);
    else
        fuzz_debug("plan: alt %u, %u segments, %llu bytes", plan->alt, plan->n_segs,
                   (unsigned long long)plan->bytes);
    if (rc == 0) {
        uint64_t sum = 0;
        fail_if(plan->n_segs == 0 || plan->n_segs > ENG_DFU_PLAN_MAX_SEGS);
        for (unsigned i = 0; i < plan->n_segs; i++) {
            fail_if(!inside(buf, len, plan->segs[i].data, plan->segs[i].len));
            sum += plan->segs[i].len;
        }
        fail_if(sum != plan->bytes);
    }
    free(plan);
    free(buf);
    return 0;
}
