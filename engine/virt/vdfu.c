/*
 * The virtual DFU device (engine/virt/vdfu.h): DFU 1.1 state machine
 * (Appendix A), flash memories, DfuSe commands (AN3156), descriptors
 * (§4.1, §4.2) and fault injection.
 */
#include "engine/virt/vdfu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/dfu_file.h"

#define STALLED_ANSWER 100 /* poll timeout a stuck device keeps asking for, ms */
#define STM32F4_LAYOUT "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"

/* One contiguous memory: a plain alt, or one region of a DfuSe layout. */
struct mem {
    uint32_t base;
    uint32_t size;
    uint8_t *bytes;
};

struct alt {
    char name[ENG_DFU_ALT_NAME_MAX];
    struct eng_dfuse_layout layout; /* DfuSe */
    unsigned n_mems;
    struct mem mems[ENG_DFUSE_MAX_REGIONS];
    uint32_t fw_len; /* plain: bytes written by the last download */
};

struct eng_vdfu {
    struct eng_vdfu_config cfg;
    struct eng_vdfu_stats stats;
    unsigned n_alts;
    struct alt alts[ENG_VDFU_MAX_ALTS];
    /* bus */
    unsigned mode; /* 1 run-time, 2 DFU */
    unsigned cur_alt;
    bool gone, reenumerate;
    bool manifested; /* a download completed manifestation since the last reset */
    /* DFU state machine */
    enum eng_dfu_state state;
    enum eng_dfu_status status;
    uint64_t busy_until; /* dfuDNBUSY / dfuMANIFEST end, in the caller's ms */
    uint64_t detach_at;
    /* the block received in dfuDNLOAD-SYNC, applied when busy ends */
    uint8_t *pending;
    size_t pending_len;
    unsigned pending_wvalue;
    bool pending_started;  /* plain: this block starts a download */
    uint32_t dl_offset;    /* plain: next write offset */
    uint32_t up_offset;    /* plain: next upload offset */
    uint32_t pointer;      /* DfuSe address pointer */
    unsigned data_blocks;  /* since plug, for faults */
    unsigned req_count[7]; /* per bRequest, since plug, for faults */
    bool pending_slow;     /* the block in hand keeps the device busy ENG_VDFU_SLOW_MS */
    bool leaving;          /* DfuSe leave: resets after the dfuMANIFEST answer */
};

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

static uint16_t transfer_size(const struct eng_vdfu *dev)
{
    return dev->cfg.transfer_size;
}

static uint8_t attributes(const struct eng_vdfu *dev)
{
    return dev->cfg.attributes;
}

/* ---- construction ---- */

static int setup_alt(struct eng_vdfu *dev, unsigned i, const struct eng_vdfu_alt *a)
{
    struct alt *al = &dev->alts[i];
    uint8_t fill = dev->cfg.dirty ? 0x00 : 0xff;
    memcpy(al->name, a->name, sizeof(al->name));
    al->name[sizeof(al->name) - 1] = '\0';
    if (dev->cfg.dfuse) {
        if (eng_dfuse_layout_parse(al->name, &al->layout) != 0)
            return ST_EINVAL;
        for (unsigned r = 0; r < al->layout.n_regions; r++) {
            const struct eng_dfuse_region *reg = &al->layout.regions[r];
            if (reg->size > (64u << 20))
                return ST_EINVAL; /* a model, not a disk */
            struct mem *m = &al->mems[al->n_mems++];
            m->base = reg->address;
            m->size = (uint32_t)reg->size;
            m->bytes = malloc(m->size);
            if (!m->bytes)
                return ST_ENOMEM;
            memset(m->bytes, fill, m->size);
        }
        return 0;
    }
    struct mem *m = &al->mems[al->n_mems++];
    m->base = 0;
    m->size = a->size ? a->size : 64u << 10;
    m->bytes = malloc(m->size);
    if (!m->bytes)
        return ST_ENOMEM;
    memset(m->bytes, fill, m->size);
    return 0;
}

