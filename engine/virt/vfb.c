/*
 * The virtual fastboot device. Protocol facts (shared/notes/fastboot.md):
 * commands are ASCII, at most 64 bytes; replies are a 4-byte tag plus up
 * to 252 bytes; "download:%08x" is answered with "DATA%08x", then exactly
 * that many bytes arrive, then OKAY or FAIL.
 */
#include "engine/virt/vfb.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/st_error.h"

#define REPLY_QUEUE 64
#define COMMAND_MAX 64

struct reply {
    size_t len;
    char bytes[ENG_VFB_REPLY_MAX];
};

struct eng_vfb {
    struct eng_vfb_config cfg;
    /* reply ring */
    struct reply *replies;
    unsigned head, count;
    /* data phase */
    bool in_data;
    uint64_t data_expected, data_got;
    XXH3_state_t *hash;
    bool staged; /* a complete download waits for flash */
    uint64_t staged_size, staged_hash;
    uint8_t *staged_data; /* keep_data: the download's bytes */
    bool staged_sparse;   /* the download starts with the sparse magic */
    uint8_t first[28];    /* first bytes of the download (a sparse header) */
    /* state */
    bool silent, gone, reenumerate;
    bool slow;      /* slow fault: every bulk OUT transfer crawls from now on */
    bool in_halted; /* stall fault: the bulk IN endpoint is halted */
    uint64_t bytes_total;
    unsigned commands, writes;
    char active_slot[4];
    unsigned n_parts;
    struct eng_vfb_part parts[ENG_VFB_MAX_PARTS];
};

static void push_reply_bytes(struct eng_vfb *d, const void *bytes, size_t len)
{
    if (d->count == REPLY_QUEUE)
        return; /* a host that never reads: newer replies are dropped */
    struct reply *r = &d->replies[(d->head + d->count) % REPLY_QUEUE];
    if (len > sizeof(r->bytes))
        len = sizeof(r->bytes);
    memcpy(r->bytes, bytes, len);
    r->len = len;
    d->count++;
}

