/*
 * station.ini: cfg_load(), cfg_free(), cfg_slot_for_port() (config/config.h).
 *
 * libinih does the INI syntax; this file feeds it lines through its own
 * reader (ini_parse_stream) so that it knows, for every handler call, the
 * real line number and the raw text of that line, and can point at the
 * column of a value. The reader also:
 * - strips each line's indentation before inih sees it, so indented lines
 *   are ordinary lines (inih's multi-line continuation never applies);
 * - after a line that starts with '[', hands inih one extra line holding
 *   a marker key (a control character, which a real line cannot contain),
 *   so the handler hears of every section header, even an empty section
 *   or a repeated one (this inih build does not call the handler on a new
 *   section);
 * - refuses control characters and lines too long for inih's buffer
 *   (inih would silently split them).
 *
 * Syntax: `key = value` (or `key: value`), comments are lines starting with
 * ';' or '#', and ` ; text` after a value. Sizes and rates take binary
 * suffixes (k = 1024, M = 1024^2, G = 1024^3); durations take ms, s or m.
 * Paths are resolved against the ini file's folder.
 *
 * Order of errors: every line is checked as it is read (syntax, sections,
 * keys, values, recipe files named by `recipe =`), so the first such
 * error in the file wins; then, section by section, what needs a whole
 * section or file (a slot without a path, a profile without match or
 * recipe, protocol against the recipe, [simulate] profile, signatures).
 */
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ini.h>

#include "common/st_error.h"
#include "config/cfg_internal.h"
#include "config/config.h"

#define INI_FILE_MAX (1u << 20)
#define MARKER "\x01"
#define MAX_RETRIES 10
#define MAX_SESSIONS 1024
#define MAX_SECTIONS (CFG_MAX_SLOTS + CFG_MAX_PROFILES + 8)
#define MAX_KEYS 16

enum section_kind { SEC_NONE, SEC_STATION, SEC_SLOT, SEC_PROFILE, SEC_SIMULATE };

struct section_rec {
    enum section_kind kind;
    unsigned index; /* into slots[] or profiles[] */
    unsigned line;
    char name[CFG_NAME_MAX];
};

struct where {
    unsigned line, col;
};

struct ini;

struct key_def {
    const char *name;
    bool repeatable;
    int (*set)(struct ini *c, const char *value, unsigned col);
};

struct ini {
    const char *path;
    char dir[CFG_PATH_MAX];
    struct cfg_config *cfg;
    char *err;
    size_t errlen;
    int rc;
    unsigned err_served; /* inih's line number of our first error */

    /* the reader */
    char *buf;
    size_t len, pos;
    unsigned line;   /* real line number of the last line read */
    unsigned served; /* lines handed to inih, markers included */
    unsigned *map;   /* inih line number -> real line number */
    size_t map_cap;
    const char *raw; /* the last real line, without its newline */
    size_t raw_len;
    bool marker_due;

    /* the section being read */
    enum section_kind sec;
    const struct section_rec *cur;
    const struct key_def *keys;
    unsigned key_line[MAX_KEYS];
    struct section_rec sections[MAX_SECTIONS];
    unsigned n_sections;

    /* where things were, for messages after the parse */
    struct where slot_path[CFG_MAX_SLOTS][CFG_MAX_SLOT_PATHS];
    struct where match_at[CFG_MAX_PROFILES][CFG_MAX_MATCHES];
    struct where protocol_at[CFG_MAX_PROFILES];
    bool protocol_given[CFG_MAX_PROFILES];
    struct where sim_profile_at, require_sig_at;
};

static int vfail(struct ini *c, unsigned line, unsigned col, const char *fmt, va_list ap)
{
    if (c->rc)
        return c->rc;
    int n = snprintf(c->err, c->errlen, "%s:%u:%u: ", c->path, line, col);
    if (n >= 0 && (size_t)n < c->errlen)
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    c->rc = ST_EINVAL;
    c->err_served = c->served;
    return c->rc;
}

/* An error on the line being read; returns the code. */
static int fail(struct ini *c, unsigned col, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct ini *c, unsigned col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(c, c->line, col, fmt, ap);
    va_end(ap);
    return rc;
}

