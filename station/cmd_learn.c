/*
 * `station learn -c FILE [--slots A1,A2,...] [--simulate N | --usb]
 * [--timeout-ms MS]`: bind slots to ports. For each slot in turn it asks
 * for a device in that slot's port, waits for a device to arrive on a
 * port no other slot has taken, and records the port's path; at the end
 * it rewrites the `[slot NAME]` sections of FILE with `path = PORT` lines.
 *
 * Devices come from the engine's own sources (the simulated rack or USB
 * through engine/usb.c) on one libuv loop, into an engine that has no
 * profile: ENG_EV_ARRIVED names the port, and no session starts (a
 * session needs a loaded profile), so no device receives a byte.
 *
 * The file is edited as text, never re-serialised: inside the learned
 * [slot] sections the first `path` line gets the new port (indentation
 * and ` ; comment` kept) and any further `path` lines are commented out;
 * slots the file does not have are appended as new sections; every other
 * line stays byte for byte. The result goes to FILE.tmp, is loaded with
 * cfg_load() as a check, and replaces FILE by rename(). Nothing is written
 * when a slot times out (exit 2) or FILE changed meanwhile.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "common/st_error.h"
#include "config/config.h"
#include "engine/engine.h"
#include "engine/usb.h"
#include "engine/virt/rack.h"
#include "station/commands.h"
#include "station/station.h"
#include "station/usb_rules.h"

#define LEARN_MAX_SLOTS CFG_MAX_SLOTS
#define LEARN_FILE_MAX (1u << 20) /* as cfg_load reads */
#define LEARN_MAX_PRESENT 128
#define LEARN_PLUG_INTERVAL_MS 300 /* simulated rack: one arrival at a time, in order */
#define PORT_MAX 64

struct learn {
    const struct cfg_config *cfg;
    uv_loop_t loop;
    uv_timer_t timer;       /* the current slot's time limit */
    struct eng_engine *eng; /* no profile: devices arrive, nothing starts */
    struct eng_rack *rack;
    struct eng_usb *usb;
    unsigned timeout_ms;
    unsigned n_slots;
    char names[LEARN_MAX_SLOTS][CFG_NAME_MAX];
    char ports[LEARN_MAX_SLOTS][PORT_MAX];
    unsigned current; /* the slot waiting for its device */
    /* USB devices plugged in before we started: their first arrival is
     * theirs, not a new device; forgotten once seen */
    unsigned n_present;
    char present[LEARN_MAX_PRESENT][PORT_MAX];
    unsigned sources_running;
    bool stopping;
    int exit_code;
};

static const char learn_usage[] =
    "usage: station learn -c FILE [--slots A1,A2,...] [--simulate N | --usb] [--timeout-ms MS]\n"
    "Bind slots to ports: for each slot in turn, plug a device into its port.\n"
    "  -c, --config FILE   station.ini to update (default station.ini); its [slot NAME]\n"
    "                      sections get `path = PORT` lines, comments and other lines kept\n"
    "  --slots A1,A2,...   the slots to learn, in this order (default: the file's [slot]\n"
    "                      sections, or slot1..slotN with --simulate N when it has none);\n"
    "                      slots the file lacks are appended as new sections\n"
    "  --usb               USB devices matching the file's profiles (the default)\n"
    "  --simulate N        the simulated rack: N virtual devices plugged one by one\n"
    "  --timeout-ms MS     wait this long for each slot's device (default 60000)\n"
    "Devices already plugged in when learning starts are ignored until replugged.\n"
    "exit codes: 0 FILE updated, 2 usage or config error, a slot timed out or FILE\n"
    "changed meanwhile (FILE unchanged), 3 internal error\n";

/* ---- the file as text ---------------------------------------------- */

struct line {
    const char *s;   /* start of the line */
    size_t len;      /* without the line terminator */
    const char *eol; /* "\n", "\r\n" or "" (last line without one) */
};

/* The line at *pos, advancing *pos past it; false at the end. */
static bool next_line(const char *text, size_t len, size_t *pos, struct line *l)
{
    if (*pos >= len)
        return false;
    const char *s = text + *pos;
    const char *nl = memchr(s, '\n', len - *pos);
    size_t n = nl ? (size_t)(nl - s) : len - *pos;
    *pos += n + (nl ? 1 : 0);
    l->s = s;
    l->eol = nl ? "\n" : "";
    if (nl && n && s[n - 1] == '\r') {
        n--;
        l->eol = "\r\n";
    }
    l->len = n;
    return true;
}

