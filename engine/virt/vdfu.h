/*
 * eng_vdfu: a virtual USB DFU 1.1 device (optionally ST's DfuSe variant),
 * modelled from the device's side of endpoint 0.
 *
 * Like eng_vfb, the model knows nothing of how requests reach it. Every
 * way of serving it does the same three things:
 *   1. present the descriptors of the current mode (eng_vdfu_descriptor);
 *   2. pass each control request on endpoint 0 to eng_vdfu_control() and
 *      return its answer (data, a STALL, or no answer at all);
 *   3. after each request, and after a bus reset (eng_vdfu_bus_reset),
 *      ask eng_vdfu_take_reenumerate(): when true the device has left the
 *      bus and must be presented again, with its new descriptors (DETACH
 *      with bitWillDetach, DfuSe leave, a reset that switches mode).
 * The in-process transport (vdfu_transport.h) does this on the station's
 * loop; a usbdevfs harness (tests/usbsim) can do the same for dfu-util
 * and libusb: answer URBs on ep0 with eng_vdfu_control(), serve
 * USBDEVFS_RESET with eng_vdfu_bus_reset(), and build the sysfs/usbfs
 * descriptor files from eng_vdfu_descriptor(). The model handles the
 * standard requests too (GET_DESCRIPTOR, SET_CONFIGURATION,
 * SET_INTERFACE, GET_INTERFACE, GET_STATUS), so everything on ep0 can be
 * routed to it.
 *
 * Modes: run-time (interface protocol 1, idProduct pid_runtime): only
 * DETACH, GETSTATUS and GETSTATE (DFU 1.1 §3, Table 3.1). DFU mode
 * (protocol 2, pid_dfu): one interface with one alternate setting per
 * memory; each alt has its own flash model (erased state 0xFF,
 * programming only clears bits). Plain DFU writes blocks in order from
 * offset 0 (the whole memory is erased by the first block of a
 * download) and UPLOAD returns what the last download wrote. DfuSe
 * (bcdDFU 0x011A) takes the layout from the alt name ("@Internal Flash
 * /0x08000000/04*016Kg,...") and implements AN3156: DNLOAD wValue 0
 * commands (0x21 set address, 0x41 erase page or mass erase, 0x92 read
 * unprotect), data blocks at pointer + (wValue - 2) * wTransferSize, and
 * "leave" (a zero-length DNLOAD: the device manifests and resets into
 * its application). Writing over bytes that are not erased ends in
 * errCHECK_ERASED.
 *
 * Time: the model has no clock; every call takes `now_ms` from the
 * caller's monotonic clock (the same clock for every call). A device
 * that is busy (bwPollTimeout) and asked again too early answers
 * dfuDNBUSY again with the time left and counts an early poll, which
 * tests use to prove the host honours bwPollTimeout.
 *
 * Single-threaded: the caller serialises access.
 */
#ifndef ENG_VIRT_VDFU_H
#define ENG_VIRT_VDFU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/dfu.h"
#include "engine/transport.h"

#define ENG_VDFU_MAX_ALTS 4

struct eng_vdfu_alt {
    char name[ENG_DFU_ALT_NAME_MAX]; /* iInterface; DfuSe: the memory layout */
    uint32_t size;                   /* plain DFU: memory bytes (default 64 KiB) */
};

