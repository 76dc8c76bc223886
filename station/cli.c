#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "station/commands.h"
#include "station/station.h"

int st_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "station: ");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    fprintf(stderr, fmt, arg);
#pragma GCC diagnostic pop
    fprintf(stderr, "\nTry 'station --help'.\n");
    return ST_EXIT_USAGE;
}

int st_parse_uint(const char *opt, const char *arg, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    if (!arg[0] || arg[0] == '-')
        goto bad;
    unsigned long v = strtoul(arg, &end, 0);
    if (errno || *end != '\0' || v > max)
        goto bad;
    *out = v;
    return 0;
bad:
    fprintf(stderr, "station: %s: expected a whole number from 0 to %lu, got \"%s\"\n", opt, max,
            arg);
    return -1;
}