static size_t skip_blank(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i;
}

/* For a "[slot NAME]" header line, the index of NAME among the learned
 * slots (or n_slots when not learned); -1 for any other header; -2 for a
 * line that is no header. */
static int header_slot(const struct learn *ln, const struct line *l)
{
    size_t i = skip_blank(l->s, 0, l->len);
    if (i == l->len || l->s[i] != '[')
        return -2;
    const char *close = memchr(l->s + i, ']', l->len - i);
    size_t end = close ? (size_t)(close - l->s) : l->len;
    i = skip_blank(l->s, i + 1, end);
    if (end - i < 4 || strncmp(l->s + i, "slot", 4) != 0 ||
        (end - i > 4 && l->s[i + 4] != ' ' && l->s[i + 4] != '\t'))
        return -1;
    size_t a = skip_blank(l->s, i + 4, end), b = end;
    while (b > a && (l->s[b - 1] == ' ' || l->s[b - 1] == '\t'))
        b--;
    for (unsigned k = 0; k < ln->n_slots; k++)
        if (strlen(ln->names[k]) == b - a && !strncmp(ln->names[k], l->s + a, b - a))
            return (int)k;
    return (int)ln->n_slots;
}

/* A "path = VALUE" line: sets where VALUE starts and ends. */
static bool path_line(const struct line *l, size_t *value, size_t *value_end)
{
    size_t i = skip_blank(l->s, 0, l->len);
    if (l->len - i < 4 || strncmp(l->s + i, "path", 4) != 0)
        return false;
    i = skip_blank(l->s, i + 4, l->len);
    if (i == l->len || (l->s[i] != '=' && l->s[i] != ':'))
        return false;
    i = skip_blank(l->s, i + 1, l->len);
    size_t e = i;
    while (e < l->len && l->s[e] != ' ' && l->s[e] != '\t' && l->s[e] != ';' && l->s[e] != '#')
        e++; /* a port path has no blanks: the value is one word */
    *value = i;
    *value_end = e;
    return true;
}