static int fail_at(struct ini *c, unsigned line, unsigned col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(struct ini *c, unsigned line, unsigned col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(c, line, col, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- the reader ---------------------------------------------------- */

static size_t indent_of(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i;
}

static bool note_served(struct ini *c)
{
    if (c->served + 1 >= c->map_cap) {
        size_t cap = c->map_cap ? c->map_cap * 2 : 256;
        unsigned *m = realloc(c->map, cap * sizeof(*m));
        if (!m) {
            c->rc = ST_ENOMEM;
            snprintf(c->err, c->errlen, "%s: %s", c->path, st_strerror(c->rc));
            return false;
        }
        c->map = m;
        c->map_cap = cap;
    }
    c->map[++c->served] = c->line;
    return true;
}

static char *reader(char *str, int num, void *stream)
{
    struct ini *c = stream;
    if (c->rc)
        return NULL; /* stop at our first error */
    if (c->marker_due) {
        c->marker_due = false;
        snprintf(str, (size_t)num, MARKER "=\n");
        return note_served(c) ? str : NULL;
    }
    if (c->pos >= c->len)
        return NULL;
    const char *line = c->buf + c->pos;
    const char *nl = memchr(line, '\n', c->len - c->pos);
    size_t n = nl ? (size_t)(nl - line) : c->len - c->pos;
    c->pos += n + (nl ? 1 : 0);
    c->line++;
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (c->line == 1 && n >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) {
        line += 3; /* a UTF-8 byte order mark is not part of line 1 */
        n -= 3;
    }
    c->raw = line;
    c->raw_len = n;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)line[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            fail(c, (unsigned)i + 1, "unexpected control character 0x%02x", ch);
            c->err_served = c->served + 1;
            return NULL;
        }
    }
    size_t lead = indent_of(line, n);
    if (n - lead + 2 > (size_t)num) {
        fail(c, (unsigned)(lead + (size_t)num - 2) + 1,
             "line longer than %d bytes (not counting indentation)", num - 2);
        c->err_served = c->served + 1;
        return NULL;
    }
    memcpy(str, line + lead, n - lead);
    str[n - lead] = '\n';
    str[n - lead + 1] = '\0';
    c->marker_due = line[lead] == '[';
    return note_served(c) ? str : NULL;
}

/* Column (1-based) of the value on the current line: after the first
 * '=' or ':' (inih's delimiters), past any blanks. */
static unsigned value_col(const struct ini *c)
{
    size_t i = indent_of(c->raw, c->raw_len);
    while (i < c->raw_len && c->raw[i] != '=' && c->raw[i] != ':')
        i++;
    if (i < c->raw_len)
        i++;
    while (i < c->raw_len && (c->raw[i] == ' ' || c->raw[i] == '\t'))
        i++;
    return (unsigned)i + 1;
}

static unsigned key_col(const struct ini *c)
{
    return (unsigned)indent_of(c->raw, c->raw_len) + 1;
}

/* ---- value checks -------------------------------------------------- */

static bool is_glob(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* "tcp:HOST:PORT" (HOST may be [IPv6]); *bad_at = offset of the faulty
 * part when false. */
static bool parse_tcp(const char *s, struct cfg_match *m, size_t *bad_at, const char **why)
{
    const char *host = s + 4, *colon = strrchr(s, ':');
    size_t hlen;
    uint64_t port;
    *bad_at = 0;
    *why = "expected tcp:HOST:PORT";
    if (strncmp(s, "tcp:", 4) != 0 || colon < host)
        return false;
    hlen = (size_t)(colon - host);
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
        for (size_t i = 0; i < hlen; i++)
            if (!strchr("0123456789abcdefABCDEF:.%", host[i]))
                hlen = 0;
    } else if (!cfg__is_word(host, hlen, NULL, sizeof(m->host) - 1)) {
        hlen = 0;
    }
    if (hlen == 0 || hlen >= sizeof(m->host)) {
        *bad_at = 4;
        *why = "expected a host name or address in tcp:HOST:PORT";
        return false;
    }
    if (!cfg__parse_uint(colon + 1, 65535, &port) || port == 0) {
        *bad_at = (size_t)(colon + 1 - s);
        *why = "expected a port from 1 to 65535 in tcp:HOST:PORT";
        return false;
    }
    memset(m, 0, sizeof(*m));
    m->kind = CFG_MATCH_TCP;
    snprintf(m->host, sizeof(m->host), "%.*s", (int)hlen, host);
    m->port = (uint16_t)port;
    return true;
}

/* A USB port path (1-4.2.3), a virtual position (virt-07), a TCP
 * endpoint, or a glob over those (1-1.*). */
static bool valid_port(const char *s)
{
    size_t n = strlen(s);
    struct cfg_match m;
    size_t bad;
    const char *why;
    if (n == 0 || n >= sizeof(((struct cfg_slot *)0)->paths[0]))
        return false;
    if (is_glob(s)) {
        int depth = 0;
        for (const char *p = s; *p; p++) {
            if (!strchr("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.:-*?[]!",
                        *p))
                return false;
            depth += *p == '[' ? 1 : *p == ']' ? -1 : 0;
            if (depth < 0 || depth > 1)
                return false;
        }
        return depth == 0;
    }
    if (!strncmp(s, "tcp:", 4))
        return parse_tcp(s, &m, &bad, &why);
    if (!strncmp(s, "virt-", 5))
        return all_digits(s + 5, n - 5);
    const char *dash = strchr(s, '-');
    if (!dash || !all_digits(s, (size_t)(dash - s)))
        return false;
    for (const char *p = dash + 1;;) {
        size_t k = strcspn(p, ".");
        if (!all_digits(p, k))
            return false;
        if (!p[k])
            return true;
        p += k + 1;
    }
}

static bool parse_hex(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            d = (unsigned)(ch - 'A' + 10);
        else
            return false;
        v = v * 16 + d;
    }
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    if (!*s || *s == ' ' || *s == '+' || *s == '-')
        return false;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || v != v || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "yes") || !strcmp(s, "true"))
        *out = true;
    else if (!strcmp(s, "no") || !strcmp(s, "false"))
        *out = false;
    else
        return false;
    return true;
}

