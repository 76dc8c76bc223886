/*
 * Recipe files: cfg_recipe_load() (config/config.h).
 *
 * A line language in the spirit of AOSP's fastboot-info.txt and NXP uuu
 * scripts. One statement per line; words are separated by spaces or tabs;
 * `#` at the start of a line or after whitespace starts a comment; blank
 * lines are ignored. Lines are at most 1024 bytes; columns count bytes.
 *
 *   recipe NAME VERSION          header, before anything else (once)
 *   protocol fastboot|dfu        optional, in the header (default fastboot)
 *   allow-raw-dfu                optional, in the header of a dfu recipe:
 *                                images without a DFU suffix are allowed
 *   image NAME PATH [sha256=HEX64]
 *                                PATH is relative to the recipe's folder and
 *                                must be a regular file; names are unique;
 *                                an image no step uses is allowed
 *
 * Steps, each optionally followed by timeout=DURATION (30s, 500ms, 2m) and
 * retries=N (0..10, transport-error retries):
 *
 *   fastboot:  require VAR=VALUE|VALUE...   getvar VAR must be one of these
 *              getvar VAR                    read and record VAR
 *              flash PARTITION IMAGE
 *              erase PARTITION
 *              set-active a|b
 *              reboot | reboot bootloader (alias: reboot-bootloader)
 *              oem ARGS...                   (an ARG cannot look like an option)
 *   dfu:       dfu-download ALT IMAGE        ALT: alt setting number or name
 *              dfu-verify ALT IMAGE
 *              detach
 *
 * Decisions:
 * - `require` may appear anywhere; every require step is hoisted, in the
 *   order written, before all other steps: model checks run before any
 *   byte is written, wherever the author put them.
 * - Steps may name an image declared before or after them; references are
 *   resolved once the whole file is read, so a syntax error anywhere is
 *   reported before an unknown image.
 * - `continue` (AOSP) is refused: the station ends a session with
 *   `reboot`, and there is no step kind that means "boot on".
 * - A fastboot step in a dfu recipe (or the other way round) is an error.
 *
 * Errors read "FILE:LINE:COLUMN: message" (column of the offending word,
 * 0 when the whole line is at fault); errors about the file as a whole
 * (cannot read it) read "FILE: message".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/st_error.h"
#include "config/cfg_internal.h"
#include "config/config.h"

#define RECIPE_LINE_MAX 1024
#define RECIPE_FILE_MAX (1u << 20)
#define MAX_TOKENS 64
#define MAX_RETRIES 10

struct tok {
    const char *s;
    unsigned col;
};

struct pending {
    struct cfg_step step;
    bool hoist;                   /* a require step */
    char image_ref[CFG_NAME_MAX]; /* image named by the step, resolved at the end */
    unsigned ref_col;
};

struct parser {
    const char *path;
    char dir[CFG_PATH_MAX];
    char *err;
    size_t errlen;
    struct cfg_recipe *r;
    enum cfg_protocol proto;
    bool have_header, have_protocol, in_body;
    unsigned header_line, protocol_line;
    unsigned line, end_col; /* current line, column just past its last byte */
    struct tok toks[MAX_TOKENS];
    unsigned n_toks;
    struct pending steps[CFG_MAX_STEPS];
    unsigned n_steps;
};

