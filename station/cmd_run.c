/*
 * `station run`: options into struct st_run_options, then st_run().
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tcp.h"
#include "station/commands.h"
#include "station/serials.h"
#include "station/station.h"

static const char run_usage[] =
    "usage: station run [options]\n"
    "  -c, --config FILE   station.ini: slots, profiles, recipes (USB devices by default)\n"
    "  --usb               flash USB devices (with no -c: the built-in demo recipe, for\n"
    "                      training and the test harness only)\n"
    "  --simulate N        serve N virtual devices (the simulated rack): fastboot, or\n"
    "                      DFU when the simulated profile (-c, [simulate]) is DFU\n"
    "  --tcp HOST:PORT     a fastboot-over-TCP device (network slot); repeatable;\n"
    "                      HOST:FIRST-LAST is one slot per port (see 'station sim')\n"
    "  --headless          print one line per event instead of the dashboard\n"
    "                      (the dashboard runs when stdout is a terminal)\n"
    "  --log-format FMT    lines as text (default) or json (one JSON object per line)\n"
    "  --exit-after N      stop once N sessions are recorded; exit 0 only if all passed\n"
    "  --db FILE           SQLite record (default station.db)\n"
    "  --fault N:KIND=ARG  inject a fault into simulated device N (repeatable).\n"
    "                      fastboot (CMD is a command prefix such as flash:system):\n"
    "                      fail=CMD, silent=CMD, garbage=CMD, oversize=CMD (reply of\n"
    "                      300 bytes); disconnect=, slow=, short=, stall= take CMD or\n"
    "                      BYTES (from that many data bytes on): leave the bus, NAK for\n"
    "                      60 s per transfer, take half the command or stop short,\n"
    "                      halt the bulk IN (CMD) or OUT (BYTES) endpoint.\n"
    "                      DFU (REQ: detach, dnload, upload, getstatus, clrstatus,\n"
    "                      getstate, abort; @K its K-th time, from 0): stall=REQ[@K],\n"
    "                      silent=, disconnect=, garbage=, oversize=, short=, slow=\n"
    "                      (answer 60 s late; dnload: stay dfuDNBUSY 60 s);\n"
    "                      errwrite=BLOCK, corrupt=OFFSET, stuck=BLOCK,\n"
    "                      disconnect=manifest, fail=manifest, slow=manifest\n"
    "  --fault-rate PCT    inject a fault into PCT % of the simulated units (picked\n"
    "                      from --seed; the kinds above in turn)\n"
    "  --flap N:MS         simulated position N has a loose connector: each unit leaves\n"
    "                      MS after it arrived and a fresh one is plugged\n"
    "  --pace MBPS         simulated devices' transfer rate (default 8; 0 = unpaced)\n"
    "  --image NAME=PATH   flash this file as recipe image NAME (boot, system)\n"
    "  --system-mib N      size of the generated demo system image (default 4)\n"
    "  --max-download N    simulated devices' max-download-size in bytes\n"
    "  --replug-ms MS      simulated operator: pull and replace a unit MS after its result\n"
    "  --timeout-ms MS     reply time limit per command (default 5000)\n"
    "  --info-lines N      simulated devices send N INFO lines per flash\n"
    "  --station-id ID     recorded with every session (default: host name)\n"
    "  --serial-policy P   a serial that already passed this recipe version: skip (default;\n"
    "                      ALREADY DONE, nothing written), reflash, or fail\n"
    "  --seed N            simulated devices' serial numbers (default: random)\n"
    "  --db-timeout-ms MS  wait this long for another process's database lock (default 5000)\n"
    "  --socket PATH       where 'station watch' attaches (default: the database's path\n"
    "                      + .sock); mode 0660, open to the station's group only\n"
    "  --no-hash-cache     hash every image's bytes at each start (default: a hash is\n"
    "                      remembered in DB.hashes/ while the file's size, inode,\n"
    "                      modification and change times stay the same)\n"
    "\n"
    "exit codes: 0 success, 1 a session failed, 2 usage, config, recipe or image error,\n"
    "3 internal error\n";

int st_cmd_run(int argc, char **argv)
{
    enum {
        O_SIMULATE = 1000,
        O_USB,
        O_HEADLESS,
        O_EXIT_AFTER,
        O_DB,
        O_FAULT,
        O_PACE,
        O_IMAGE,
        O_SYSTEM_MIB,
        O_MAX_DOWNLOAD,
        O_REPLUG,
        O_TIMEOUT,
        O_INFO,
        O_STATION_ID,
        O_HELP,
        O_LOG_FORMAT,
        O_SERIAL_POLICY,
        O_SEED,
        O_DB_TIMEOUT,
        O_TCP,
        O_SOCKET,
        O_NO_HASH_CACHE,
        O_FAULT_RATE,
        O_FLAP,
    };
    static const struct option longopts[] = {
        {"simulate", required_argument, NULL, O_SIMULATE},
        {"config", required_argument, NULL, 'c'},
        {"usb", no_argument, NULL, O_USB},
        {"tcp", required_argument, NULL, O_TCP},
        {"headless", no_argument, NULL, O_HEADLESS},
        {"exit-after", required_argument, NULL, O_EXIT_AFTER},
        {"db", required_argument, NULL, O_DB},
        {"fault", required_argument, NULL, O_FAULT},
        {"pace", required_argument, NULL, O_PACE},
        {"image", required_argument, NULL, O_IMAGE},
        {"system-mib", required_argument, NULL, O_SYSTEM_MIB},
        {"max-download", required_argument, NULL, O_MAX_DOWNLOAD},
        {"replug-ms", required_argument, NULL, O_REPLUG},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"info-lines", required_argument, NULL, O_INFO},
        {"station-id", required_argument, NULL, O_STATION_ID},
        {"help", no_argument, NULL, O_HELP},
        {"log-format", required_argument, NULL, O_LOG_FORMAT},
        {"serial-policy", required_argument, NULL, O_SERIAL_POLICY},
        {"seed", required_argument, NULL, O_SEED},
        {"db-timeout-ms", required_argument, NULL, O_DB_TIMEOUT},
        {"socket", required_argument, NULL, O_SOCKET},
        {"no-hash-cache", no_argument, NULL, O_NO_HASH_CACHE},
        {"fault-rate", required_argument, NULL, O_FAULT_RATE},
        {"flap", required_argument, NULL, O_FLAP},
        {NULL, 0, NULL, 0},
    };
    struct st_run_options o;
    unsigned long v;
    char *end;
    int c;
    memset(&o, 0, sizeof(o));
    o.pace_mbps = -1;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":c:", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            o.config_path = optarg;
            break;
        case O_USB:
            o.usb = true;
            break;
        case O_SIMULATE:
            if (st_parse_uint("--simulate", optarg, 999, &v))
                return ST_EXIT_USAGE;
            o.simulate = (unsigned)v;
            break;
        case O_TCP: {
            char host[ENG_TCP_HOST_MAX];
            uint16_t first, last;
            if (eng_tcp_parse_address(optarg, host, sizeof(host), &first, &last) != 0)
                return st_usage_error("--tcp %s: expected HOST:PORT or HOST:FIRST-LAST with a "
                                      "numeric HOST (or localhost) and ports from 1 to 65535",
                                      optarg);
            if (o.n_tcp == ST_MAX_TCP)
                return st_usage_error("--tcp %s: too many --tcp options", optarg);
            o.tcp[o.n_tcp++] = optarg;
            break;
        }
        case O_HEADLESS:
            o.headless = true;
            break;
        case O_EXIT_AFTER:
            if (st_parse_uint("--exit-after", optarg, UINT_MAX, &v))
                return ST_EXIT_USAGE;
            o.exit_after = (unsigned)v;
            break;
        case O_DB:
            o.db_path = optarg;
            break;
        case O_FAULT:
            if (o.n_faults == ST_MAX_FAULTS)
                return st_usage_error("--fault %s: too many faults", optarg);
            o.faults[o.n_faults++] = optarg;
            break;
        case O_PACE:
            errno = 0;
            o.pace_mbps = strtod(optarg, &end);
            if (errno || *end || o.pace_mbps < 0 || o.pace_mbps > 100000)
                return st_usage_error("--pace: expected MB/s from 0 to 100000, got \"%s\"", optarg);
            break;
        case O_IMAGE:
            if (o.n_images == ST_MAX_IMAGE_OVERRIDES)
                return st_usage_error("--image %s: too many images", optarg);
            o.images[o.n_images++] = optarg;
            break;
        case O_SYSTEM_MIB:
            if (st_parse_uint("--system-mib", optarg, 4095, &v) || v == 0)
                return v == 0
                           ? st_usage_error("--system-mib: must be at least 1, got \"%s\"", optarg)
                           : ST_EXIT_USAGE;
            o.system_bytes = (uint64_t)v << 20;
            break;
        case O_MAX_DOWNLOAD:
            if (st_parse_uint("--max-download", optarg, 0xffffffffUL, &v) || v == 0)
                return v == 0
                           ? st_usage_error("--max-download: must be positive, got \"%s\"", optarg)
                           : ST_EXIT_USAGE;
            o.max_download = v;
            break;
        case O_REPLUG:
            if (st_parse_uint("--replug-ms", optarg, 3600000, &v))
                return ST_EXIT_USAGE;
            o.replug_ms = (unsigned)v;
            break;
        case O_TIMEOUT:
            if (st_parse_uint("--timeout-ms", optarg, 3600000, &v) || v == 0)
                return v == 0 ? st_usage_error("--timeout-ms: must be positive, got \"%s\"", optarg)
                              : ST_EXIT_USAGE;
            o.reply_timeout_ms = (unsigned)v;
            break;
        case O_INFO:
            if (st_parse_uint("--info-lines", optarg, 50, &v))
                return ST_EXIT_USAGE;
            o.info_lines = (unsigned)v;
            break;
        case O_STATION_ID:
            o.station_id = optarg;
            break;
        case O_SERIAL_POLICY:
            if (st_serial_policy_parse(optarg, &o.serial_policy) != 0)
                return st_usage_error("--serial-policy: expected skip, reflash or fail, got \"%s\"",
                                      optarg);
            break;
        case O_SEED:
            if (st_parse_uint("--seed", optarg, 0xffffffffUL, &v))
                return ST_EXIT_USAGE;
            o.seed = (uint32_t)v;
            break;
        case O_DB_TIMEOUT:
            if (st_parse_uint("--db-timeout-ms", optarg, 3600000, &v))
                return ST_EXIT_USAGE;
            o.db_busy_ms = v ? (unsigned)v : 1; /* 0 would mean "the default" */
            break;
        case O_SOCKET:
            o.socket_path = optarg;
            break;
        case O_NO_HASH_CACHE:
            o.no_hash_cache = true;
            break;
        case O_FLAP: {
            unsigned long ms;
            errno = 0;
            v = strtoul(optarg, &end, 10);
            ms = *end == ':' ? strtoul(end + 1, &end, 10) : 0;
            if (errno || *end || v == 0 || v > 999 || ms == 0 || ms > 3600000)
                return st_usage_error("--flap: expected N:MS (position, milliseconds), got \"%s\"",
                                      optarg);
            o.flap_position = (unsigned)v;
            o.flap_ms = (unsigned)ms;
            break;
        }
        case O_FAULT_RATE:
            errno = 0;
            o.fault_percent = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(o.fault_percent >= 0) || o.fault_percent > 100)
                return st_usage_error("--fault-rate: expected a percentage from 0 to 100, got "
                                      "\"%s\"",
                                      optarg);
            break;
        case O_LOG_FORMAT:
            if (!strcmp(optarg, "text"))
                o.log_format = ST_LOG_TEXT;
            else if (!strcmp(optarg, "json"))
                o.log_format = ST_LOG_JSON;
            else
                return st_usage_error("--log-format: expected text or json, got \"%s\"", optarg);
            break;
        case O_HELP:
            fputs(run_usage, stdout);
            return ST_EXIT_OK;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            return st_usage_error("unknown option '%s' for 'station run'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s' for 'station run'", argv[optind]);
    if (!o.simulate && !o.n_tcp && !o.usb && !o.config_path)
        return st_usage_error("%s",
                              "nothing to do: give -c station.ini for a real line, or "
                              "--simulate N, --tcp HOST:PORT or --usb (built-in demo recipe)");
    if (o.fault_percent > 0 && !o.simulate)
        return st_usage_error("%s", "--fault-rate needs --simulate");
    if (o.flap_position > o.simulate)
        return st_usage_error("%s", "--flap: no such simulated position (see --simulate)");
    return st_run(&o);
}