static void match_text(const struct cfg_match *m, char *buf, size_t len)
{
    if (m->kind == CFG_MATCH_CLASS)
        snprintf(buf, len, "class %02X/%02X/%02X", m->cls, m->subclass, m->protocol);
    else if (m->kind == CFG_MATCH_USB)
        snprintf(buf, len, "usb %04x:%04x", m->vid, m->pid);
    else
        snprintf(buf, len, strchr(m->host, ':') ? "tcp:[%s]:%u" : "tcp:%s:%u", m->host, m->port);
}

static bool same_match(const struct cfg_match *a, const struct cfg_match *b)
{
    if (a->kind != b->kind)
        return false;
    if (a->kind == CFG_MATCH_CLASS)
        return a->cls == b->cls && a->subclass == b->subclass && a->protocol == b->protocol;
    if (a->kind == CFG_MATCH_USB)
        return a->vid == b->vid && a->pid == b->pid;
    return a->port == b->port && !strcasecmp(a->host, b->host);
}

/* A path value resolved against the ini's folder. */
static int set_path(struct ini *c, char *out, size_t outlen, const char *key, const char *value,
                    unsigned col)
{
    if (!*value)
        return fail(c, col, "%s: expected a path, got \"\"", key);
    if (!cfg__join(out, outlen, c->dir, value))
        return fail(c, col, "%s: path longer than %zu bytes", key, outlen - 1);
    return 0;
}

/* ---- [station] ----------------------------------------------------- */

static int set_id(struct ini *c, const char *v, unsigned col)
{
    if (!cfg__is_word(v, strlen(v), NULL, CFG_NAME_MAX - 1))
        return fail(c, col, "id: expected a station id (letters, digits, ._-), got \"%s\"", v);
    snprintf(c->cfg->id, sizeof(c->cfg->id), "%s", v);
    return 0;
}

static int set_db(struct ini *c, const char *v, unsigned col)
{
    return set_path(c, c->cfg->db, sizeof(c->cfg->db), "db", v, col);
}

static int set_max_sessions(struct ini *c, const char *v, unsigned col)
{
    uint64_t n;
    if (!cfg__parse_uint(v, MAX_SESSIONS, &n))
        return fail(c, col,
                    "max_sessions: expected a number from 0 to %d (0 = no limit), got \"%s\"",
                    MAX_SESSIONS, v);
    c->cfg->max_sessions = (unsigned)n;
    return 0;
}

static int set_ui(struct ini *c, const char *v, unsigned col)
{
    if (strcmp(v, "auto") != 0 && strcmp(v, "dashboard") != 0 && strcmp(v, "headless") != 0)
        return fail(c, col, "ui: expected auto, dashboard or headless, got \"%s\"", v);
    snprintf(c->cfg->ui, sizeof(c->cfg->ui), "%s", v);
    return 0;
}

