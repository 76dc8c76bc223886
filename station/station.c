/*
 * Wiring: engine events go to the database (session begin, step rows,
 * session end) and to the screen; a result is shown only from the
 * database's commit callback (ARCHITECTURE rule 7).
 */
#include "station/station.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "common/st_error.h"
#include "config/config.h"
#include "config/recipe.h"
#include "db/db.h"
#include "engine/engine.h"
#include "engine/tcp.h"
#include "engine/trust.h"
#include "engine/usb.h"
#include "engine/virt/rack.h"
#include "station/publish.h"
#include "station/serials.h"
#include "station/usb_rules.h"
#include "ui/dashboard.h"
#include "ui/headless.h"
#include "ui/model.h"

struct loop_stats;

struct station {
    struct loop_stats *loop_stats; /* the loop's clock and latency probe (below) */
    const struct st_run_options *opts;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_signal_t sighup; /* reload the configuration (with -c only) */
    struct db *db;
    struct eng_engine *eng;
    struct eng_rack *rack;
    struct eng_vdfu_config sim_dfu; /* the simulated DFU units, while the rack lives */
    struct cfg_config *cfg;         /* NULL: the built-in demo recipe */
    struct eng_usb *usb;            /* USB devices, when flashing them */
    struct eng_pubkey signer;
    char hash_cache[4096];     /* remembered image hashes; "" = hash at every start */
    unsigned profiles_loading; /* profiles whose images are not loaded yet */
    bool profiles_failed;
    /* SIGHUP reload: the new configuration while its profiles load */
    struct cfg_config *next_cfg;
    unsigned reload_loading; /* its profiles not loaded yet, +1 while adding them */
    unsigned reload_added;   /* its profiles added to the engine (after the current ones) */
    bool reload_failed;
    bool reload_again; /* SIGHUP during a load: reload once more after it */
    char reload_err[CFG_ERROR_MAX];
    struct cfg_config **old_cfgs; /* replaced by reloads; freed at exit (opts point into them) */
    unsigned n_old_cfgs;
    struct eng_tcp_source **tcp; /* network slots (--tcp), created once images loaded */
    unsigned n_tcp;
    unsigned sources_running; /* device sources not yet stopped, +1 while stopping them */
    struct ui_model model;
    struct ui_headless *out;    /* NULL while the dashboard runs */
    struct ui_dash *dash;       /* NULL when headless */
    struct st_serials *serials; /* serial policy; freed after the db writer stops */
    struct st_publisher *pub;   /* `station watch` socket; NULL when none */
    char deferred_err[600];     /* an error met while the dashboard had the terminal */
    char station_id[64];
    unsigned recorded;   /* committed session ends */
    unsigned failed;     /* committed FAIL */
    unsigned unrecorded; /* results the database could not take */
    bool stopping;
    bool db_failed;
    int exit_code;
};

/* What the commit callback needs once the engine's event is gone. */
struct pending_end {
    struct station *st;
    char slot[64], port[64], serial[64];
    char reason[512];
    enum eng_result result;
    int64_t duration_ms;
    uint64_t bytes;
};

static void shutdown_station(struct station *st, int exit_code);
static void loop_stats_stop(struct loop_stats *ls, uv_loop_t *loop);