int eng_vdfu_new(const struct eng_vdfu_config *cfg, struct eng_vdfu **out)
{
    if (cfg->n_alts > ENG_VDFU_MAX_ALTS)
        return ST_EINVAL;
    struct eng_vdfu *dev = calloc(1, sizeof(*dev));
    if (!dev)
        return ST_ENOMEM;
    dev->cfg = *cfg;
    struct eng_vdfu_config *c = &dev->cfg;
    if (!c->manufacturer[0])
        snprintf(c->manufacturer, sizeof(c->manufacturer), "Station");
    if (!c->product[0])
        snprintf(c->product, sizeof(c->product), "Virtual DFU");
    if (!c->vid)
        c->vid = 0x0483;
    if (!c->pid_runtime)
        c->pid_runtime = 0x5740;
    if (!c->pid_dfu)
        c->pid_dfu = 0xdf11;
    if (!c->bcd_device)
        c->bcd_device = 0x2200;
    if (!c->transfer_size)
        c->transfer_size = 1024;
    if (!c->attributes)
        c->attributes =
            ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD | ENG_DFU_ATTR_MANIFEST_TOLERANT;
    if (!c->detach_timeout_ms)
        c->detach_timeout_ms = 1000;
    if (c->start_runtime)
        c->runtime_app = true;
    if (c->n_alts == 0) {
        c->n_alts = 1;
        memset(&c->alts[0], 0, sizeof(c->alts[0]));
        snprintf(c->alts[0].name, sizeof(c->alts[0].name), "%s",
                 c->dfuse ? STM32F4_LAYOUT : "Flash");
    }
    dev->n_alts = c->n_alts;
    dev->pending = malloc(c->transfer_size);
    int rc = dev->pending ? 0 : ST_ENOMEM;
    for (unsigned i = 0; i < dev->n_alts && rc == 0; i++)
        rc = setup_alt(dev, i, &c->alts[i]);
    if (rc) {
        eng_vdfu_free(dev);
        return rc;
    }
    dev->mode = c->start_runtime ? 1 : 2;
    dev->state = c->start_runtime ? ENG_DFU_APP_IDLE : ENG_DFU_IDLE;
    *out = dev;
    return 0;
}

void eng_vdfu_free(struct eng_vdfu *dev)
{
    if (!dev)
        return;
    for (unsigned i = 0; i < ENG_VDFU_MAX_ALTS; i++)
        for (unsigned r = 0; r < dev->alts[i].n_mems; r++)
            free(dev->alts[i].mems[r].bytes);
    free(dev->pending);
    free(dev);
}

static int request_by_name(const char *s, size_t n)
{
    static const char *const names[] = {"detach",    "dnload",   "upload", "getstatus",
                                        "clrstatus", "getstate", "abort"};
    for (int i = 0; i < 7; i++)
        if (strlen(names[i]) == n && !strncmp(names[i], s, n))
            return i;
    return -1;
}

int eng_vdfu_parse_fault(struct eng_vdfu_config *cfg, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || !eq[1])
        return ST_EINVAL;
    size_t klen = (size_t)(eq - spec);
    const char *v = eq + 1;
    char *end;
    if ((klen == 8 && !strncmp(spec, "errwrite", 8)) || (klen == 5 && !strncmp(spec, "stuck", 5))) {
        unsigned long n = strtoul(v, &end, 0);
        if (*end || n > 0xffffffffu)
            return ST_EINVAL;
        if (klen == 5) {
            cfg->stuck_busy = true;
            cfg->stuck_block = (unsigned)n;
        } else {
            cfg->err_write = true;
            cfg->err_write_block = (unsigned)n;
        }
        return 0;
    }
    if ((klen == 7 && !strncmp(spec, "corrupt", 7)) ||
        (klen == 9 && !strncmp(spec, "errverify", 9))) {
        unsigned long n = strtoul(v, &end, 0);
        if (*end || n > 0xffffffffu)
            return ST_EINVAL;
        cfg->corrupt = true;
        cfg->corrupt_offset = (uint32_t)n;
        return 0;
    }
    if (!strcmp(v, "manifest")) {
        if (klen == 10 && !strncmp(spec, "disconnect", 10))
            cfg->disconnect_in_manifest = true;
        else if (klen == 4 && !strncmp(spec, "fail", 4))
            cfg->fail_manifest = true;
        else if (klen == 4 && !strncmp(spec, "slow", 4))
            cfg->slow_manifest = true;
        else
            return ST_EINVAL;
        return 0;
    }
    const struct {
        const char *kind;
        int *request;
        unsigned *at;
    } by_request[] = {
        {"stall", &cfg->stall_request, &cfg->stall_at},
        {"silent", &cfg->silent_request, &cfg->silent_at},
        {"disconnect", &cfg->disconnect_request, &cfg->disconnect_at},
        {"garbage", &cfg->garbage_request, &cfg->garbage_at},
        {"oversize", &cfg->oversize_request, &cfg->oversize_at},
        {"short", &cfg->short_request, &cfg->short_at},
        {"slow", &cfg->slow_request, &cfg->slow_at},
    };
    for (size_t k = 0; k < sizeof(by_request) / sizeof(by_request[0]); k++) {
        if (strlen(by_request[k].kind) != klen || strncmp(spec, by_request[k].kind, klen))
            continue;
        const char *at = strchr(v, '@');
        size_t rlen = at ? (size_t)(at - v) : strlen(v);
        int req = request_by_name(v, rlen);
        unsigned long n = 0;
        if (req < 0)
            return ST_EINVAL;
        if (at) {
            n = strtoul(at + 1, &end, 0);
            if (end == at + 1 || *end || n > 0xffffffffu)
                return ST_EINVAL;
        }
        *by_request[k].request = req + 1;
        *by_request[k].at = (unsigned)n;
        return 0;
    }
    return ST_EINVAL;
}

/* ---- descriptors (USB 2.0 §9.6; DFU 1.1 §4.1, §4.2) ---- */

static size_t copy_out(const uint8_t *d, size_t n, uint8_t *buf, size_t cap)
{
    if (buf && cap)
        memcpy(buf, d, n < cap ? n : cap);
    return n;
}

