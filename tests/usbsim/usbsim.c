/*
 * usbsim: run a command against virtual USB fastboot and DFU devices.
 *
 *   usbsim [options] -- COMMAND [ARGS...]
 *
 * See usage() for the options and usbsim.h for the design. The harness
 * re-executes itself once under libumockdev-preload (uevents are only
 * delivered by a process that runs under the preload), builds the
 * testbed, starts COMMAND with the testbed in its environment, serves
 * until COMMAND exits and exits with its status; 125 for its own errors.
 */
#include <errno.h>
#include <glib-unix.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "usbsim.h"

#define EXIT_HARNESS 125
#define PRELOAD "libumockdev-preload.so.0"

struct event {
    struct sim_port *port;
    unsigned ms;
    bool plug;
    struct sim *sim;
};

struct run {
    struct sim sim;
    GPtrArray *devices; /* struct sim_port *: --fastboot and --dfu ports, in order */
    GPtrArray *events;  /* struct event * */
    const char *stats;
    char **command;
    pid_t child;
    int status;
};

static void usage(FILE *f)
{
    fputs("usage: usbsim [options] -- COMMAND [ARGS...]\n"
          "  --fastboot PATH[:opt=val,...]  virtual fastboot device at port PATH (1-1, 1-1.4.2)\n"
          "      serial= usb_serial= product= vid= pid= pid2= max_download= ab=1 keep=1\n"
          "      pace=MBPS info=N bootloader=VER reenum_ms=MS absent=1 stay=1\n"
          "      fail=CMD silent=CMD garbage=CMD oversize=CMD disconnect=BYTES\n"
          "      eacces=1 baddesc=1 stallctl=1 driver=NAME\n"
          "  --dfu PATH[:opt=val,...]       virtual DFU device (engine/virt/vdfu) at port PATH\n"
          "      serial= product= manufacturer= vid= pid= runtime_pid= bcd= transfer=\n"
          "      dfuse=1 runtime=1 runtime_app=1 will_detach=1 tolerant=0 attributes=HEX\n"
          "      detach_timeout=MS block_busy=MS erase_busy=MS manifest=MS dirty=1\n"
          "      alt=NAME[#SIZE] (repeatable; ';' in NAME stands for ',') size=BYTES keep=1\n"
          "      reenum_ms=MS absent=1 eacces=1 stallctl=1 driver=NAME\n"
          "      errwrite=BLOCK corrupt=OFFSET stall=REQ[@N] silent=REQ[@N]\n"
          "      disconnect=manifest stuck=BLOCK\n"
          "  --unplug PATH@MS   unplug the device at PATH, MS after COMMAND started\n"
          "  --plug PATH@MS     plug a fresh unit (new serial) into the empty port PATH\n"
          "  --stats FILE       at exit, one line per unit (keep=1: images and DFU\n"
          "                     memories in FILE.d/PATH/)\n"
          "  --usbfs-mb N       usbfs memory for URBs in flight, all devices (default 16,\n"
          "                     like the kernel); beyond it submissions fail with ENOMEM\n"
          "  --verbose          log commands, replies and hotplug to stderr\n"
          "Exit status: COMMAND's (128+N if killed by signal N); 125 for harness errors.\n",
          f);
}

static G_GNUC_NORETURN G_GNUC_PRINTF(1, 2) void die(const char *fmt, ...)
{
    va_list ap;
    fputs("usbsim: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    _exit(EXIT_HARNESS);
}

void usbsim_log(struct sim *s, const char *fmt, ...)
{
    va_list ap;
    char buf[512];
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "usbsim: %8.3f %s\n", (double)(g_get_monotonic_time() - s->t0) / 1e6, buf);
}

/* ---- the preload ---------------------------------------------------- */