struct buf {
    char *p;
    size_t len, cap;
    bool failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* `text` with the learned ports written in (see the top of this file).
 * 0 and *out (malloc'ed), or ST_ENOMEM. */
static int rewrite(const struct learn *ln, const char *text, size_t len, struct buf *out)
{
    bool in_file[LEARN_MAX_SLOTS] = {false}, has_path[LEARN_MAX_SLOTS] = {false};
    bool written[LEARN_MAX_SLOTS] = {false};
    struct line l;
    size_t pos = 0, v, ve;
    int sec = -1;
    const char *eol = NULL;
    /* first pass: which learned slots the file has, and with a path line */
    while (next_line(text, len, &pos, &l)) {
        if (!eol && l.eol[0])
            eol = l.eol; /* appended lines follow the file's first line ending */
        int h = header_slot(ln, &l);
        if (h != -2)
            sec = h;
        if (h >= 0 && h < (int)ln->n_slots)
            in_file[h] = true;
        else if (h == -2 && sec >= 0 && sec < (int)ln->n_slots && path_line(&l, &v, &ve))
            has_path[sec] = true;
    }
    if (!eol)
        eol = "\n";
    pos = 0;
    sec = -1;
    while (next_line(text, len, &pos, &l)) {
        int h = header_slot(ln, &l);
        bool learned = sec >= 0 && sec < (int)ln->n_slots;
        if (h != -2) {
            sec = h;
            put(out, l.s, l.len);
            puts_(out, l.eol);
            if (h >= 0 && h < (int)ln->n_slots && !has_path[h]) {
                if (!l.eol[0])
                    puts_(out, eol);
                puts_(out, "path = ");
                puts_(out, ln->ports[h]);
                puts_(out, eol);
                written[h] = true;
            }
            continue;
        }
        if (!learned || !path_line(&l, &v, &ve)) {
            put(out, l.s, l.len);
            puts_(out, l.eol);
            continue;
        }
        if (written[sec]) {
            /* the slot has one port path now; keep the old line for reference */
            puts_(out, "; ");
            put(out, l.s, l.len);
            puts_(out, l.eol);
            continue;
        }
        /* "  path = OLD     ; comment" -> "  path = NEW     ; comment" */
        const char *port = ln->ports[sec];
        size_t tail = skip_blank(l.s, ve, l.len);
        put(out, l.s, v);
        puts_(out, port);
        if (tail < l.len) {
            size_t col = v + strlen(port);
            size_t pad = col < tail ? tail - col : 1;
            for (size_t k = 0; k < pad; k++)
                put(out, " ", 1);
            put(out, l.s + tail, l.len - tail);
        }
        puts_(out, l.eol);
        written[sec] = true;
    }
    for (unsigned k = 0; k < ln->n_slots; k++) {
        if (in_file[k])
            continue;
        if (out->len && out->p[out->len - 1] != '\n')
            puts_(out, eol);
        puts_(out, eol);
        puts_(out, "[slot ");
        puts_(out, ln->names[k]);
        puts_(out, "]");
        puts_(out, eol);
        puts_(out, "path = ");
        puts_(out, ln->ports[k]);
        puts_(out, eol);
    }
    if (!out->p)
        puts_(out, "");
    return out->failed ? ST_ENOMEM : 0;
}

/* The whole file, NUL-terminated; NULL and a message in err. */
static char *read_text(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(LEARN_FILE_MAX + 1);
    if (!text) {
        snprintf(err, errlen, "%s: %s", path, st_strerror(ST_ENOMEM));
        goto out_close;
    }
    *len = fread(text, 1, LEARN_FILE_MAX + 1, f);
    if (ferror(f) || *len > LEARN_FILE_MAX) {
        snprintf(err, errlen, "%s: %s", path,
                 ferror(f) ? "cannot read" : "too large for a station config");
        free(text);
        text = NULL;
        goto out_close;
    }
    text[*len] = '\0';
out_close:
    fclose(f);
    return text;
}

/* Write `b` to PATH.tmp (PATH's permissions), check that it loads, and
 * rename it over PATH. Returns an exit code; messages on stderr. */
static int replace_file(const char *path, const struct buf *b)
{
    char tmp[CFG_PATH_MAX + 8], err[CFG_ERROR_MAX];
    struct stat st;
    int rc = ST_EXIT_USAGE;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    mode_t mode = stat(path, &st) == 0 ? st.st_mode & 07777 : 0644;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "station: %s: cannot create: %s; %s unchanged\n", tmp, strerror(errno),
                path);
        return ST_EXIT_USAGE;
    }
    bool ok = fwrite(b->p, 1, b->len, f) == b->len && fflush(f) == 0 &&
              fchmod(fileno(f), mode) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        fprintf(stderr, "station: %s: cannot write: %s; %s unchanged\n", tmp, strerror(e), path);
        goto out_unlink;
    }
    struct cfg_config *check;
    if (cfg_load(tmp, &check, err, sizeof(err)) != 0) {
        /* our edit broke the file: keep the old one */
        fprintf(stderr,
                "station: internal error: the updated config does not load (%s); %s "
                "unchanged\n",
                err, path);
        rc = ST_EXIT_INTERNAL;
        goto out_unlink;
    }
    cfg_free(check);
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "station: cannot rename %s to %s: %s; %s unchanged\n", tmp, path,
                strerror(errno), path);
        goto out_unlink;
    }
    return ST_EXIT_OK;

out_unlink:
    unlink(tmp);
    return rc;
}

/* ---- waiting for devices ------------------------------------------- */

static void shutdown_learn(struct learn *ln, int exit_code);

static void on_timeout(uv_timer_t *t)
{
    struct learn *ln = t->data;
    fprintf(stderr, "station: no new device in the port for slot %s within %u ms; %s unchanged\n",
            ln->names[ln->current], ln->timeout_ms, ln->cfg->path);
    shutdown_learn(ln, ST_EXIT_USAGE);
}

static void ask(struct learn *ln)
{
    printf("plug a device into the port for slot %s\n", ln->names[ln->current]);
    fflush(stdout);
    uv_timer_start(&ln->timer, on_timeout, ln->timeout_ms, 0);
}

/* The learned slot on `port`, or -1. */
static int taken_by(const struct learn *ln, const char *port)
{
    for (unsigned k = 0; k < ln->current; k++)
        if (!strcmp(ln->ports[k], port))
            return (int)k;
    return -1;
}

