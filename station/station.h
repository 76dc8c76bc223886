/*
 * st: the composition root. st_run() owns the one uv_loop_t, the engine,
 * the database and the output, routes engine events to the database and
 * the screen, and returns the process exit code (ARCHITECTURE.md):
 * 0 success, 1 a session failed, 2 usage/config/image/db-path error
 * (no device touched), 3 internal error.
 */
#ifndef ST_STATION_H
#define ST_STATION_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define ST_MAX_FAULTS 64
#define ST_MAX_IMAGE_OVERRIDES 8
#define ST_MAX_TCP 64        /* --tcp options */
#define ST_MAX_TCP_PORTS 256 /* network slots in all */

/* What to do with a serial that already PASSED the same recipe name and
 * version in this database (station/serials.h). */
enum st_serial_policy {
    ST_SERIAL_SKIP,    /* default: end SKIPPED, "ALREADY DONE", nothing written */
    ST_SERIAL_REFLASH, /* flash it again */
    ST_SERIAL_FAIL,    /* FAIL "serial X already passed R V on DATE" */
};

/* Headless output: text lines or JSON Lines (ui/headless.h). */
enum st_log_format {
    ST_LOG_TEXT,
    ST_LOG_JSON,
};

enum st_exit {
    ST_EXIT_OK = 0,
    ST_EXIT_FAILED = 1,
    ST_EXIT_USAGE = 2,
    ST_EXIT_INTERNAL = 3,
};

struct st_run_options {
    const char *config_path;     /* station.ini; NULL = built-in demo recipe */
    bool usb;                    /* flash USB devices (default with a config and no
                                    --simulate/--tcp) */
    const char *db_path;         /* default: the config's, else "station.db" */
    const char *station_id;      /* default: host name */
    unsigned simulate;           /* virtual devices; 0 = none */
    const char *tcp[ST_MAX_TCP]; /* network slots: "HOST:PORT" or "HOST:FIRST-LAST" */
    unsigned n_tcp;
    bool headless;                     /* lines even on a terminal (else the dashboard there) */
    enum st_log_format log_format;     /* of the lines */
    unsigned exit_after;               /* stop after N recorded sessions; 0 = run until signalled */
    double pace_mbps;                  /* virtual device pace; negative = default */
    uint64_t system_bytes;             /* demo system image size; 0 = default */
    uint64_t max_download;             /* virtual devices' max-download-size; 0 = default */
    unsigned replug_ms;                /* simulated operator; 0 = default */
    unsigned plug_interval_ms;         /* simulated rack: between the first plugs; 0 = default */
    unsigned reply_timeout_ms;         /* 0 = default (5 s) */
    unsigned info_lines;               /* virtual devices: INFO lines per flash */
    const char *faults[ST_MAX_FAULTS]; /* "N:KIND=ARG" */
    double fault_percent;              /* simulated rack: share of units given a fault */
    unsigned flap_position, flap_ms;   /* simulated rack: a position whose units leave
                                          flap_ms after arriving; 0 = none */
    unsigned n_faults;
    const char *images[ST_MAX_IMAGE_OVERRIDES]; /* "NAME=PATH" */
    unsigned n_images;
    FILE *out; /* event lines; default stdout */
    FILE *err; /* errors; default stderr */
    enum st_serial_policy serial_policy;
    uint32_t seed;           /* simulated serial numbers; 0 = random */
    unsigned db_busy_ms;     /* wait for another process's lock; 0 = default (5000) */
    const char *socket_path; /* `station watch` socket; NULL = DB.sock beside the db */
    bool no_hash_cache;      /* hash every image at start (else DB.hashes/ remembers) */
};

/* Run the station; returns an st_exit code. */
int st_run(const struct st_run_options *opts);

/* The folder of remembered image hashes beside the database `db_path`
 * (DB.hashes/, engine/image.h) into buf; "" when it does not fit. Written
 * by `station run` and `station check`. */
void st_hash_cache_dir(const char *db_path, char *buf, size_t len);

#endif
