/*
 * eng_vfb: a virtual fastboot device, modelled from the device's side.
 *
 * The model knows nothing of how bytes reach it: the in-process virtual
 * transport, the TCP server and the usbdevfs harness all feed it host
 * messages with eng_vfb_host_write() and collect its replies with
 * eng_vfb_host_read(). It keeps no image data: each flashed partition is
 * remembered by its size and an XXH3-64 hash of its bytes, which is what
 * tests compare, so 64 devices flashing 64 MiB cost no memory.
 *
 * Faults are knobs in struct eng_vfb_config; the model is single-threaded
 * (the caller serialises access).
 */
#ifndef ENG_VIRT_VFB_H
#define ENG_VIRT_VFB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_VFB_MAX_PARTS 16
#define ENG_VFB_REPLY_MAX 512 /* room for the "oversized reply" fault */

struct eng_vfb_config {
    char serial[64];
    char usb_serial[64]; /* iSerial on the USB side; empty = same as serial */
    char product[32];
    char version_bootloader[32];
    uint64_t max_download; /* bytes; 0 means 256 MiB */
    double pace_mbps;      /* transfer pace in MB/s for transports; 0 = unpaced */
    unsigned info_lines;   /* INFO lines sent before each flash OKAY */
    bool ab_slots;         /* partitions have _a/_b copies (has-slot: yes) */
    bool keep_data;        /* keep partition bytes (tests; costs memory) */
    bool no_hash;          /* skip hashing the bytes received (part hash stays 0):
                              a model inside the station's process, where the
                              hash would be the model's CPU, not a device's */
    /* Faults. A prefix matches a command that starts with it. */
    char fail_on[64];     /* reply "FAIL injected fault" */
    char silent_on[64];   /* stop answering from this command on */
    char garbage_on[64];  /* reply bytes that are not a fastboot reply */
    char oversize_on[64]; /* reply with more than 256 bytes */
    bool disconnect_enabled;
    uint64_t disconnect_after; /* leave after this many data bytes in total */
    char disconnect_on[64];    /* take this command, then leave the bus */
    /* Slow: from this command, or from the data chunk that crosses
     * slow_after bytes, the device NAKs its bulk OUT endpoint: each
     * transfer takes ENG_VFB_SLOW_MS (see eng_vfb_write_is_slow()). */
    char slow_on[64];
    bool slow_enabled;
    uint64_t slow_after;
    /* Short: the device takes only half of this command (and ignores
     * it), or stops taking bytes at short_after in the data phase. */
    char short_on[64];
    bool short_enabled;
    uint64_t short_after;
    /* Stall: the device takes this command and halts its bulk IN
     * endpoint instead of replying, or halts its bulk OUT endpoint at
     * stall_after data bytes (eng_vfb_host_write() returns ST_EPIPE).
     * Transports without endpoints (TCP) see silence instead. */
    char stall_on[64];
    bool stall_enabled;
    uint64_t stall_after;
};

/* How long one bulk OUT transfer of a slow device takes. */
#define ENG_VFB_SLOW_MS 60000

struct eng_vfb_part {
    char name[32];
    uint64_t size;
    uint64_t hash; /* XXH3-64 of the bytes written (raw downloads only) */
    bool erased;
    bool sparse;     /* last written from Android sparse pieces */
    unsigned pieces; /* sparse pieces written since the last raw write */
    uint8_t *data;   /* keep_data: the partition's content (size bytes) */
};

struct eng_vfb;

int eng_vfb_new(const struct eng_vfb_config *cfg, struct eng_vfb **out);
void eng_vfb_free(struct eng_vfb *dev);

/* Parse one fault spec into cfg: "fail=CMD", "silent=CMD", "garbage=CMD",
 * "oversize=CMD", and "disconnect=", "slow=", "short=", "stall=" with
 * either a command prefix (CMD) or a count of data bytes (BYTES, digits).
 * Returns 0 or ST_EINVAL. */
int eng_vfb_parse_fault(struct eng_vfb_config *cfg, const char *spec);

/*
 * Host to device. In command state `data` is one command; in the data
 * phase any number of bytes. Sets *accepted to the bytes taken (fewer
 * than `len` for the short fault). Returns 0; ST_ENODEV when the device
 * has (now) disconnected; ST_EPIPE when it halted its bulk OUT endpoint
 * (stall fault). With an error *accepted says how many bytes it took
 * first.
 */
int eng_vfb_host_write(struct eng_vfb *dev, const void *data, size_t len, size_t *accepted);

/* Would the device take this write slowly (slow fault)? Asked by a
 * transport before it delivers the bytes, to pace them ENG_VFB_SLOW_MS. */
bool eng_vfb_write_is_slow(const struct eng_vfb *dev, const void *data, size_t len);

/* True once the device halted its bulk IN endpoint (stall fault): a read
 * ends in a stall (ST_EPIPE) instead of a reply. */
bool eng_vfb_in_halted(const struct eng_vfb *dev);

/* True when a reply is queued for the host. */
bool eng_vfb_reply_pending(const struct eng_vfb *dev);

/* Pop the next reply into buf. Returns its full length (which may exceed
 * cap: then only cap bytes were copied and the caller reports overflow). */
size_t eng_vfb_host_read(struct eng_vfb *dev, void *buf, size_t cap);

/* The host's link went away (a TCP client closed its connection): drop
 * queued replies and a half-done download; storage is kept. */
void eng_vfb_reset_link(struct eng_vfb *dev);

/* True once the device stopped answering for good: "reboot" or "continue"
 * (it now runs its OS) or the silent fault. */
bool eng_vfb_silent(const struct eng_vfb *dev);

/* The device has gone (disconnect fault, or after "reboot"). */
bool eng_vfb_gone(const struct eng_vfb *dev);
/* The device asked to re-enumerate (reboot-bootloader); cleared on read. */
bool eng_vfb_take_reenumerate(struct eng_vfb *dev);
/* True while the device is in the data phase of a download. */
bool eng_vfb_in_data_phase(const struct eng_vfb *dev);

const struct eng_vfb_config *eng_vfb_config(const struct eng_vfb *dev);
/* Partitions written so far; `writes` counts flash+erase commands that
 * changed storage (a wrong-model check must leave it at 0). */
const struct eng_vfb_part *eng_vfb_parts(const struct eng_vfb *dev, unsigned *n);
unsigned eng_vfb_writes(const struct eng_vfb *dev);
uint64_t eng_vfb_bytes_received(const struct eng_vfb *dev);
const char *eng_vfb_active_slot(const struct eng_vfb *dev);
/* Apply one Android sparse image (`buf`, `len`) onto `part`'s content,
 * growing it to the image's full size; exposed for tests. 0, or ST_EPROTO
 * with a message in `err` for a malformed image. */
int eng_vfb_apply_sparse(struct eng_vfb_part *part, const uint8_t *buf, uint64_t len, bool keep,
                         char *err, size_t errlen);

/* Commands received so far, for tests ("getvar:product", "download:00100000", ...). */
unsigned eng_vfb_command_count(const struct eng_vfb *dev);

#endif