static void push_reply(struct eng_vfb *d, const char *tag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void push_reply(struct eng_vfb *d, const char *tag, const char *fmt, ...)
{
    char buf[257];
    va_list ap;
    memcpy(buf, tag, 4);
    va_start(ap, fmt);
    int n = vsnprintf(buf + 4, sizeof(buf) - 4, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n > 252)
        n = 252;
    push_reply_bytes(d, buf, 4 + (size_t)n);
}

int eng_vfb_new(const struct eng_vfb_config *cfg, struct eng_vfb **out)
{
    struct eng_vfb *d = calloc(1, sizeof(*d));
    if (!d)
        return ST_ENOMEM;
    d->replies = calloc(REPLY_QUEUE, sizeof(*d->replies));
    d->hash = XXH3_createState();
    if (!d->replies || !d->hash) {
        eng_vfb_free(d);
        return ST_ENOMEM;
    }
    d->cfg = *cfg;
    if (!d->cfg.max_download)
        d->cfg.max_download = 256u << 20;
    if (!d->cfg.product[0])
        snprintf(d->cfg.product, sizeof(d->cfg.product), "simphone");
    if (!d->cfg.version_bootloader[0])
        snprintf(d->cfg.version_bootloader, sizeof(d->cfg.version_bootloader), "sim-bl-1.0");
    snprintf(d->active_slot, sizeof(d->active_slot), "a");
    *out = d;
    return 0;
}

void eng_vfb_free(struct eng_vfb *d)
{
    if (!d)
        return;
    if (d->hash)
        XXH3_freeState(d->hash);
    for (unsigned i = 0; i < d->n_parts; i++)
        free(d->parts[i].data);
    free(d->staged_data);
    free(d->replies);
    free(d);
}

/* "KIND=CMD" or "KIND=BYTES" for the faults that take either. */
static int parse_cmd_or_bytes(const char *val, char cmd[64], bool *enabled, uint64_t *bytes)
{
    if (val[0] >= '0' && val[0] <= '9') {
        char *end;
        unsigned long long n = strtoull(val, &end, 0);
        if (*end != '\0')
            return ST_EINVAL;
        *enabled = true;
        *bytes = n;
        return 0;
    }
    if (strlen(val) >= 64)
        return ST_EINVAL;
    snprintf(cmd, 64, "%s", val);
    return 0;
}

int eng_vfb_parse_fault(struct eng_vfb_config *cfg, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq[1] == '\0')
        return ST_EINVAL;
    size_t klen = (size_t)(eq - spec);
    const char *val = eq + 1;
    char *target = NULL;
    if (klen == 4 && !strncmp(spec, "fail", 4))
        target = cfg->fail_on;
    else if (klen == 6 && !strncmp(spec, "silent", 6))
        target = cfg->silent_on;
    else if (klen == 7 && !strncmp(spec, "garbage", 7))
        target = cfg->garbage_on;
    else if (klen == 8 && !strncmp(spec, "oversize", 8))
        target = cfg->oversize_on;
    else if (klen == 10 && !strncmp(spec, "disconnect", 10))
        return parse_cmd_or_bytes(val, cfg->disconnect_on, &cfg->disconnect_enabled,
                                  &cfg->disconnect_after);
    else if (klen == 4 && !strncmp(spec, "slow", 4))
        return parse_cmd_or_bytes(val, cfg->slow_on, &cfg->slow_enabled, &cfg->slow_after);
    else if (klen == 5 && !strncmp(spec, "short", 5))
        return parse_cmd_or_bytes(val, cfg->short_on, &cfg->short_enabled, &cfg->short_after);
    else if (klen == 5 && !strncmp(spec, "stall", 5))
        return parse_cmd_or_bytes(val, cfg->stall_on, &cfg->stall_enabled, &cfg->stall_after);
    if (!target || strlen(val) >= 64)
        return ST_EINVAL;
    snprintf(target, 64, "%s", val);
    return 0;
}

static bool prefix(const char *cmd, const char *pfx)
{
    return pfx[0] && !strncmp(cmd, pfx, strlen(pfx));
}

static struct eng_vfb_part *part_get(struct eng_vfb *d, const char *name)
{
    for (unsigned i = 0; i < d->n_parts; i++)
        if (!strcmp(d->parts[i].name, name))
            return &d->parts[i];
    if (d->n_parts == ENG_VFB_MAX_PARTS)
        return NULL;
    struct eng_vfb_part *p = &d->parts[d->n_parts++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    return p;
}

/* Answer "getvar:NAME"; returns false for an unknown variable. */
static bool getvar_value(struct eng_vfb *d, const char *name, char *out, size_t len)
{
    if (!strcmp(name, "product"))
        snprintf(out, len, "%s", d->cfg.product);
    else if (!strcmp(name, "serialno"))
        snprintf(out, len, "%s", d->cfg.serial);
    else if (!strcmp(name, "max-download-size"))
        snprintf(out, len, "0x%08" PRIx64, d->cfg.max_download);
    else if (!strcmp(name, "version-bootloader"))
        snprintf(out, len, "%s", d->cfg.version_bootloader);
    else if (!strcmp(name, "version-baseband"))
        snprintf(out, len, "sim-bb-1.0");
    else if (!strcmp(name, "version"))
        snprintf(out, len, "0.4");
    else if (!strcmp(name, "is-userspace"))
        snprintf(out, len, "no");
    else if (!strcmp(name, "secure"))
        snprintf(out, len, "no");
    else if (!strcmp(name, "current-slot"))
        snprintf(out, len, "%s", d->active_slot);
    else if (!strcmp(name, "slot-count"))
        snprintf(out, len, "2");
    else if (!strncmp(name, "has-slot:", 9))
        snprintf(out, len, "%s",
                 d->cfg.ab_slots && strcmp(name + 9, "userdata") && strcmp(name + 9, "metadata") &&
                         strcmp(name + 9, "misc")
                     ? "yes"
                     : "no");
    else
        return false;
    return true;
}

static void do_getvar_all(struct eng_vfb *d)
{
    static const char *const vars[] = {
        "product",          "serialno",  "max-download-size", "version-bootloader",
        "version-baseband", "version",   "is-userspace",      "secure",
        "current-slot",     "slot-count"};
    char val[200];
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        getvar_value(d, vars[i], val, sizeof(val));
        push_reply(d, "INFO", "%s:%s", vars[i], val);
    }
    push_reply(d, "OKAY", "%s", "");
}