static void reexec_under_preload(char **argv)
{
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "libumockdev-preload")) {
        unsetenv("USBSIM_REEXEC");
        return;
    }
    if (getenv("USBSIM_REEXEC"))
        die("re-executed, but %s is not preloaded", PRELOAD);
    char *val = g_strdup_printf("%s%s%s", PRELOAD, pre && *pre ? ":" : "", pre ? pre : "");
    setenv("LD_PRELOAD", val, 1);
    g_free(val);
    setenv("USBSIM_REEXEC", "1", 1);
    /* Under AddressSanitizer the preload comes before the ASan runtime;
     * that is fine for this use, so do not let ASan refuse to start. */
    const char *asan = getenv("ASAN_OPTIONS");
    if (!asan || !strstr(asan, "verify_asan_link_order")) {
        char *opt = g_strdup_printf("%s%sverify_asan_link_order=0", asan ? asan : "",
                                    asan && *asan ? ":" : "");
        setenv("ASAN_OPTIONS", opt, 1);
        g_free(opt);
    }
    execv("/proc/self/exe", argv);
    die("cannot re-execute /proc/self/exe: %s", strerror(errno));
}

/* ---- ports ------------------------------------------------------------ */

/* "BUS-P1.P2...": bus 1..127, ports 1..255, at most 7 levels (USB 2.0
 * allows 5 hubs; sysfs does not care). Returns the depth or 0. */
static unsigned parse_path(const char *path, unsigned *bus)
{
    char *end;
    unsigned long b = strtoul(path, &end, 10);
    if (end == path || *end != '-' || b < 1 || b > 127)
        return 0;
    unsigned depth = 0;
    const char *p = end + 1;
    for (;;) {
        if (*p < '0' || *p > '9')
            return 0;
        unsigned long port = strtoul(p, &end, 10);
        if (port < 1 || port > 255 || ++depth > 7)
            return 0;
        if (*end == '\0')
            break;
        if (*end != '.')
            return 0;
        p = end + 1;
    }
    *bus = (unsigned)b;
    return depth;
}

static struct sim_port *find_port(GPtrArray *ports, const char *path)
{
    for (guint i = 0; i < ports->len; i++) {
        struct sim_port *p = g_ptr_array_index(ports, i);
        if (!strcmp(p->path, path))
            return p;
    }
    return NULL;
}

static bool flag(const char *key, const char *val)
{
    if (!strcmp(val, "1") || !strcmp(val, "yes") || !strcmp(val, "true"))
        return true;
    if (!strcmp(val, "0") || !strcmp(val, "no") || !strcmp(val, "false"))
        return false;
    die("option %s wants 1 or 0, not '%s'", key, val);
}

static unsigned long long number(const char *key, const char *val, int base)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, base);
    if (end != val && (*end == 'K' || *end == 'k'))
        v <<= 10, end++;
    else if (end != val && *end == 'M')
        v <<= 20, end++;
    else if (end != val && *end == 'G')
        v <<= 30, end++;
    if (errno || end == val || *end)
        die("option %s: bad number '%s'", key, val);
    return v;
}

static void text(const char *key, char *dst, size_t cap, const char *val)
{
    if (strlen(val) >= cap || strpbrk(val, "\\\n"))
        die("option %s: '%s' is too long or has a backslash", key, val);
    snprintf(dst, cap, "%s", val);
}

/* Options every device port takes. True when `key` was one of them. */
static bool port_option(struct sim_port *p, const char *key, const char *val)
{
    if (!strcmp(key, "reenum_ms"))
        p->reenum_ms = (unsigned)number(key, val, 10);
    else if (!strcmp(key, "eacces"))
        p->eacces = flag(key, val);
    else if (!strcmp(key, "stallctl"))
        p->stallctl = flag(key, val);
    else if (!strcmp(key, "absent"))
        p->absent = flag(key, val);
    else if (!strcmp(key, "driver"))
        text(key, p->driver, sizeof(p->driver), val);
    else
        return false;
    return true;
}

static void split_option(const char *kind, const struct sim_port *p, const char *opt, char *key,
                         size_t cap, const char **val)
{
    const char *eq = strchr(opt, '=');
    if (!eq)
        die("--%s %s: option '%s' is not key=value", kind, p->path, opt);
    snprintf(key, cap, "%.*s", (int)(eq - opt), opt);
    *val = eq + 1;
}

