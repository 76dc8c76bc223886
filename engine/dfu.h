/*
 * eng_dfu: the host side of USB DFU 1.1 and ST's DfuSe extension, as a
 * state machine over an eng_transport's control transfers
 * (shared/notes/dfu.md has the wire facts; DFU 1.1 sections are cited at
 * each request in dfu.c).
 *
 * The driver reads what it needs about the device from the transport's
 * `dfu` field (interface number, wTransferSize, bmAttributes, bcdDFU,
 * alt names), filled from the descriptors by whoever found the device
 * (eng_dfu_parse_config() helps). One operation at a time:
 *   eng_dfu_download()  DNLOAD blocks, each followed by GETSTATUS and, while
 *                       dfuDNBUSY, a wait of bwPollTimeout on a timer, then
 *                       the zero-length DNLOAD and manifestation (tolerant:
 *                       back to dfuIDLE; otherwise a USB reset from
 *                       dfuMANIFEST-WAIT-RESET). DfuSe devices get their
 *                       pages erased, the address pointer set and blocks
 *                       at wValue >= 2; the device stays in DFU mode.
 *   eng_dfu_verify()    UPLOAD blocks and compare them with the image.
 *   eng_dfu_detach()    run-time mode: DETACH, then a USB reset unless the
 *                       device sets bitWillDetach. In DFU mode: GETSTATUS
 *                       only ("already in DFU mode").
 *   eng_dfu_leave()     DfuSe: set the address, zero-length DNLOAD; the
 *                       device starts its firmware.
 * Each starts by selecting the alternate setting (SET_INTERFACE) and
 * bringing the device to dfuIDLE (CLRSTATUS from dfuERROR, ABORT from
 * other idle states).
 *
 * Time limits: every request (request_ms), every stay in dfuDNBUSY or
 * dfuMANIFEST (busy_ms), and the whole operation (total_ms). On expiry the
 * request in flight is cancelled and the operation ends ST_ETIMEDOUT.
 *
 * The completion callback runs exactly once for an operation whose start
 * returned 0, on the loop thread, never from inside the start call.
 * `text` is a summary on success or a message that names the operation,
 * the alt, the block and the DFU status: "download alt 0 block 37:
 * errWRITE", "download alt 0: device stays in dfuDNBUSY beyond 5 s",
 * "verify alt 0: byte 4096 differs (image 0x5a, device 0xa5)". After a
 * device fails with a DFU status, the driver sends CLRSTATUS (best
 * effort) before calling back, so a retry starts clean.
 */
#ifndef ENG_DFU_H
#define ENG_DFU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine/transport.h"

/* DFU 1.1 §6.1.2: bState */
enum eng_dfu_state {
    ENG_DFU_APP_IDLE = 0,
    ENG_DFU_APP_DETACH = 1,
    ENG_DFU_IDLE = 2,
    ENG_DFU_DNLOAD_SYNC = 3,
    ENG_DFU_DNBUSY = 4,
    ENG_DFU_DNLOAD_IDLE = 5,
    ENG_DFU_MANIFEST_SYNC = 6,
    ENG_DFU_MANIFEST = 7,
    ENG_DFU_MANIFEST_WAIT_RESET = 8,
    ENG_DFU_UPLOAD_IDLE = 9,
    ENG_DFU_ERROR = 10,
};

/* DFU 1.1 §6.1.2: bStatus */
enum eng_dfu_status {
    ENG_DFU_OK = 0,
    ENG_DFU_ERR_TARGET = 1,
    ENG_DFU_ERR_FILE = 2,
    ENG_DFU_ERR_WRITE = 3,
    ENG_DFU_ERR_ERASE = 4,
    ENG_DFU_ERR_CHECK_ERASED = 5,
    ENG_DFU_ERR_PROG = 6,
    ENG_DFU_ERR_VERIFY = 7,
    ENG_DFU_ERR_ADDRESS = 8,
    ENG_DFU_ERR_NOTDONE = 9,
    ENG_DFU_ERR_FIRMWARE = 10,
    ENG_DFU_ERR_VENDOR = 11,
    ENG_DFU_ERR_USBR = 12,
    ENG_DFU_ERR_POR = 13,
    ENG_DFU_ERR_UNKNOWN = 14,
    ENG_DFU_ERR_STALLEDPKT = 15,
};

/* DFU 1.1 Table 3.2: bRequest */
enum eng_dfu_request {
    ENG_DFU_DETACH = 0,
    ENG_DFU_DNLOAD = 1,
    ENG_DFU_UPLOAD = 2,
    ENG_DFU_GETSTATUS = 3,
    ENG_DFU_CLRSTATUS = 4,
    ENG_DFU_GETSTATE = 5,
    ENG_DFU_ABORT = 6,
};

/* "dfuDNBUSY", "errWRITE", "GETSTATUS" (static strings; "unknown state",
 * "unknown status", "unknown request" for values outside the spec). */
const char *eng_dfu_state_name(unsigned state);
const char *eng_dfu_status_name(unsigned status);
const char *eng_dfu_request_name(unsigned request);

/*
 * Fill `out` from a configuration descriptor (as GET_DESCRIPTOR returns
 * it, `len` bytes): the first interface of class 0xFE subclass 0x01, its
 * protocol (mode), alternate settings and their iInterface string
 * indices (in alt_string[], for the caller to fetch into alt_names), and
 * the DFU functional descriptor (DFU 1.1 §4.1.3). 0, or ST_EINVAL when
 * there is no DFU interface or no functional descriptor.
 */