static void do_command(struct eng_vfb *d, const char *cmd)
{
    char val[200];
    d->commands++;
    if (d->silent || prefix(cmd, d->cfg.silent_on)) {
        d->silent = true;
        return;
    }
    if (prefix(cmd, d->cfg.disconnect_on)) {
        d->gone = true;
        return;
    }
    if (prefix(cmd, d->cfg.slow_on))
        d->slow = true;
    if (prefix(cmd, d->cfg.stall_on)) {
        d->in_halted = true;
        return;
    }
    if (prefix(cmd, d->cfg.garbage_on)) {
        static const char junk[] = "\x01\x7f"
                                   "ZQ\xff garbage";
        push_reply_bytes(d, junk, sizeof(junk) - 1);
        return;
    }
    if (prefix(cmd, d->cfg.oversize_on)) {
        char big[300];
        memcpy(big, "OKAY", 4);
        memset(big + 4, 'x', sizeof(big) - 4);
        push_reply_bytes(d, big, sizeof(big));
        return;
    }
    if (prefix(cmd, d->cfg.fail_on)) {
        push_reply(d, "FAIL", "injected fault");
        return;
    }
    if (!strncmp(cmd, "getvar:", 7)) {
        if (!strcmp(cmd + 7, "all"))
            do_getvar_all(d);
        else if (getvar_value(d, cmd + 7, val, sizeof(val)))
            push_reply(d, "OKAY", "%s", val);
        else
            push_reply(d, "FAIL", "GetVar Variable Not found");
    } else if (!strncmp(cmd, "download:", 9)) {
        char *end;
        unsigned long long n = strtoull(cmd + 9, &end, 16);
        if (strlen(cmd + 9) != 8 || *end != '\0')
            push_reply(d, "FAIL", "bad download size");
        else if (n == 0 || n > d->cfg.max_download)
            push_reply(d, "FAIL", "data too large");
        else {
            free(d->staged_data);
            d->staged_data = NULL;
            if (d->cfg.keep_data && !(d->staged_data = malloc(n))) {
                push_reply(d, "FAIL", "out of memory");
                return;
            }
            d->in_data = true;
            d->staged = false;
            d->data_expected = n;
            d->data_got = 0;
            XXH3_64bits_reset(d->hash);
            push_reply(d, "DATA", "%08llx", n);
        }
    } else if (!strncmp(cmd, "flash:", 6)) {
        struct eng_vfb_part *p = d->staged ? part_get(d, cmd + 6) : NULL;
        if (!d->staged)
            push_reply(d, "FAIL", "no image downloaded");
        else if (!p)
            push_reply(d, "FAIL", "too many partitions");
        else if (d->staged_sparse) {
            char err[120];
            /* without keep_data only the header (first[]) was kept */
            if (eng_vfb_apply_sparse(p, d->staged_data ? d->staged_data : d->first,
                                     d->staged_data ? d->staged_size : sizeof(d->first),
                                     d->cfg.keep_data, err, sizeof(err)) != 0) {
                push_reply(d, "FAIL", "%s", err);
                return;
            }
            for (unsigned i = 0; i < d->cfg.info_lines; i++)
                push_reply(d, "INFO", "writing '%s' %u/%u", p->name, i + 1, d->cfg.info_lines);
            d->writes++;
            push_reply(d, "OKAY", "%s", "");
        } else {
            for (unsigned i = 0; i < d->cfg.info_lines; i++)
                push_reply(d, "INFO", "writing '%s' %u/%u", p->name, i + 1, d->cfg.info_lines);
            p->size = d->staged_size;
            p->hash = d->staged_hash;
            p->erased = false;
            p->sparse = false;
            p->pieces = 0;
            if (d->cfg.keep_data) {
                free(p->data);
                p->data = d->staged_data;
                d->staged_data = NULL;
                d->staged = false;
            }
            d->writes++;
            push_reply(d, "OKAY", "%s", "");
        }
    } else if (!strncmp(cmd, "erase:", 6)) {
        struct eng_vfb_part *p = part_get(d, cmd + 6);
        if (!p)
            push_reply(d, "FAIL", "too many partitions");
        else {
            p->size = 0;
            p->hash = 0;
            p->erased = true;
            p->sparse = false;
            p->pieces = 0;
            free(p->data);
            p->data = NULL;
            d->writes++;
            push_reply(d, "OKAY", "%s", "");
        }
    } else if (!strncmp(cmd, "set_active:", 11)) {
        if (strcmp(cmd + 11, "a") && strcmp(cmd + 11, "b"))
            push_reply(d, "FAIL", "invalid slot");
        else {
            d->active_slot[0] = cmd[11];
            d->active_slot[1] = '\0';
            push_reply(d, "OKAY", "%s", "");
        }
    } else if (!strcmp(cmd, "reboot")) {
        push_reply(d, "OKAY", "%s", "");
        d->silent = true; /* now booting the OS: no more fastboot */
    } else if (!strcmp(cmd, "reboot-bootloader")) {
        push_reply(d, "OKAY", "%s", "");
        d->reenumerate = true;
    } else if (!strcmp(cmd, "continue")) {
        push_reply(d, "OKAY", "%s", "");
        d->silent = true;
    } else if (!strncmp(cmd, "oem ", 4)) {
        push_reply(d, "INFO", "oem: %s", cmd + 4);
        push_reply(d, "OKAY", "%s", "");
    } else {
        push_reply(d, "FAIL", "unknown command");
    }
}