struct eng_vdfu_config {
    char serial[64];
    char manufacturer[32];      /* default "Station" */
    char product[32];           /* default "Virtual DFU" */
    uint16_t vid;               /* default 0x0483 */
    uint16_t pid_runtime;       /* default 0x5740 */
    uint16_t pid_dfu;           /* default 0xdf11 */
    uint16_t bcd_device;        /* default 0x2200 */
    uint16_t transfer_size;     /* wTransferSize; default 1024 */
    uint8_t attributes;         /* ENG_DFU_ATTR_*; 0 = CanDnload|CanUpload|ManifestationTolerant */
    uint16_t detach_timeout_ms; /* wDetachTimeOut; default 1000 */
    bool dfuse;                 /* bcdDFU 0x011A and the DfuSe commands */
    bool start_runtime;         /* plugged in run-time mode (implies runtime_app) */
    bool runtime_app;           /* its firmware shows a DFU run-time interface after a reset */
    bool dirty;                 /* memory starts as 0x00 (not erased) instead of 0xFF */
    unsigned block_busy_ms;     /* bwPollTimeout after each data block */
    unsigned erase_busy_ms;     /* DfuSe: per erased page; plain: first block of a download */
    unsigned manifest_ms;       /* bwPollTimeout in dfuMANIFEST */
    unsigned n_alts;            /* 0: one alt, "Flash" (plain) or an STM32F4 layout (DfuSe) */
    struct eng_vdfu_alt alts[ENG_VDFU_MAX_ALTS];
    /* Faults. Data blocks are counted from 0 since the device was plugged. */
    bool err_write; /* data block err_write_block ends in errWRITE */
    unsigned err_write_block;
    bool corrupt; /* the byte at corrupt_offset (from the start of
                     the alt's memory) is stored wrong: read-back differs */
    uint32_t corrupt_offset;
    int stall_request;           /* bRequest + 1 to STALL (0 = off)... */
    unsigned stall_at;           /* ...on its stall_at-th occurrence (from 0) */
    int silent_request;          /* bRequest + 1 never answered (0 = off)... */
    unsigned silent_at;          /* ...from its silent_at-th occurrence (from 0) on */
    bool disconnect_in_manifest; /* leaves the bus when it enters dfuMANIFEST */
    bool stuck_busy;             /* from data block stuck_block on, never leaves dfuDNBUSY */
    unsigned stuck_block;
    /* More faults on the at-th occurrence (from 0) of bRequest + 1 (0 = off): */
    int disconnect_request; /* leaves the bus for good instead of answering */
    unsigned disconnect_at;
    int garbage_request; /* GETSTATUS: bStatus and bState out of range;
                            UPLOAD: the bytes scrambled */
    unsigned garbage_at;
    int oversize_request; /* answers more than wLength (babble: ST_EOVERFLOW) */
    unsigned oversize_at;
    int short_request; /* DNLOAD takes, GETSTATUS/UPLOAD answer, half of wLength */
    unsigned short_at;
    int slow_request; /* answers ENG_VDFU_SLOW_MS late (eng_vdfu_answer_delay());
                         a DNLOAD block keeps it dfuDNBUSY that long */
    unsigned slow_at;
    bool fail_manifest; /* manifestation ends in dfuERROR, errFIRMWARE */
    bool slow_manifest; /* manifestation takes ENG_VDFU_SLOW_MS */
};

/* How long a slow device takes over one request or manifestation. */
#define ENG_VDFU_SLOW_MS 60000

/* What the model did, for tests. */
struct eng_vdfu_stats {
    unsigned requests[7]; /* per DFU bRequest (DETACH..ABORT) */
    unsigned data_blocks; /* data DNLOADs taken */
    unsigned upload_blocks;
    unsigned erases;      /* DfuSe pages (a mass erase counts each page) */
    unsigned early_polls; /* GETSTATUS before bwPollTimeout had passed */
    unsigned manifests;   /* completed manifestations */
    unsigned resets;      /* bus resets */
    unsigned detaches;
    unsigned set_interface;
};

struct eng_vdfu;

/* 0 and *out, ST_ENOMEM, or ST_EINVAL for an impossible configuration
 * (a DfuSe alt name that is not a layout, more than ENG_VDFU_MAX_ALTS). */
int eng_vdfu_new(const struct eng_vdfu_config *cfg, struct eng_vdfu **out);
void eng_vdfu_free(struct eng_vdfu *dev);

/* Parse one fault spec into cfg: "errwrite=BLOCK", "corrupt=OFFSET"
 * (alias "errverify=OFFSET"), "stall=REQ[@N]", "silent=REQ[@N]",
 * "disconnect=REQ[@N]", "garbage=REQ[@N]", "oversize=REQ[@N]",
 * "short=REQ[@N]", "slow=REQ[@N]" (REQ: detach, dnload, upload,
 * getstatus, clrstatus, getstate, abort; N counts from 0 since the device
 * was plugged), "disconnect=manifest", "fail=manifest", "slow=manifest",
 * "stuck=BLOCK". 0 or ST_EINVAL. */
