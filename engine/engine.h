/*
 * engine: slots, sessions and the recipe runner, driven by one libuv loop.
 *
 * Lifecycle: eng_engine_new() on the station's loop; eng_engine_load()
 * opens and hashes the recipe's images off the loop thread and reports
 * once through its callback; transports (virtual rack, USB, TCP) hand over
 * arriving devices with eng_engine_device_arrived() and report departures
 * with eng_engine_device_left(); eng_engine_close() aborts what runs and
 * calls back once every handle is closed, after which eng_engine_free().
 *
 * Everything the engine does is reported through the one event callback
 * given to eng_engine_new(); it runs on the loop thread, and the event
 * and its strings are valid only during the call (copy what you keep).
 * Engine functions may be called from inside the event callback.
 */
#ifndef ENG_ENGINE_H
#define ENG_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config/recipe.h"
#include "engine/transport.h"

struct eng_engine;

typedef void (*eng_load_cb)(int status, const char *message, void *user_data);

enum eng_result {
    ENG_RESULT_NONE = 0,
    ENG_RESULT_PASS,
    ENG_RESULT_FAIL,
    ENG_RESULT_ABORTED,
    ENG_RESULT_SKIPPED, /* serial policy: already done, nothing written to the device */
};

/* The answer to an eng_options.serial_check (see eng_engine_serial_verdict). */
enum eng_serial_verdict {
    ENG_SERIAL_PROCEED, /* run the rest of the recipe */
    ENG_SERIAL_SKIP,    /* end the session SKIPPED; nothing more is sent */
    ENG_SERIAL_FAIL,    /* end the session FAIL with the given reason */
};

enum eng_event_type {
    ENG_EV_ARRIVED,       /* a device is on a slot (port, usb_serial) */
    ENG_EV_SESSION_BEGIN, /* session_id, slot, port, recipe, images */
    ENG_EV_STEP_BEGIN,    /* step, step_index, step_count */
    ENG_EV_PROGRESS,      /* bytes_done / bytes_total within the step */
    ENG_EV_INFO,          /* text: one INFO line from the device */
    ENG_EV_STEP_END,      /* result, text (reply or reason), bytes_done */
    ENG_EV_SESSION_END,   /* result, failed step, reason, serial, product */
    ENG_EV_LEFT,          /* the device left the slot */
    ENG_EV_WAITING,       /* a device waits: intake paused */
    ENG_EV_DEVICE_ERROR,  /* a device on a slot cannot be used: text says why */
};

struct eng_image_info {
    const char *name;
    const char *path;
    const char *sha256;
    uint64_t size;
    bool remembered; /* the hash came from the hash cache (engine/image.h) */
};

struct eng_event {
    enum eng_event_type type;
    int64_t t_ms;       /* unix time of the event, milliseconds */
    int64_t session_id; /* 0 when not about a session */
    const char *slot;
    const char *port;
    const char *usb_serial; /* "" when unknown */
    const char *serial;     /* best identity so far ("" when unknown) */
    const char *product;    /* "" when unknown */
    /* steps */
    const char *step; /* "flash:system" */
    unsigned step_index, step_count;
    int64_t step_started_ms;
    uint64_t bytes_done, bytes_total;
    /* results */
    enum eng_result result;
    const char *failed_step; /* SESSION_END: NULL on PASS */
    const char *text;        /* INFO line, step reply, or failure reason */
    const char *info;        /* STEP_END: the step's INFO lines, '\n'-joined, or NULL */
    int64_t session_started_ms;
    uint64_t session_bytes;
    /* SESSION_BEGIN */
    const char *recipe, *recipe_version;
    unsigned n_images;
    const struct eng_image_info *images;
};

typedef void (*eng_event_cb)(const struct eng_event *ev, void *user_data);

struct eng_options {
    int64_t first_session_id;   /* ids are allocated from here upwards */
    unsigned reply_timeout_ms;  /* per command; default 5000 */
    uint64_t min_rate_bps;      /* data steps get reply_timeout + bytes/rate; default 1 MB/s */
    unsigned reenum_timeout_ms; /* wait for a device to come back; default 10000 */
    size_t chunk_size;          /* bytes per data transfer; default 1 MiB */
    /*
     * Serial policy hook, or NULL (no check). Called on the loop thread
     * when the step reading `getvar serialno` has succeeded; the session
     * then sends nothing more to the device until
     * eng_engine_serial_verdict() answers for `session_id` (from inside
     * this callback or any time later: the loop keeps running). The
     * strings are valid only during the call. `user_data` is the one given
     * to eng_engine_new(). A session aborted while it waits (station
     * stopping) ends ABORTED without a verdict; a later verdict for it is
     * ignored.
     */
    unsigned max_sessions; /* at most this many at once; 0 = no limit */
    /*
     * Slot naming, or NULL: returns the configured slot name for a port
     * path (the USB2 and USB3 paths of one socket may share one), or NULL
     * to name the slot after the port. Loop thread; the string must stay
     * valid while the engine lives.
     */
    const char *(*slot_name)(const char *port, void *user_data);
    void (*serial_check)(struct eng_engine *eng, int64_t session_id, const char *serial,
                         const char *recipe, const char *version, void *user_data);
};