static int set_minisign_key(struct ini *c, const char *v, unsigned col)
{
    struct stat st;
    int rc =
        set_path(c, c->cfg->minisign_key, sizeof(c->cfg->minisign_key), "minisign_key", v, col);
    if (rc)
        return rc;
    if (stat(c->cfg->minisign_key, &st) != 0)
        return fail(c, col, "minisign_key: cannot open \"%s\": %s", c->cfg->minisign_key,
                    strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(c, col, "minisign_key: \"%s\" is not a regular file", c->cfg->minisign_key);
    return 0;
}

static int set_require_signatures(struct ini *c, const char *v, unsigned col)
{
    if (!parse_bool(v, &c->cfg->require_signatures))
        return fail(c, col, "require_signatures: expected yes or no, got \"%s\"", v);
    c->require_sig_at = (struct where){c->line, col};
    return 0;
}

static const struct key_def station_keys[] = {
    {"id", false, set_id},
    {"db", false, set_db},
    {"max_sessions", false, set_max_sessions},
    {"ui", false, set_ui},
    {"minisign_key", false, set_minisign_key},
    {"require_signatures", false, set_require_signatures},
    {NULL, false, NULL},
};

/* ---- [slot NAME] --------------------------------------------------- */

static int set_slot_path(struct ini *c, const char *v, unsigned col)
{
    unsigned si = c->cur->index;
    struct cfg_slot *slot = &c->cfg->slots[si];
    if (!valid_port(v))
        return fail(c, col,
                    "path: expected a port path like 1-4.2.3, virt-07 or tcp:HOST:PORT, or a glob "
                    "like 1-1.*, got \"%s\"",
                    v);
    for (unsigned i = 0; i <= si; i++) {
        const struct cfg_slot *o = &c->cfg->slots[i];
        for (unsigned k = 0; k < o->n_paths; k++) {
            if (strcmp(o->paths[k], v) != 0)
                continue;
            if (i == si)
                return fail(c, col, "path \"%s\" is listed twice in [slot %s] (first on line %u)",
                            v, slot->name, c->slot_path[i][k].line);
            return fail(c, col, "path \"%s\" is in both [slot %s] (line %u) and [slot %s]", v,
                        o->name, c->slot_path[i][k].line, slot->name);
        }
    }
    if (slot->n_paths == CFG_MAX_SLOT_PATHS)
        return fail(c, col, "[slot %s] has more than %d paths", slot->name, CFG_MAX_SLOT_PATHS);
    c->slot_path[si][slot->n_paths] = (struct where){c->line, col};
    snprintf(slot->paths[slot->n_paths++], sizeof(slot->paths[0]), "%s", v);
    return 0;
}

static const struct key_def slot_keys[] = {
    {"path", true, set_slot_path},
    {NULL, false, NULL},
};

/* ---- [profile NAME] ------------------------------------------------ */

static struct cfg_profile *cur_profile(struct ini *c)
{
    return &c->cfg->profiles[c->cur->index];
}

static int set_match(struct ini *c, const char *v, unsigned col)
{
    struct cfg_profile *pr = cur_profile(c);
    struct cfg_match m;
    memset(&m, 0, sizeof(m));
    size_t word = strcspn(v, " \t");
    const char *arg = v + word + strspn(v + word, " \t");
    unsigned acol = col + (unsigned)(arg - v);
    unsigned a, b, d;
    if (!strncmp(v, "tcp:", 4)) {
        size_t bad;
        const char *why;
        if (!parse_tcp(v, &m, &bad, &why))
            return fail(c, col + (unsigned)bad, "match: %s, got \"%s\"", why, v);
    } else if (word == 5 && !strncmp(v, "class", 5)) {
        if (strlen(arg) != 8 || arg[2] != '/' || arg[5] != '/' || !parse_hex(arg, 2, &a) ||
            !parse_hex(arg + 3, 2, &b) || !parse_hex(arg + 6, 2, &d))
            return fail(c, acol,
                        "match: expected a class triple like FF/42/03 (hex class/subclass/"
                        "protocol), got \"%s\"",
                        arg);
        m.kind = CFG_MATCH_CLASS;
        m.cls = (uint8_t)a;
        m.subclass = (uint8_t)b;
        m.protocol = (uint8_t)d;
    } else if (word == 3 && !strncmp(v, "usb", 3)) {
        if (strlen(arg) != 9 || arg[4] != ':' || !parse_hex(arg, 4, &a) ||
            !parse_hex(arg + 5, 4, &b))
            return fail(c, acol, "match: expected VID:PID like 18d1:4ee0 (hex), got \"%s\"", arg);
        m.kind = CFG_MATCH_USB;
        m.vid = (uint16_t)a;
        m.pid = (uint16_t)b;
    } else {
        return fail(c, col,
                    "match: expected \"class FF/42/03\", \"usb VVVV:PPPP\" or \"tcp:HOST:PORT\", "
                    "got \"%s\"",
                    v);
    }
    for (unsigned i = 0; i <= c->cur->index; i++) {
        const struct cfg_profile *o = &c->cfg->profiles[i];
        for (unsigned k = 0; k < o->n_matches; k++) {
            if (!same_match(&o->matches[k], &m))
                continue;
            char text[160];
            match_text(&m, text, sizeof(text));
            if (o == pr)
                return fail(c, col,
                            "match \"%s\" is listed twice in [profile %s] (first on line %u)", text,
                            pr->name, c->match_at[i][k].line);
            return fail(c, col, "match \"%s\" is in both [profile %s] (line %u) and [profile %s]",
                        text, o->name, c->match_at[i][k].line, pr->name);
        }
    }
    if (pr->n_matches == CFG_MAX_MATCHES)
        return fail(c, col, "[profile %s] has more than %d matches", pr->name, CFG_MAX_MATCHES);
    c->match_at[c->cur->index][pr->n_matches] = (struct where){c->line, col};
    pr->matches[pr->n_matches++] = m;
    return 0;
}

static int set_protocol(struct ini *c, const char *v, unsigned col)
{
    struct cfg_profile *pr = cur_profile(c);
    if (!strcmp(v, "fastboot"))
        pr->protocol = CFG_PROTO_FASTBOOT;
    else if (!strcmp(v, "dfu"))
        pr->protocol = CFG_PROTO_DFU;
    else
        return fail(c, col, "protocol: expected fastboot or dfu, got \"%s\"", v);
    c->protocol_given[c->cur->index] = true;
    c->protocol_at[c->cur->index] = (struct where){c->line, col};
    return 0;
}

static int set_recipe(struct ini *c, const char *v, unsigned col)
{
    struct cfg_profile *pr = cur_profile(c);
    struct stat st;
    int rc = set_path(c, pr->recipe_path, sizeof(pr->recipe_path), "recipe", v, col);
    if (rc)
        return rc;
    if (stat(pr->recipe_path, &st) != 0)
        return fail(c, col, "recipe: cannot open \"%s\": %s", pr->recipe_path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(c, col, "recipe: \"%s\" is not a regular file", pr->recipe_path);
    pr->recipe = calloc(1, sizeof(*pr->recipe));
    if (!pr->recipe)
        return fail(c, col, "recipe: %s", st_strerror(ST_ENOMEM));
    rc = cfg_recipe_load(pr->recipe_path, pr->recipe, c->err, c->errlen);
    if (rc) {
        /* the recipe's own FILE:LINE:COLUMN message is already in err */
        c->rc = rc;
        c->err_served = c->served;
        return rc;
    }
    return 0;
}

static int set_serial_policy(struct ini *c, const char *v, unsigned col)
{
    struct cfg_profile *pr = cur_profile(c);
    if (!strcmp(v, "skip"))
        pr->serial_policy = CFG_SERIAL_SKIP;
    else if (!strcmp(v, "reflash"))
        pr->serial_policy = CFG_SERIAL_REFLASH;
    else if (!strcmp(v, "fail"))
        pr->serial_policy = CFG_SERIAL_FAIL;
    else
        return fail(c, col, "serial_policy: expected skip, reflash or fail, got \"%s\"", v);
    return 0;
}

static int set_retries(struct ini *c, const char *v, unsigned col)
{
    uint64_t n;
    if (!cfg__parse_uint(v, MAX_RETRIES, &n))
        return fail(c, col, "retries: expected a number from 0 to %d, got \"%s\"", MAX_RETRIES, v);
    cur_profile(c)->retries = (unsigned)n;
    return 0;
}

static int set_timeout(struct ini *c, const char *v, unsigned col)
{
    unsigned ms;
    if (!cfg__parse_duration(v, false, &ms) || ms == 0)
        return fail(c, col, "timeout: expected a duration like 5s, 1500ms or 2m, got \"%s\"", v);
    cur_profile(c)->timeout_ms = ms;
    return 0;
}

static int set_min_rate(struct ini *c, const char *v, unsigned col)
{
    if (!cfg__parse_size(v, &cur_profile(c)->min_rate_bps))
        return fail(c, col,
                    "min_rate: expected bytes per second like 1M, 500k or 2000000, got \"%s\"", v);
    return 0;
}

static const struct key_def profile_keys[] = {
    {"match", true, set_match},        {"protocol", false, set_protocol},
    {"recipe", false, set_recipe},     {"serial_policy", false, set_serial_policy},
    {"retries", false, set_retries},   {"timeout", false, set_timeout},
    {"min_rate", false, set_min_rate}, {NULL, false, NULL},
};

/* ---- [simulate] ---------------------------------------------------- */

static int set_count(struct ini *c, const char *v, unsigned col)
{
    uint64_t n;
    if (!cfg__parse_uint(v, CFG_MAX_SLOTS, &n) || n == 0)
        return fail(c, col, "count: expected a number from 1 to %d, got \"%s\"", CFG_MAX_SLOTS, v);
    c->cfg->simulate.count = (unsigned)n;
    return 0;
}

static int set_pace(struct ini *c, const char *v, unsigned col)
{
    if (!parse_double(v, 0, 100000, &c->cfg->simulate.pace_mbps))
        return fail(c, col, "pace: expected MB/s like 8 or 0.5 (0 = unpaced), got \"%s\"", v);
    return 0;
}

static int set_plug_interval(struct ini *c, const char *v, unsigned col)
{
    if (!cfg__parse_duration(v, true, &c->cfg->simulate.plug_interval_ms))
        return fail(c, col, "plug_interval: expected a number of milliseconds, got \"%s\"", v);
    return 0;
}

static int set_replug(struct ini *c, const char *v, unsigned col)
{
    if (!cfg__parse_duration(v, true, &c->cfg->simulate.replug_ms))
        return fail(c, col, "replug: expected a number of milliseconds, got \"%s\"", v);
    return 0;
}

/* "N:KIND=ARG", as `station run --fault` and eng_vfb_parse_fault() take it. */
static int set_fault(struct ini *c, const char *v, unsigned col)
{
    static const char *const kinds[] = {"fail", "silent", "garbage", "oversize", "disconnect"};
    struct cfg_simulate *sim = &c->cfg->simulate;
    const char *colon = strchr(v, ':');
    const char *eq = colon ? strchr(colon, '=') : NULL;
    uint64_t n;
    char num[24];
    bool kind_ok = false;
    if (!colon || !eq || (size_t)(colon - v) >= sizeof(num))
        return fail(c, col,
                    "fault: expected N:KIND=ARG (KIND fail, silent, garbage, oversize or "
                    "disconnect), got \"%s\"",
                    v);
    snprintf(num, sizeof(num), "%.*s", (int)(colon - v), v);
    if (!cfg__parse_uint(num, CFG_MAX_SLOTS, &n) || n == 0)
        return fail(c, col, "fault: expected a device number from 1 to %d before \":\", got \"%s\"",
                    CFG_MAX_SLOTS, num);
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strlen(kinds[i]) == (size_t)(eq - colon - 1) &&
            !strncmp(colon + 1, kinds[i], strlen(kinds[i])))
            kind_ok = true;
    if (!kind_ok)
        return fail(c, col + (unsigned)(colon + 1 - v),
                    "fault: expected fail, silent, garbage, oversize or disconnect, got \"%.*s\"",
                    (int)(eq - colon - 1), colon + 1);
    if (!eq[1])
        return fail(c, col + (unsigned)(eq + 1 - v), "fault: expected an argument after \"=\"");
    if (!strncmp(colon + 1, "disconnect=", 11) && !cfg__parse_uint(eq + 1, UINT64_MAX, &n))
        return fail(c, col + (unsigned)(eq + 1 - v),
                    "fault: disconnect= expected a number of bytes, got \"%s\"", eq + 1);
    if (strlen(v) >= sizeof(sim->faults[0]))
        return fail(c, col, "fault: longer than %zu characters", sizeof(sim->faults[0]) - 1);
    if (sim->n_faults == CFG_MAX_SIM_FAULTS)
        return fail(c, col, "fault: at most %d faults", CFG_MAX_SIM_FAULTS);
    snprintf(sim->faults[sim->n_faults++], sizeof(sim->faults[0]), "%s", v);
    return 0;
}

static int set_fault_rate(struct ini *c, const char *v, unsigned col)
{
    if (!parse_double(v, 0, 1, &c->cfg->simulate.fault_rate))
        return fail(c, col, "fault_rate: expected a number from 0 to 1, got \"%s\"", v);
    return 0;
}

static int set_seed(struct ini *c, const char *v, unsigned col)
{
    uint64_t n;
    if (!cfg__parse_uint(v, UINT32_MAX, &n))
        return fail(c, col, "seed: expected a number from 0 to %u, got \"%s\"", UINT32_MAX, v);
    c->cfg->simulate.seed = (uint32_t)n;
    return 0;
}

static int set_max_download(struct ini *c, const char *v, unsigned col)
{
    if (!cfg__parse_size(v, &c->cfg->simulate.max_download))
        return fail(c, col, "max_download: expected bytes like 256M or 1048576, got \"%s\"", v);
    return 0;
}

static int set_sim_profile(struct ini *c, const char *v, unsigned col)
{
    if (!cfg__is_word(v, strlen(v), NULL, CFG_NAME_MAX - 1))
        return fail(c, col, "profile: expected a profile name, got \"%s\"", v);
    snprintf(c->cfg->simulate.profile, sizeof(c->cfg->simulate.profile), "%s", v);
    c->sim_profile_at = (struct where){c->line, col};
    return 0;
}

static const struct key_def simulate_keys[] = {
    {"count", false, set_count},
    {"pace", false, set_pace},
    {"plug_interval", false, set_plug_interval},
    {"replug", false, set_replug},
    {"fault", true, set_fault},
    {"fault_rate", false, set_fault_rate},
    {"seed", false, set_seed},
    {"max_download", false, set_max_download},
    {"profile", false, set_sim_profile},
    {NULL, false, NULL},
};

/* ---- sections ------------------------------------------------------ */

static const char *section_label(enum section_kind k)
{
    switch (k) {
    case SEC_STATION:
        return "station";
    case SEC_SLOT:
        return "slot";
    case SEC_PROFILE:
        return "profile";
    case SEC_SIMULATE:
        return "simulate";
    default:
        return "?";
    }
}

static void key_list(const struct key_def *keys, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (unsigned i = 0; keys[i].name && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ", " : "", keys[i].name);
}

/* A header line "[...]" was read; `section` is inih's reading of it. */
static int begin_section(struct ini *c, const char *section)
{
    size_t lead = indent_of(c->raw, c->raw_len);
    const char *open = c->raw + lead, *end = c->raw + c->raw_len;
    size_t slen = strlen(section);
    unsigned name_col = (unsigned)lead + 2;

    /* inih keeps at most 49 characters of a name and ignores anything
     * after the ']': neither may pass unnoticed */
    if ((size_t)(end - open) < slen + 2 || memcmp(open + 1, section, slen) != 0 ||
        open[1 + slen] != ']')
        return fail(c, name_col, "section name longer than %zu characters", slen);
    const char *after = open + slen + 2;
    after += indent_of(after, (size_t)(end - after));
    if (after < end && *after != ';' && *after != '#')
        return fail(c, (unsigned)(after - c->raw) + 1, "unexpected \"%.*s\" after \"]\"",
                    (int)(end - after), after);

    /* "[ kind  name ]" */
    const char *s = section + indent_of(section, slen);
    size_t klen = strcspn(s, " \t");
    const char *name = s + klen + indent_of(s + klen, strlen(s + klen));
    size_t nlen = strlen(name);
    while (nlen && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t'))
        nlen--;
    unsigned ncol = name_col + (unsigned)(name - section);
    enum section_kind kind = SEC_NONE;
    if (klen == 7 && !strncmp(s, "station", 7))
        kind = SEC_STATION;
    else if (klen == 4 && !strncmp(s, "slot", 4))
        kind = SEC_SLOT;
    else if (klen == 7 && !strncmp(s, "profile", 7))
        kind = SEC_PROFILE;
    else if (klen == 8 && !strncmp(s, "simulate", 8))
        kind = SEC_SIMULATE;
    if (kind == SEC_NONE)
        return fail(c, name_col,
                    "unknown section [%s] (expected station, slot NAME, profile NAME or simulate)",
                    section);
    if ((kind == SEC_STATION || kind == SEC_SIMULATE) && nlen)
        return fail(c, ncol, "[%s] takes no name, got \"%.*s\"", section_label(kind), (int)nlen,
                    name);
    if ((kind == SEC_SLOT || kind == SEC_PROFILE) &&
        !cfg__is_word(name, nlen, NULL, CFG_NAME_MAX - 1))
        return nlen ? fail(c, ncol,
                           "[%s NAME]: expected a name (letters, digits, ._-), got \"%.*s\"",
                           section_label(kind), (int)nlen, name)
                    : fail(c, ncol, "[%s NAME]: expected a name after \"%s\"", section_label(kind),
                           section_label(kind));
    for (unsigned i = 0; i < c->n_sections; i++) {
        const struct section_rec *o = &c->sections[i];
        if (o->kind == kind && strlen(o->name) == nlen && !strncmp(o->name, name, nlen))
            return fail(c, name_col, "duplicate section [%s%s%.*s] (first on line %u)",
                        section_label(kind), nlen ? " " : "", (int)nlen, name, o->line);
    }

    struct section_rec *rec = &c->sections[c->n_sections];
    memset(rec, 0, sizeof(*rec));
    rec->kind = kind;
    rec->line = c->line;
    snprintf(rec->name, sizeof(rec->name), "%.*s", (int)nlen, name);
    if (kind == SEC_SLOT) {
        if (c->cfg->n_slots == CFG_MAX_SLOTS)
            return fail(c, name_col, "more than %d slots", CFG_MAX_SLOTS);
        rec->index = c->cfg->n_slots++;
        struct cfg_slot *slot = &c->cfg->slots[rec->index];
        snprintf(slot->name, sizeof(slot->name), "%s", rec->name);
        slot->line = c->line;
        c->keys = slot_keys;
    } else if (kind == SEC_PROFILE) {
        if (c->cfg->n_profiles == CFG_MAX_PROFILES)
            return fail(c, name_col, "more than %d profiles", CFG_MAX_PROFILES);
        rec->index = c->cfg->n_profiles++;
        struct cfg_profile *pr = &c->cfg->profiles[rec->index];
        snprintf(pr->name, sizeof(pr->name), "%s", rec->name);
        pr->line = c->line;
        c->keys = profile_keys;
    } else if (kind == SEC_SIMULATE) {
        c->cfg->simulate.present = true;
        c->keys = simulate_keys;
    } else {
        c->keys = station_keys;
    }
    c->n_sections++;
    c->sec = kind;
    c->cur = rec;
    memset(c->key_line, 0, sizeof(c->key_line));
    return 0;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct ini *c = user;
    if (c->rc)
        return 0;
    if (!strcmp(name, MARKER))
        return begin_section(c, section) == 0;
    if (c->sec == SEC_NONE)
        return fail(c, key_col(c),
                    "key \"%s\" outside a section (expected [station], [slot NAME], "
                    "[profile NAME] or [simulate] first)",
                    name) == 0;
    for (unsigned i = 0; c->keys[i].name; i++) {
        const struct key_def *k = &c->keys[i];
        if (strcmp(k->name, name) != 0)
            continue;
        if (!k->repeatable && c->key_line[i])
            return fail(c, key_col(c), "duplicate key \"%s\" (first on line %u)", name,
                        c->key_line[i]) == 0;
        if (!c->key_line[i])
            c->key_line[i] = c->line;
        return k->set(c, value, value_col(c)) == 0;
    }
    char keys[256];
    key_list(c->keys, keys, sizeof(keys));
    return fail(c, key_col(c), "unknown key \"%s\" in [%s] (expected %s)", name,
                section_label(c->sec), keys) == 0;
}

/* inih refused line `lineno` (its count, markers included). */
static int syntax_error(struct ini *c, int lineno)
{
    unsigned line = (size_t)lineno < c->map_cap ? c->map[lineno] : c->line;
    const char *s = c->buf, *end = c->buf + c->len;
    for (unsigned l = 1; l < line && s < end; l++) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        s = nl ? nl + 1 : end;
    }
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
    if (n && s[n - 1] == '\r')
        n--;
    if (line == 1 && n >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) {
        s += 3;
        n -= 3;
    }
    size_t lead = indent_of(s, n);
    c->rc = 0; /* the syntax error came first */
    if (lead < n && s[lead] == '[')
        return fail_at(c, line, (unsigned)n + 1, "expected \"]\" to close the section header");
    return fail_at(c, line, (unsigned)lead + 1,
                   "expected \"key = value\", a [section] or a comment, got \"%.*s\"",
                   (int)(n - lead), s + lead);
}

/* ---- whole-file checks --------------------------------------------- */

static int check_sections(struct ini *c)
{
    struct cfg_config *cfg = c->cfg;
    for (unsigned i = 0; i < c->n_sections; i++) {
        const struct section_rec *rec = &c->sections[i];
        if (rec->kind == SEC_SLOT && cfg->slots[rec->index].n_paths == 0)
            return fail_at(c, rec->line, 0, "[slot %s] has no path (expected path = PORT-PATH)",
                           rec->name);
        if (rec->kind != SEC_PROFILE)
            continue;
        unsigned pi = rec->index;
        struct cfg_profile *pr = &cfg->profiles[pi];
        if (pr->n_matches == 0)
            return fail_at(c, rec->line, 0,
                           "[profile %s] has no match (expected match = class FF/42/03, usb "
                           "VVVV:PPPP or tcp:HOST:PORT)",
                           rec->name);
        if (!pr->recipe)
            return fail_at(c, rec->line, 0, "[profile %s] has no recipe (expected recipe = PATH)",
                           rec->name);
        enum cfg_protocol rp = cfg__recipe_protocol(pr->recipe);
        if (!c->protocol_given[pi])
            pr->protocol = rp;
        else if (pr->protocol != rp)
            return fail_at(c, c->protocol_at[pi].line, c->protocol_at[pi].col,
                           "protocol: [profile %s] says %s but recipe \"%s\" is %s", rec->name,
                           pr->protocol == CFG_PROTO_DFU ? "dfu" : "fastboot", pr->recipe_path,
                           rp == CFG_PROTO_DFU ? "dfu" : "fastboot");
    }
    if (cfg->require_signatures && !cfg->minisign_key[0])
        return fail_at(c, c->require_sig_at.line, c->require_sig_at.col,
                       "require_signatures: needs minisign_key in [station]");
    if (cfg->simulate.present && cfg->simulate.profile[0]) {
        for (unsigned i = 0; i < cfg->n_profiles; i++)
            if (!strcmp(cfg->profiles[i].name, cfg->simulate.profile))
                return 0;
        char names[CFG_MAX_PROFILES * CFG_NAME_MAX] = "";
        size_t n = 0;
        for (unsigned i = 0; i < cfg->n_profiles; i++)
            n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", i ? ", " : "",
                                  cfg->profiles[i].name);
        return fail_at(c, c->sim_profile_at.line, c->sim_profile_at.col,
                       "profile: no [profile %s] (defined: %s)", cfg->simulate.profile,
                       cfg->n_profiles ? names : "none");
    }
    if (cfg->simulate.present && cfg->n_profiles)
        snprintf(cfg->simulate.profile, sizeof(cfg->simulate.profile), "%s", cfg->profiles[0].name);
    return 0;
}