int eng_vdfu_parse_fault(struct eng_vdfu_config *cfg, const char *spec);

/* How long the device lets the host wait before it answers this request
 * (slow fault): 0, or ENG_VDFU_SLOW_MS. A transport asks before passing
 * the request to eng_vdfu_control(), and holds it that long. */
unsigned eng_vdfu_answer_delay(const struct eng_vdfu *dev, const uint8_t setup[8]);

/*
 * One control request on endpoint 0. `setup` holds the 8 setup bytes
 * (bmRequestType, bRequest, wValue, wIndex, wLength; little-endian);
 * `data` has wLength bytes: what the host sent (OUT) or room for the
 * answer (IN). *actual receives the bytes moved (IN: may be fewer than
 * wLength; a short UPLOAD ends an upload; more than wLength, with only
 * wLength bytes written, for the oversize fault: the caller reports babble).
 * Returns 0; ST_EPIPE when the device STALLs the request; ST_EAGAIN when
 * it does not answer (NAK until the host gives up: keep the request
 * pending until it is cancelled); ST_ENODEV when the device has just
 * left the bus for good (disconnect fault; later calls return it too).
 */
int eng_vdfu_control(struct eng_vdfu *dev, uint64_t now_ms, const uint8_t setup[8], uint8_t *data,
                     size_t *actual);

/* A USB bus reset (host port reset). Switches mode as DFU 1.1 Appendix A
 * says: appDETACH goes to DFU mode; a device whose manifested firmware has
 * a run-time interface (runtime_app) goes to run-time mode; otherwise DFU
 * mode, dfuIDLE. The device always re-enumerates afterwards. */
void eng_vdfu_bus_reset(struct eng_vdfu *dev, uint64_t now_ms);

/* True (once) when the device left the bus to come back re-enumerated. */
bool eng_vdfu_take_reenumerate(struct eng_vdfu *dev);

/* True once the device left for good (disconnect fault). */
bool eng_vdfu_gone(const struct eng_vdfu *dev);

/*
 * The descriptors of the current mode, as GET_DESCRIPTOR answers:
 * type 1 device (18 bytes); type 2 configuration index 0, with the DFU
 * interface (run-time: one interface, protocol 1; DFU mode: one
 * alternate setting per alt, protocol 2, iInterface naming it) and the
 * DFU functional descriptor (type 0x21, 9 bytes); type 3 string `index`
 * (0: LANGID 0x0409; 1 manufacturer, 2 product, 3 serial, 4 + n the name
 * of alt n), UTF-16LE. Copies up to `cap` bytes and returns the full
 * length, or 0 when there is no such descriptor.
 */
size_t eng_vdfu_descriptor(const struct eng_vdfu *dev, uint8_t type, uint8_t index, uint8_t *buf,
                           size_t cap);

/* Current mode: 1 run-time, 2 DFU. */
unsigned eng_vdfu_mode(const struct eng_vdfu *dev);
enum eng_dfu_state eng_vdfu_state(const struct eng_vdfu *dev);
const struct eng_vdfu_config *eng_vdfu_config(const struct eng_vdfu *dev);
const struct eng_vdfu_stats *eng_vdfu_stats(const struct eng_vdfu *dev);

/* Alt `alt`'s memory: its bytes, size and base address (0 for plain DFU;
 * DfuSe: the first region of the layout). NULL for no such alt. */
const uint8_t *eng_vdfu_memory(const struct eng_vdfu *dev, unsigned alt, uint32_t *size,
                               uint32_t *base);
/* Plain DFU: bytes the last download wrote to `alt` (what UPLOAD returns). */
uint32_t eng_vdfu_firmware_len(const struct eng_vdfu *dev, unsigned alt);

#endif