/* A slot of the file that is not being learned and names `port` exactly. */
static const struct cfg_slot *kept_slot_with(const struct learn *ln, const char *port)
{
    for (unsigned i = 0; i < ln->cfg->n_slots; i++) {
        const struct cfg_slot *s = &ln->cfg->slots[i];
        bool learned = false;
        for (unsigned k = 0; k < ln->n_slots && !learned; k++)
            learned = !strcmp(ln->names[k], s->name);
        for (unsigned p = 0; p < s->n_paths && !learned; p++)
            if (!strcmp(s->paths[p], port))
                return s;
    }
    return NULL;
}

/* Ignore (once) the arrival of a device that was plugged in before. */
static bool was_present(struct learn *ln, const char *port)
{
    for (unsigned i = 0; i < ln->n_present; i++) {
        if (strcmp(ln->present[i], port) != 0)
            continue;
        memmove(ln->present[i], ln->present[i + 1], (ln->n_present - i - 1) * PORT_MAX);
        ln->n_present--;
        return true;
    }
    return false;
}

static void device_seen(struct learn *ln, const char *port, const char *problem)
{
    if (ln->stopping || ln->current >= ln->n_slots || was_present(ln, port))
        return;
    const char *slot = ln->names[ln->current];
    int k = taken_by(ln, port);
    if (k >= 0) {
        printf("port %s is slot %s already; plug the device for slot %s into another port\n", port,
               ln->names[k], slot);
        return;
    }
    const struct cfg_slot *kept = kept_slot_with(ln, port);
    if (kept) {
        printf("port %s belongs to [slot %s] in %s (not being learned); plug the device for "
               "slot %s into another port\n",
               port, kept->name, ln->cfg->path, slot);
        return;
    }
    if (strlen(port) >= PORT_MAX) {
        printf("port %s: path too long for a slot; use another port\n", port);
        return;
    }
    snprintf(ln->ports[ln->current], PORT_MAX, "%s", port);
    printf("slot %s: port %s\n", slot, port);
    if (problem)
        printf("  note: the station cannot use the device on %s yet: %s\n", port, problem);
    if (++ln->current == ln->n_slots) {
        uv_timer_stop(&ln->timer);
        shutdown_learn(ln, ST_EXIT_OK);
        return;
    }
    ask(ln);
}

static void on_event(const struct eng_event *ev, void *user_data)
{
    struct learn *ln = user_data;
    switch (ev->type) {
    case ENG_EV_ARRIVED:
        device_seen(ln, ev->port, NULL);
        break;
    case ENG_EV_DEVICE_ERROR:
        /* the port is known even when the device cannot be opened */
        device_seen(ln, ev->port, ev->text ? ev->text : "device error");
        break;
    default:
        break;
    }
}

/* Shutdown, as the station's: sources, then the engine, then USB. */
static void on_usb_closed(struct eng_usb *usb, void *user_data)
{
    struct learn *ln = user_data;
    uv_close((uv_handle_t *)&ln->timer, NULL);
}

static void on_engine_closed(struct eng_engine *eng, void *user_data)
{
    struct learn *ln = user_data;
    if (ln->usb)
        eng_usb_close(ln->usb, on_usb_closed, ln);
    else
        uv_close((uv_handle_t *)&ln->timer, NULL);
}

static void source_stopped(struct learn *ln)
{
    if (--ln->sources_running == 0)
        eng_engine_close(ln->eng, on_engine_closed, ln);
}

static void on_rack_stopped(struct eng_rack *rack, void *user_data)
{
    source_stopped(user_data);
}

static void shutdown_learn(struct learn *ln, int exit_code)
{
    if (ln->stopping)
        return;
    ln->stopping = true;
    ln->exit_code = exit_code;
    uv_timer_stop(&ln->timer);
    ln->sources_running = 1;
    if (ln->rack) {
        ln->sources_running++;
        eng_rack_stop(ln->rack, on_rack_stopped, ln);
    }
    if (ln->usb)
        eng_usb_stop(ln->usb);
    source_stopped(ln);
}