/* Does `n` more data bytes cross the fault's threshold? */
static bool crosses(const struct eng_vfb *d, bool enabled, uint64_t after, uint64_t n)
{
    return enabled && d->bytes_total + n > after;
}

int eng_vfb_host_write(struct eng_vfb *d, const void *data, size_t len, size_t *accepted)
{
    *accepted = 0;
    if (d->gone)
        return ST_ENODEV;
    if (d->in_data) {
        uint64_t want = d->data_expected - d->data_got;
        size_t take = len < want ? len : (size_t)want;
        int rc = 0;
        if (crosses(d, d->cfg.disconnect_enabled, d->cfg.disconnect_after, take)) {
            take = (size_t)(d->cfg.disconnect_after - d->bytes_total);
            rc = ST_ENODEV;
        } else if (crosses(d, d->cfg.stall_enabled, d->cfg.stall_after, take)) {
            take = (size_t)(d->cfg.stall_after - d->bytes_total);
            rc = ST_EPIPE;
        } else if (crosses(d, d->cfg.short_enabled, d->cfg.short_after, take)) {
            /* a short packet: the transfer ends with fewer bytes, no error */
            take = (size_t)(d->cfg.short_after - d->bytes_total);
        }
        if (!d->cfg.no_hash)
            XXH3_64bits_update(d->hash, data, take);
        if (d->staged_data)
            memcpy(d->staged_data + d->data_got, data, take);
        for (uint64_t i = d->data_got; i < sizeof(d->first) && i - d->data_got < take; i++)
            d->first[i] = ((const uint8_t *)data)[i - d->data_got];
        d->data_got += take;
        d->bytes_total += take;
        *accepted = take;
        if (crosses(d, d->cfg.slow_enabled, d->cfg.slow_after, 0))
            d->slow = true;
        if (rc == ST_ENODEV)
            d->gone = true;
        if (rc)
            return rc;
        if (d->data_got == d->data_expected) {
            d->in_data = false;
            d->staged = true;
            d->staged_size = d->data_expected;
            d->staged_hash = d->cfg.no_hash ? 0 : XXH3_64bits_digest(d->hash);
            d->staged_sparse = d->data_expected >= 28 && d->first[0] == 0x3a &&
                               d->first[1] == 0xff && d->first[2] == 0x26 && d->first[3] == 0xed;
            if (!d->silent)
                push_reply(d, "OKAY", "%s", "");
        }
        return 0;
    }
    char cmd[COMMAND_MAX + 1];
    *accepted = len;
    if (len > COMMAND_MAX) {
        d->commands++;
        push_reply(d, "FAIL", "command too long");
        return 0;
    }
    memcpy(cmd, data, len);
    cmd[len] = '\0';
    if (prefix(cmd, d->cfg.short_on)) {
        /* half of the command arrives; the device waits for the rest */
        d->commands++;
        *accepted = len / 2;
        return 0;
    }
    do_command(d, cmd);
    return d->gone ? ST_ENODEV : 0;
}

