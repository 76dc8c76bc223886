/*
 * station: the command line. Subcommands are listed in ARCHITECTURE.md;
 * each lives in its own cmd_*.c and returns the exit code: 0 ok, 1 a
 * session failed, 2 usage/config/recipe/image error, 3 internal error.
 */
#include <stdio.h>
#include <string.h>

#include "station/commands.h"
#include "station/station.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *what;
} commands[] = {
    {"run", st_cmd_run, "run the station: flash devices as they arrive"},
    {"sim", st_cmd_sim, "serve virtual fastboot devices over TCP"},
    {"report", st_cmd_report, "list recorded sessions"},
    {"stats", st_cmd_stats, "yield and durations by slot, recipe, day, hour or error"},
    {"history", st_cmd_history, "every session of one serial number"},
    {"check", st_cmd_check, "validate config, recipes and images; touches no device"},
    {"ports", st_cmd_ports, "list attached USB devices by port path"},
    {"learn", st_cmd_learn, "bind slots by plugging a device into each port in turn"},
    {"watch", st_cmd_watch, "show a running station's dashboard, read-only"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: station <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].what);
    fprintf(f, "\n'station <command> --help' describes a command's options.\n"
               "exit codes: 0 success, 1 a session failed, 2 usage, config, recipe or image\n"
               "error (no device touched), 3 internal error\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        usage(stderr);
        return ST_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return ST_EXIT_OK;
    }
    if (!strcmp(cmd, "--version")) {
        printf("station %s\n", STATION_VERSION);
        return ST_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    return st_usage_error("unknown command '%s'", cmd);
}
