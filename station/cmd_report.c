/*
 * `station report`, `station stats`, `station history SERIAL`: the QA
 * queries of db/report.h behind a command line, printed as an aligned
 * table, CSV (RFC 4180) or JSON.
 *
 * The SQL stays in db/; this file parses options and prints rows. Exit
 * codes: 0 done (also when nothing matches), 2 usage or an unreadable,
 * missing or non-station database file, 3 internal error.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/st_error.h"
#include "db/report.h"
#include "station/commands.h"
#include "station/station.h"

enum fmt { FMT_TABLE, FMT_CSV, FMT_JSON };
enum which { CMD_REPORT, CMD_STATS, CMD_HISTORY };

struct args {
    enum which which;
    const char *dbs[DB_READER_MAX_FILES];
    unsigned n_dbs;
    struct db_filter filter;
    char result[16];
    enum db_group by;
    enum fmt fmt;
    const char *serial; /* history */
};

static const char report_usage[] =
    "usage: station report [options]   sessions, oldest first\n"
    "       station stats [options]    counts, yield and median duration per group\n"
    "       station history SERIAL [--db FILE]... [--format F]\n"
    "                                  every session of a serial with its steps\n"
    "  --db FILE           a station database (default station.db); repeat to read\n"
    "                      several at once (a whole line); opened read-only\n"
    "  --since T           sessions started at or after T\n"
    "  --until T           sessions started before T\n"
    "                      T: 2026-11-22, 2026-11-22T10:00[:00][Z] (UTC) or Unix seconds\n"
    "  --serial S          getvar serial or USB serial equals S\n"
    "  --slot L            slot name equals L\n"
    "  --result R          pass, fail, aborted or skipped\n"
    "  --recipe R          recipe name equals R\n"
    "  --by G              stats: slot (default), recipe, day, hour or error\n"
    "  --format F          table (default), csv (RFC 4180) or json\n"
    "\n"
    "exit codes: 0 done (also when nothing matches), 2 usage or a missing, unreadable or\n"
    "non-station database file, 3 internal error\n";

/* ---- option values ------------------------------------------------------ */

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

/* ISO date, date and time (UTC), or Unix seconds, to Unix milliseconds. */
static int parse_time(const char *opt, const char *arg, int64_t *out_ms)
{
    int y, mo, d, h = 0, mi = 0, s = 0, n = 0, fields;
    struct tm tm, back;
    time_t t;

    if (all_digits(arg) && strlen(arg) <= 12) {
        *out_ms = (int64_t)strtoll(arg, NULL, 10) * 1000;
        return 0;
    }
    fields = sscanf(arg, "%4d-%2d-%2d%n", &y, &mo, &d, &n);
    if (fields != 3 || n != 10)
        goto bad;
    if (arg[n] == 'T' || arg[n] == ' ') {
        const char *rest = arg + n + 1;
        int m = 0;

        if (sscanf(rest, "%2d:%2d%n", &h, &mi, &m) != 2 || m != 5)
            goto bad;
        rest += m;
        if (rest[0] == ':') {
            if (sscanf(rest + 1, "%2d%n", &s, &m) != 1 || m != 2)
                goto bad;
            rest += 3;
        }
        if (rest[0] == 'Z')
            rest++;
        if (*rest)
            goto bad;
    } else if (arg[n] != '\0') {
        goto bad;
    }
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    t = timegm(&tm);
    /* timegm normalises 2026-02-31 into March: refuse what moved. */
    if (t == (time_t)-1 || !gmtime_r(&t, &back) || back.tm_year != y - 1900 ||
        back.tm_mon != mo - 1 || back.tm_mday != d || back.tm_hour != h || back.tm_min != mi ||
        back.tm_sec != s)
        goto bad;
    *out_ms = (int64_t)t * 1000;
    return 0;
bad:
    fprintf(stderr,
            "station: %s: expected a date (2026-11-22), a date and time in UTC "
            "(2026-11-22T10:00:00) or Unix seconds, got \"%s\"\n",
            opt, arg);
    return -1;
}

static int parse_result(const char *arg, char *out, size_t len)
{
    static const char *const ok[] = {"PASS", "FAIL", "ABORTED", "SKIPPED"};
    size_t n = strlen(arg);

    if (n >= len)
        goto bad;
    for (size_t i = 0; i <= n; i++)
        out[i] = (char)toupper((unsigned char)arg[i]);
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strcmp(out, ok[i]))
            return 0;
bad:
    fprintf(stderr, "station: --result: expected pass, fail, aborted or skipped, got \"%s\"\n",
            arg);
    return -1;
}