/* Run the loop until every slot has a port or one timed out. */
static int learn_ports(struct learn *ln, unsigned simulate)
{
    char err[600];
    int rc, exit_code = ST_EXIT_INTERNAL;
    struct eng_options eo = {0}; /* no slot names: the engine names slots by port */
    uv_loop_init(&ln->loop);
    uv_timer_init(&ln->loop, &ln->timer);
    ln->timer.data = ln;
    rc = eng_engine_new(&ln->loop, &eo, on_event, ln, &ln->eng);
    if (rc) {
        fprintf(stderr, "station: cannot start the engine: %s\n", st_strerror(rc));
        uv_close((uv_handle_t *)&ln->timer, NULL);
        uv_run(&ln->loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    if (simulate) {
        const struct cfg_simulate *cs = &ln->cfg->simulate;
        struct eng_rack_options ro = {
            .count = simulate,
            .pace_mbps = 0,
            .plug_interval_ms = cs->present && cs->plug_interval_ms > LEARN_PLUG_INTERVAL_MS
                                    ? cs->plug_interval_ms
                                    : LEARN_PLUG_INTERVAL_MS,
            .replug_ms = 0, /* no results here: nobody pulls a unit */
            .seed = cs->present ? cs->seed : 0,
        };
        rc = eng_rack_new(&ln->loop, ln->eng, &ro, &ln->rack);
        if (rc) {
            fprintf(stderr, "station: --simulate %u: %s\n", simulate, st_strerror(rc));
            exit_code = ST_EXIT_USAGE;
            goto out_engine;
        }
    } else {
        struct eng_usb_options uo;
        static struct eng_usb_port listed[LEARN_MAX_PRESENT];
        st_usb_rules(ln->cfg, &uo);
        int n = eng_usb_list(&uo, listed, LEARN_MAX_PRESENT, err, sizeof(err));
        if (n < 0) {
            fprintf(stderr, "station: %s\n", err);
            goto out_engine;
        }
        for (int i = 0; i < n; i++)
            if (listed[i].rule >= 0 && ln->n_present < LEARN_MAX_PRESENT)
                snprintf(ln->present[ln->n_present++], PORT_MAX, "%.*s", PORT_MAX - 1,
                         listed[i].port);
        if (ln->n_present)
            printf("ignoring %u device(s) already plugged in; unplug and plug one again to use "
                   "its port\n",
                   ln->n_present);
        rc = eng_usb_new(&ln->loop, ln->eng, &uo, &ln->usb, err, sizeof(err));
        if (rc) {
            fprintf(stderr, "station: %s\n", err);
            goto out_engine;
        }
        rc = eng_usb_start(ln->usb);
        if (rc) {
            fprintf(stderr, "station: cannot watch USB devices: %s\n", st_strerror(rc));
            shutdown_learn(ln, ST_EXIT_INTERNAL);
        }
    }
    if (!ln->stopping) {
        ask(ln);
        if (ln->rack)
            eng_rack_start(ln->rack);
    }
    uv_run(&ln->loop, UV_RUN_DEFAULT);
    exit_code = ln->exit_code;
    goto out_free;

out_engine:
    /* nothing started: close what was made, then the engine */
    shutdown_learn(ln, exit_code);
    uv_run(&ln->loop, UV_RUN_DEFAULT);
out_free:
    eng_usb_free(ln->usb);
    eng_rack_free(ln->rack);
    eng_engine_free(ln->eng);
out_loop:
    if (uv_loop_close(&ln->loop) != 0) {
        fprintf(stderr, "station: internal error: handles left open\n");
        exit_code = ST_EXIT_INTERNAL;
    }
    return exit_code;
}

/* ---- the command --------------------------------------------------- */

static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || n >= CFG_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]))
            return false;
    return true;
}

static int add_name(struct learn *ln, const char *list, const char *s, size_t n)
{
    if (!valid_name(s, n))
        return st_usage_error("--slots: expected slot names (letters, digits, ._-) separated "
                              "by commas, got \"%s\"",
                              list);
    if (ln->n_slots == LEARN_MAX_SLOTS)
        return st_usage_error("--slots: more than 256 slots in \"%s\"", list);
    for (unsigned k = 0; k < ln->n_slots; k++)
        if (strlen(ln->names[k]) == n && !strncmp(ln->names[k], s, n))
            return st_usage_error("--slots: slot \"%s\" is named twice", ln->names[k]);
    snprintf(ln->names[ln->n_slots++], CFG_NAME_MAX, "%.*s", (int)n, s);
    return 0;
}