static const char *string_for(const struct eng_vdfu *dev, unsigned index)
{
    switch (index) {
    case 1:
        return dev->cfg.manufacturer;
    case 2:
        return dev->cfg.product;
    case 3:
        return dev->cfg.serial;
    default:
        if (dev->mode == 2 && index >= 4 && index - 4 < dev->n_alts)
            return dev->alts[index - 4].name;
        return NULL;
    }
}

size_t eng_vdfu_descriptor(const struct eng_vdfu *dev, uint8_t type, uint8_t index, uint8_t *buf,
                           size_t cap)
{
    uint8_t d[9 + ENG_VDFU_MAX_ALTS * 9 + 9 + 2 * ENG_DFU_ALT_NAME_MAX + 2];
    size_t n = 0;
    switch (type) {
    case 1: /* device */
        if (index)
            return 0;
        d[0] = 18;
        d[1] = 1;
        put16(d + 2, 0x0200); /* bcdUSB */
        d[4] = 0;             /* bDeviceClass: per interface */
        d[5] = 0;
        d[6] = 0;
        d[7] = 64; /* bMaxPacketSize0 */
        put16(d + 8, dev->cfg.vid);
        put16(d + 10, dev->mode == 1 ? dev->cfg.pid_runtime : dev->cfg.pid_dfu);
        put16(d + 12, dev->cfg.bcd_device);
        d[14] = 1; /* iManufacturer */
        d[15] = 2; /* iProduct */
        d[16] = dev->cfg.serial[0] ? 3 : 0;
        d[17] = 1; /* bNumConfigurations */
        return copy_out(d, 18, buf, cap);
    case 2: { /* configuration */
        if (index)
            return 0;
        unsigned n_if = dev->mode == 1 ? 1 : dev->n_alts;
        n = 9;
        for (unsigned a = 0; a < n_if; a++, n += 9) {
            d[n] = 9;
            d[n + 1] = 4; /* INTERFACE */
            d[n + 2] = 0; /* bInterfaceNumber */
            d[n + 3] = (uint8_t)a;
            d[n + 4] = 0;    /* bNumEndpoints: DFU uses ep0 only */
            d[n + 5] = 0xfe; /* application specific */
            d[n + 6] = 0x01; /* DFU */
            d[n + 7] = dev->mode == 1 ? 0x01 : 0x02;
            d[n + 8] = dev->mode == 2 && dev->alts[a].name[0] ? (uint8_t)(4 + a) : 0;
        }
        /* DFU functional descriptor, DFU 1.1 §4.1.3 Table 4.2 */
        d[n] = 9;
        d[n + 1] = 0x21;
        d[n + 2] = attributes(dev);
        put16(d + n + 3, dev->cfg.detach_timeout_ms);
        put16(d + n + 5, transfer_size(dev));
        put16(d + n + 7, dev->cfg.dfuse ? ENG_DFU_BCD_DFUSE : 0x0110);
        n += 9;
        d[0] = 9;
        d[1] = 2; /* CONFIGURATION */
        put16(d + 2, (uint16_t)n);
        d[4] = 1;    /* bNumInterfaces */
        d[5] = 1;    /* bConfigurationValue */
        d[6] = 0;    /* iConfiguration */
        d[7] = 0x80; /* bus powered */
        d[8] = 50;   /* 100 mA */
        return copy_out(d, n, buf, cap);
    }
    case 3: { /* string */
        if (index == 0) {
            d[0] = 4;
            d[1] = 3;
            put16(d + 2, 0x0409);
            return copy_out(d, 4, buf, cap);
        }
        const char *s = string_for(dev, index);
        if (!s || !s[0])
            return 0;
        n = 2;
        for (; *s && n + 2 <= 254; s++, n += 2) {
            d[n] = (uint8_t)*s;
            d[n + 1] = 0;
        }
        d[0] = (uint8_t)n;
        d[1] = 3;
        return copy_out(d, n, buf, cap);
    }
    default:
        return 0;
    }
}

/* ---- memory ---- */

static struct mem *mem_at(struct alt *al, uint32_t addr, uint32_t len)
{
    for (unsigned r = 0; r < al->n_mems; r++) {
        struct mem *m = &al->mems[r];
        if (addr >= m->base && (uint64_t)addr - m->base + len <= m->size)
            return m;
    }
    return NULL;
}

/* Program `len` bytes: flash only clears bits; over bytes that are not
 * erased it fails as a real controller would. */
static enum eng_dfu_status program(struct eng_vdfu *dev, struct alt *al, struct mem *m,
                                   uint32_t off, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (m->bytes[off + i] != 0xff && m->bytes[off + i] != src[i])
            return ENG_DFU_ERR_CHECK_ERASED;
    memcpy(m->bytes + off, src, len);
    if (dev->cfg.corrupt) {
        uint64_t at = (uint64_t)m->base - al->mems[0].base + off;
        if (dev->cfg.corrupt_offset >= at && dev->cfg.corrupt_offset < at + len)
            m->bytes[off + (dev->cfg.corrupt_offset - at)] ^= 0xa5;
    }
    return ENG_DFU_OK;
}

