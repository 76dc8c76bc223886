/*
 * cfg_config: station.ini as plain data (parsed with libinih), plus the
 * recipe files its profiles name (config/recipe.h).
 *
 * Lifecycle: cfg_load() reads the ini file and every recipe file it
 * references and validates everything it can without touching devices
 * or image contents (image files must exist and be regular files; their
 * hashes and signatures are checked later, off the loop, by engine/image).
 * cfg_free() releases it. No I/O beyond reading the files named.
 *
 * Errors: every problem is reported as "FILE:LINE:COLUMN: message" (the
 * column of the offending value, 1-based; 0 when the whole line is at
 * fault), in the order found; loading stops at the first error.
 *
 * station.ini sections and keys (unknown ones are errors):
 *   [station]  id, db, max_sessions, ui (auto|dashboard|headless),
 *              minisign_key (path of a minisign public key file),
 *              require_signatures (yes|no)
 *   [slot NAME]   path = PORT-PATH (repeatable; globs such as 1-1.* allowed)
 *   [profile NAME] match = class FF/42/03 | usb VVVV:PPPP | tcp:HOST:PORT
 *                  (repeatable), protocol (fastboot|dfu), recipe (path,
 *                  relative to the ini file), serial_policy (skip|reflash|fail),
 *                  retries, timeout (per command: 5s, 1500ms, 2m),
 *                  min_rate (bytes/s for data steps: 1M, 500k, 2000000)
 *   [simulate]  count, pace (MB/s), plug_interval (ms), replug (ms),
 *               fault (repeatable "N:KIND=ARG"), fault_rate (0..1),
 *               seed, max_download (bytes), profile (name)
 */
#ifndef CFG_CONFIG_H
#define CFG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "config/recipe.h"

#define CFG_MAX_SLOTS 256
#define CFG_MAX_SLOT_PATHS 8
#define CFG_MAX_PROFILES 16
#define CFG_MAX_MATCHES 8
#define CFG_MAX_SIM_FAULTS 64
#define CFG_ERROR_MAX 1024

enum cfg_serial_policy {
    CFG_SERIAL_SKIP, /* default: a serial that passed this recipe version is not flashed */
    CFG_SERIAL_REFLASH,
    CFG_SERIAL_FAIL,
};

enum cfg_protocol {
    CFG_PROTO_FASTBOOT,
    CFG_PROTO_DFU,
};

enum cfg_match_kind {
    CFG_MATCH_CLASS, /* interface class/subclass/protocol */
    CFG_MATCH_USB,   /* VID:PID */
    CFG_MATCH_TCP,   /* fastboot over TCP at host:port */
};

struct cfg_match {
    enum cfg_match_kind kind;
    uint8_t cls, subclass, protocol;
    uint16_t vid, pid;
    char host[128];
    uint16_t port;
};

struct cfg_slot {
    char name[CFG_NAME_MAX];
    unsigned n_paths;
    char paths[CFG_MAX_SLOT_PATHS][64];
    unsigned line; /* of the [slot] header, for messages */
};

struct cfg_profile {
    char name[CFG_NAME_MAX];
    unsigned n_matches;
    struct cfg_match matches[CFG_MAX_MATCHES];
    enum cfg_protocol protocol;
    char recipe_path[CFG_PATH_MAX]; /* resolved against the ini's folder */
    struct cfg_recipe *recipe;      /* loaded from recipe_path */
    enum cfg_serial_policy serial_policy;
    unsigned retries;      /* transport-error retries per step */
    unsigned timeout_ms;   /* per command; 0 = engine default */
    uint64_t min_rate_bps; /* 0 = engine default */
    unsigned line;
};

struct cfg_simulate {
    bool present; /* a [simulate] section exists */
    unsigned count;
    double pace_mbps;
    unsigned plug_interval_ms;
    unsigned replug_ms;
    unsigned n_faults;
    char faults[CFG_MAX_SIM_FAULTS][80];
    double fault_rate;
    uint32_t seed;
    uint64_t max_download;
    char profile[CFG_NAME_MAX]; /* which profile the virtual devices use */
};

struct cfg_config {
    char path[CFG_PATH_MAX];
    char id[CFG_NAME_MAX];
    char db[CFG_PATH_MAX];
    unsigned max_sessions; /* 0 = no limit */
    char ui[16];           /* "auto", "dashboard" or "headless" */
    char minisign_key[CFG_PATH_MAX];
    bool require_signatures;
    unsigned n_slots;
    struct cfg_slot slots[CFG_MAX_SLOTS];
    unsigned n_profiles;
    struct cfg_profile profiles[CFG_MAX_PROFILES];
    struct cfg_simulate simulate;
};

/*
 * Load and validate `path` and the recipes it names. Returns 0 and sets
 * *out (free with cfg_free), or a negative st_error code with the message
 * ("station.ini:12:9: expected a number of milliseconds, got \"fast\"")
 * in err.
 */
int cfg_load(const char *path, struct cfg_config **out, char *err, size_t errlen);
void cfg_free(struct cfg_config *cfg);

/*
 * Parse one recipe file. Image paths are resolved against the recipe's
 * folder. Returns 0 and fills *out, or a negative code and a
 * "FILE:LINE:COLUMN: message" in err.
 */
int cfg_recipe_load(const char *path, struct cfg_recipe *out, char *err, size_t errlen);

/* The slot whose paths match port path `port` (globs), or NULL. */
const struct cfg_slot *cfg_slot_for_port(const struct cfg_config *cfg, const char *port);

#endif
