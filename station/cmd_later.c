/*
 * Subcommands that are named in ARCHITECTURE.md but not built yet. Each
 * lives here until its own file takes it over; they fail as usage errors
 * (exit 2) so that scripts notice.
 */
#include "station/commands.h"

#define ST__NOT_YET(fn, name)                                                                      \
    int fn(int argc, char **argv)                                                                  \
    {                                                                                              \
        (void)argc;                                                                                \
        (void)argv;                                                                                \
        return st_usage_error("'%s' is not implemented yet", name);                                \
    }