static int read_all(struct ini *c)
{
    FILE *f = fopen(c->path, "rb");
    if (!f) {
        int e = errno;
        snprintf(c->err, c->errlen, "%s: cannot open: %s", c->path, strerror(e));
        return st_error_from_errno(e);
    }
    int rc = 0;
    c->buf = malloc(INI_FILE_MAX + 1);
    if (!c->buf) {
        rc = ST_ENOMEM;
        snprintf(c->err, c->errlen, "%s: %s", c->path, st_strerror(rc));
        goto out_close;
    }
    c->len = fread(c->buf, 1, INI_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = ST_EIO;
        snprintf(c->err, c->errlen, "%s: cannot read: %s", c->path, strerror(errno));
    } else if (c->len > INI_FILE_MAX) {
        rc = ST_EINVAL;
        snprintf(c->err, c->errlen, "%s: larger than %u bytes; not a station config", c->path,
                 INI_FILE_MAX);
    }
out_close:
    fclose(f);
    return rc;
}

static void set_defaults(struct ini *c)
{
    struct cfg_config *cfg = c->cfg;
    snprintf(cfg->path, sizeof(cfg->path), "%s", c->path);
    cfg__join(cfg->db, sizeof(cfg->db), c->dir, "station.db");
    snprintf(cfg->ui, sizeof(cfg->ui), "auto");
    cfg->simulate.count = 4;
    cfg->simulate.pace_mbps = 8;
}

