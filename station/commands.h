/*
 * The subcommands of `station` (ARCHITECTURE.md, "Command line"). Each
 * takes argv starting at its own name and returns the process exit code
 * (enum st_exit). Shared option helpers live in cli.c.
 */
#ifndef ST_COMMANDS_H
#define ST_COMMANDS_H

int st_cmd_run(int argc, char **argv);
int st_cmd_sim(int argc, char **argv);
int st_cmd_report(int argc, char **argv);
int st_cmd_stats(int argc, char **argv);
int st_cmd_history(int argc, char **argv);
int st_cmd_check(int argc, char **argv);
int st_cmd_ports(int argc, char **argv);
int st_cmd_learn(int argc, char **argv);
int st_cmd_watch(int argc, char **argv);

struct cfg_config;
/* Print what `station check` prints for an already loaded config and
 * verify its images; returns ST_EXIT_OK or ST_EXIT_USAGE. */
int st_check_config(const struct cfg_config *cfg);

/* Print "station: " + fmt (with one string argument) + a hint to stderr;
 * returns ST_EXIT_USAGE. */
int st_usage_error(const char *fmt, const char *arg) __attribute__((format(printf, 1, 0)));

/* Parse a whole number in [0, max] for option `opt`; prints the error.
 * Returns 0 or -1. */
int st_parse_uint(const char *opt, const char *arg, unsigned long max, unsigned long *out);

#define STATION_VERSION "0.1.0"

#endif