static void errorf(struct station *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void errorf(struct station *st, const char *fmt, ...)
{
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (st->dash) {
        /* stderr is the dashboard's terminal: show it, print it at exit */
        snprintf(st->deferred_err, sizeof(st->deferred_err), "%s", text);
        ui_model_note(&st->model, eng_now_ms(), UI_NOTE_ERROR, "%s", text);
        return;
    }
    fprintf(st->opts->err, "station: %s\n", text);
}

/* A station-level message: the footer's recent events and the log lines. */
static void note(struct station *st, enum ui_note_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void note(struct station *st, enum ui_note_kind kind, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    ui_model_note(&st->model, eng_now_ms(), kind, "%s", text);
    ui_headless_note(st->out, "%s", text);
}

static void on_committed(int status, void *user_data)
{
    struct pending_end *pe = user_data;
    struct station *st = pe->st;
    if (status == 0) {
        st->recorded++;
        if (pe->result == ENG_RESULT_FAIL)
            st->failed++;
        ui_model_committed(&st->model, pe->slot, pe->result, pe->reason, eng_now_ms());
        if (pe->result == ENG_RESULT_SKIPPED)
            ui_headless_note(st->out, "%s %s ALREADY DONE (%s)", pe->slot,
                             pe->serial[0] ? pe->serial : "-", pe->reason);
        else
            ui_headless_result(st->out, pe->slot, pe->serial, pe->result, pe->reason,
                               pe->duration_ms, pe->bytes);
        if (st->rack)
            eng_rack_result_shown(st->rack, pe->port);
    } else {
        st->unrecorded++;
        note(st, UI_NOTE_ERROR, "%s %s NOT RECORDED (%s): result was %s", pe->slot,
             pe->serial[0] ? pe->serial : "-", st_strerror(status), eng_result_name(pe->result));
        if (st->opts->exit_after && !st->stopping)
            shutdown_station(st, ST_EXIT_INTERNAL);
    }
    free(pe);
    if (st->opts->exit_after && st->recorded >= st->opts->exit_after && !st->stopping)
        shutdown_station(st, st->failed ? ST_EXIT_FAILED : ST_EXIT_OK);
}

static void record_begin(struct station *st, const struct eng_event *ev)
{
    struct db_image_ref refs[CFG_MAX_IMAGES];
    for (unsigned i = 0; i < ev->n_images && i < CFG_MAX_IMAGES; i++)
        refs[i] = (struct db_image_ref){ev->images[i].name, ev->images[i].sha256,
                                        ev->images[i].path, ev->images[i].size};
    struct db_session_begin b = {
        .id = ev->session_id,
        .station = st->station_id,
        .slot = ev->slot,
        .port = ev->port,
        .usb_serial = ev->usb_serial,
        .recipe = ev->recipe,
        .recipe_version = ev->recipe_version,
        .started_ms = ev->t_ms,
        .n_images = ev->n_images,
        .images = refs,
    };
    db_session_begin(st->db, &b);
}

static void record_step(struct station *st, const struct eng_event *ev)
{
    struct db_step s = {
        .session_id = ev->session_id,
        .seq = ev->step_index,
        .name = ev->step,
        .started_ms = ev->step_started_ms,
        .ended_ms = ev->t_ms,
        .result = eng_result_name(ev->result),
        .detail = ev->text,
        .bytes = ev->bytes_done,
        .info = ev->info,
    };
    db_step(st->db, &s);
}

static void record_end(struct station *st, const struct eng_event *ev)
{
    struct pending_end *pe = calloc(1, sizeof(*pe));
    if (!pe) {
        errorf(st, "out of memory recording session %" PRId64, ev->session_id);
        return;
    }
    pe->st = st;
    snprintf(pe->slot, sizeof(pe->slot), "%s", ev->slot);
    snprintf(pe->port, sizeof(pe->port), "%s", ev->port);
    snprintf(pe->serial, sizeof(pe->serial), "%s", ev->serial ? ev->serial : "");
    snprintf(pe->reason, sizeof(pe->reason), "%s", ev->text ? ev->text : "");
    pe->result = ev->result;
    pe->duration_ms = ev->t_ms - ev->session_started_ms;
    pe->bytes = ev->session_bytes;
    struct db_session_end e = {
        .id = ev->session_id,
        .serial = ev->serial,
        .product = ev->product,
        .ended_ms = ev->t_ms,
        .result = ev->result == ENG_RESULT_SKIPPED ? "SKIPPED" : eng_result_name(ev->result),
        .failed_step = ev->failed_step,
        .reason = ev->result == ENG_RESULT_PASS ? NULL : ev->text,
        .bytes = ev->session_bytes,
    };
    int rc = db_session_end(st->db, &e, on_committed, pe);
    if (rc) {
        st->unrecorded++;
        note(st, UI_NOTE_ERROR, "%s %s NOT RECORDED (%s): result was %s", pe->slot,
             pe->serial[0] ? pe->serial : "-", st_strerror(rc), eng_result_name(pe->result));
        free(pe);
        if (st->opts->exit_after && !st->stopping)
            shutdown_station(st, ST_EXIT_INTERNAL);
    }
}

static void on_event(const struct eng_event *ev, void *user_data)
{
    struct station *st = user_data;
    ui_model_event(&st->model, ev);
    ui_headless_event(st->out, ev);
    switch (ev->type) {
    case ENG_EV_DEVICE_ERROR:
        if (strcmp(ev->slot, ev->port))
            note(st, UI_NOTE_ERROR, "%s: %s: %s", ev->slot, ev->port,
                 ev->text ? ev->text : "device error");
        else
            note(st, UI_NOTE_ERROR, "%s: %s", ev->slot, ev->text ? ev->text : "device error");
        break;
    case ENG_EV_SESSION_BEGIN:
        st_serials_begin(st->serials, ev->session_id, ev->slot);
        record_begin(st, ev);
        break;
    case ENG_EV_STEP_END:
        record_step(st, ev);
        break;
    case ENG_EV_SESSION_END:
        st_serials_end(st->serials, ev->session_id);
        record_end(st, ev);
        break;
    default:
        break;
    }
}

/* The engine read a serial: the serial policy answers (station/serials.h). */
static void on_serial_check(struct eng_engine *eng, int64_t session_id, const char *serial,
                            const char *recipe, const char *version, void *user_data)
{
    struct station *st = user_data;
    st_serials_check(st->serials, eng, session_id, serial, recipe, version);
}

static void on_db_error(const char *message, void *user_data)
{
    struct station *st = user_data;
    st->db_failed = true;
    ui_model_set_db_error(&st->model);
    note(st, UI_NOTE_ERROR, "%s", message);
    note(st, UI_NOTE_ERROR, "DB ERROR: intake stopped; no new device will be flashed");
    eng_engine_pause(st->eng, true);
    ui_model_set_paused(&st->model, true);
    if (st->opts->exit_after && !st->stopping)
        shutdown_station(st, ST_EXIT_INTERNAL);
}

/* ---- shutdown: rack, then engine, then database, then signals ---- */

static void on_db_stopped(struct db *db, void *user_data)
{
    struct station *st = user_data;
    uv_close((uv_handle_t *)&st->sigint, NULL);
    uv_close((uv_handle_t *)&st->sigterm, NULL);
    if (st->opts->config_path)
        uv_close((uv_handle_t *)&st->sighup, NULL);
    if (st->dash)
        ui_dash_close(st->dash, NULL, NULL);
    st_publisher_close(st->pub, NULL, NULL); /* watchers get the final state, then EOF */
}

static void on_usb_closed(struct eng_usb *usb, void *user_data)
{
    struct station *st = user_data;
    db_writer_stop(st->db, on_db_stopped, st);
}

static void on_engine_closed(struct eng_engine *eng, void *user_data)
{
    struct station *st = user_data;
    if (st->usb)
        eng_usb_close(st->usb, on_usb_closed, st); /* libusb events flowed until now */
    else
        db_writer_stop(st->db, on_db_stopped, st);
}

/* Device sources (rack, TCP) stop first so that no device arrives while
 * the engine closes. */
static void source_stopped(struct station *st)
{
    if (--st->sources_running == 0)
        eng_engine_close(st->eng, on_engine_closed, st);
}

static void on_rack_stopped(struct eng_rack *rack, void *user_data)
{
    source_stopped(user_data);
}

static void on_tcp_stopped(struct eng_tcp_source *src, void *user_data)
{
    source_stopped(user_data);
}

static void shutdown_station(struct station *st, int exit_code)
{
    if (st->stopping)
        return;
    st->stopping = true;
    st->exit_code = exit_code;
    loop_stats_stop(st->loop_stats, &st->loop);
    ui_model_set_stopping(&st->model);
    st->sources_running = 1; /* held until every stop is asked for */
    if (st->rack) {
        st->sources_running++;
        eng_rack_stop(st->rack, on_rack_stopped, st);
    }
    for (unsigned i = 0; i < st->n_tcp; i++) {
        st->sources_running++;
        eng_tcp_source_stop(st->tcp[i], on_tcp_stopped, st);
    }
    if (st->usb)
        eng_usb_stop(st->usb);
    source_stopped(st);
}

/* Walk the --tcp specs ("HOST:PORT" or "HOST:FIRST-LAST"): count the ports
 * (0 and a message for a bad spec), or with `create` make the sources. */
static int tcp_sources(struct station *st, bool create)
{
    char host[ENG_TCP_HOST_MAX];
    uint16_t first, last;
    unsigned n = 0;
    for (unsigned i = 0; i < st->opts->n_tcp; i++) {
        const char *spec = st->opts->tcp[i];
        if (eng_tcp_parse_address(spec, host, sizeof(host), &first, &last) != 0) {
            errorf(st, "--tcp %s: expected HOST:PORT or HOST:FIRST-LAST", spec);
            return -1;
        }
        for (unsigned port = first; port <= last; port++) {
            if (n == ST_MAX_TCP_PORTS) {
                errorf(st, "--tcp %s: more than %u network slots", spec, ST_MAX_TCP_PORTS);
                return -1;
            }
            if (create) {
                int rc = eng_tcp_source_new(&st->loop, st->eng, host, (uint16_t)port, NULL,
                                            &st->tcp[st->n_tcp]);
                if (rc) {
                    errorf(st, "--tcp %s: port %u: %s", spec, port, st_strerror(rc));
                    return -1;
                }
                st->n_tcp++;
            }
            n++;
        }
    }
    return (int)n;
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct station *st = h->data;
    if (st->stopping)
        return;
    note(st, UI_NOTE_WARN, "signal %d: stopping; running sessions are recorded ABORTED", signum);
    shutdown_station(st, st->failed ? ST_EXIT_FAILED : ST_EXIT_OK);
}

/* The dashboard's keys that concern the station. */
static void on_ui_action(enum ui_action action, void *user_data)
{
    struct station *st = user_data;
    if (st->stopping)
        return;
    switch (action) {
    case UI_ACTION_PAUSE_TOGGLE: {
        bool pause = !st->model.paused;
        if (!pause && st->db_failed) {
            note(st, UI_NOTE_ERROR, "DB ERROR: intake stays stopped");
            return;
        }
        eng_engine_pause(st->eng, pause);
        ui_model_set_paused(&st->model, pause);
        note(st, UI_NOTE_WARN,
             pause ? "intake paused: devices plugged now wait" : "intake resumed");
        break;
    }
    case UI_ACTION_QUIT:
        /* The operator's stop is a clean stop: exit 0, whatever the units did. */
        note(st, UI_NOTE_WARN, "quit: stopping; %u running session(s) are recorded ABORTED",
             st->model.in_progress);
        shutdown_station(st, ST_EXIT_OK);
        break;
    default:
        break;
    }
}

static int config_tcp_sources(struct station *st);
static void start_reload(struct station *st);

static void on_loaded(int status, const char *message, void *user_data)
{
    struct station *st = user_data;
    if (status) {
        errorf(st, "%s", message);
        st->profiles_failed = true;
        shutdown_station(st, ST_EXIT_USAGE);
    }
    if (--st->profiles_loading > 0 || st->profiles_failed)
        return; /* devices are taken once every profile is ready */
    unsigned n;
    const struct eng_image_info *im = eng_engine_images(st->eng, &n);
    for (unsigned i = 0; i < n; i++)
        note(st, UI_NOTE_INFO, "image %s %s %" PRIu64 " bytes sha256 %s%s", im[i].name, im[i].path,
             im[i].size, im[i].sha256, im[i].remembered ? " (remembered: file unchanged)" : "");
    if (st->rack)
        eng_rack_start(st->rack);
    if ((st->opts->n_tcp || st->cfg) && !st->stopping) {
        st->tcp = calloc(ST_MAX_TCP_PORTS, sizeof(*st->tcp));
        if (!st->tcp || tcp_sources(st, true) < 0 || config_tcp_sources(st) < 0)
            shutdown_station(st, ST_EXIT_INTERNAL);
    }
    if (st->usb && !st->stopping) {
        int rc = eng_usb_start(st->usb);
        if (rc) {
            errorf(st, "cannot watch USB devices: %s", st_strerror(rc));
            shutdown_station(st, ST_EXIT_INTERNAL);
        }
    }
    if (st->reload_again && !st->stopping)
        start_reload(st); /* a SIGHUP came while the first configuration loaded */
}

/* The configuration's network slots: every `match = tcp:HOST:PORT`. */
static int config_tcp_sources(struct station *st)
{
    if (!st->cfg)
        return 0;
    for (unsigned p = 0; p < st->cfg->n_profiles; p++) {
        const struct cfg_profile *pr = &st->cfg->profiles[p];
        for (unsigned m = 0; m < pr->n_matches; m++) {
            const struct cfg_match *mt = &pr->matches[m];
            if (mt->kind != CFG_MATCH_TCP)
                continue;
            if (st->n_tcp == ST_MAX_TCP_PORTS) {
                errorf(st, "%s: more than %u network slots", st->cfg->path, ST_MAX_TCP_PORTS);
                return -1;
            }
            struct eng_tcp_options to = {.profile = p};
            int rc = eng_tcp_source_new(&st->loop, st->eng, mt->host, mt->port, &to,
                                        &st->tcp[st->n_tcp]);
            if (rc) {
                errorf(st, "profile %s: tcp:%s:%u: %s", pr->name, mt->host, mt->port,
                       st_strerror(rc));
                return -1;
            }
            st->n_tcp++;
        }
    }
    return 0;
}

static const char *slot_name(const char *port, void *user_data)
{
    struct station *st = user_data;
    const struct cfg_slot *slot = st->cfg ? cfg_slot_for_port(st->cfg, port) : NULL;
    return slot ? slot->name : NULL;
}

/* One engine profile per configured profile, in order (their indexes are
 * the ones USB rules and TCP sources name). */
static int add_config_profiles(struct station *st)
{
    const struct cfg_config *cfg = st->cfg;
    bool have_key = false;
    char err[CFG_ERROR_MAX];
    if (cfg->minisign_key[0]) {
        if (eng_trust_load_pubkey(cfg->minisign_key, &st->signer, err, sizeof(err)) != 0) {
            errorf(st, "%s", err);
            return -1;
        }
        have_key = true;
    }
    st->profiles_loading = cfg->n_profiles;
    for (unsigned p = 0; p < cfg->n_profiles; p++) {
        const struct cfg_profile *pr = &cfg->profiles[p];
        struct eng_profile_options po = {
            .reply_timeout_ms = pr->timeout_ms,
            .min_rate_bps = pr->min_rate_bps,
            .retries = pr->retries,
            .signer = have_key ? &st->signer : NULL,
            .require_signatures = cfg->require_signatures,
            .hash_cache = st->hash_cache[0] ? st->hash_cache : NULL,
        };
        int rc = eng_engine_add_profile(st->eng, pr->name, pr->recipe, &po, on_loaded, st, NULL);
        if (rc) {
            errorf(st, "profile %s: cannot load recipe %s: %s", pr->name, pr->recipe_path,
                   st_strerror(rc));
            st->profiles_loading -= cfg->n_profiles - p;
            return -1;
        }
    }
    return 0;
}

/* ---- SIGHUP: reload the configuration ----
 *
 * The new configuration's profiles are added to the engine after the
 * current ones and load off the loop; once all have loaded, the old ones
 * are dropped (eng_engine_drop_profiles), so devices arriving from then on
 * get the new profiles under the same indexes, while running sessions
 * finish on the profile they hold. A file that does not load, or an image
 * that fails its checks, leaves the station on the previous configuration.
 * What is wired at start stays: USB rules and network slots keep the
 * matches of the first configuration, simulated devices their profile
 * index; slot names, recipes, images and profile settings follow the file. */

static void finish_reload(struct station *st)
{
    struct cfg_config *cfg = st->next_cfg;
    unsigned n_old = st->cfg->n_profiles;
    st->next_cfg = NULL;
    if (st->reload_failed || st->stopping) {
        if (eng_engine_drop_profiles(st->eng, n_old, st->reload_added) != 0)
            errorf(st, "internal error: cannot drop the profiles of a failed reload");
        if (!st->stopping)
            note(st, UI_NOTE_ERROR,
                 "config reload failed: %s; still running on the previous "
                 "configuration",
                 st->reload_err);
        cfg_free(cfg);
    } else {
        if (eng_engine_drop_profiles(st->eng, 0, n_old) != 0)
            errorf(st, "internal error: cannot drop the previous configuration's profiles");
        bool same = cfg->n_profiles == n_old;
        for (unsigned p = 0; same && p < n_old; p++)
            same = !strcmp(cfg->profiles[p].name, st->cfg->profiles[p].name);
        st->old_cfgs[st->n_old_cfgs++] = st->cfg; /* room made by start_reload */
        st->cfg = cfg;
        const struct cfg_recipe *r = cfg->profiles[0].recipe;
        ui_model_set_station(&st->model, st->station_id, r->name, r->version, st->model.started_ms);
        note(st, UI_NOTE_INFO, "config reloaded: %u profiles", cfg->n_profiles);
        unsigned n;
        const struct eng_image_info *im = eng_engine_images(st->eng, &n);
        for (unsigned i = 0; i < n; i++)
            note(st, UI_NOTE_INFO, "image %s %s %" PRIu64 " bytes sha256 %s%s", im[i].name,
                 im[i].path, im[i].size, im[i].sha256,
                 im[i].remembered ? " (remembered: file unchanged)" : "");
        if (!same)
            note(st, UI_NOTE_WARN,
                 "config reload: the [profile] list changed; USB rules and "
                 "network slots keep the first configuration's matches until a restart");
    }
    if (st->reload_again && !st->stopping)
        start_reload(st);
}

static void reload_step_done(struct station *st)
{
    if (--st->reload_loading == 0)
        finish_reload(st);
}

static void on_reload_loaded(int status, const char *message, void *user_data)
{
    struct station *st = user_data;
    if (status && !st->reload_failed) {
        st->reload_failed = true;
        snprintf(st->reload_err, sizeof(st->reload_err), "%s", message);
    }
    reload_step_done(st);
}

static void start_reload(struct station *st)
{
    char err[CFG_ERROR_MAX];
    struct cfg_config *cfg;
    struct eng_pubkey key;
    st->reload_again = false;
    if (cfg_load(st->opts->config_path, &cfg, err, sizeof(err)) != 0) {
        note(st, UI_NOTE_ERROR,
             "config reload failed: %s; still running on the previous "
             "configuration",
             err);
        return;
    }
    if (!cfg->n_profiles) {
        snprintf(err, sizeof(err), "%s: no [profile] section: nothing to flash", cfg->path);
        goto out_refuse;
    }
    if (cfg->minisign_key[0] &&
        eng_trust_load_pubkey(cfg->minisign_key, &key, err, sizeof(err)) != 0)
        goto out_refuse;
    struct cfg_config **old = realloc(st->old_cfgs, (st->n_old_cfgs + 1) * sizeof(*old));
    if (!old) {
        snprintf(err, sizeof(err), "%s", st_strerror(ST_ENOMEM));
        goto out_refuse;
    }
    st->old_cfgs = old;
    st->next_cfg = cfg;
    st->reload_failed = false;
    st->reload_added = 0;
    st->reload_loading = 1; /* held while adding: a profile without images calls back at once */
    for (unsigned p = 0; p < cfg->n_profiles; p++) {
        const struct cfg_profile *pr = &cfg->profiles[p];
        struct eng_profile_options po = {
            .reply_timeout_ms = pr->timeout_ms,
            .min_rate_bps = pr->min_rate_bps,
            .retries = pr->retries,
            .signer = cfg->minisign_key[0] ? &key : NULL,
            .require_signatures = cfg->require_signatures,
            .hash_cache = st->hash_cache[0] ? st->hash_cache : NULL,
        };
        st->reload_loading++;
        int rc =
            eng_engine_add_profile(st->eng, pr->name, pr->recipe, &po, on_reload_loaded, st, NULL);
        if (rc) {
            st->reload_loading--;
            st->reload_failed = true;
            snprintf(st->reload_err, sizeof(st->reload_err),
                     "profile %s: cannot load recipe %s: %s", pr->name, pr->recipe_path,
                     st_strerror(rc));
            break;
        }
        st->reload_added++;
    }
    reload_step_done(st);
    return;

out_refuse:
    note(st, UI_NOTE_ERROR,
         "config reload failed: %s; still running on the previous "
         "configuration",
         err);
    cfg_free(cfg);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    struct station *st = h->data;
    if (st->stopping)
        return;
    if (st->profiles_loading > 0 || st->next_cfg) {
        st->reload_again = true; /* once the load under way has ended */
        return;
    }
    note(st, UI_NOTE_INFO, "SIGHUP: reloading %s", st->opts->config_path);
    start_reload(st);
}

/* ---- the loop's clock, and its latency probe (bench/bench_loop.c, docs/BENCHMARKS.md) ----
 *
 * With the environment variable STATION_LOOP_STATS=FILE, st_run() measures
 * how late its loop runs and appends one line to FILE at exit:
 *
 *   loop samples=N p50_us=A p99_us=B max_us=C over_2ms=K over_20ms=L
 *        busy_pct=P iter_max_us=I max_at_ms=T
 *
 * A 1 ms repeating timer is the probe: its stall is the time from when it
 * was due (previous fire + 1 ms, by uv_hrtime) to when it actually ran,
 * kept in a histogram of 10 µs buckets up to 100 ms (p50/p99 are bucket
 * upper edges; max is exact), from the start of the run until the station
 * begins to stop (loop_stats_stop). libuv keeps time in whole
 * milliseconds and a VM wakes a sleeping CPU late, so an idle loop already
 * shows up to about 1 ms (p99 0.2-1.9 ms on these machines, by how busy
 * the host is). busy_pct is the share of the
 * run spent outside the poll wait (libuv's idle-time metric); iter_max_us is
 * the longest single loop iteration outside the poll wait; max_at_ms is when
 * the worst stall ended, from the start of the run. Without the
 * variable only the clock below runs. The handles are unref'd: they never
 * keep the loop alive.
 *
 * The clock (always on): libuv reads the time once per iteration, before
 * the timers run, and computes the poll timeout from that reading. When
 * the iteration's callbacks took T ms (many devices' transfers completing
 * together), a timer that fell due meanwhile still waits up to T ms more in
 * the poll, and a paced device loses that time on every transfer (32
 * devices at 40 MB/s kept 70-88 % of their pace instead of 97-99 %:
 * docs/BENCHMARKS.md, B5). A prepare callback refreshes the loop's time
 * just before that timeout is computed. */
#define LOOP_STATS_BUCKET_NS 10000u
#define LOOP_STATS_BUCKETS 10000u /* 100 ms */

struct loop_stats {
    bool on; /* STATION_LOOP_STATS given */
    uv_timer_t timer;
    uv_prepare_t prepare; /* the clock; with `on` also the iteration accounting */
    uint64_t last_ns, start_ns, start_idle_ns;
    uint64_t prev_prepare_ns, prev_idle_ns, iter_max_ns;
    uint64_t samples, max_ns, max_at_ns, over_2ms, over_20ms;
    bool stopped; /* the station began to stop: measuring ended */
    uint64_t stopped_elapsed_ns, stopped_idle_ns;
    uint32_t hist[LOOP_STATS_BUCKETS + 1]; /* the last one: 100 ms and more */
    char path[512];
};

static void loop_stats_tick(uv_timer_t *t)
{
    struct loop_stats *ls = t->data;
    uint64_t now = uv_hrtime();
    uint64_t due = ls->last_ns + 1000000u;
    uint64_t late = now > due ? now - due : 0;
    ls->last_ns = now;
    ls->samples++;
    if (late > ls->max_ns) {
        ls->max_ns = late;
        ls->max_at_ns = now - ls->start_ns;
    }
    ls->over_2ms += late > 2000000u;
    ls->over_20ms += late > 20000000u;
    uint64_t b = late / LOOP_STATS_BUCKET_NS;
    ls->hist[b < LOOP_STATS_BUCKETS ? b : LOOP_STATS_BUCKETS]++;
}

/* Before each poll wait: the time since the previous one, less the wait. */
static void loop_stats_prepare(uv_prepare_t *p)
{
    struct loop_stats *ls = p->data;
    uv_update_time(p->loop); /* the clock: see above */
    if (!ls->on || ls->stopped)
        return;
    uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(p->loop);
    if (ls->prev_prepare_ns) {
        uint64_t span = now - ls->prev_prepare_ns, waited = idle - ls->prev_idle_ns;
        uint64_t busy = span > waited ? span - waited : 0;
        if (busy > ls->iter_max_ns)
            ls->iter_max_ns = busy;
    }
    ls->prev_prepare_ns = now;
    ls->prev_idle_ns = idle;
}

static struct loop_stats *loop_stats_start(uv_loop_t *loop)
{
    const char *path = getenv("STATION_LOOP_STATS");
    struct loop_stats *ls = calloc(1, sizeof(*ls));
    if (!ls)
        return NULL; /* no clock: timers are only later */
    uv_prepare_init(loop, &ls->prepare);
    ls->prepare.data = ls;
    uv_prepare_start(&ls->prepare, loop_stats_prepare);
    uv_unref((uv_handle_t *)&ls->prepare);
    if (!path || !path[0])
        return ls;
    ls->on = true;
    snprintf(ls->path, sizeof(ls->path), "%s", path);
    uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
    uv_timer_init(loop, &ls->timer);
    ls->timer.data = ls;
    ls->start_ns = ls->last_ns = uv_hrtime();
    ls->start_idle_ns = uv_metrics_idle_time(loop);
    uv_timer_start(&ls->timer, loop_stats_tick, 1, 1);
    uv_unref((uv_handle_t *)&ls->timer);
    return ls;
}

static uint64_t loop_stats_quantile_us(const struct loop_stats *ls, double q)
{
    uint64_t want = (uint64_t)((double)ls->samples * q), seen = 0;
    for (unsigned b = 0; b <= LOOP_STATS_BUCKETS; b++) {
        seen += ls->hist[b];
        if (seen > want || (seen == ls->samples && seen))
            return b == LOOP_STATS_BUCKETS ? ls->max_ns / 1000u
                                           : (uint64_t)(b + 1) * LOOP_STATS_BUCKET_NS / 1000u;
    }
    return 0;
}

/* The station begins to stop: the probe's figures end here. What follows
 * (the database's last checkpoint and fsync, freeing the images: 18 ms on
 * an idle station, a 64 MiB demo image's pages alone 10 ms) keeps no
 * device waiting. */
static void loop_stats_stop(struct loop_stats *ls, uv_loop_t *loop)
{
    if (!ls || !ls->on || ls->stopped)
        return;
    ls->stopped = true;
    ls->stopped_elapsed_ns = uv_hrtime() - ls->start_ns;
    ls->stopped_idle_ns = uv_metrics_idle_time(loop) - ls->start_idle_ns;
    uv_timer_stop(&ls->timer);
}

/* After uv_run() returned: close the handles, write the probe's line, free. */
static void loop_stats_finish(struct loop_stats *ls, uv_loop_t *loop)
{
    if (!ls)
        return;
    loop_stats_stop(ls, loop);
    uint64_t elapsed = ls->stopped_elapsed_ns, idle = ls->stopped_idle_ns;
    if (ls->on)
        uv_close((uv_handle_t *)&ls->timer, NULL);
    uv_close((uv_handle_t *)&ls->prepare, NULL);
    uv_run(loop, UV_RUN_DEFAULT); /* only the closes are left */
    FILE *f = ls->on ? fopen(ls->path, "a") : NULL;
    if (f) {
        fprintf(f,
                "loop samples=%" PRIu64 " p50_us=%" PRIu64 " p99_us=%" PRIu64 " max_us=%" PRIu64
                " over_2ms=%" PRIu64 " over_20ms=%" PRIu64 " busy_pct=%.1f iter_max_us=%" PRIu64
                " max_at_ms=%" PRIu64 "\n",
                ls->samples, loop_stats_quantile_us(ls, 0.50), loop_stats_quantile_us(ls, 0.99),
                ls->max_ns / 1000u, ls->over_2ms, ls->over_20ms,
                elapsed ? 100.0 * (double)(elapsed > idle ? elapsed - idle : 0) / (double)elapsed
                        : 0.0,
                ls->iter_max_ns / 1000u, ls->max_at_ns / 1000000u);
        fclose(f);
    }
    free(ls);
}

static int apply_image_overrides(struct station *st, struct cfg_recipe *r)
{
    for (unsigned i = 0; i < st->opts->n_images; i++) {
        const char *spec = st->opts->images[i];
        const char *eq = strchr(spec, '=');
        bool found = false;
        if (!eq || eq == spec || !eq[1]) {
            errorf(st, "--image %s: expected NAME=PATH", spec);
            return -1;
        }
        for (unsigned j = 0; j < r->n_images; j++) {
            struct cfg_image *img = &r->images[j];
            if (strlen(img->name) == (size_t)(eq - spec) &&
                !strncmp(img->name, spec, (size_t)(eq - spec))) {
                if (strlen(eq + 1) >= sizeof(img->path)) {
                    errorf(st, "--image %s: path too long", spec);
                    return -1;
                }
                snprintf(img->path, sizeof(img->path), "%s", eq + 1);
                found = true;
            }
        }
        if (!found) {
            errorf(st, "--image %s: the recipe has no image named \"%.*s\"", spec, (int)(eq - spec),
                   spec);
            return -1;
        }
    }
    return 0;
}

/* The `station watch` socket: --socket PATH, else beside the database.
 * Watching is optional: a default socket that cannot be made is a warning;
 * a --socket that cannot is an error (-1). */
static int start_publisher(struct station *st)
{
    char path[PATH_MAX], err[PATH_MAX + 200];
    const char *want = st->opts->socket_path;
    if (!want) {
        if (st_publisher_default_path(st->opts->db_path, path, sizeof(path)) != 0) {
            note(st, UI_NOTE_WARN,
                 "watch socket: %s.sock is too long for a Unix socket; "
                 "no 'station watch' without --socket PATH",
                 st->opts->db_path);
            return 0;
        }
        want = path;
    }
    int rc = st_publisher_new(&st->loop, &st->model, want, NULL, &st->pub, err, sizeof(err));
    if (rc) {
        if (st->opts->socket_path) {
            errorf(st, "%s", err);
            return -1;
        }
        note(st, UI_NOTE_WARN, "%s; no 'station watch' for this run", err);
        return 0;
    }
    note(st, UI_NOTE_INFO, "watch: station watch --socket %s", want);
    return 0;
}

/* The simulated rack's DFU units: plain DFU 1.1 boards with room for a
 * firmware of up to 1 MiB. They start in run-time mode, running their
 * application, when the recipe detaches before its first download or
 * verify; otherwise in their DFU bootloader. */
static void sim_dfu_units(const struct cfg_recipe *r, struct eng_vdfu_config *dc,
                          double *runtime_share)
{
    memset(dc, 0, sizeof(*dc));
    dc->n_alts = 1;
    snprintf(dc->alts[0].name, sizeof(dc->alts[0].name), "Flash");
    dc->alts[0].size = 1u << 20;
    *runtime_share = 0;
    for (unsigned i = 0; i < r->n_steps; i++) {
        enum cfg_step_kind k = r->steps[i].kind;
        if (k == CFG_STEP_DETACH)
            *runtime_share = 1;
        if (k == CFG_STEP_DETACH || k == CFG_STEP_DFU_DOWNLOAD || k == CFG_STEP_DFU_VERIFY)
            break;
    }
}

int st_run(const struct st_run_options *o)
{
    struct station st_storage, *st = &st_storage;
    struct st_run_options opts = *o;
    struct cfg_recipe recipe;
    char errbuf[600];
    int rc;

    memset(st, 0, sizeof(*st));
    if (!opts.out)
        opts.out = stdout;
    if (!opts.err)
        opts.err = stderr;
    st->opts = &opts;
    if (opts.config_path) {
        char err[CFG_ERROR_MAX];
        if (cfg_load(opts.config_path, &st->cfg, err, sizeof(err)) != 0) {
            errorf(st, "%s", err);
            return ST_EXIT_USAGE;
        }
        if (!opts.db_path)
            opts.db_path = st->cfg->db;
        if (!opts.station_id && st->cfg->id[0])
            opts.station_id = st->cfg->id;
        if (opts.n_images) {
            errorf(st, "--image: with -c, images come from the recipe files");
            cfg_free(st->cfg);
            return ST_EXIT_USAGE;
        }
    }
    if (!opts.db_path)
        opts.db_path = "station.db";
    if (!opts.no_hash_cache)
        st_hash_cache_dir(opts.db_path, st->hash_cache, sizeof(st->hash_cache));
    if (opts.station_id)
        snprintf(st->station_id, sizeof(st->station_id), "%s", opts.station_id);
    else if (gethostname(st->station_id, sizeof(st->station_id) - 1) != 0)
        snprintf(st->station_id, sizeof(st->station_id), "station");

    if (st->cfg && st->cfg->n_profiles)
        recipe = *st->cfg->profiles[0].recipe; /* for the header; each profile has its own */
    else
        cfg_recipe_default(&recipe, opts.system_bytes);
    if (apply_image_overrides(st, &recipe) != 0 || (opts.n_tcp && tcp_sources(st, false) <= 0)) {
        cfg_free(st->cfg);
        return ST_EXIT_USAGE;
    }
    if (st->cfg && !st->cfg->n_profiles) {
        errorf(st, "%s: no [profile] section: nothing to flash", st->cfg->path);
        cfg_free(st->cfg);
        return ST_EXIT_USAGE;
    }

    rc = db_open(opts.db_path, &st->db, errbuf, sizeof(errbuf));
    if (rc) {
        errorf(st, "%s", errbuf);
        cfg_free(st->cfg);
        return ST_EXIT_USAGE;
    }
    if (opts.db_busy_ms)
        db_set_busy_timeout(st->db, opts.db_busy_ms);
    if (st_serials_new(st->db, opts.serial_policy, &st->serials) != 0) {
        db_close(st->db);
        return ST_EXIT_INTERNAL;
    }
    ui_model_init(&st->model);
    ui_model_set_station(&st->model, st->station_id, recipe.name, recipe.version, eng_now_ms());
    /* The dashboard on a terminal unless --headless; lines otherwise. */
    bool want_dash = !opts.headless && isatty(fileno(opts.out));
    if (!want_dash && ui_headless_new(opts.out, &st->model, &st->out) != 0) {
        db_close(st->db);
        st_serials_free(st->serials);
        return ST_EXIT_INTERNAL;
    }
    ui_headless_set_format(st->out, opts.log_format == ST_LOG_JSON ? UI_LOG_JSON : UI_LOG_TEXT);
    if (db_recovered_count(st->db))
        note(st, UI_NOTE_WARN, "recovered %u interrupted session(s) as ABORTED",
             db_recovered_count(st->db));

    int exit_code = ST_EXIT_INTERNAL;
    uv_loop_init(&st->loop);
    struct eng_options eo = {
        .first_session_id = db_next_session_id(st->db),
        .reply_timeout_ms = opts.reply_timeout_ms,
        .serial_check = on_serial_check,
        .slot_name = slot_name,
        .max_sessions = st->cfg ? st->cfg->max_sessions : 0,
    };
    rc = eng_engine_new(&st->loop, &eo, on_event, st, &st->eng);
    if (rc) {
        errorf(st, "cannot start the engine: %s", st_strerror(rc));
        goto out_loop;
    }
    if (opts.simulate) {
        /* [simulate] gives the defaults; command-line options win. */
        const struct cfg_simulate *cs =
            st->cfg && st->cfg->simulate.present ? &st->cfg->simulate : NULL;
        unsigned profile = 0;
        if (cs && cs->profile[0])
            for (unsigned p = 0; p < st->cfg->n_profiles; p++)
                if (!strcmp(st->cfg->profiles[p].name, cs->profile))
                    profile = p;
        struct eng_rack_options ro = {
            .count = opts.simulate,
            .pace_mbps = opts.pace_mbps >= 0 ? opts.pace_mbps
                         : cs                ? cs->pace_mbps
                                             : 8.0,
            .max_download = opts.max_download ? opts.max_download
                            : cs              ? cs->max_download
                                              : 0,
            .plug_interval_ms = opts.plug_interval_ms        ? opts.plug_interval_ms
                                : cs && cs->plug_interval_ms ? cs->plug_interval_ms
                                                             : 20,
            .replug_ms = opts.replug_ms        ? opts.replug_ms
                         : cs && cs->replug_ms ? cs->replug_ms
                                               : 1500,
            .max_units = opts.exit_after,
            .info_lines = opts.info_lines,
            .seed = opts.seed ? opts.seed
                    : cs      ? cs->seed
                              : 0,
            .profile = profile,
            .fault_percent = opts.fault_percent,
            .flap_position = opts.flap_position,
            .flap_ms = opts.flap_ms,
            /* Nobody reads the simulated partitions' hashes here, and the
             * models share the station's loop: hashing would be their CPU
             * counted as the station's. */
            .no_hash = true,
        };
        if (st->cfg && st->cfg->profiles[profile].protocol == CFG_PROTO_DFU) {
            ro.dfu = true;
            ro.dfu_config = &st->sim_dfu;
            sim_dfu_units(st->cfg->profiles[profile].recipe, &st->sim_dfu, &ro.runtime_share);
        }
        rc = eng_rack_new(&st->loop, st->eng, &ro, &st->rack);
        if (rc) {
            errorf(st, "--simulate %u: %s", opts.simulate, st_strerror(rc));
            exit_code = ST_EXIT_USAGE;
            goto out_engine;
        }
        for (unsigned i = 0; i < opts.n_faults; i++) {
            rc = eng_rack_add_fault_spec(st->rack, opts.faults[i]);
            if (rc) {
                errorf(st,
                       ro.dfu ? "--fault %s: %s (expected N:KIND=REQ[@K] with KIND stall, "
                                "silent, disconnect, garbage, oversize, short or slow, "
                                "N:errwrite=BLOCK, N:corrupt=OFFSET, N:stuck=BLOCK or "
                                "N:disconnect|fail|slow=manifest, with N from 1 to %u)"
                              : "--fault %s: %s (expected N:fail=CMD, N:silent=CMD, "
                                "N:garbage=CMD, N:oversize=CMD, or N:disconnect|slow|short|"
                                "stall=CMD|BYTES with N from 1 to %u)",
                       opts.faults[i], rc == ST_ERANGE ? "no such device" : "bad fault",
                       opts.simulate);
                exit_code = ST_EXIT_USAGE;
                goto out_engine;
            }
        }
        for (unsigned i = 0; cs && i < cs->n_faults && !opts.n_faults; i++) {
            rc = eng_rack_add_fault_spec(st->rack, cs->faults[i]);
            if (rc) {
                errorf(st, "%s: [simulate] fault %s: %s", st->cfg->path, cs->faults[i],
                       rc == ST_ERANGE ? "no such device" : "bad fault");
                exit_code = ST_EXIT_USAGE;
                goto out_engine;
            }
        }
    } else if (opts.n_faults) {
        errorf(st, "--fault needs --simulate");
        exit_code = ST_EXIT_USAGE;
        goto out_engine;
    }
    /* A real line: USB devices, unless only virtual or network ones were asked for. */
    if (opts.usb || (st->cfg && !opts.simulate && !opts.n_tcp)) {
        struct eng_usb_options uo;
        st_usb_rules(st->cfg, &uo);
        rc = eng_usb_new(&st->loop, st->eng, &uo, &st->usb, errbuf, sizeof(errbuf));
        if (rc) {
            errorf(st, "%s", errbuf);
            goto out_engine;
        }
    }

    rc = db_writer_start(st->db, &st->loop, on_db_error, st);
    if (rc) {
        errorf(st, "cannot start the database writer: %s", st_strerror(rc));
        goto out_engine;
    }
    uv_signal_init(&st->loop, &st->sigint);
    uv_signal_init(&st->loop, &st->sigterm);
    st->sigint.data = st->sigterm.data = st;
    uv_signal_start(&st->sigint, on_signal, SIGINT);
    uv_signal_start(&st->sigterm, on_signal, SIGTERM);
    if (opts.config_path) {
        uv_signal_init(&st->loop, &st->sighup);
        st->sighup.data = st;
        uv_signal_start(&st->sighup, on_sighup, SIGHUP);
    }
    /* A device that closes its TCP connection must fail its write with
     * EPIPE, not kill the station. */
    signal(SIGPIPE, SIG_IGN);
    if (start_publisher(st) != 0)
        shutdown_station(st, ST_EXIT_USAGE);
    if (want_dash) {
        struct ui_dash_options dopts = {.in_fd = STDIN_FILENO, .out = opts.out};
        rc = ui_dash_new(&st->loop, &st->model, &dopts, on_ui_action, st, &st->dash);
        if (rc) {
            errorf(st, "cannot start the dashboard (%s); printing lines instead", st_strerror(rc));
            if (ui_headless_new(opts.out, &st->model, &st->out) == 0)
                ui_headless_set_format(st->out,
                                       opts.log_format == ST_LOG_JSON ? UI_LOG_JSON : UI_LOG_TEXT);
        }
    }

    if (st->cfg) {
        if (add_config_profiles(st) != 0)
            shutdown_station(st, ST_EXIT_USAGE);
    } else {
        st->profiles_loading = 1;
        struct eng_profile_options po = {.hash_cache = st->hash_cache[0] ? st->hash_cache : NULL};
        rc = eng_engine_add_profile(st->eng, "default", &recipe, &po, on_loaded, st, NULL);
        if (rc) {
            errorf(st, "cannot load the recipe's images: %s", st_strerror(rc));
            shutdown_station(st, ST_EXIT_USAGE);
        }
    }
    note(st, UI_NOTE_INFO, "station %s: recipe %s %s, %u simulated device(s), database %s",
         st->station_id, recipe.name, recipe.version, opts.simulate, opts.db_path);
    st->loop_stats = loop_stats_start(&st->loop); /* clock (+ probe if asked) */
    uv_run(&st->loop, UV_RUN_DEFAULT);
    loop_stats_finish(st->loop_stats, &st->loop);
    st->loop_stats = NULL;
    exit_code = st->exit_code;
    if (st->dash) {
        /* the terminal is ours again */
        ui_dash_free(st->dash);
        st->dash = NULL;
        if (st->deferred_err[0])
            fprintf(opts.err, "station: %s\n", st->deferred_err);
    }
    note(st, UI_NOTE_INFO, "stopped: %u passed, %u failed, %u aborted", st->model.passed,
         st->model.failed, st->model.aborted);
    if (!st->out)
        fprintf(opts.out, "station: stopped: %u passed, %u failed, %u aborted\n", st->model.passed,
                st->model.failed, st->model.aborted);

out_engine:
    if (!st->stopping) {
        /* Never started: nothing is open in the engine but its slots. */
        if (st->rack) {
            eng_rack_stop(st->rack, NULL, NULL);
            uv_run(&st->loop, UV_RUN_DEFAULT);
        }
    }
    if (st->usb && !st->stopping) {
        /* Never started: close its handles before the loop goes. */
        eng_usb_close(st->usb, NULL, NULL);
        uv_run(&st->loop, UV_RUN_DEFAULT);
    }
    eng_usb_free(st->usb);
    eng_rack_free(st->rack);
    for (unsigned i = 0; i < st->n_tcp; i++)
        eng_tcp_source_free(st->tcp[i]);
    free(st->tcp);
    eng_engine_free(st->eng);
    st_publisher_free(st->pub);
out_loop:
    if (uv_loop_close(&st->loop) != 0) {
        errorf(st, "internal error: handles left open at exit");
        exit_code = ST_EXIT_INTERNAL;
    }
    db_close(st->db);
    cfg_free(st->cfg);
    cfg_free(st->next_cfg); /* a reload the stop interrupted */
    for (unsigned i = 0; i < st->n_old_cfgs; i++)
        cfg_free(st->old_cfgs[i]);
    free(st->old_cfgs);
    st_serials_free(st->serials); /* the writer's drain answered every lookup */
    ui_headless_free(st->out);
    ui_model_free(&st->model);
    fflush(opts.out);
    return exit_code;
}

void st_hash_cache_dir(const char *db_path, char *buf, size_t len)
{
    if ((size_t)snprintf(buf, len, "%s.hashes", db_path) >= len)
        buf[0] = '\0';
}