int eng_dfu_parse_config(const uint8_t *desc, size_t len, struct eng_dfu_info *out,
                         uint8_t alt_string[ENG_DFU_MAX_ALTS]);

/* The bytes for one memory region: plain DFU takes exactly one segment
 * (its address is ignored); DfuSe writes each at its address. */
struct eng_dfu_segment {
    uint32_t address;
    const uint8_t *data;
    size_t len;
};

struct eng_dfu_limits {
    unsigned request_ms; /* each control request; 0: 5000 */
    unsigned busy_ms;    /* each stay in dfuDNBUSY / dfuMANIFEST; 0: 5000 */
    unsigned total_ms;   /* the whole operation; 0: no limit beyond the others */
};

struct eng_dfu;

typedef void (*eng_dfu_done_cb)(struct eng_dfu *d, int status, const char *text, void *user_data);
typedef void (*eng_dfu_progress_cb)(struct eng_dfu *d, uint64_t done, uint64_t total,
                                    void *user_data);

struct eng_dfu_hooks {
    eng_dfu_progress_cb progress; /* after each data block; may be NULL */
    void *user_data;
};

/* Create a driver on an open transport (borrowed, not owned). */
int eng_dfu_new(uv_loop_t *loop, struct eng_transport *t, const struct eng_dfu_hooks *hooks,
                struct eng_dfu **out);

/*
 * Download `n` segments (array and bytes valid until the callback) to
 * alternate setting `alt`. Returns 0 (callback will run) or a negative
 * code (it will not): ST_EBUSY while an operation runs, ST_ECLOSED while
 * closing, ST_EINVAL for bad arguments (no segment, plain DFU with more
 * than one, empty data).
 */
int eng_dfu_download(struct eng_dfu *d, unsigned alt, const struct eng_dfu_segment *segs,
                     unsigned n, const struct eng_dfu_limits *lim, eng_dfu_done_cb cb,
                     void *user_data);

/* Read back and compare; same arguments and returns as eng_dfu_download(). */
int eng_dfu_verify(struct eng_dfu *d, unsigned alt, const struct eng_dfu_segment *segs, unsigned n,
                   const struct eng_dfu_limits *lim, eng_dfu_done_cb cb, void *user_data);

/* Get the device into DFU mode (see above). */
int eng_dfu_detach(struct eng_dfu *d, const struct eng_dfu_limits *lim, eng_dfu_done_cb cb,
                   void *user_data);

/* DfuSe: leave DFU mode and start the firmware at `address`. */
int eng_dfu_leave(struct eng_dfu *d, unsigned alt, uint32_t address,
                  const struct eng_dfu_limits *lim, eng_dfu_done_cb cb, void *user_data);

/* True when the last operation ended with the device leaving the bus to
 * re-enumerate (detach, reset after manifestation, DfuSe leave): its
 * transport is about to report it gone, and it may come back on the same
 * port, maybe in another mode. */
bool eng_dfu_device_left(const struct eng_dfu *d);

/* Cancel the running operation; its callback runs with `status` and
 * `reason`. No-op when idle. ST_ENODEV while the driver expects the
 * device to leave (detach, manifestation reset) ends the operation as a
 * success with eng_dfu_device_left() true. May be called from a hook. */
void eng_dfu_abort(struct eng_dfu *d, int status, const char *reason);

bool eng_dfu_busy(const struct eng_dfu *d);

/* Cancel what runs (its callback fires with ST_ECANCELED), close the
 * timers and free the driver; `cb` runs after that. */
void eng_dfu_close(struct eng_dfu *d, void (*cb)(void *user_data), void *user_data);

/* ---- planning a recipe step (engine/dfu_plan.c) ---- */

#define ENG_DFU_PLAN_MAX_SEGS 64

/* What a dfu-download / dfu-verify step sends: the alt and segments taken
 * from the image file, checked against the device. Points into the image
 * bytes, which must outlive it. */
struct eng_dfu_plan {
    unsigned alt;
    unsigned n_segs;
    struct eng_dfu_segment segs[ENG_DFU_PLAN_MAX_SEGS];
    uint64_t bytes; /* sum of the segments */
};

/*
 * Resolve `alt_arg` (a number, or an alt name: the whole iInterface
 * string or its DfuSe name part, "Internal Flash") on the device behind
 * `t` (which must be in DFU mode), parse the image (`len` bytes named
 * `image_name`) and check it: suffix CRC, VID/PID against the device
 * unless 0xFFFF, no suffix only with `allow_raw`; a DfuSe file only for a
 * DfuSe device, using the elements of its target for that alt; a raw
 * image on a DfuSe device goes to the start of the alt's layout.
 * 0, or ST_EINVAL/ST_ENOMEM with a message in err. Pure, no I/O.
 */
int eng_dfu_plan(const struct eng_transport *t, const char *alt_arg, const uint8_t *image,
                 size_t len, const char *image_name, bool allow_raw, struct eng_dfu_plan *out,
                 char *err, size_t errlen);

/* The same from an image file parsed once already (engine/image.h keeps
 * each image's parse, made when it loads): no pass over its bytes. */
struct eng_dfu_file;
int eng_dfu_plan_file(const struct eng_transport *t, const char *alt_arg,
                      const struct eng_dfu_file *f, const char *image_name, bool allow_raw,
                      struct eng_dfu_plan *out, char *err, size_t errlen);

#endif