/* ---- the DFU state machine ---- */

static void set_error(struct eng_vdfu *dev, enum eng_dfu_status st)
{
    dev->state = ENG_DFU_ERROR;
    dev->status = st;
}

/* DfuSe command in a wValue 0 DNLOAD (AN3156). */
static enum eng_dfu_status dfuse_command(struct eng_vdfu *dev, unsigned *busy)
{
    struct alt *al = &dev->alts[dev->cur_alt];
    const uint8_t *c = dev->pending;
    size_t n = dev->pending_len;
    if (n == 0)
        return ENG_DFU_ERR_STALLEDPKT;
    switch (c[0]) {
    case 0x21: /* Set Address Pointer */
        if (n != 5)
            return ENG_DFU_ERR_STALLEDPKT;
        if (!mem_at(al, le32(c + 1), 1))
            return ENG_DFU_ERR_TARGET;
        dev->pointer = le32(c + 1);
        return ENG_DFU_OK;
    case 0x41: { /* Erase: one page, or everything erasable */
        uint32_t start, size;
        uint8_t type;
        if (n == 1) {
            for (unsigned r = 0; r < al->layout.n_regions; r++) {
                const struct eng_dfuse_region *reg = &al->layout.regions[r];
                uint64_t a = reg->address;
                while (a < reg->address + reg->size &&
                       eng_dfuse_layout_find(&al->layout, (uint32_t)a, &start, &size, &type)) {
                    if (type & ENG_DFUSE_ERASABLE) {
                        struct mem *m = mem_at(al, start, size);
                        memset(m->bytes + (start - m->base), 0xff, size);
                        dev->stats.erases++;
                        *busy += dev->cfg.erase_busy_ms;
                    }
                    a = (uint64_t)start + size;
                }
            }
            return ENG_DFU_OK;
        }
        if (n != 5)
            return ENG_DFU_ERR_STALLEDPKT;
        if (!eng_dfuse_layout_find(&al->layout, le32(c + 1), &start, &size, &type))
            return ENG_DFU_ERR_TARGET;
        if (!(type & ENG_DFUSE_ERASABLE))
            return ENG_DFU_ERR_TARGET;
        struct mem *m = mem_at(al, start, size);
        memset(m->bytes + (start - m->base), 0xff, size);
        dev->stats.erases++;
        *busy += dev->cfg.erase_busy_ms;
        return ENG_DFU_OK;
    }
    case 0x92: /* Read Unprotect: nothing is protected here */
        return n == 1 ? ENG_DFU_OK : ENG_DFU_ERR_STALLEDPKT;
    default:
        return ENG_DFU_ERR_STALLEDPKT;
    }
}

/* Apply the block held since DNLOAD (its busy period is over). */
static enum eng_dfu_status apply_block(struct eng_vdfu *dev)
{
    struct alt *al = &dev->alts[dev->cur_alt];
    if (dev->cfg.dfuse) {
        if (dev->pending_wvalue == 0) {
            unsigned ignored = 0;
            return dfuse_command(dev, &ignored);
        }
        uint64_t addr = dev->pointer + (uint64_t)(dev->pending_wvalue - 2) * transfer_size(dev);
        if (addr > 0xffffffffu)
            return ENG_DFU_ERR_ADDRESS;
        struct mem *m = mem_at(al, (uint32_t)addr, (uint32_t)dev->pending_len);
        uint8_t type = 0;
        if (!m || !eng_dfuse_layout_find(&al->layout, (uint32_t)addr, NULL, NULL, &type))
            return ENG_DFU_ERR_ADDRESS;
        if (!(type & ENG_DFUSE_WRITEABLE))
            return ENG_DFU_ERR_WRITE;
        return program(dev, al, m, (uint32_t)addr - m->base, dev->pending, dev->pending_len);
    }
    struct mem *m = &al->mems[0];
    if (dev->pending_started) {
        memset(m->bytes, 0xff, m->size); /* a new download erases the memory */
        al->fw_len = 0;
    }
    if ((uint64_t)dev->dl_offset + dev->pending_len > m->size)
        return ENG_DFU_ERR_ADDRESS;
    enum eng_dfu_status st = program(dev, al, m, dev->dl_offset, dev->pending, dev->pending_len);
    if (st == ENG_DFU_OK) {
        dev->dl_offset += (uint32_t)dev->pending_len;
        al->fw_len = dev->dl_offset;
    }
    return st;
}

/* Does the block in hand trigger a write fault? Counted once per block. */
static bool block_fails(struct eng_vdfu *dev, unsigned block)
{
    return dev->cfg.err_write && block == dev->cfg.err_write_block;
}

static bool is_data_block(const struct eng_vdfu *dev)
{
    return !dev->cfg.dfuse || dev->pending_wvalue >= 2;
}

static void status_reply(struct eng_vdfu *dev, uint8_t *data, uint32_t poll)
{
    data[0] = (uint8_t)dev->status;
    data[1] = (uint8_t)poll;
    data[2] = (uint8_t)(poll >> 8);
    data[3] = (uint8_t)(poll >> 16);
    data[4] = (uint8_t)dev->state;
    data[5] = 0; /* iString */
}