int cfg_load(const char *path, struct cfg_config **out, char *err, size_t errlen)
{
    struct ini *c = calloc(1, sizeof(*c));
    int rc;
    if (!c) {
        snprintf(err, errlen, "%s: %s", path, st_strerror(ST_ENOMEM));
        return ST_ENOMEM;
    }
    c->path = path;
    c->err = err;
    c->errlen = errlen;
    if (errlen)
        err[0] = '\0';
    c->cfg = calloc(1, sizeof(*c->cfg));
    if (!c->cfg) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "%s: %s", path, st_strerror(rc));
        goto out_free;
    }
    if (strlen(path) >= sizeof(c->cfg->path)) {
        rc = ST_EINVAL;
        snprintf(err, errlen, "%.64s...: path longer than %d bytes", path, CFG_PATH_MAX - 1);
        goto out_free;
    }
    cfg__dirname(c->dir, sizeof(c->dir), path);
    set_defaults(c);
    if ((rc = read_all(c)) != 0)
        goto out_free;

    int bad = ini_parse_stream(reader, c, handler, c);
    if (bad < 0 && !c->rc) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "%s: %s", path, st_strerror(rc));
        goto out_free;
    }
    if (bad > 0 && (!c->rc || (unsigned)bad < c->err_served))
        syntax_error(c, bad);
    if (!c->rc)
        check_sections(c);
    rc = c->rc;
    if (!rc) {
        *out = c->cfg;
        c->cfg = NULL;
    }
out_free:
    cfg_free(c->cfg);
    free(c->map);
    free(c->buf);
    free(c);
    return rc;
}

void cfg_free(struct cfg_config *cfg)
{
    if (!cfg)
        return;
    for (unsigned i = 0; i < cfg->n_profiles; i++)
        free(cfg->profiles[i].recipe);
    free(cfg);
}

const struct cfg_slot *cfg_slot_for_port(const struct cfg_config *cfg, const char *port)
{
    if (!cfg || !port)
        return NULL;
    /* an exact path wins over any glob; globs in file order */
    for (unsigned i = 0; i < cfg->n_slots; i++)
        for (unsigned k = 0; k < cfg->slots[i].n_paths; k++)
            if (!is_glob(cfg->slots[i].paths[k]) && !strcmp(cfg->slots[i].paths[k], port))
                return &cfg->slots[i];
    for (unsigned i = 0; i < cfg->n_slots; i++)
        for (unsigned k = 0; k < cfg->slots[i].n_paths; k++)
            if (is_glob(cfg->slots[i].paths[k]) && !fnmatch(cfg->slots[i].paths[k], port, 0))
                return &cfg->slots[i];
    return NULL;
}
