/*
 * `station sim`: serve virtual fastboot devices over TCP (station/sim.h)
 * until SIGINT or SIGTERM.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/st_error.h"
#include "engine/tcp.h"
#include "station/commands.h"
#include "station/sim.h"
#include "station/station.h"

static const char sim_usage[] =
    "usage: station sim --tcp HOST:PORT [options]\n"
    "  --tcp HOST:PORT      first device's address; device N listens on PORT+N-1\n"
    "                       (HOST:FIRST-LAST serves one device per port)\n"
    "  --count N            devices (default 1)\n"
    "  --any-address        allow a HOST that is not loopback (127.0.0.0/8, ::1)\n"
    "  --fault N:KIND=ARG   fault on device N's first unit: fail=CMD, silent=CMD,\n"
    "                       garbage=CMD, oversize=CMD (CMD is a command prefix such as\n"
    "                       flash:system), disconnect=BYTES (leave after that many data\n"
    "                       bytes), fail-at=K:CMD (FAIL only the K-th matching command)\n"
    "  --pace MBPS          read at most MBPS megabytes per second per device\n"
    "  --max-download BYTES the devices' max-download-size (default 256 MiB)\n"
    "  --ab                 A/B slots (flash boot goes to boot_a)\n"
    "  --product NAME       getvar product (default simphone)\n"
    "  --info-lines N       INFO lines before each flash OKAY\n"
    "  --keep-data          keep partition bytes in memory\n"
    "  --no-hash            do not hash the bytes received (benchmarks: the devices'\n"
    "                       bookkeeping off the CPUs they share with the host)\n"
    "  --dump DIR           tests only (blocking file I/O on the loop; implies --keep-data):\n"
    "                       after each flash or erase write DIR/devN/PART.img and\n"
    "                       DIR/devN/stats\n"
    "  --dump-downloads     with --dump: also DIR/devN/download-K.bin per download\n"
    "  --offline-ms MS      away after reboot or a disconnect, then a new unit (default 3000)\n"
    "  --reenum-ms MS       away after reboot-bootloader, same unit (default 300)\n"
    "  --quiet              no line per connection event\n"
    "\n"
    "Stops on SIGINT or SIGTERM. exit codes: 0 stopped by a signal, 2 usage error or a\n"
    "port that cannot be bound, 3 internal error\n";

struct sim_main {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    struct st_sim *sim;
    bool stopping;
};

static void on_sim_stopped(struct st_sim *sim, void *user_data)
{
    struct sim_main *m = user_data;
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct sim_main *m = h->data;
    if (m->stopping)
        return;
    m->stopping = true;
    printf("sim: signal %d: stopping\n", signum);
    st_sim_stop(m->sim, on_sim_stopped, m);
}

static int parse_ms(const char *opt, const char *arg, unsigned *out)
{
    unsigned long v;
    if (st_parse_uint(opt, arg, 3600000, &v))
        return -1;
    *out = (unsigned)v;
    return 0;
}

int st_cmd_sim(int argc, char **argv)
{
    enum {
        O_TCP = 1000,
        O_COUNT,
        O_ANY,
        O_FAULT,
        O_PACE,
        O_MAX_DOWNLOAD,
        O_AB,
        O_PRODUCT,
        O_INFO,
        O_KEEP,
        O_NO_HASH,
        O_DUMP,
        O_DUMP_DOWNLOADS,
        O_OFFLINE,
        O_REENUM,
        O_QUIET,
        O_HELP,
    };
    static const struct option longopts[] = {
        {"tcp", required_argument, NULL, O_TCP},
        {"count", required_argument, NULL, O_COUNT},
        {"any-address", no_argument, NULL, O_ANY},
        {"fault", required_argument, NULL, O_FAULT},
        {"pace", required_argument, NULL, O_PACE},
        {"max-download", required_argument, NULL, O_MAX_DOWNLOAD},
        {"ab", no_argument, NULL, O_AB},
        {"product", required_argument, NULL, O_PRODUCT},
        {"info-lines", required_argument, NULL, O_INFO},
        {"keep-data", no_argument, NULL, O_KEEP},
        {"no-hash", no_argument, NULL, O_NO_HASH},
        {"dump", required_argument, NULL, O_DUMP},
        {"dump-downloads", no_argument, NULL, O_DUMP_DOWNLOADS},
        {"offline-ms", required_argument, NULL, O_OFFLINE},
        {"reenum-ms", required_argument, NULL, O_REENUM},
        {"quiet", no_argument, NULL, O_QUIET},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct st_sim_options o;
    char host[ENG_TCP_HOST_MAX];
    const char *tcp = NULL;
    uint16_t first = 0, last = 0;
    bool count_given = false, quiet = false;
    unsigned long v;
    char *end;
    int c;
    memset(&o, 0, sizeof(o));
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_TCP:
            tcp = optarg;
            if (eng_tcp_parse_address(optarg, host, sizeof(host), &first, &last) != 0)
                return st_usage_error("--tcp %s: expected HOST:PORT or HOST:FIRST-LAST with a "
                                      "numeric HOST (or localhost) and ports from 1 to 65535",
                                      optarg);
            break;
        case O_COUNT:
            if (st_parse_uint("--count", optarg, ST_SIM_MAX_DEVICES, &v))
                return ST_EXIT_USAGE;
            if (v == 0)
                return st_usage_error("--count %s: must be at least 1", optarg);
            o.count = (unsigned)v;
            count_given = true;
            break;
        case O_ANY:
            o.any_address = true;
            break;
        case O_FAULT:
            if (o.n_faults == ST_SIM_MAX_FAULTS)
                return st_usage_error("--fault %s: too many faults", optarg);
            o.faults[o.n_faults++] = optarg;
            break;
        case O_PACE:
            errno = 0;
            o.pace_mbps = strtod(optarg, &end);
            if (errno || end == optarg || *end || o.pace_mbps < 0 || o.pace_mbps > 100000)
                return st_usage_error("--pace: expected MB/s from 0 to 100000, got \"%s\"", optarg);
            break;
        case O_MAX_DOWNLOAD:
            if (st_parse_uint("--max-download", optarg, 0xffffffffUL, &v))
                return ST_EXIT_USAGE;
            if (v < 4096)
                return st_usage_error("--max-download %s: must be at least 4096", optarg);
            o.max_download = v;
            break;
        case O_AB:
            o.ab_slots = true;
            break;
        case O_PRODUCT:
            if (!optarg[0] || strlen(optarg) >= 32)
                return st_usage_error("--product \"%s\": expected 1 to 31 characters", optarg);
            o.product = optarg;
            break;
        case O_INFO:
            if (st_parse_uint("--info-lines", optarg, 50, &v))
                return ST_EXIT_USAGE;
            o.info_lines = (unsigned)v;
            break;
        case O_NO_HASH:
            o.no_hash = true;
            break;
        case O_KEEP:
            o.keep_data = true;
            break;
        case O_DUMP:
            o.dump_dir = optarg;
            break;
        case O_DUMP_DOWNLOADS:
            o.dump_downloads = true;
            break;
        case O_OFFLINE:
            if (parse_ms("--offline-ms", optarg, &o.offline_ms))
                return ST_EXIT_USAGE;
            if (!o.offline_ms)
                o.offline_ms = 1;
            break;
        case O_REENUM:
            if (parse_ms("--reenum-ms", optarg, &o.reenum_ms))
                return ST_EXIT_USAGE;
            if (!o.reenum_ms)
                o.reenum_ms = 1;
            break;
        case O_QUIET:
            quiet = true;
            break;
        case O_HELP:
            fputs(sim_usage, stdout);
            return ST_EXIT_OK;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            return st_usage_error("unknown option '%s' for 'station sim'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s' for 'station sim'", argv[optind]);
    if (!tcp)
        return st_usage_error("%s", "station sim needs --tcp HOST:PORT");
    if (last != first) {
        unsigned n = (unsigned)last - first + 1;
        if (count_given && o.count != n)
            return st_usage_error("--tcp %s: the range and --count disagree", tcp);
        if (n > ST_SIM_MAX_DEVICES)
            return st_usage_error("--tcp %s: too many ports", tcp);
        o.count = n;
    }
    if (o.dump_downloads && !o.dump_dir)
        return st_usage_error("%s", "--dump-downloads needs --dump DIR");
    o.host = host;
    o.port = first;
    o.log = quiet ? NULL : stdout;

    struct sim_main m;
    char err[600];
    int exit_code = ST_EXIT_OK;
    memset(&m, 0, sizeof(m));
    uv_loop_init(&m.loop);
    int rc = st_sim_new(&m.loop, &o, &m.sim, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "station: %s\n", err);
        exit_code = rc == ST_ENOMEM ? ST_EXIT_INTERNAL : ST_EXIT_USAGE;
        uv_run(&m.loop, UV_RUN_DEFAULT); /* completes the closes of a failed start */
        goto out_loop;
    }
    uv_signal_init(&m.loop, &m.sigint);
    uv_signal_init(&m.loop, &m.sigterm);
    m.sigint.data = m.sigterm.data = &m;
    uv_signal_start(&m.sigint, on_signal, SIGINT);
    uv_signal_start(&m.sigterm, on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    unsigned n = o.count ? o.count : 1;
    printf("sim: serving %u device(s) on %s:%u-%u; ready\n", n, host, (unsigned)first,
           (unsigned)first + n - 1);
    fflush(stdout);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    st_sim_free(m.sim);
out_loop:
    if (uv_loop_close(&m.loop) != 0) {
        fprintf(stderr, "station: internal error: handles left open at exit\n");
        exit_code = ST_EXIT_INTERNAL;
    }
    return exit_code;
}