/* The block's busy time, decided when the host first asks. */
static unsigned block_busy(struct eng_vdfu *dev)
{
    unsigned busy = 0;
    if (dev->cfg.dfuse && dev->pending_wvalue == 0 && dev->pending_len >= 1 &&
        dev->pending[0] == 0x41) {
        /* erase time: count the pages without erasing yet */
        struct alt *al = &dev->alts[dev->cur_alt];
        if (dev->pending_len == 1) {
            for (unsigned r = 0; r < al->layout.n_regions; r++)
                for (unsigned g = 0; g < al->layout.regions[r].n_groups; g++)
                    busy += al->layout.regions[r].groups[g].count * dev->cfg.erase_busy_ms;
        } else {
            busy = dev->cfg.erase_busy_ms;
        }
        return busy;
    }
    if (is_data_block(dev)) {
        busy = dev->cfg.block_busy_ms;
        if (!dev->cfg.dfuse && dev->pending_started)
            busy += dev->cfg.erase_busy_ms;
    }
    return busy;
}

/* DFU_GETSTATUS (DFU 1.1 §6.1.2) in DFU mode. Returns the poll timeout. */
static int getstatus(struct eng_vdfu *dev, uint64_t now, uint8_t *data)
{
    uint32_t poll = 0;
    switch (dev->state) {
    case ENG_DFU_DNLOAD_SYNC: {
        unsigned block = dev->data_blocks;
        if (is_data_block(dev)) {
            dev->data_blocks++;
            dev->stats.data_blocks++;
        }
        if (is_data_block(dev) && dev->cfg.stuck_busy && block >= dev->cfg.stuck_block) {
            dev->state = ENG_DFU_DNBUSY;
            dev->busy_until = UINT64_MAX;
            poll = dev->cfg.block_busy_ms ? dev->cfg.block_busy_ms : STALLED_ANSWER;
            break;
        }
        if (is_data_block(dev) && block_fails(dev, block)) {
            set_error(dev, ENG_DFU_ERR_WRITE);
            break;
        }
        unsigned busy = dev->pending_slow ? ENG_VDFU_SLOW_MS : block_busy(dev);
        /* DfuSe devices report dfuDNBUSY after every command, as dfu-util expects. */
        if (busy > 0 || dev->cfg.dfuse) {
            dev->state = ENG_DFU_DNBUSY;
            dev->busy_until = now + busy;
            poll = busy;
            break;
        }
        enum eng_dfu_status st = apply_block(dev);
        if (st != ENG_DFU_OK)
            set_error(dev, st);
        else
            dev->state = ENG_DFU_DNLOAD_IDLE;
        break;
    }
    case ENG_DFU_DNBUSY:
        if (now < dev->busy_until) {
            dev->stats.early_polls += dev->busy_until != UINT64_MAX;
            poll = dev->busy_until == UINT64_MAX
                       ? (dev->cfg.block_busy_ms ? dev->cfg.block_busy_ms : STALLED_ANSWER)
                       : (uint32_t)(dev->busy_until - now);
            break;
        }
        {
            enum eng_dfu_status st = apply_block(dev);
            if (st != ENG_DFU_OK)
                set_error(dev, st);
            else
                dev->state = ENG_DFU_DNLOAD_IDLE;
        }
        break;
    case ENG_DFU_MANIFEST_SYNC:
        if (dev->cfg.disconnect_in_manifest) {
            dev->gone = true;
            return ST_ENODEV;
        }
        dev->state = ENG_DFU_MANIFEST;
        poll = dev->cfg.slow_manifest ? ENG_VDFU_SLOW_MS : dev->cfg.manifest_ms;
        dev->busy_until = now + poll;
        if (dev->cfg.dfuse)
            dev->leaving = true; /* DfuSe manifestation is "leave": it resets itself */
        break;
    case ENG_DFU_MANIFEST:
        if (now < dev->busy_until) {
            dev->stats.early_polls++;
            poll = (uint32_t)(dev->busy_until - now);
            break;
        }
        if (dev->cfg.fail_manifest) {
            set_error(dev, ENG_DFU_ERR_FIRMWARE); /* the new firmware does not check out */
            break;
        }
        dev->stats.manifests++;
        dev->manifested = true;
        dev->state = attributes(dev) & ENG_DFU_ATTR_MANIFEST_TOLERANT ? ENG_DFU_IDLE
                                                                      : ENG_DFU_MANIFEST_WAIT_RESET;
        break;
    default:
        break;
    }
    status_reply(dev, data, poll);
    return 0;
}

static void reenumerate_in(struct eng_vdfu *dev, unsigned mode)
{
    dev->mode = mode;
    dev->state = mode == 1 ? ENG_DFU_APP_IDLE : ENG_DFU_IDLE;
    dev->status = ENG_DFU_OK;
    dev->cur_alt = 0;
    dev->leaving = false;
    dev->reenumerate = true;
}