static int fail_at(struct parser *p, unsigned line, unsigned col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(struct parser *p, unsigned line, unsigned col, const char *fmt, ...)
{
    int n = snprintf(p->err, p->errlen, "%s:%u:%u: ", p->path, line, col);
    if (n >= 0 && (size_t)n < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return ST_EINVAL;
}

#define fail(p, col, ...) fail_at((p), (p)->line, (col), __VA_ARGS__)

static bool is_option(const char *s)
{
    return !strncmp(s, "timeout=", 8) || !strncmp(s, "retries=", 8);
}

/* Token i as the argument `what` of `cmd`: present, or an error naming
 * what was found instead. */
static int need(struct parser *p, unsigned i, const char *cmd, const char *what)
{
    if (i < p->n_toks)
        return 0;
    return fail(p, p->end_col, "%s: expected %s, got end of line", cmd, what);
}

/* Options after a step's arguments, from token `i` on. `also` names any
 * other word the step would have accepted there, for the message. */
static int parse_options(struct parser *p, unsigned i, const char *cmd, const char *also,
                         struct cfg_step *st)
{
    bool have_timeout = false, have_retries = false;
    for (; i < p->n_toks; i++) {
        const struct tok *t = &p->toks[i];
        const char *v = t->s + 8;
        uint64_t n;
        if (!strncmp(t->s, "timeout=", 8)) {
            if (have_timeout)
                return fail(p, t->col, "%s: timeout= given twice", cmd);
            have_timeout = true;
            if (!cfg__parse_duration(v, false, &st->timeout_ms) || st->timeout_ms == 0)
                return fail(p, t->col + 8,
                            "timeout: expected a duration like 30s or 500ms, got \"%s\"", v);
        } else if (!strncmp(t->s, "retries=", 8)) {
            if (have_retries)
                return fail(p, t->col, "%s: retries= given twice", cmd);
            have_retries = true;
            if (!cfg__parse_uint(v, MAX_RETRIES, &n))
                return fail(p, t->col + 8, "retries: expected a number from 0 to %d, got \"%s\"",
                            MAX_RETRIES, v);
            st->retries = (unsigned)n;
        } else {
            return fail(p, t->col,
                        "%s: unexpected \"%s\" (expected %stimeout=DURATION or retries=N)", cmd,
                        t->s, also ? also : "");
        }
    }
    return 0;
}

static int parse_header(struct parser *p)
{
    const struct tok *t = p->toks;
    int rc;
    if (p->have_header)
        return fail(p, t[0].col, "\"recipe\" may appear only once (first on line %u)",
                    p->header_line);
    if ((rc = need(p, 1, "recipe", "NAME VERSION")) != 0)
        return rc;
    if (!cfg__is_word(t[1].s, strlen(t[1].s), NULL, CFG_NAME_MAX - 1))
        return fail(p, t[1].col, "recipe: expected a NAME (letters, digits, ._-), got \"%s\"",
                    t[1].s);
    if ((rc = need(p, 2, "recipe", "a VERSION after the name")) != 0)
        return rc;
    if (!cfg__is_word(t[2].s, strlen(t[2].s), "+:~", CFG_NAME_MAX - 1))
        return fail(p, t[2].col, "recipe: expected a VERSION (letters, digits, ._-+:~), got \"%s\"",
                    t[2].s);
    if (p->n_toks > 3)
        return fail(p, t[3].col, "recipe: unexpected \"%s\" after the version", t[3].s);
    snprintf(p->r->name, sizeof(p->r->name), "%s", t[1].s);
    snprintf(p->r->version, sizeof(p->r->version), "%s", t[2].s);
    p->have_header = true;
    p->header_line = p->line;
    return 0;
}

static int parse_protocol(struct parser *p)
{
    const struct tok *t = p->toks;
    int rc;
    if (p->in_body)
        return fail(p, t[0].col,
                    "\"protocol\" belongs in the header, before the first image or step");
    if (p->have_protocol)
        return fail(p, t[0].col, "\"protocol\" given twice (first on line %u)", p->protocol_line);
    if ((rc = need(p, 1, "protocol", "fastboot or dfu")) != 0)
        return rc;
    if (!strcmp(t[1].s, "fastboot"))
        p->proto = CFG_PROTO_FASTBOOT;
    else if (!strcmp(t[1].s, "dfu"))
        p->proto = CFG_PROTO_DFU;
    else
        return fail(p, t[1].col, "protocol: expected fastboot or dfu, got \"%s\"", t[1].s);
    if (p->n_toks > 2)
        return fail(p, t[2].col, "protocol: unexpected \"%s\"", t[2].s);
    p->have_protocol = true;
    p->protocol_line = p->line;
    return 0;
}

static int parse_allow_raw(struct parser *p)
{
    const struct tok *t = p->toks;
    if (p->in_body)
        return fail(p, t[0].col,
                    "\"allow-raw-dfu\" belongs in the header, before the first image or step");
    if (p->proto != CFG_PROTO_DFU)
        return fail(p, t[0].col, "allow-raw-dfu: only after \"protocol dfu\"");
    if (p->n_toks > 1)
        return fail(p, t[1].col, "allow-raw-dfu: unexpected \"%s\"", t[1].s);
    p->r->allow_raw_dfu = true;
    return 0;
}

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
            return false;
    return true;
}

static int parse_image(struct parser *p)
{
    const struct tok *t = p->toks;
    struct cfg_recipe *r = p->r;
    struct cfg_image *img;
    struct stat st;
    int rc;
    if ((rc = need(p, 1, "image", "NAME PATH")) != 0)
        return rc;
    if (!cfg__is_word(t[1].s, strlen(t[1].s), NULL, CFG_NAME_MAX - 1))
        return fail(p, t[1].col, "image: expected a NAME (letters, digits, ._-), got \"%s\"",
                    t[1].s);
    for (unsigned i = 0; i < r->n_images; i++)
        if (!strcmp(r->images[i].name, t[1].s))
            return fail(p, t[1].col, "duplicate image \"%s\" (first on line %u)", t[1].s,
                        r->images[i].line);
    if (r->n_images == CFG_MAX_IMAGES)
        return fail(p, t[0].col, "too many images (at most %d)", CFG_MAX_IMAGES);
    if ((rc = need(p, 2, "image", "a PATH after the name")) != 0)
        return rc;
    img = &r->images[r->n_images];
    memset(img, 0, sizeof(*img));
    snprintf(img->name, sizeof(img->name), "%s", t[1].s);
    img->line = p->line;
    if (!cfg__join(img->path, sizeof(img->path), p->dir, t[2].s))
        return fail(p, t[2].col, "image \"%s\": path longer than %d bytes", img->name,
                    CFG_PATH_MAX - 1);
    if (stat(img->path, &st) != 0)
        return fail(p, t[2].col, "image \"%s\": cannot open \"%s\": %s", img->name, img->path,
                    strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(p, t[2].col, "image \"%s\": \"%s\" is not a regular file", img->name,
                    img->path);
    for (unsigned i = 3; i < p->n_toks; i++) {
        const char *v = t[i].s + 7;
        if (strncmp(t[i].s, "sha256=", 7) != 0)
            return fail(p, t[i].col, "image: unexpected \"%s\" (expected sha256=HEX)", t[i].s);
        if (img->sha256[0])
            return fail(p, t[i].col, "image: sha256= given twice");
        if (!is_hex64(v))
            return fail(p, t[i].col + 7, "sha256: expected 64 hexadecimal digits, got \"%s\"", v);
        for (unsigned k = 0; k < 64; k++)
            img->sha256[k] = (char)(v[k] >= 'A' && v[k] <= 'F' ? v[k] - 'A' + 'a' : v[k]);
        img->sha256[64] = '\0';
    }
    r->n_images++;
    return 0;
}

struct step_def {
    const char *word;
    enum cfg_step_kind kind;
    enum cfg_protocol proto;
};

static const struct step_def step_defs[] = {
    {"require", CFG_STEP_GETVAR, CFG_PROTO_FASTBOOT},
    {"getvar", CFG_STEP_GETVAR, CFG_PROTO_FASTBOOT},
    {"flash", CFG_STEP_FLASH, CFG_PROTO_FASTBOOT},
    {"erase", CFG_STEP_ERASE, CFG_PROTO_FASTBOOT},
    {"set-active", CFG_STEP_SET_ACTIVE, CFG_PROTO_FASTBOOT},
    {"reboot", CFG_STEP_REBOOT, CFG_PROTO_FASTBOOT},
    {"reboot-bootloader", CFG_STEP_REBOOT_BOOTLOADER, CFG_PROTO_FASTBOOT},
    {"oem", CFG_STEP_OEM, CFG_PROTO_FASTBOOT},
    {"dfu-download", CFG_STEP_DFU_DOWNLOAD, CFG_PROTO_DFU},
    {"dfu-verify", CFG_STEP_DFU_VERIFY, CFG_PROTO_DFU},
    {"detach", CFG_STEP_DETACH, CFG_PROTO_DFU},
};

/* require VAR=VALUE|VALUE... */
static int parse_require(struct parser *p, struct cfg_step *st)
{
    const struct tok *t = &p->toks[1];
    const char *eq = strchr(t->s, '=');
    if (!eq || eq == t->s)
        return fail(p, t->col, "require: expected VAR=VALUE|VALUE..., got \"%s\"", t->s);
    if (!cfg__is_word(t->s, (size_t)(eq - t->s), ":", CFG_ARG_MAX - 1))
        return fail(p, t->col, "require: expected a variable name before \"=\", got \"%.*s\"",
                    (int)(eq - t->s), t->s);
    snprintf(st->arg, sizeof(st->arg), "%.*s", (int)(eq - t->s), t->s);
    const char *v = eq + 1;
    for (;;) {
        size_t n = strcspn(v, "|");
        unsigned col = t->col + (unsigned)(v - t->s);
        if (n == 0)
            return fail(p, col, "require: expected a VALUE after \"%c\"", v[-1]);
        if (n >= CFG_NAME_MAX)
            return fail(p, col, "require: value longer than %d characters", CFG_NAME_MAX - 1);
        if (st->n_alternatives == CFG_MAX_ALTERNATIVES)
            return fail(p, col, "require: at most %d alternatives", CFG_MAX_ALTERNATIVES);
        snprintf(st->alternatives[st->n_alternatives++], CFG_NAME_MAX, "%.*s", (int)n, v);
        if (!v[n])
            break;
        v += n + 1;
    }
    return 0;
}

/* An image named by a step: a word, resolved when the file is read. */
static int image_ref(struct parser *p, struct pending *ps, unsigned i, const char *cmd)
{
    const struct tok *t = &p->toks[i];
    int rc = need(p, i, cmd, "IMAGE");
    if (rc)
        return rc;
    if (!cfg__is_word(t->s, strlen(t->s), NULL, CFG_NAME_MAX - 1))
        return fail(p, t->col, "%s: expected an IMAGE name, got \"%s\"", cmd, t->s);
    snprintf(ps->image_ref, sizeof(ps->image_ref), "%s", t->s);
    ps->ref_col = t->col;
    return 0;
}

static int word_arg(struct parser *p, struct cfg_step *st, unsigned i, const char *cmd,
                    const char *what, const char *extra)
{
    const struct tok *t = &p->toks[i];
    int rc = need(p, i, cmd, what);
    if (rc)
        return rc;
    if (!cfg__is_word(t->s, strlen(t->s), extra, CFG_ARG_MAX - 1))
        return fail(p, t->col, "%s: expected %s, got \"%s\"", cmd, what, t->s);
    snprintf(st->arg, sizeof(st->arg), "%s", t->s);
    return 0;
}

static int parse_step(struct parser *p)
{
    const struct tok *t = p->toks;
    const char *cmd = t[0].s;
    const struct step_def *d = NULL;
    int rc = 0;
    for (size_t i = 0; i < sizeof(step_defs) / sizeof(step_defs[0]); i++)
        if (!strcmp(step_defs[i].word, cmd))
            d = &step_defs[i];
    if (!d && !strcmp(cmd, "continue"))
        return fail(p, t[0].col, "\"continue\" is not supported (end with \"reboot\")");
    if (!d)
        return fail(p, t[0].col,
                    "expected image or a step (require, getvar, flash, erase, set-active, "
                    "reboot, oem, dfu-download, dfu-verify, detach), got \"%s\"",
                    cmd);
    if (d->proto != p->proto)
        return d->proto == CFG_PROTO_DFU
                   ? fail(p, t[0].col,
                          "\"%s\" is a dfu step but this recipe is fastboot (add \"protocol "
                          "dfu\" to the header)",
                          cmd)
                   : fail(p, t[0].col, "\"%s\" is a fastboot step but this recipe is dfu", cmd);
    if (p->n_steps == CFG_MAX_STEPS)
        return fail(p, t[0].col, "too many steps (at most %d)", CFG_MAX_STEPS);

    struct pending *ps = &p->steps[p->n_steps];
    struct cfg_step *st = &ps->step;
    memset(ps, 0, sizeof(*ps));
    st->kind = d->kind;
    st->image = -1;
    st->line = p->line;
    unsigned i = 1;
    const char *also = NULL;

    if (!strcmp(cmd, "require")) {
        ps->hoist = true;
        if (!(rc = need(p, 1, cmd, "VAR=VALUE|VALUE...")))
            rc = parse_require(p, st);
        i = 2;
    } else {
        switch (d->kind) {
        case CFG_STEP_GETVAR:
            rc = word_arg(p, st, i++, cmd, "a variable name", ":");
            break;
        case CFG_STEP_FLASH:
            if (!(rc = word_arg(p, st, i++, cmd, "a PARTITION", NULL)))
                rc = image_ref(p, ps, i++, cmd);
            break;
        case CFG_STEP_ERASE:
            rc = word_arg(p, st, i++, cmd, "a PARTITION", NULL);
            break;
        case CFG_STEP_SET_ACTIVE:
            if (!(rc = need(p, i, cmd, "a or b"))) {
                if (strcmp(t[i].s, "a") != 0 && strcmp(t[i].s, "b") != 0)
                    rc = fail(p, t[i].col, "set-active: expected a or b, got \"%s\"", t[i].s);
                else
                    snprintf(st->arg, sizeof(st->arg), "%s", t[i++].s);
            }
            break;
        case CFG_STEP_REBOOT:
            if (i < p->n_toks && !strcmp(t[i].s, "bootloader")) {
                st->kind = CFG_STEP_REBOOT_BOOTLOADER;
                i++;
            } else {
                also = "bootloader, ";
            }
            break;
        case CFG_STEP_OEM: {
            size_t len = 0;
            for (; i < p->n_toks && !is_option(t[i].s); i++) {
                int n =
                    snprintf(st->arg + len, sizeof(st->arg) - len, "%s%s", len ? " " : "", t[i].s);
                if (n < 0 || (size_t)n >= sizeof(st->arg) - len)
                    return fail(p, t[1].col, "oem: command longer than %d characters",
                                CFG_ARG_MAX - 1);
                len += (size_t)n;
            }
            if (len == 0)
                rc = i < p->n_toks
                         ? fail(p, t[i].col, "oem: expected a command, got \"%s\"", t[i].s)
                         : need(p, i, cmd, "a command");
            break;
        }
        case CFG_STEP_DFU_DOWNLOAD:
        case CFG_STEP_DFU_VERIFY:
            if (!(rc = word_arg(p, st, i++, cmd, "an ALT setting (number or name)", NULL)))
                rc = image_ref(p, ps, i++, cmd);
            break;
        case CFG_STEP_REBOOT_BOOTLOADER:
        case CFG_STEP_DETACH:
            break;
        }
    }
    if (!rc)
        rc = parse_options(p, i, cmd, also, st);
    if (!rc)
        p->n_steps++;
    return rc;
}

/* Split the current line (NUL-terminated copy) into tokens. */
static int tokenize(struct parser *p, char *line)
{
    p->n_toks = 0;
    char *s = line;
    for (;;) {
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s || *s == '#')
            return 0;
        if (p->n_toks == MAX_TOKENS)
            return fail(p, (unsigned)(s - line) + 1, "more than %d words on one line", MAX_TOKENS);
        p->toks[p->n_toks].s = s;
        p->toks[p->n_toks].col = (unsigned)(s - line) + 1;
        p->n_toks++;
        while (*s && *s != ' ' && *s != '\t')
            s++;
        if (!*s)
            return 0;
        *s++ = '\0';
    }
}

static int parse_line(struct parser *p, char *line)
{
    int rc = tokenize(p, line);
    if (rc || p->n_toks == 0)
        return rc;
    const char *w = p->toks[0].s;
    if (!p->have_header && strcmp(w, "recipe") != 0)
        return fail(p, p->toks[0].col,
                    "expected \"recipe NAME VERSION\" before anything else, got \"%s\"", w);
    if (!strcmp(w, "recipe"))
        return parse_header(p);
    if (!strcmp(w, "protocol"))
        return parse_protocol(p);
    if (!strcmp(w, "allow-raw-dfu"))
        return parse_allow_raw(p);
    p->in_body = true;
    if (!strcmp(w, "image"))
        return parse_image(p);
    return parse_step(p);
}

static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return st_error_from_errno(e);
    }
    int rc = 0;
    char *buf = malloc(RECIPE_FILE_MAX + 1);
    if (!buf) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "%s: %s", path, st_strerror(rc));
        goto out_close;
    }
    size_t n = fread(buf, 1, RECIPE_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = ST_EIO;
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    } else if (n > RECIPE_FILE_MAX) {
        rc = ST_EINVAL;
        snprintf(err, errlen, "%s: larger than %u bytes; not a recipe", path, RECIPE_FILE_MAX);
    }
    if (rc) {
        free(buf);
        goto out_close;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
out_close:
    fclose(f);
    return rc;
}