static void parse_option(struct sim_port *p, const char *opt)
{
    char key[32];
    const char *val;
    split_option("fastboot", p, opt, key, sizeof(key), &val);
    struct eng_vfb_config *c = &p->cfg;
    if (port_option(p, key, val))
        return;
    if (!strcmp(key, "serial"))
        text(key, c->serial, sizeof(c->serial), val);
    else if (!strcmp(key, "usb_serial"))
        text(key, c->usb_serial, sizeof(c->usb_serial), val);
    else if (!strcmp(key, "product"))
        text(key, c->product, sizeof(c->product), val);
    else if (!strcmp(key, "bootloader"))
        text(key, c->version_bootloader, sizeof(c->version_bootloader), val);
    else if (!strcmp(key, "vid"))
        p->vid = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "pid"))
        p->pid = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "pid2"))
        p->pid2 = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "max_download"))
        c->max_download = number(key, val, 0);
    else if (!strcmp(key, "ab"))
        c->ab_slots = flag(key, val);
    else if (!strcmp(key, "keep"))
        c->keep_data = flag(key, val);
    else if (!strcmp(key, "pace")) {
        char *end;
        c->pace_mbps = strtod(val, &end);
        if (end == val || *end || c->pace_mbps < 0)
            die("option pace: bad rate '%s'", val);
    } else if (!strcmp(key, "info"))
        c->info_lines = (unsigned)number(key, val, 10);
    else if (!strcmp(key, "baddesc"))
        p->baddesc = flag(key, val);
    else if (!strcmp(key, "stay"))
        p->stay = flag(key, val);
    else if (eng_vfb_parse_fault(c, opt) != 0)
        die("--fastboot %s: unknown or bad option '%s'", p->path, opt);
}

/* DFU options, mirroring struct eng_vdfu_config. `tolerant` and
 * `will_detach` (-1 = not given) adjust bmAttributes after parsing. */
struct dfu_extra {
    int tolerant, will_detach;
    bool attributes_given;
    uint32_t default_size;
};

static void parse_dfu_option(struct sim_port *p, struct dfu_extra *x, const char *opt)
{
    char key[32];
    const char *val;
    split_option("dfu", p, opt, key, sizeof(key), &val);
    struct eng_vdfu_config *c = &p->dcfg;
    if (port_option(p, key, val))
        return;
    if (!strcmp(key, "serial"))
        text(key, c->serial, sizeof(c->serial), val);
    else if (!strcmp(key, "product"))
        text(key, c->product, sizeof(c->product), val);
    else if (!strcmp(key, "manufacturer"))
        text(key, c->manufacturer, sizeof(c->manufacturer), val);
    else if (!strcmp(key, "vid"))
        c->vid = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "pid"))
        c->pid_dfu = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "runtime_pid"))
        c->pid_runtime = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "bcd"))
        c->bcd_device = (uint16_t)number(key, val, 16);
    else if (!strcmp(key, "transfer") || !strcmp(key, "transfer_size")) {
        unsigned long long v = number(key, val, 0);
        if (v < 1 || v > 4096)
            die("option %s: 1 to 4096 bytes, not %llu", key, v);
        c->transfer_size = (uint16_t)v;
    } else if (!strcmp(key, "attributes")) {
        c->attributes = (uint8_t)number(key, val, 16);
        x->attributes_given = true;
    } else if (!strcmp(key, "tolerant"))
        x->tolerant = flag(key, val);
    else if (!strcmp(key, "will_detach"))
        x->will_detach = flag(key, val);
    else if (!strcmp(key, "detach_timeout"))
        c->detach_timeout_ms = (uint16_t)number(key, val, 10);
    else if (!strcmp(key, "dfuse"))
        c->dfuse = flag(key, val);
    else if (!strcmp(key, "runtime"))
        c->start_runtime = flag(key, val);
    else if (!strcmp(key, "runtime_app"))
        c->runtime_app = flag(key, val);
    else if (!strcmp(key, "dirty"))
        c->dirty = flag(key, val);
    else if (!strcmp(key, "block_busy"))
        c->block_busy_ms = (unsigned)number(key, val, 10);
    else if (!strcmp(key, "erase_busy"))
        c->erase_busy_ms = (unsigned)number(key, val, 10);
    else if (!strcmp(key, "manifest"))
        c->manifest_ms = (unsigned)number(key, val, 10);
    else if (!strcmp(key, "size"))
        x->default_size = (uint32_t)number(key, val, 0);
    else if (!strcmp(key, "keep"))
        p->keep = flag(key, val);
    else if (!strcmp(key, "alt")) {
        if (c->n_alts == ENG_VDFU_MAX_ALTS)
            die("--dfu %s: at most %d alt settings", p->path, ENG_VDFU_MAX_ALTS);
        struct eng_vdfu_alt *a = &c->alts[c->n_alts++];
        const char *hash = strrchr(val, '#');
        size_t len = hash ? (size_t)(hash - val) : strlen(val);
        if (len == 0 || len >= sizeof(a->name))
            die("--dfu %s: alt name '%s' is empty or too long", p->path, val);
        snprintf(a->name, sizeof(a->name), "%.*s", (int)len, val);
        for (char *ch = a->name; *ch; ch++)
            if (*ch == ';')
                *ch = ','; /* options are split at commas; DfuSe layouts have them */
        if (hash)
            a->size = (uint32_t)number(key, hash + 1, 0);
    } else if (eng_vdfu_parse_fault(c, opt) != 0)
        die("--dfu %s: unknown or bad option '%s'", p->path, opt);
}