void eng_vdfu_bus_reset(struct eng_vdfu *dev, uint64_t now_ms)
{
    if (dev->gone)
        return;
    dev->stats.resets++;
    if (dev->mode == 1) {
        /* DFU 1.1 Appendix A: a reset in appDETACH within wDetachTimeOut enters DFU mode. */
        bool in_time = now_ms - dev->detach_at <= dev->cfg.detach_timeout_ms;
        reenumerate_in(dev, dev->state == ENG_DFU_APP_DETACH && in_time ? 2 : 1);
        return;
    }
    /* DFU mode: a valid, manifested firmware with a run-time interface runs. */
    reenumerate_in(dev, dev->manifested && dev->cfg.runtime_app ? 1 : 2);
    dev->manifested = false;
}

static bool hits(int request, unsigned at, unsigned req, unsigned n)
{
    return request == (int)req + 1 && n == at;
}

/* Faults that replace the answer; `n` is this request's occurrence. */
static int fault_check(struct eng_vdfu *dev, unsigned req, unsigned n)
{
    if (dev->cfg.silent_request == (int)req + 1 && n >= dev->cfg.silent_at)
        return ST_EAGAIN;
    if (hits(dev->cfg.disconnect_request, dev->cfg.disconnect_at, req, n)) {
        dev->gone = true;
        return ST_ENODEV;
    }
    if (hits(dev->cfg.stall_request, dev->cfg.stall_at, req, n)) {
        if (dev->mode == 2)
            set_error(dev, ENG_DFU_ERR_STALLEDPKT);
        return ST_EPIPE;
    }
    return 0;
}

/* Faults that spoil an answer the device gave. */
static void spoil_answer(struct eng_vdfu *dev, unsigned req, unsigned n, uint16_t wLength,
                         uint8_t *data, size_t *actual)
{
    bool reads = req == ENG_DFU_GETSTATUS || req == ENG_DFU_UPLOAD || req == ENG_DFU_GETSTATE;
    if (reads && hits(dev->cfg.garbage_request, dev->cfg.garbage_at, req, n)) {
        if (req == ENG_DFU_GETSTATUS && *actual >= 6) {
            data[0] = 0x77; /* bStatus: no such status */
            data[4] = 0x5a; /* bState: no such state */
        } else {
            for (size_t i = 0; i < *actual; i++)
                data[i] ^= 0x5a;
        }
    }
    if (reads && hits(dev->cfg.oversize_request, dev->cfg.oversize_at, req, n))
        *actual = (size_t)wLength + 16; /* more than asked: the transport sees babble */
    if (hits(dev->cfg.short_request, dev->cfg.short_at, req, n))
        *actual /= 2;
}

/* A request the state does not allow: STALL and dfuERROR (Appendix A). */
static int stall(struct eng_vdfu *dev)
{
    if (dev->mode == 2)
        set_error(dev, ENG_DFU_ERR_STALLEDPKT);
    return ST_EPIPE;
}

