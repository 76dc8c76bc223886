/*
 * `station ports [-c FILE]`: what is plugged where. One line per attached
 * USB device (hubs left out): port path, VID:PID, interface class triple,
 * serial, speed, the slot its path belongs to and the profile it matches.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "engine/usb.h"
#include "station/commands.h"
#include "station/station.h"
#include "station/usb_rules.h"

#define MAX_PORTS 256

int st_cmd_ports(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":c:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'h':
            printf("usage: station ports [-c FILE]\n"
                   "List attached USB devices: port path, VID:PID, interface class,\n"
                   "serial, speed, and with -c the slot and profile each one maps to.\n");
            return ST_EXIT_OK;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            return st_usage_error("unknown option '%s' for 'station ports'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s' for 'station ports'", argv[optind]);

    struct cfg_config *cfg = NULL;
    char err[CFG_ERROR_MAX];
    if (config && cfg_load(config, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "station: %s\n", err);
        return ST_EXIT_USAGE;
    }
    struct eng_usb_options uo;
    st_usb_rules(cfg, &uo);
    static struct eng_usb_port ports[MAX_PORTS];
    int n = eng_usb_list(&uo, ports, MAX_PORTS, err, sizeof(err));
    if (n < 0) {
        fprintf(stderr, "station: %s\n", err);
        cfg_free(cfg);
        return ST_EXIT_INTERNAL;
    }
    printf("%-16s %-9s %-8s %-20s %-7s %-12s %s\n", "PATH", "VID:PID", "CLASS", "SERIAL", "SPEED",
           "SLOT", "PROFILE");
    for (int i = 0; i < n; i++) {
        const struct eng_usb_port *p = &ports[i];
        const struct cfg_slot *slot = cfg ? cfg_slot_for_port(cfg, p->port) : NULL;
        const char *profile = "-";
        if (p->rule >= 0)
            profile = cfg && cfg->n_profiles ? cfg->profiles[uo.rules[p->rule].profile].name
                                             : "fastboot (built-in)";
        printf("%-16s %04x:%04x %02X/%02X/%02X %-20s %-7s %-12s %s%s%s\n", p->port, p->vid, p->pid,
               p->cls, p->subclass, p->protocol, p->serial[0] ? p->serial : "-", p->speed,
               slot ? slot->name : (cfg ? "-" : p->port), profile, p->note[0] ? "  # " : "",
               p->note);
    }
    if (n == 0)
        printf("(no USB devices)\n");
    cfg_free(cfg);
    return ST_EXIT_OK;
}