/* Create an engine on `loop`. 0 and *out set, or a negative code. */
int eng_engine_new(uv_loop_t *loop, const struct eng_options *opts, eng_event_cb cb,
                   void *user_data, struct eng_engine **out);

#define ENG_MAX_PROFILES 16

struct eng_pubkey;

/* Per-profile settings; zero fields take the engine's defaults. */
struct eng_profile_options {
    unsigned reply_timeout_ms;
    uint64_t min_rate_bps;
    unsigned retries;
    const struct eng_pubkey *signer; /* minisign key for PATH.minisig (copied) */
    bool require_signatures;         /* refuse images without a good signature */
    const char *hash_cache;          /* remembered image hashes (engine/image.h); NULL = none */
};

/*
 * Add a profile: a copy of `recipe`, whose images are opened, generated or
 * hashed (and their pins checked) on the libuv thread pool; `cb` runs once
 * on the loop thread with 0 or an error and a message naming the image.
 * Transports choose a profile by index (eng_transport.profile, in the
 * order added). Sessions on a profile start only after it loaded.
 * *index (may be NULL) receives the profile's index.
 */
int eng_engine_add_profile(struct eng_engine *eng, const char *name,
                           const struct cfg_recipe *recipe, const struct eng_profile_options *opts,
                           eng_load_cb cb, void *user_data, unsigned *index);

/*
 * Configuration reload: forget profiles [first, first + count). The
 * engine drops its reference to each (a running session keeps its
 * profile, images included, until it ends) and renumbers the profiles
 * after them down by `count`, so that a transport's profile index N now
 * names what is profile N after the call. A reload adds the new
 * configuration's profiles after the current ones, waits for their load
 * callbacks, then drops either the old ones (0, n_old) or, when one
 * failed, the new ones (n_old, n_new). Devices waiting for a profile are
 * started. Room is kept for two full generations (2 * ENG_MAX_PROFILES
 * profiles in all while a reload loads).
 *
 * Returns 0, or ST_EINVAL for a range beyond the profiles added, or
 * ST_EBUSY when one of them is still loading (its load callback has not
 * run yet). Loop thread; may be called from inside a load callback.
 */
int eng_engine_drop_profiles(struct eng_engine *eng, unsigned first, unsigned count);

/*
 * Take a copy of `recipe`, open every image (mmap, generate demo images)
 * and compute their SHA-256 on the libuv thread pool; pinned hashes are
 * checked. `cb` runs once on the loop thread with 0, or with an error and
 * a message naming the image. Sessions start only after success.
 * The same as eng_engine_add_profile(eng, "default", recipe, NULL, ...).
 */
int eng_engine_load(struct eng_engine *eng, const struct cfg_recipe *recipe, eng_load_cb cb,
                    void *user_data);

/* A device arrived: the engine takes ownership of `t` and closes it when
 * the device has left (or at eng_engine_close()). */
void eng_engine_device_arrived(struct eng_engine *eng, struct eng_transport *t);

/* The device behind `t` is gone. Fails its session unless the session
 * expects a re-enumeration. `t` is closed by the engine afterwards. */
void eng_engine_device_left(struct eng_engine *eng, struct eng_transport *t);

/*
 * Answer a serial_check for `session_id`. PROCEED runs the rest of the
 * recipe; SKIP ends the session ENG_RESULT_SKIPPED with `reason` as its
 * text ("already passed demo-phone 1.0 on 2026-11-22T10:00:00Z"); FAIL
 * ends it ENG_RESULT_FAIL with `reason` (copied; may be NULL for SKIP and
 * PROCEED), the failed step being the serialno step. Ignored when that
 * session no longer waits for a verdict. Loop thread only; may be called
 * from inside serial_check or an event callback.
 */
void eng_engine_serial_verdict(struct eng_engine *eng, int64_t session_id,
                               enum eng_serial_verdict v, const char *reason);

/* A device on `port` could not be opened or read (text says why and what
 * to do); reported as ENG_EV_DEVICE_ERROR on that port's slot. */
void eng_engine_device_error(struct eng_engine *eng, const char *port, const char *message);

/* Stop or resume starting sessions on newly arrived devices. */
void eng_engine_pause(struct eng_engine *eng, bool paused);

/* Number of sessions running now. */
unsigned eng_engine_active_sessions(const struct eng_engine *eng);

/* Profile 0's images once loaded (NULL before). */
const struct eng_image_info *eng_engine_images(const struct eng_engine *eng, unsigned *n);

/* Abort every running session (ENG_EV_SESSION_END with ABORTED), close all
 * transports, timers and images; `cb` runs when nothing is left open. */
void eng_engine_close(struct eng_engine *eng, void (*cb)(struct eng_engine *eng, void *user_data),
                      void *user_data);

/* Free an engine whose close callback has run (or that never loaded). */
void eng_engine_free(struct eng_engine *eng);

const char *eng_result_name(enum eng_result r);

/* Milliseconds since the Unix epoch (wall clock, for records). */
int64_t eng_now_ms(void);

#endif