/* Every step's image reference, in file order; then requires first. */
static int finish(struct parser *p)
{
    struct cfg_recipe *r = p->r;
    if (!p->have_header)
        return fail(p, 0, "expected \"recipe NAME VERSION\" before anything else, got end of file");
    if (p->n_steps == 0)
        return fail_at(p, p->header_line, 0, "recipe \"%s\" has no steps", r->name);
    for (unsigned i = 0; i < p->n_steps; i++) {
        struct pending *ps = &p->steps[i];
        if (!ps->image_ref[0])
            continue;
        for (unsigned k = 0; k < r->n_images; k++)
            if (!strcmp(r->images[k].name, ps->image_ref))
                ps->step.image = (int)k;
        if (ps->step.image >= 0)
            continue;
        char names[CFG_MAX_IMAGES * CFG_NAME_MAX] = "";
        size_t len = 0;
        for (unsigned k = 0; k < r->n_images; k++)
            len += (size_t)snprintf(names + len, sizeof(names) - len, "%s%s", k ? ", " : "",
                                    r->images[k].name);
        return r->n_images ? fail_at(p, ps->step.line, ps->ref_col,
                                     "unknown image \"%s\" (declared: %s)", ps->image_ref, names)
                           : fail_at(p, ps->step.line, ps->ref_col,
                                     "unknown image \"%s\" (no image is declared)", ps->image_ref);
    }
    for (int pass = 0; pass < 2; pass++)
        for (unsigned i = 0; i < p->n_steps; i++)
            if (p->steps[i].hoist == (pass == 0))
                r->steps[r->n_steps++] = p->steps[i].step;
    return 0;
}