static struct sim_port *port_new(struct sim *s, const char *path, unsigned bus, unsigned depth)
{
    struct sim_port *p = g_new0(struct sim_port, 1);
    p->sim = s;
    snprintf(p->path, sizeof(p->path), "%s", path);
    p->bus = bus;
    p->depth = depth;
    return p;
}

/* SIM1_1_4_2: the path, in characters every tool accepts */
static void default_serial(char *dst, size_t cap, const char *path)
{
    snprintf(dst, cap, "SIM%s", path);
    for (char *c = dst; *c; c++)
        if (*c == '-' || *c == '.')
            *c = '_';
}

static struct sim_port *add_port(struct run *r, const char *kind, const char *arg,
                                 const char **opts)
{
    char path[SIM_PATH_MAX];
    const char *colon = strchr(arg, ':');
    size_t plen = colon ? (size_t)(colon - arg) : strlen(arg);
    unsigned bus = 0, depth;
    if (plen >= sizeof(path))
        die("--%s %s: port path too long", kind, arg);
    snprintf(path, sizeof(path), "%.*s", (int)plen, arg);
    if (!(depth = parse_path(path, &bus)))
        die("--%s %s: port path must look like 1-1 or 1-1.4.2", kind, arg);
    if (find_port(r->devices, path))
        die("--%s %s: port given twice", kind, path);
    struct sim_port *p = port_new(&r->sim, path, bus, depth);
    p->reenum_ms = 300;
    *opts = colon ? colon + 1 : NULL;
    g_ptr_array_add(r->devices, p);
    return p;
}

static void add_fastboot(struct run *r, const char *arg)
{
    const char *rest;
    struct sim_port *p = add_port(r, "fastboot", arg, &rest);
    p->vid = 0x18d1;
    p->pid = 0x4ee0;
    if (rest) {
        char **opts = g_strsplit(rest, ",", -1);
        for (char **o = opts; *o; o++)
            if (**o)
                parse_option(p, *o);
        g_strfreev(opts);
    }
    if (!p->pid2)
        p->pid2 = (uint16_t)(p->pid + 1);
    if (!p->cfg.serial[0])
        default_serial(p->cfg.serial, sizeof(p->cfg.serial), p->path);
}

static void add_dfu(struct run *r, const char *arg)
{
    const char *rest;
    struct sim_port *p = add_port(r, "dfu", arg, &rest);
    struct dfu_extra x = {.tolerant = -1, .will_detach = -1};
    p->dfu = true;
    if (rest) {
        char **opts = g_strsplit(rest, ",", -1);
        for (char **o = opts; *o; o++)
            if (**o)
                parse_dfu_option(p, &x, *o);
        g_strfreev(opts);
    }
    struct eng_vdfu_config *c = &p->dcfg;
    if (!c->serial[0])
        default_serial(c->serial, sizeof(c->serial), p->path);
    if (!x.attributes_given && (x.tolerant >= 0 || x.will_detach >= 0)) {
        c->attributes = ENG_DFU_ATTR_CAN_DNLOAD | ENG_DFU_ATTR_CAN_UPLOAD |
                        (x.tolerant != 0 ? ENG_DFU_ATTR_MANIFEST_TOLERANT : 0) |
                        (x.will_detach > 0 ? ENG_DFU_ATTR_WILL_DETACH : 0);
    }
    if (x.default_size) {
        if (!c->n_alts) {
            c->n_alts = 1;
            snprintf(c->alts[0].name, sizeof(c->alts[0].name), "Flash");
        }
        for (unsigned i = 0; i < c->n_alts; i++)
            if (!c->alts[i].size)
                c->alts[i].size = x.default_size;
    }
    /* Refuse what the model refuses now, not at plug time. */
    struct eng_vdfu *probe;
    if (eng_vdfu_new(c, &probe) != 0)
        die("--dfu %s: the model refuses this configuration (a DfuSe alt name must be a "
            "layout such as @Flash/0x08000000/04*016Kg; at most %d alts; memories up to 64 MiB)",
            p->path, ENG_VDFU_MAX_ALTS);
    p->vid = c->vid ? c->vid : eng_vdfu_config(probe)->vid;
    eng_vdfu_free(probe);
}