static int parse_format(const char *arg, enum fmt *out)
{
    if (!strcmp(arg, "table"))
        *out = FMT_TABLE;
    else if (!strcmp(arg, "csv"))
        *out = FMT_CSV;
    else if (!strcmp(arg, "json"))
        *out = FMT_JSON;
    else {
        fprintf(stderr, "station: --format: expected table, csv or json, got \"%s\"\n", arg);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    enum {
        O_DB = 1000,
        O_SINCE,
        O_UNTIL,
        O_SERIAL,
        O_SLOT,
        O_RESULT,
        O_RECIPE,
        O_BY,
        O_FORMAT,
        O_HELP
    };
    static const struct option longopts[] = {
        {"db", required_argument, NULL, O_DB},
        {"since", required_argument, NULL, O_SINCE},
        {"until", required_argument, NULL, O_UNTIL},
        {"serial", required_argument, NULL, O_SERIAL},
        {"slot", required_argument, NULL, O_SLOT},
        {"result", required_argument, NULL, O_RESULT},
        {"recipe", required_argument, NULL, O_RECIPE},
        {"by", required_argument, NULL, O_BY},
        {"format", required_argument, NULL, O_FORMAT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *name = argv[0];
    bool filters = a->which != CMD_HISTORY;
    int c;

    opterr = 0;
    optind = 1;
    int li = 0;

    while ((c = getopt_long(argc, argv, ":", longopts, &li)) != -1) {
        if (!filters && c != O_DB && c != O_FORMAT && c != O_HELP && c != ':' && c != '?')
            return st_usage_error("option --%s is not for 'station history'", longopts[li].name);
        switch (c) {
        case O_DB:
            if (a->n_dbs == DB_READER_MAX_FILES)
                return st_usage_error("--db %s: at most 10 databases at once", optarg);
            a->dbs[a->n_dbs++] = optarg;
            break;
        case O_SINCE:
            if (parse_time("--since", optarg, &a->filter.since_ms))
                return ST_EXIT_USAGE;
            a->filter.has_since = true;
            break;
        case O_UNTIL:
            if (parse_time("--until", optarg, &a->filter.until_ms))
                return ST_EXIT_USAGE;
            a->filter.has_until = true;
            break;
        case O_SERIAL:
            a->filter.serial = optarg;
            break;
        case O_SLOT:
            a->filter.slot = optarg;
            break;
        case O_RESULT:
            if (parse_result(optarg, a->result, sizeof a->result))
                return ST_EXIT_USAGE;
            a->filter.result = a->result;
            break;
        case O_RECIPE:
            a->filter.recipe = optarg;
            break;
        case O_BY:
            if (a->which != CMD_STATS)
                return st_usage_error("--by is for 'station stats'%s", "");
            if (db_group_parse(optarg, &a->by) != 0)
                return st_usage_error("--by: expected slot, recipe, day, hour or error, got \"%s\"",
                                      optarg);
            break;
        case O_FORMAT:
            if (parse_format(optarg, &a->fmt))
                return ST_EXIT_USAGE;
            break;
        case O_HELP:
            fputs(report_usage, stdout);
            return -1;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            fprintf(stderr, "station: unknown option '%s' for 'station %s'\n", argv[optind - 1],
                    name);
            return st_usage_error("%s", "see 'station report --help'");
        }
    }
    if (a->which == CMD_HISTORY) {
        if (optind >= argc)
            return st_usage_error("%s", "history needs a SERIAL: station history SERIAL");
        a->serial = argv[optind++];
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s'", argv[optind]);
    if (a->filter.has_since && a->filter.has_until && a->filter.until_ms <= a->filter.since_ms)
        return st_usage_error("--until must be later than --since%s", "");
    if (a->n_dbs == 0)
        a->dbs[a->n_dbs++] = "station.db";
    return 0;
}

/* ---- printers ----------------------------------------------------------- */

struct printer {
    FILE *out;
    enum fmt fmt;
    enum which which;
    unsigned ncols;
    char **names;
    unsigned long rows;
    /* table: every cell kept to size the columns */
    char **cells;
    size_t n_cells, cap_cells;
    /* history table: the session being printed */
    char last_session[64];
    int err;
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* RFC 4180: quote a field holding a comma, a quote, CR or LF; double the
 * quotes inside. NULL is an empty field. */
static void csv_field(FILE *out, const char *v)
{
    if (!v)
        return;
    if (!strpbrk(v, ",\"\r\n")) {
        fputs(v, out);
        return;
    }
    fputc('"', out);
    for (; *v; v++) {
        if (*v == '"')
            fputc('"', out);
        fputc(*v, out);
    }
    fputc('"', out);
}

static void csv_record(FILE *out, unsigned n, const char *const *v)
{
    for (unsigned i = 0; i < n; i++) {
        if (i)
            fputc(',', out);
        csv_field(out, v[i]);
    }
    fputs("\r\n", out);
}

static int on_columns(void *user, unsigned n, const char *const *names)
{
    struct printer *p = user;

    p->ncols = n;
    p->names = calloc(n, sizeof *p->names);
    if (!p->names)
        return p->err = ST_ENOMEM;
    for (unsigned i = 0; i < n; i++)
        if (!(p->names[i] = strdup(names[i])))
            return p->err = ST_ENOMEM;
    if (p->fmt == FMT_CSV)
        csv_record(p->out, n, names);
    else if (p->fmt == FMT_JSON)
        fputc('[', p->out);
    return 0;
}

static int col(const struct printer *p, const char *name)
{
    for (unsigned i = 0; i < p->ncols; i++)
        if (!strcmp(p->names[i], name))
            return (int)i;
    return -1;
}

static const char *val(const struct printer *p, const char *const *v, const char *name)
{
    int i = col(p, name);
    return i >= 0 && v[i] ? v[i] : "";
}

/* A cell on one line: control characters become spaces. */
static void put_flat(FILE *out, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 ? ' ' : *s, out);
}

/* history as a table: a header per session, then its steps indented. */
static void history_row(struct printer *p, const char *const *v)
{
    const char *sess = val(p, v, "session"), *db = val(p, v, "db");
    char key[64];

    snprintf(key, sizeof key, "%s|%s", db, sess);
    if (strcmp(key, p->last_session) != 0) {
        snprintf(p->last_session, sizeof p->last_session, "%s", key);
        if (p->rows > 0)
            fputc('\n', p->out);
        fprintf(p->out, "session %s", sess);
        if (*db)
            fprintf(p->out, " (%s)", db);
        fprintf(p->out, "  %s  slot %s  serial %s  usb %s  %s %s  %s\n", val(p, v, "started"),
                val(p, v, "slot"), val(p, v, "serial"), val(p, v, "usb_serial"),
                val(p, v, "recipe"), val(p, v, "version"),
                val(p, v, "result")[0] ? val(p, v, "result") : "RUNNING");
        if (*val(p, v, "reason")) {
            fputs("  reason: ", p->out);
            put_flat(p->out, val(p, v, "reason"));
            fputc('\n', p->out);
        }
        if (*val(p, v, "images"))
            fprintf(p->out, "  images: %s\n", val(p, v, "images"));
        p->rows++;
    }
    if (!*val(p, v, "step"))
        return;
    fprintf(p->out, "  %2s %-24s %-7s %8ss %10s  ", val(p, v, "step"), val(p, v, "step_name"),
            val(p, v, "step_result"), val(p, v, "step_duration_s"), val(p, v, "step_bytes"));
    put_flat(p->out, val(p, v, "step_detail"));
    fputc('\n', p->out);
}

static int on_row(void *user, unsigned n, const char *const *v)
{
    struct printer *p = user;

    switch (p->fmt) {
    case FMT_CSV:
        csv_record(p->out, n, v);
        break;
    case FMT_JSON:
        /* v[0] is one object made by SQLite's json_object(). */
        fprintf(p->out, "%s\n%s", p->rows ? "," : "", v[0]);
        break;
    case FMT_TABLE:
        if (p->which == CMD_HISTORY) {
            history_row(p, v);
            return 0;
        }
        if (p->n_cells + n > p->cap_cells) {
            size_t cap = p->cap_cells ? p->cap_cells * 2 : 1024;
            char **c;

            while (cap < p->n_cells + n)
                cap *= 2;
            c = realloc(p->cells, cap * sizeof *c);
            if (!c)
                return p->err = ST_ENOMEM;
            p->cells = c;
            p->cap_cells = cap;
        }
        for (unsigned i = 0; i < n; i++) {
            p->cells[p->n_cells] = dup_or_null(v[i]);
            if (v[i] && !p->cells[p->n_cells])
                return p->err = ST_ENOMEM;
            p->n_cells++;
        }
        break;
    }
    if (p->fmt != FMT_TABLE || p->which != CMD_HISTORY)
        p->rows++;
    return 0;
}

/* Display width of UTF-8 text: code points, not bytes. */
static size_t width(const char *s)
{
    size_t w = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

#define TABLE_MAX_WIDTH 48

static void table_cell(FILE *out, const char *s, size_t w, bool last)
{
    size_t shown = 0;

    if (!s)
        s = "-";
    for (; *s && shown < w; s++) {
        /* cut long cells at TABLE_MAX_WIDTH; a trailing '~' says so */
        if (((unsigned char)*s & 0xc0) != 0x80) {
            if (shown == w - 1 && width(s) > 1) {
                fputc('~', out);
                shown++;
                break;
            }
            shown++;
        }
        fputc((unsigned char)*s < 0x20 ? ' ' : *s, out);
    }
    if (!last)
        for (; shown < w + 2; shown++)
            fputc(' ', out);
}

static void print_table(struct printer *p)
{
    size_t *w = calloc(p->ncols, sizeof *w);
    size_t nrows = p->ncols ? p->n_cells / p->ncols : 0;

    if (!w) {
        p->err = ST_ENOMEM;
        return;
    }
    for (unsigned c = 0; c < p->ncols; c++) {
        w[c] = width(p->names[c]);
        for (size_t r = 0; r < nrows; r++) {
            const char *s = p->cells[r * p->ncols + c];
            size_t cw = s ? width(s) : 1;

            if (cw > w[c])
                w[c] = cw;
        }
        if (w[c] > TABLE_MAX_WIDTH)
            w[c] = TABLE_MAX_WIDTH;
    }
    for (unsigned c = 0; c < p->ncols; c++)
        table_cell(p->out, p->names[c], w[c], c + 1 == p->ncols);
    fputc('\n', p->out);
    for (size_t r = 0; r < nrows; r++) {
        for (unsigned c = 0; c < p->ncols; c++)
            table_cell(p->out, p->cells[r * p->ncols + c], w[c], c + 1 == p->ncols);
        fputc('\n', p->out);
    }
    free(w);
}

static void printer_free(struct printer *p)
{
    for (unsigned i = 0; p->names && i < p->ncols; i++)
        free(p->names[i]);
    free(p->names);
    for (size_t i = 0; i < p->n_cells; i++)
        free(p->cells[i]);
    free(p->cells);
}

/* ---- the commands ------------------------------------------------------- */

static int run_query(int argc, char **argv, enum which which)
{
    struct args a;
    struct printer p;
    struct db_reader *r = NULL;
    struct db_sink sink = {on_columns, on_row, &p};
    char err[700];
    int rc, exit_code = ST_EXIT_OK;

    memset(&a, 0, sizeof a);
    a.which = which;
    a.by = DB_BY_SLOT;
    rc = parse_args(argc, argv, &a);
    if (rc < 0)
        return ST_EXIT_OK; /* --help */
    if (rc > 0)
        return rc;
    rc = db_reader_open(a.dbs, a.n_dbs, &r, err, sizeof err);
    if (rc) {
        fprintf(stderr, "station: %s\n", err);
        return rc == ST_ENOMEM ? ST_EXIT_INTERNAL : ST_EXIT_USAGE;
    }
    memset(&p, 0, sizeof p);
    p.out = stdout;
    p.fmt = a.fmt;
    p.which = which;
    {
        enum db_shape shape = a.fmt == FMT_JSON ? DB_SHAPE_JSON : DB_SHAPE_ROWS;

        if (which == CMD_REPORT)
            rc = db_report(r, &a.filter, shape, &sink, err, sizeof err);
        else if (which == CMD_STATS)
            rc = db_stats(r, a.by, &a.filter, shape, &sink, err, sizeof err);
        else
            rc = db_history(r, a.serial, shape, &sink, err, sizeof err);
    }
    if (rc == 0) {
        if (a.fmt == FMT_JSON)
            fputs(p.rows ? "\n]\n" : "]\n", stdout);
        else if (a.fmt == FMT_TABLE && which != CMD_HISTORY)
            print_table(&p);
        else if (a.fmt == FMT_TABLE && p.rows == 0)
            fprintf(stdout, "no sessions recorded for serial %s\n", a.serial);
    }
    if (rc == ST_ECANCELED)
        rc = p.err;
    if (rc == 0)
        rc = p.err;
    if (rc) {
        fprintf(stderr, "station: %s: %s\n", argv[0], rc == ST_EDB ? err : st_strerror(rc));
        exit_code = rc == ST_EDB ? ST_EXIT_USAGE : ST_EXIT_INTERNAL;
    }
    if (fflush(stdout) != 0 && exit_code == ST_EXIT_OK) {
        fprintf(stderr, "station: %s: cannot write the output: %s\n", argv[0], strerror(errno));
        exit_code = ST_EXIT_INTERNAL;
    }
    printer_free(&p);
    db_reader_close(r);
    return exit_code;
}

int st_cmd_report(int argc, char **argv)
{
    return run_query(argc, argv, CMD_REPORT);
}

int st_cmd_stats(int argc, char **argv)
{
    return run_query(argc, argv, CMD_STATS);
}

int st_cmd_history(int argc, char **argv)
{
    return run_query(argc, argv, CMD_HISTORY);
}