static int dfu_answer(struct eng_vdfu *dev, uint64_t now, const uint8_t *setup, uint8_t *data,
                      size_t *actual)
{
    unsigned req = setup[1];
    uint16_t wValue = le16(setup + 2);
    uint16_t wLength = le16(setup + 6);
    bool in = setup[0] & 0x80;
    int rc;

    if (dev->mode == 1) {
        /* Run-time mode: DETACH, GETSTATUS and GETSTATE only (DFU 1.1 §3). */
        if (dev->state == ENG_DFU_APP_DETACH && now - dev->detach_at > dev->cfg.detach_timeout_ms)
            dev->state = ENG_DFU_APP_IDLE; /* no reset came in time */
        switch (req) {
        case ENG_DFU_DETACH:
            if (in)
                return ST_EPIPE;
            dev->stats.detaches++;
            dev->state = ENG_DFU_APP_DETACH;
            dev->detach_at = now;
            if (attributes(dev) & ENG_DFU_ATTR_WILL_DETACH)
                reenumerate_in(dev, 2); /* it detaches and re-attaches by itself */
            return 0;
        case ENG_DFU_GETSTATUS:
            if (!in || wLength < 6)
                return ST_EPIPE;
            status_reply(dev, data, 0);
            *actual = 6;
            return 0;
        case ENG_DFU_GETSTATE:
            if (!in || wLength < 1)
                return ST_EPIPE;
            data[0] = (uint8_t)dev->state;
            *actual = 1;
            return 0;
        default:
            return ST_EPIPE;
        }
    }

    /* A device in dfuDNBUSY or dfuMANIFEST cannot take anything but
     * GETSTATUS (DFU 1.1 Appendix A): it stalls. */
    if ((dev->state == ENG_DFU_DNBUSY || dev->state == ENG_DFU_MANIFEST) &&
        req != ENG_DFU_GETSTATUS && req != ENG_DFU_GETSTATE)
        return stall(dev);

    switch (req) {
    case ENG_DFU_DNLOAD: /* §6.1.1 */
        if (in || !(attributes(dev) & ENG_DFU_ATTR_CAN_DNLOAD) || wLength > transfer_size(dev))
            return stall(dev);
        if (dev->state != ENG_DFU_IDLE && dev->state != ENG_DFU_DNLOAD_IDLE)
            return stall(dev);
        if (wLength == 0) {
            /* §6.1.1.1: the end of the download; dfuIDLE has nothing to end */
            if (dev->state == ENG_DFU_IDLE)
                return stall(dev);
            dev->state = ENG_DFU_MANIFEST_SYNC;
            return 0;
        }
        if (dev->cfg.dfuse && wValue == 1)
            return stall(dev); /* reserved in AN3156 */
        dev->pending_started = !dev->cfg.dfuse && dev->state == ENG_DFU_IDLE;
        if (dev->pending_started)
            dev->dl_offset = 0;
        memcpy(dev->pending, data, wLength);
        dev->pending_len = wLength;
        dev->pending_wvalue = wValue;
        dev->state = ENG_DFU_DNLOAD_SYNC;
        *actual = wLength;
        return 0;
    case ENG_DFU_UPLOAD: { /* §6.2.1 */
        if (!in || !(attributes(dev) & ENG_DFU_ATTR_CAN_UPLOAD))
            return stall(dev);
        if (dev->state != ENG_DFU_IDLE && dev->state != ENG_DFU_UPLOAD_IDLE)
            return stall(dev);
        struct alt *al = &dev->alts[dev->cur_alt];
        size_t n = 0;
        if (dev->cfg.dfuse) {
            if (wValue == 0) { /* Get Commands */
                static const uint8_t cmds[] = {0x00, 0x21, 0x41, 0x92};
                n = wLength < sizeof(cmds) ? wLength : sizeof(cmds);
                memcpy(data, cmds, n);
            } else if (wValue >= 2) {
                uint64_t addr = dev->pointer + (uint64_t)(wValue - 2) * transfer_size(dev);
                struct mem *m = addr <= 0xffffffffu ? mem_at(al, (uint32_t)addr, 1) : NULL;
                if (!m) {
                    set_error(dev, ENG_DFU_ERR_ADDRESS);
                    return ST_EPIPE;
                }
                uint32_t off = (uint32_t)addr - m->base;
                n = m->size - off < wLength ? m->size - off : wLength;
                memcpy(data, m->bytes + off, n);
            } else {
                return stall(dev);
            }
        } else {
            struct mem *m = &al->mems[0];
            if (dev->state == ENG_DFU_IDLE)
                dev->up_offset = 0;
            uint32_t left = al->fw_len - dev->up_offset;
            n = left < wLength ? left : wLength;
            memcpy(data, m->bytes + dev->up_offset, n);
            dev->up_offset += (uint32_t)n;
        }
        dev->stats.upload_blocks++;
        /* A short block ends the upload (§6.2). */
        dev->state = n < wLength ? ENG_DFU_IDLE : ENG_DFU_UPLOAD_IDLE;
        *actual = n;
        return 0;
    }
    case ENG_DFU_GETSTATUS: /* §6.1.2 */
        if (!in || wLength < 6)
            return stall(dev);
        rc = getstatus(dev, now, data);
        if (rc)
            return rc;
        *actual = 6;
        if (dev->leaving) {
            /* DfuSe leave: the firmware starts once the status is out. */
            dev->stats.manifests++;
            dev->manifested = true;
            reenumerate_in(dev, dev->cfg.runtime_app ? 1 : 2);
        }
        return 0;
    case ENG_DFU_CLRSTATUS: /* §6.1.3 */
        if (in || dev->state != ENG_DFU_ERROR)
            return stall(dev);
        dev->state = ENG_DFU_IDLE;
        dev->status = ENG_DFU_OK;
        return 0;
    case ENG_DFU_GETSTATE: /* §6.1.5 */
        if (!in || wLength < 1)
            return stall(dev);
        data[0] = (uint8_t)dev->state;
        *actual = 1;
        return 0;
    case ENG_DFU_ABORT: /* §6.1.4 */
        if (in)
            return stall(dev);
        switch (dev->state) {
        case ENG_DFU_IDLE:
        case ENG_DFU_DNLOAD_SYNC:
        case ENG_DFU_DNLOAD_IDLE:
        case ENG_DFU_MANIFEST_SYNC:
        case ENG_DFU_UPLOAD_IDLE:
            dev->state = ENG_DFU_IDLE;
            return 0;
        default:
            return stall(dev);
        }
    case ENG_DFU_DETACH:
    default:
        return stall(dev); /* DETACH means nothing in DFU mode */
    }
}

static int dfu_request(struct eng_vdfu *dev, uint64_t now, const uint8_t *setup, uint8_t *data,
                       size_t *actual)
{
    unsigned req = setup[1];
    if (req > ENG_DFU_ABORT)
        return stall(dev);
    dev->stats.requests[req]++;
    unsigned n = dev->req_count[req]++;
    int rc = fault_check(dev, req, n);
    if (rc)
        return rc;
    rc = dfu_answer(dev, now, setup, data, actual);
    if (rc == 0 && req == ENG_DFU_DNLOAD)
        dev->pending_slow = hits(dev->cfg.slow_request, dev->cfg.slow_at, req, n);
    if (rc == 0)
        spoil_answer(dev, req, n, le16(setup + 6), data, actual);
    return rc;
}