static void add_event(struct run *r, const char *arg, bool plug)
{
    const char *at = strrchr(arg, '@');
    if (!at)
        die("--%s %s: expected PATH@MS", plug ? "plug" : "unplug", arg);
    char path[SIM_PATH_MAX];
    snprintf(path, sizeof(path), "%.*s", (int)MIN((size_t)(at - arg), sizeof(path) - 1), arg);
    struct sim_port *p = find_port(r->devices, path);
    if (!p)
        die("--%s %s: no --fastboot or --dfu device at %s (declare it first)",
            plug ? "plug" : "unplug", arg, path);
    struct event *e = g_new0(struct event, 1);
    e->port = p;
    e->ms = (unsigned)number(plug ? "--plug" : "--unplug", at + 1, 10);
    e->plug = plug;
    e->sim = &r->sim;
    g_ptr_array_add(r->events, e);
}

/* Root hubs and the hubs a deeper path passes through, parents first. */
static GPtrArray *make_hubs(struct run *r)
{
    GPtrArray *hubs = g_ptr_array_new();
    for (unsigned depth = 0; depth < 7; depth++) {
        for (guint i = 0; i < r->devices->len; i++) {
            struct sim_port *d = g_ptr_array_index(r->devices, i);
            if (d->depth <= depth)
                continue;
            char path[SIM_PATH_MAX];
            if (depth == 0) {
                snprintf(path, sizeof(path), "usb%u", d->bus);
            } else {
                /* the first `depth` ports of d's path */
                snprintf(path, sizeof(path), "%s", d->path);
                char *c = strchr(path, '-');
                for (unsigned k = 0; k < depth; k++) {
                    c = strpbrk(c + 1, ".");
                    if (!c)
                        break;
                }
                if (c)
                    *c = '\0';
            }
            if (find_port(hubs, path) || find_port(r->devices, path))
                continue;
            struct sim_port *h = port_new(&r->sim, path, d->bus, depth);
            h->hub = true;
            h->vid = depth == 0 ? 0x1d6b : 0x05e3;
            h->pid = depth == 0 ? 0x0002 : 0x0608;
            g_ptr_array_add(hubs, h);
        }
    }
    return hubs;
}

/* ---- plugging --------------------------------------------------------- */

static struct sim_unit *unit_new(struct sim_port *p)
{
    struct sim *s = p->sim;
    struct sim_unit *u = g_new0(struct sim_unit, 1);
    unsigned k = ++p->units;
    if (p->dfu) {
        struct eng_vdfu_config cfg = p->dcfg;
        if (k > 1)
            snprintf(cfg.serial, sizeof(cfg.serial), "%.50s-%u", p->dcfg.serial, k);
        snprintf(u->serial, sizeof(u->serial), "%s", cfg.serial);
        if (eng_vdfu_new(&cfg, &u->vdfu) != 0)
            die("out of memory");
    } else {
        struct eng_vfb_config cfg = p->cfg;
        if (k > 1)
            snprintf(cfg.serial, sizeof(cfg.serial), "%.50s-%u", p->cfg.serial, k);
        snprintf(u->serial, sizeof(u->serial), "%s", cfg.serial);
        if (eng_vfb_new(&cfg, &u->vfb) != 0)
            die("out of memory");
    }
    u->port = p;
    struct sim_unit **tail = &s->units;
    while (*tail)
        tail = &(*tail)->next;
    *tail = u;
    return u;
}