bool eng_vfb_write_is_slow(const struct eng_vfb *d, const void *data, size_t len)
{
    if (d->slow)
        return true;
    if (d->in_data) {
        uint64_t want = d->data_expected - d->data_got;
        return crosses(d, d->cfg.slow_enabled, d->cfg.slow_after, len < want ? len : want);
    }
    char cmd[COMMAND_MAX + 1];
    if (len > COMMAND_MAX)
        return false;
    memcpy(cmd, data, len);
    cmd[len] = '\0';
    return prefix(cmd, d->cfg.slow_on);
}

bool eng_vfb_in_halted(const struct eng_vfb *d)
{
    return d->in_halted && !d->gone;
}

bool eng_vfb_reply_pending(const struct eng_vfb *d)
{
    return d->count > 0 && !d->gone;
}

size_t eng_vfb_host_read(struct eng_vfb *d, void *buf, size_t cap)
{
    if (d->count == 0)
        return 0;
    struct reply *r = &d->replies[d->head];
    d->head = (d->head + 1) % REPLY_QUEUE;
    d->count--;
    memcpy(buf, r->bytes, r->len < cap ? r->len : cap);
    return r->len;
}

bool eng_vfb_gone(const struct eng_vfb *d)
{
    return d->gone;
}
bool eng_vfb_silent(const struct eng_vfb *d)
{
    return d->silent;
}

void eng_vfb_reset_link(struct eng_vfb *d)
{
    d->head = 0;
    d->count = 0;
    if (d->in_data) {
        d->in_data = false;
        d->staged = false;
        free(d->staged_data);
        d->staged_data = NULL;
    }
}

bool eng_vfb_take_reenumerate(struct eng_vfb *d)
{
    bool r = d->reenumerate;
    d->reenumerate = false;
    return r;
}

bool eng_vfb_in_data_phase(const struct eng_vfb *d)
{
    return d->in_data;
}
const struct eng_vfb_config *eng_vfb_config(const struct eng_vfb *d)
{
    return &d->cfg;
}

const struct eng_vfb_part *eng_vfb_parts(const struct eng_vfb *d, unsigned *n)
{
    *n = d->n_parts;
    return d->parts;
}

unsigned eng_vfb_writes(const struct eng_vfb *d)
{
    return d->writes;
}
uint64_t eng_vfb_bytes_received(const struct eng_vfb *d)
{
    return d->bytes_total;
}
const char *eng_vfb_active_slot(const struct eng_vfb *d)
{
    return d->active_slot;
}
unsigned eng_vfb_command_count(const struct eng_vfb *d)
{
    return d->commands;
}