unsigned eng_vdfu_answer_delay(const struct eng_vdfu *dev, const uint8_t setup[8])
{
    unsigned req = setup[1];
    bool dfu_class = (setup[0] & 0x60) == 0x20 && (setup[0] & 0x1f) == 0x01;
    if (!dfu_class || req > ENG_DFU_ABORT || req == ENG_DFU_DNLOAD || dev->gone)
        return 0; /* a slow DNLOAD block shows as a long dfuDNBUSY instead */
    return hits(dev->cfg.slow_request, dev->cfg.slow_at, req, dev->req_count[req])
               ? ENG_VDFU_SLOW_MS
               : 0;
}

/* Standard requests (USB 2.0 §9.4). */
static int standard_request(struct eng_vdfu *dev, const uint8_t *setup, uint8_t *data,
                            size_t *actual)
{
    uint8_t type = setup[0];
    uint8_t req = setup[1];
    uint16_t wValue = le16(setup + 2);
    uint16_t wIndex = le16(setup + 4);
    uint16_t wLength = le16(setup + 6);
    switch (req) {
    case 0: /* GET_STATUS */
        if (!(type & 0x80) || wLength < 2)
            return ST_EPIPE;
        data[0] = 0;
        data[1] = 0;
        *actual = 2;
        return 0;
    case 6: { /* GET_DESCRIPTOR */
        if (type != 0x80)
            return ST_EPIPE;
        size_t n = eng_vdfu_descriptor(dev, (uint8_t)(wValue >> 8), (uint8_t)wValue, data, wLength);
        if (n == 0)
            return ST_EPIPE;
        *actual = n < wLength ? n : wLength;
        return 0;
    }
    case 8: /* GET_CONFIGURATION */
        if (type != 0x80 || wLength < 1)
            return ST_EPIPE;
        data[0] = 1;
        *actual = 1;
        return 0;
    case 9: /* SET_CONFIGURATION */
        return type == 0x00 && wValue <= 1 ? 0 : ST_EPIPE;
    case 10: /* GET_INTERFACE */
        if (type != 0x81 || wIndex != 0 || wLength < 1)
            return ST_EPIPE;
        data[0] = (uint8_t)dev->cur_alt;
        *actual = 1;
        return 0;
    case 11: { /* SET_INTERFACE */
        unsigned n_alt = dev->mode == 1 ? 1 : dev->n_alts;
        if (type != 0x01 || wIndex != 0 || wValue >= n_alt)
            return ST_EPIPE;
        dev->stats.set_interface++;
        /* The DFU state is kept: a device in dfuERROR stays there until
         * CLRSTATUS, as real bootloaders do. */
        dev->cur_alt = wValue;
        return 0;
    }
    default:
        return ST_EPIPE;
    }
}

int eng_vdfu_control(struct eng_vdfu *dev, uint64_t now_ms, const uint8_t setup[8], uint8_t *data,
                     size_t *actual)
{
    *actual = 0;
    if (dev->gone)
        return ST_ENODEV;
    uint8_t type = setup[0] & 0x60;
    uint8_t recipient = setup[0] & 0x1f;
    if (type == 0x00)
        return standard_request(dev, setup, data, actual);
    /* Class requests to the DFU interface (wIndex = bInterfaceNumber 0). */
    if (type != 0x20 || recipient != 0x01 || le16(setup + 4) != 0)
        return ST_EPIPE;
    return dfu_request(dev, now_ms, setup, data, actual);
}

bool eng_vdfu_take_reenumerate(struct eng_vdfu *dev)
{
    bool r = dev->reenumerate;
    dev->reenumerate = false;
    return r;
}

bool eng_vdfu_gone(const struct eng_vdfu *dev)
{
    return dev->gone;
}

unsigned eng_vdfu_mode(const struct eng_vdfu *dev)
{
    return dev->mode;
}

enum eng_dfu_state eng_vdfu_state(const struct eng_vdfu *dev)
{
    return dev->state;
}

const struct eng_vdfu_config *eng_vdfu_config(const struct eng_vdfu *dev)
{
    return &dev->cfg;
}

const struct eng_vdfu_stats *eng_vdfu_stats(const struct eng_vdfu *dev)
{
    return &dev->stats;
}

const uint8_t *eng_vdfu_memory(const struct eng_vdfu *dev, unsigned alt, uint32_t *size,
                               uint32_t *base)
{
    if (alt >= dev->n_alts)
        return NULL;
    const struct mem *m = &dev->alts[alt].mems[0];
    if (size)
        *size = m->size;
    if (base)
        *base = m->base;
    return m->bytes;
}

uint32_t eng_vdfu_firmware_len(const struct eng_vdfu *dev, unsigned alt)
{
    return alt < dev->n_alts ? dev->alts[alt].fw_len : 0;
}