/* Enumerate port p: a hub, the same unit again (re-enumeration), or a
 * fresh unit. Main thread. Returns the node or NULL (logged). */
static struct sim_node *plug(struct sim_port *p, bool fresh)
{
    struct sim *s = p->sim;
    struct sim_node *n = g_new0(struct sim_node, 1);
    n->sim = s;
    n->port = p;
    n->fifo = -1;
    n->busnum = p->bus;
    g_queue_init(&n->pending);
    g_queue_init(&n->done);
    if (p->depth == 0) {
        n->devnum = 1;
    } else {
        unsigned d = s->next_devnum[p->bus];
        for (unsigned tries = 0; tries < 126; tries++, d++) {
            if (d < 2 || d > 127)
                d = 2;
            if (!s->devnum_used[p->bus][d])
                break;
        }
        if (s->devnum_used[p->bus][d]) {
            usbsim_log(s, "cannot plug %s: bus %u has no free device number", p->path, p->bus);
            g_free(n);
            return NULL;
        }
        n->devnum = d;
        s->next_devnum[p->bus] = d + 1;
    }
    s->devnum_used[p->bus][n->devnum] = true;
    if (p->hub) {
        n->vid = p->vid;
        n->pid = p->pid;
    } else {
        g_mutex_lock(&s->lock);
        if (fresh || !p->unit) {
            p->unit = unit_new(p);
        } else {
            p->unit->alt_pid = !p->unit->alt_pid;
        }
        n->unit = p->unit;
        n->unit->enumerations++;
        g_mutex_unlock(&s->lock);
        n->vid = p->vid;
        n->pid = n->unit->alt_pid ? p->pid2 : p->pid;
    }
    n->driver_bound = p->driver[0] != '\0';
    usbsim_build_descriptors(n); /* DFU: sets vid and pid from the model's mode */
    char err[512];
    if (usbsim_sysfs_add(n, err, sizeof(err)) != 0) {
        usbsim_log(s, "cannot plug %s: %s", p->path, err);
        return NULL;
    }
    p->node = n;
    if (s->verbose)
        usbsim_log(s, "plugged %s as %s %04x:%04x%s%s", p->path, n->devnode, n->vid, n->pid,
                   n->unit ? " serial=" : "", n->unit ? n->unit->serial : "");
    return n;
}

static void unplug(struct sim_node *n)
{
    struct sim *s = n->sim;
    if (n->removed)
        return;
    g_mutex_lock(&s->lock);
    usbsim_node_gone_locked(n);
    g_mutex_unlock(&s->lock);
    usbsim_sysfs_remove(n);
    n->removed = true;
    s->devnum_used[n->busnum][n->devnum] = false;
    if (n->port->node == n)
        n->port->node = NULL;
    if (s->verbose)
        usbsim_log(s, "unplugged %s (%s)", n->port->path, n->devnode);
}

struct action {
    struct sim_node *node;
    enum sim_action what;
};

static gboolean on_replug(gpointer data)
{
    struct sim_port *p = data;
    if (!p->node)
        plug(p, false);
    return G_SOURCE_REMOVE;
}

static gboolean on_action(gpointer data)
{
    struct action *a = data;
    struct sim_node *n = a->node;
    unplug(n);
    if (a->what == SIM_REENUMERATE)
        g_timeout_add(n->port->reenum_ms, on_replug, n->port);
    return G_SOURCE_REMOVE;
}

void usbsim_schedule(struct sim_node *n, enum sim_action what, unsigned ms)
{
    struct action *a = g_new0(struct action, 1);
    a->node = n;
    a->what = what;
    GSource *src = g_timeout_source_new(ms);
    g_source_set_callback(src, on_action, a, g_free);
    g_source_attach(src, n->sim->main_ctx);
    g_source_unref(src);
}

static gboolean on_event(gpointer data)
{
    struct event *e = data;
    struct sim_port *p = e->port;
    if (e->plug) {
        if (p->node)
            usbsim_log(e->sim, "--plug %s: port is occupied; ignored", p->path);
        else
            plug(p, true);
    } else {
        if (p->node)
            unplug(p->node);
        else
            usbsim_log(e->sim, "--unplug %s: port is empty; ignored", p->path);
    }
    return G_SOURCE_REMOVE;
}