/* Android sparse format (shared/notes/fastboot.md): a 28-byte file
 * header, then chunks with a 12-byte header each. Little-endian. */
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

int eng_vfb_apply_sparse(struct eng_vfb_part *part, const uint8_t *buf, uint64_t len, bool keep,
                         char *err, size_t errlen)
{
    if (keep && !buf) {
        snprintf(err, errlen, "sparse image not kept");
        return ST_EPROTO;
    }
    if (len < 28 || le32(buf) != 0xed26ff3a || le16(buf + 4) != 1 || le16(buf + 8) < 28 ||
        le16(buf + 10) < 12) {
        snprintf(err, errlen, "invalid sparse file format");
        return ST_EPROTO;
    }
    uint32_t hdr = le16(buf + 8), chdr = le16(buf + 10), bs = le32(buf + 12);
    uint32_t total_blks = le32(buf + 16), chunks = le32(buf + 20);
    if (bs == 0 || bs % 4 != 0) {
        snprintf(err, errlen, "invalid sparse block size %u", bs);
        return ST_EPROTO;
    }
    uint64_t size = (uint64_t)total_blks * bs;
    if (!keep) {
        /* Only the header is known: record the size, not the chunks. */
        part->size = size;
        part->hash = 0;
        part->erased = false;
        if (!part->sparse)
            part->pieces = 0;
        part->sparse = true;
        part->pieces++;
        return 0;
    }
    if (keep && size > (1ull << 32)) {
        snprintf(err, errlen, "sparse image too large for the virtual device");
        return ST_EPROTO;
    }
    uint8_t *data = part->data;
    /* A new or erased partition has no bytes yet, whatever its size says. */
    uint64_t have = part->data ? part->size : 0;
    if (keep && (have != size || !part->data)) {
        uint8_t *n = realloc(part->data, size ? size : 1);
        if (!n) {
            snprintf(err, errlen, "out of memory");
            return ST_EPROTO;
        }
        if (size > have)
            memset(n + have, 0, size - have);
        data = part->data = n;
    }
    uint64_t off = hdr, blk = 0;
    for (uint32_t c = 0; c < chunks; c++) {
        if (off + chdr > len) {
            snprintf(err, errlen, "sparse chunk %u truncated", c);
            return ST_EPROTO;
        }
        uint16_t type = le16(buf + off);
        uint32_t n = le32(buf + off + 4), total = le32(buf + off + 8);
        uint64_t bytes = (uint64_t)n * bs;
        if (total < chdr || off + total > len || blk + n > total_blks) {
            snprintf(err, errlen, "sparse chunk %u out of bounds", c);
            return ST_EPROTO;
        }
        const uint8_t *payload = buf + off + chdr;
        switch (type) {
        case 0xCAC1:
            if (total - chdr != bytes) {
                snprintf(err, errlen, "sparse raw chunk %u has the wrong size", c);
                return ST_EPROTO;
            }
            if (keep)
                memcpy(data + blk * bs, payload, bytes);
            break;
        case 0xCAC2:
            if (total - chdr != 4) {
                snprintf(err, errlen, "sparse fill chunk %u has the wrong size", c);
                return ST_EPROTO;
            }
            if (keep)
                for (uint64_t i = 0; i < bytes; i += 4)
                    memcpy(data + blk * bs + i, payload, 4);
            break;
        case 0xCAC3:
        case 0xCAC4:
            break;
        default:
            snprintf(err, errlen, "unknown sparse chunk type 0x%04x", type);
            return ST_EPROTO;
        }
        blk += n;
        off += total;
    }
    part->size = size;
    part->hash = 0;
    part->erased = false;
    if (!part->sparse)
        part->pieces = 0;
    part->sparse = true;
    part->pieces++;
    return 0;
}