int cfg_recipe_load(const char *path, struct cfg_recipe *out, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len, err, errlen);
    if (rc)
        return rc;
    struct parser *p = calloc(1, sizeof(*p));
    struct cfg_recipe *r = calloc(1, sizeof(*r));
    if (!p || !r) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "%s: %s", path, st_strerror(rc));
        goto out_free;
    }
    p->path = path;
    p->err = err;
    p->errlen = errlen;
    p->r = r;
    p->proto = CFG_PROTO_FASTBOOT;
    cfg__dirname(p->dir, sizeof(p->dir), path);
    snprintf(r->path, sizeof(r->path), "%s", path);

    char *line = buf;
    for (p->line = 1; line < buf + len || p->line == 1; p->line++) {
        char *nl = memchr(line, '\n', (size_t)(buf + len - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(buf + len - line);
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n > RECIPE_LINE_MAX) {
            rc = fail(p, RECIPE_LINE_MAX + 1, "line longer than %d bytes", RECIPE_LINE_MAX);
            goto out_free;
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)line[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                rc = fail(p, (unsigned)i + 1, "unexpected control character 0x%02x", c);
                goto out_free;
            }
        }
        line[n] = '\0';
        p->end_col = (unsigned)n + 1;
        if ((rc = parse_line(p, line)) != 0)
            goto out_free;
        if (!nl)
            break;
        line = nl + 1;
    }
    if ((rc = finish(p)) != 0)
        goto out_free;
    *out = *r;
out_free:
    free(r);
    free(p);
    free(buf);
    return rc;
}

enum cfg_protocol cfg__recipe_protocol(const struct cfg_recipe *r)
{
    for (unsigned i = 0; i < r->n_steps; i++) {
        enum cfg_step_kind k = r->steps[i].kind;
        if (k == CFG_STEP_DFU_DOWNLOAD || k == CFG_STEP_DFU_VERIFY || k == CFG_STEP_DETACH)
            return CFG_PROTO_DFU;
    }
    return CFG_PROTO_FASTBOOT;
}