/* The slots to learn, in order (see the usage text). */
static int choose_slots(struct learn *ln, const char *list, unsigned simulate)
{
    if (list) {
        for (const char *p = list;;) {
            size_t n = strcspn(p, ",");
            if (add_name(ln, list, p, n) != 0)
                return -1;
            if (!p[n])
                break;
            p += n + 1;
        }
        return 0;
    }
    for (unsigned i = 0; i < ln->cfg->n_slots; i++)
        snprintf(ln->names[ln->n_slots++], CFG_NAME_MAX, "%s", ln->cfg->slots[i].name);
    if (!ln->n_slots)
        for (unsigned i = 0; i < simulate; i++)
            snprintf(ln->names[ln->n_slots++], CFG_NAME_MAX, "slot%u", i + 1);
    if (!ln->n_slots) {
        st_usage_error("%s has no [slot] section: name the slots with --slots A1,A2,...",
                       ln->cfg->path);
        return -1;
    }
    return 0;
}

int st_cmd_learn(int argc, char **argv)
{
    enum { O_SLOTS = 1000, O_SIMULATE, O_USB, O_TIMEOUT, O_HELP };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"slots", required_argument, NULL, O_SLOTS},
        {"simulate", required_argument, NULL, O_SIMULATE},
        {"usb", no_argument, NULL, O_USB},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *config = "station.ini", *slots = NULL;
    unsigned long v;
    unsigned simulate = 0, timeout_ms = 60000;
    bool usb = false;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":c:", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case O_SLOTS:
            slots = optarg;
            break;
        case O_SIMULATE:
            if (st_parse_uint("--simulate", optarg, 999, &v))
                return ST_EXIT_USAGE;
            if (v == 0)
                return st_usage_error("--simulate: must be at least 1, got \"%s\"", optarg);
            simulate = (unsigned)v;
            break;
        case O_USB:
            usb = true;
            break;
        case O_TIMEOUT:
            if (st_parse_uint("--timeout-ms", optarg, 86400000, &v))
                return ST_EXIT_USAGE;
            if (v == 0)
                return st_usage_error("--timeout-ms: must be positive, got \"%s\"", optarg);
            timeout_ms = (unsigned)v;
            break;
        case O_HELP:
            fputs(learn_usage, stdout);
            return ST_EXIT_OK;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            return st_usage_error("unknown option '%s' for 'station learn'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s' for 'station learn'", argv[optind]);
    if (usb && simulate)
        return st_usage_error("%s", "--usb and --simulate: choose one");

    struct learn *ln = calloc(1, sizeof(*ln));
    struct cfg_config *cfg = NULL;
    char err[CFG_ERROR_MAX];
    char *text = NULL, *again = NULL;
    size_t len = 0, len2 = 0;
    struct buf out = {0};
    int rc = ST_EXIT_USAGE;
    if (!ln) {
        fprintf(stderr, "station: %s\n", st_strerror(ST_ENOMEM));
        return ST_EXIT_INTERNAL;
    }
    /* the file must be a working config (slots it has need a path line) */
    if (cfg_load(config, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "station: %s\n", err);
        goto out_free;
    }
    ln->cfg = cfg;
    ln->timeout_ms = timeout_ms;
    text = read_text(config, &len, err, sizeof(err));
    if (!text) {
        fprintf(stderr, "station: %s\n", err);
        goto out_free;
    }
    if (choose_slots(ln, slots, simulate) != 0)
        goto out_free;
    if (simulate && simulate < ln->n_slots) {
        fprintf(stderr,
                "station: --simulate %u: fewer virtual devices than the %u slot(s) to "
                "learn\n",
                simulate, ln->n_slots);
        goto out_free;
    }
    printf("learning %u slot(s) for %s from %s\n", ln->n_slots, config,
           simulate ? "the simulated rack" : "USB devices");
    rc = learn_ports(ln, simulate);
    if (rc != ST_EXIT_OK)
        goto out_free;

    /* someone may have edited the file while we waited */
    again = read_text(config, &len2, err, sizeof(err));
    if (!again || len2 != len || memcmp(again, text, len) != 0) {
        fprintf(stderr, "station: %s changed while learning; not overwritten (run learn again)\n",
                config);
        rc = ST_EXIT_USAGE;
        goto out_free;
    }
    if (rewrite(ln, text, len, &out) != 0) {
        fprintf(stderr, "station: %s\n", st_strerror(ST_ENOMEM));
        rc = ST_EXIT_INTERNAL;
        goto out_free;
    }
    rc = replace_file(config, &out);
    if (rc == ST_EXIT_OK)
        printf("wrote %s: %u slot(s) bound\n", config, ln->n_slots);

out_free:
    free(out.p);
    free(again);
    free(text);
    cfg_free(cfg);
    free(ln);
    return rc;
}