/* ---- the command -------------------------------------------------- */

static void on_child(GPid pid, gint status, gpointer data)
{
    struct run *r = data;
    if (WIFEXITED(status))
        r->status = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        r->status = 128 + WTERMSIG(status);
    else
        r->status = EXIT_HARNESS;
    g_spawn_close_pid(pid);
    g_main_loop_quit(r->sim.loop);
}

static gboolean on_signal(gpointer data)
{
    struct run *r = data;
    if (r->child > 0)
        kill(r->child, SIGTERM);
    return G_SOURCE_CONTINUE;
}

static pid_t spawn(char **argv)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the harness */
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], argv);
        fprintf(stderr, "usbsim: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

/* ---- stats ------------------------------------------------------------ */

static void dump_part(const char *stats, const struct sim_unit *u, const struct eng_vfb_part *p)
{
    char *dir = g_strdup_printf("%s.d/%s", stats, u->port->path);
    char *file = g_strdup_printf("%s/%s.img", dir, p->name);
    if (g_mkdir_with_parents(dir, 0755) < 0 ||
        !g_file_set_contents(file, (const char *)p->data, (gssize)p->size, NULL))
        fprintf(stderr, "usbsim: cannot write %s\n", file);
    g_free(file);
    g_free(dir);
}

/* A DFU unit's line: the model's counters, and per alt the bytes that
 * count (plain DFU: what the last download wrote; DfuSe: the first
 * region of the layout) with their XXH3-64. */
static void dfu_stats(FILE *f, const char *stats, const struct sim_unit *u)
{
    const struct eng_vdfu *v = u->vdfu;
    const struct eng_vdfu_config *c = eng_vdfu_config(v);
    const struct eng_vdfu_stats *st = eng_vdfu_stats(v);
    fprintf(f,
            "%s serial=%s dfu mode=%u state=%s blocks=%u uploads=%u erases=%u manifests=%u "
            "resets=%u detaches=%u early_polls=%u",
            u->port->path, u->serial, eng_vdfu_mode(v), eng_dfu_state_name(eng_vdfu_state(v)),
            st->data_blocks, st->upload_blocks, st->erases, st->manifests, st->resets, st->detaches,
            st->early_polls);
    for (unsigned a = 0; a < c->n_alts; a++) {
        uint32_t size, base;
        const uint8_t *mem = eng_vdfu_memory(v, a, &size, &base);
        if (!mem)
            continue;
        uint32_t len = c->dfuse ? size : eng_vdfu_firmware_len(v, a);
        fprintf(f, " alt%u=%" PRIu32 ":%016" PRIx64, a, len, (uint64_t)XXH3_64bits(mem, len));
        if (u->port->keep) {
            char *dir = g_strdup_printf("%s.d/%s", stats, u->port->path);
            char *file = g_strdup_printf("%s/alt%u.bin", dir, a);
            if (g_mkdir_with_parents(dir, 0755) < 0 ||
                !g_file_set_contents(file, (const char *)mem, (gssize)len, NULL))
                fprintf(stderr, "usbsim: cannot write %s\n", file);
            g_free(file);
            g_free(dir);
        }
    }
    fprintf(f, " enumerations=%u present=%d", u->enumerations,
            u->port->unit == u && u->port->node != NULL);
}

static void write_stats(struct run *r)
{
    struct sim *s = &r->sim;
    FILE *f = fopen(r->stats, "w");
    if (!f) {
        fprintf(stderr, "usbsim: cannot write %s: %s\n", r->stats, strerror(errno));
        r->status = EXIT_HARNESS;
        return;
    }
    g_mutex_lock(&s->lock);
    for (struct sim_unit *u = s->units; u; u = u->next) {
        if (u->vdfu) {
            dfu_stats(f, r->stats, u);
            for (unsigned i = 0; i < u->n_first_cmd; i++)
                fprintf(f, "%s%.3f", i ? "," : " first_cmd_ms=", (double)u->first_cmd_us[i] / 1e3);
            fputc('\n', f);
            continue;
        }
        unsigned np;
        const struct eng_vfb_part *parts = eng_vfb_parts(u->vfb, &np);
        fprintf(f, "%s serial=%s writes=%u bytes=%" PRIu64, u->port->path, u->serial,
                eng_vfb_writes(u->vfb), eng_vfb_bytes_received(u->vfb));
        for (unsigned i = 0; i < np; i++) {
            fprintf(f, " part:%s=%" PRIu64 ":%016" PRIx64, parts[i].name, parts[i].size,
                    parts[i].hash);
            if (parts[i].data && eng_vfb_config(u->vfb)->keep_data)
                dump_part(r->stats, u, &parts[i]);
        }
        fprintf(f, " commands=%u enumerations=%u present=%d", eng_vfb_command_count(u->vfb),
                u->enumerations, u->port->unit == u && u->port->node != NULL);
        /* arrival to first command, one figure per enumeration */
        for (unsigned i = 0; i < u->n_first_cmd; i++)
            fprintf(f, "%s%.3f", i ? "," : " first_cmd_ms=", (double)u->first_cmd_us[i] / 1e3);
        fputc('\n', f);
    }
    g_mutex_unlock(&s->lock);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(f, "harness cpu_user=%.3f cpu_sys=%.3f\n",
            (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    if (fclose(f) != 0)
        r->status = EXIT_HARNESS;
}

/* ---- main ------------------------------------------------------------- */

static void parse_args(struct run *r, int argc, char **argv)
{
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--")) {
            i++;
            break;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            r->sim.verbose = true;
            continue;
        }
        if (!v)
            die("%s needs a value (see --help)", a);
        if (!strcmp(a, "--fastboot"))
            add_fastboot(r, v);
        else if (!strcmp(a, "--dfu"))
            add_dfu(r, v);
        else if (!strcmp(a, "--unplug"))
            add_event(r, v, false);
        else if (!strcmp(a, "--plug"))
            add_event(r, v, true);
        else if (!strcmp(a, "--stats"))
            r->stats = v;
        else if (!strcmp(a, "--usbfs-mb"))
            r->sim.usbfs_limit = number(a, v, 10) << 20;
        else {
            usage(stderr);
            die("unknown option %s", a);
        }
        i++;
    }
    if (i >= argc)
        die("no command given (usbsim [options] -- COMMAND [ARGS...])");
    r->command = argv + i;
}

int main(int argc, char **argv)
{
    reexec_under_preload(argv);

    struct run r = {0};
    struct sim *s = &r.sim;
    g_mutex_init(&s->lock);
    s->t0 = g_get_monotonic_time();
    s->usbfs_limit = 16u << 20;
    r.devices = g_ptr_array_new();
    r.events = g_ptr_array_new();
    parse_args(&r, argc, argv);
    GPtrArray *hubs = make_hubs(&r);

    signal(SIGPIPE, SIG_IGN);
    s->tb = umockdev_testbed_new();
    char *root = umockdev_testbed_get_root_dir(s->tb);
    snprintf(s->root, sizeof(s->root), "%s", root);
    g_free(root);
    s->main_ctx = g_main_context_default();
    s->loop = g_main_loop_new(s->main_ctx, FALSE);

    for (guint i = 0; i < hubs->len; i++)
        if (!plug(g_ptr_array_index(hubs, i), true))
            die("cannot create hub %s", ((struct sim_port *)g_ptr_array_index(hubs, i))->path);
    for (guint i = 0; i < r.devices->len; i++) {
        struct sim_port *p = g_ptr_array_index(r.devices, i);
        if (!p->absent && !plug(p, true))
            die("cannot create device %s", p->path);
    }

    r.child = spawn(r.command);
    g_child_watch_add(r.child, on_child, &r);
    for (guint i = 0; i < r.events->len; i++)
        g_timeout_add(((struct event *)g_ptr_array_index(r.events, i))->ms, on_event,
                      g_ptr_array_index(r.events, i));
    g_unix_signal_add(SIGTERM, on_signal, &r);
    g_unix_signal_add(SIGINT, on_signal, &r);
    g_unix_signal_add(SIGHUP, on_signal, &r);
    g_main_loop_run(s->loop);

    if (r.stats)
        write_stats(&r);
    /* Removes the testbed directory. Everything else is left to the
     * exit: nodes may still be referenced by umockdev's clients. */
    g_object_unref(s->tb);
    fflush(stdout);
    fflush(stderr);
    _exit(r.status);
}
