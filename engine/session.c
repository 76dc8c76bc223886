/*
 * The recipe runner: one session per device occupancy of a slot, running
 * the recipe's steps in order through the fastboot driver. A step ends in
 * step_ok() or step_fail(); the session ends in session_end(), which emits
 * ENG_EV_SESSION_END and then closes the driver before the session is
 * freed, so nothing of it outlives a callback.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/dfu.h"
#include "engine/engine_internal.h"

#define INFO_MAX 4096
/* Room kept at the end of info[] for the "... N more lines" marker: a
 * device that floods INFO lines gets its first lines and a count stored,
 * never an unbounded record. */
#define INFO_MARK_MAX 40
#define PROGRESS_EVERY_MS 100

enum session_phase {
    PH_RUNNING,
    PH_WAIT_DEVICE,  /* the device left to re-enumerate; waiting on the same slot */
    PH_WAIT_VERDICT, /* serialno read; waiting for eng_engine_serial_verdict() */
    PH_ENDING,       /* result known, driver closing */
};

struct eng_session {
    struct eng_engine *eng;
    struct eng_profile *prof; /* referenced while the session lives */
    struct eng_slot *slot;
    struct eng_fb *fb;
    struct eng_dfu *dfu;       /* instead of fb when the transport says ENG_PROTO_DFU */
    struct eng_dfu_plan dplan; /* the running dfu-download/dfu-verify step's segments */
    int64_t id;
    int64_t started_ms;
    enum session_phase phase;
    unsigned step;
    int64_t step_started_ms;
    char step_name[CFG_ARG_MAX + 16];
    unsigned sub; /* position inside a multi-command step */
    char serial[64];
    char product[64];
    uint64_t max_download;
    bool has_slot;                      /* the current flash step's partition is slotted */
    char slot_suffix[4];                /* "_a" once current-slot is known */
    const struct eng_sparse_plan *plan; /* current flash step, when split */
    struct eng_plan_entry *waiting_plan;
    unsigned piece, n_pieces;
    char qual[32]; /* " piece 3/7" in reasons */
    uint64_t bytes, step_bytes;
    int64_t last_progress_ms;
    char info[INFO_MAX];
    size_t info_len;
    unsigned long info_dropped; /* INFO lines of this step beyond info[] */
    uv_timer_t wait_timer;      /* re-enumeration */
    bool wait_timer_open;
    enum eng_result result;
    char failed_step[CFG_ARG_MAX + 16];
    char reason[CFG_ARG_MAX + 16 + 32 + 400 + 8];
};

static void run_step(struct eng_session *s);

static void fill_event(struct eng_session *s, struct eng_event *ev, enum eng_event_type type)
{
    const struct cfg_recipe *r = &s->prof->recipe;
    memset(ev, 0, sizeof(*ev));
    ev->type = type;
    ev->session_id = s->id;
    ev->slot = s->slot->name;
    ev->port = s->slot->port;
    ev->usb_serial = s->slot->t ? s->slot->t->usb_serial : "";
    ev->serial = s->serial[0] ? s->serial : ev->usb_serial;
    ev->product = s->product;
    ev->step = s->step_name;
    ev->step_index = s->step;
    ev->step_count = r->n_steps;
    ev->step_started_ms = s->step_started_ms;
    ev->session_started_ms = s->started_ms;
    ev->session_bytes = s->bytes;
    ev->recipe = r->name;
    ev->recipe_version = r->version;
    ev->n_images = r->n_images;
    ev->images = s->prof->infos;
}

static const struct cfg_step *cur(const struct eng_session *s)
{
    return &s->prof->recipe.steps[s->step];
}

static unsigned reply_timeout(const struct eng_session *s)
{
    unsigned t = cur(s)->timeout_ms;
    if (!t)
        t = s->prof->opts.reply_timeout_ms;
    return t ? t : s->eng->opts.reply_timeout_ms;
}

/* A data step's limit: the base plus its bytes at the minimum rate. */
static unsigned data_timeout(const struct eng_session *s, uint64_t bytes)
{
    uint64_t rate =
        s->prof->opts.min_rate_bps ? s->prof->opts.min_rate_bps : s->eng->opts.min_rate_bps;
    uint64_t ms = reply_timeout(s) + bytes * 1000 / rate;
    return ms > 0x7fffffff ? 0x7fffffff : (unsigned)ms;
}

static void wait_timer_closed(uv_handle_t *h)
{
    struct eng_session *s = h->data;
    struct eng_engine *eng = s->eng;
    struct eng_slot *slot = s->slot;
    enum eng_result result = s->result;
    eng__profile_unref(s->prof);
    free(s);
    eng__session_freed(eng, slot, result);
}

static void fb_closed(void *user_data)
{
    struct eng_session *s = user_data;
    s->fb = NULL;
    s->dfu = NULL;
    uv_close((uv_handle_t *)&s->wait_timer, wait_timer_closed);
}

static void session_end(struct eng_session *s, enum eng_result result)
{
    struct eng_event ev;
    if (s->phase == PH_ENDING)
        return;
    s->phase = PH_ENDING;
    s->result = result;
    uv_timer_stop(&s->wait_timer);
    fill_event(s, &ev, ENG_EV_SESSION_END);
    ev.result = result;
    ev.failed_step =
        result == ENG_RESULT_PASS || result == ENG_RESULT_SKIPPED ? NULL : s->failed_step;
    ev.text = result == ENG_RESULT_PASS ? "" : s->reason;
    ev.bytes_done = s->bytes;
    eng__emit(s->eng, &ev);
    if (s->fb)
        eng_fb_close(s->fb, fb_closed, s);
    else if (s->dfu)
        eng_dfu_close(s->dfu, fb_closed, s);
    else
        fb_closed(s);
}

static void end_step(struct eng_session *s, enum eng_result result, const char *text)
{
    struct eng_event ev;
    fill_event(s, &ev, ENG_EV_STEP_END);
    ev.result = result;
    ev.text = text;
    ev.bytes_done = s->step_bytes;
    ev.bytes_total = s->step_bytes;
    if (s->info_dropped)
        snprintf(s->info + s->info_len, INFO_MAX - s->info_len, "... %lu more lines\n",
                 s->info_dropped);
    else
        s->info[s->info_len] = '\0';
    /* INFO lines travel with the step's end so they land in its record. */
    ev.info = s->info_len || s->info_dropped ? s->info : NULL;
    eng__emit(s->eng, &ev);
}

static void step_ok(struct eng_session *s, const char *text)
{
    end_step(s, ENG_RESULT_PASS, text);
    s->step++;
    run_step(s);
}

static void step_fail(struct eng_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void step_fail(struct eng_session *s, const char *fmt, ...)
{
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    enum eng_result result = s->eng->closing ? ENG_RESULT_ABORTED : ENG_RESULT_FAIL;
    snprintf(s->failed_step, sizeof(s->failed_step), "%s", s->step_name);
    if (result == ENG_RESULT_ABORTED)
        snprintf(s->reason, sizeof(s->reason), "station stopped during %s", s->step_name);
    else
        snprintf(s->reason, sizeof(s->reason), "%s%s: %s", s->step_name, s->qual, detail);
    end_step(s, result, detail);
    session_end(s, result);
}

/* ---- driver callbacks ---- */

static void on_info(struct eng_fb *fb, const char *line, void *user_data)
{
    struct eng_session *s = user_data;
    struct eng_event ev;
    size_t n = strlen(line);
    if (!s->info_dropped && s->info_len + n + 1 + INFO_MARK_MAX <= INFO_MAX) {
        memcpy(s->info + s->info_len, line, n);
        s->info_len += n;
        s->info[s->info_len++] = '\n';
    } else if (s->info_dropped++ > 0) {
        return; /* counted for the record; the log and the screen heard once */
    } else {
        line = "(further INFO lines of this step are counted, not shown)";
    }
    fill_event(s, &ev, ENG_EV_INFO);
    ev.text = line;
    eng__emit(s->eng, &ev);
}

static void on_progress(struct eng_fb *fb, uint64_t done, uint64_t total, void *user_data)
{
    struct eng_session *s = user_data;
    struct eng_event ev;
    int64_t now = (int64_t)uv_now(s->eng->loop);
    if (done < total && now - s->last_progress_ms < PROGRESS_EVERY_MS)
        return;
    s->last_progress_ms = now;
    fill_event(s, &ev, ENG_EV_PROGRESS);
    ev.bytes_done = done;
    ev.bytes_total = total;
    eng__emit(s->eng, &ev);
}

static void on_simple_done(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    struct eng_session *s = user_data;
    if (status)
        step_fail(s, "%s", text);
    else
        step_ok(s, text);
}

static bool value_allowed(const struct cfg_step *st, const char *value)
{
    for (unsigned i = 0; i < st->n_alternatives; i++)
        if (!strcmp(st->alternatives[i], value))
            return true;
    return false;
}

static void on_getvar_done(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    struct eng_session *s = user_data;
    const struct cfg_step *st = cur(s);
    if (status) {
        step_fail(s, "%s", text);
        return;
    }
    if (!strcmp(st->arg, "serialno"))
        snprintf(s->serial, sizeof(s->serial), "%s", text);
    else if (!strcmp(st->arg, "product"))
        snprintf(s->product, sizeof(s->product), "%s", text);
    if (!strcmp(st->arg, "serialno") && s->slot->t && s->slot->t->usb_serial[0] &&
        strcmp(s->slot->t->usb_serial, text) != 0) {
        /* Field note 3: serials differ between modes; record both, flag it. */
        char flagged[200];
        snprintf(flagged, sizeof(flagged), "%.63s (differs from USB iSerial %.63s)", text,
                 s->slot->t->usb_serial);
        step_ok(s, flagged);
        return;
    }
    if (st->n_alternatives && !value_allowed(st, text)) {
        char want[CFG_MAX_ALTERNATIVES * (CFG_NAME_MAX + 1)] = "";
        for (unsigned i = 0; i < st->n_alternatives; i++) {
            if (i)
                strcat(want, "|");
            strcat(want, st->alternatives[i]);
        }
        step_fail(s, "wrong %s: %s (recipe needs %s)", st->arg, text, want);
        return;
    }
    if (!strcmp(st->arg, "serialno") && s->eng->opts.serial_check) {
        /* The step is done; the serial policy decides whether the rest
         * runs. Nothing is sent until eng_engine_serial_verdict(). */
        end_step(s, ENG_RESULT_PASS, text);
        s->step++;
        s->phase = PH_WAIT_VERDICT;
        s->eng->opts.serial_check(s->eng, s->id, s->serial, s->prof->recipe.name,
                                  s->prof->recipe.version, s->eng->user_data);
        return; /* the verdict may already have ended the session */
    }
    step_ok(s, text);
}

void eng_engine_serial_verdict(struct eng_engine *eng, int64_t session_id,
                               enum eng_serial_verdict v, const char *reason)
{
    struct eng_session *s = NULL;

    for (unsigned i = 0; i < eng->n_slots && !s; i++) {
        struct eng_session *c = eng->slots[i]->session;
        if (c && c->id == session_id)
            s = c;
    }
    if (!s || s->phase != PH_WAIT_VERDICT)
        return;
    s->phase = PH_RUNNING;
    switch (v) {
    case ENG_SERIAL_PROCEED:
        run_step(s);
        break;
    case ENG_SERIAL_SKIP:
        snprintf(s->reason, sizeof(s->reason), "%s", reason ? reason : "already done");
        session_end(s, ENG_RESULT_SKIPPED);
        break;
    case ENG_SERIAL_FAIL:
        /* step_name still names the serialno step: no step has begun since. */
        snprintf(s->failed_step, sizeof(s->failed_step), "%s", s->step_name);
        snprintf(s->reason, sizeof(s->reason), "%s", reason ? reason : "serial refused");
        session_end(s, ENG_RESULT_FAIL);
        break;
    }
}

/* ---- flash PART IMAGE: the client's sequence (shared/notes/fastboot.md):
 * has-slot, current-slot when slotted, max-download-size, then one
 * download + flash, or per sparse piece when the image is too large. ---- */

enum flash_sub {
    FL_HAS_SLOT,
    FL_CURRENT_SLOT,
    FL_MAX_DOWNLOAD,
    FL_PLAN,
    FL_DOWNLOAD,
    FL_FLASH,
};

static const char *const flash_sub_name[] = {
    "getvar:has-slot", "getvar:current-slot", "getvar:max-download-size", "split", "download",
    "flash",
};

static void flash_next(struct eng_session *s);

static struct eng_image *step_image(struct eng_session *s)
{
    return eng__image(s->prof, (unsigned)cur(s)->image);
}

static void set_qual(struct eng_session *s)
{
    if (s->n_pieces > 1)
        snprintf(s->qual, sizeof(s->qual), " piece %u/%u", s->piece + 1, s->n_pieces);
    else
        s->qual[0] = '\0';
}

static void on_flash_sub_done(struct eng_fb *fb, int status, const char *text, void *user_data)
{
    struct eng_session *s = user_data;
    if (s->sub == FL_DOWNLOAD) {
        /* Only what the device took counts, also when the download failed. */
        s->bytes += eng_fb_data_sent(fb);
        s->step_bytes += eng_fb_data_sent(fb);
    }
    const struct cfg_step *st = cur(s);
    switch (s->sub) {
    case FL_HAS_SLOT:
        /* A device that does not know the variable has no slots (as the client assumes). */
        if (status && status != ST_EDEVFAIL)
            break;
        s->has_slot = status == 0 && !strcmp(text, "yes");
        s->sub = s->has_slot && !s->slot_suffix[0] ? FL_CURRENT_SLOT : FL_MAX_DOWNLOAD;
        flash_next(s);
        return;
    case FL_CURRENT_SLOT:
        if (status)
            break;
        if (strcmp(text, "a") && strcmp(text, "b") && strcmp(text, "_a") && strcmp(text, "_b")) {
            step_fail(s, "getvar:current-slot: unexpected slot \"%.20s\"", text);
            return;
        }
        snprintf(s->slot_suffix, sizeof(s->slot_suffix), "_%s", text[0] == '_' ? text + 1 : text);
        s->sub = FL_MAX_DOWNLOAD;
        flash_next(s);
        return;
    case FL_MAX_DOWNLOAD: {
        if (status)
            break;
        char *end;
        unsigned long long v = strtoull(text, &end, 0);
        if (*end != '\0' || v == 0) {
            step_fail(s, "getvar:max-download-size: bad value \"%.40s\"", text);
            return;
        }
        s->max_download = v;
        s->sub = FL_PLAN;
        flash_next(s);
        return;
    }
    case FL_DOWNLOAD:
        if (status)
            break;
        s->sub = FL_FLASH;
        flash_next(s);
        return;
    case FL_FLASH:
        if (status)
            break;
        if (++s->piece < s->n_pieces) {
            s->sub = FL_DOWNLOAD;
            set_qual(s);
            flash_next(s);
            return;
        }
        s->qual[0] = '\0';
        step_ok(s, text);
        return;
    default:
        break;
    }
    (void)st;
    step_fail(s, "%s: %s", flash_sub_name[s->sub], text);
}

/* Decide raw or split; may wait for the shared plan. */
static void flash_plan(struct eng_session *s)
{
    struct eng_image *img = step_image(s);
    uint64_t size = eng_image_size(img);
    char changed[CFG_PATH_MAX + 120];
    if (eng_image_check_unchanged(img, changed, sizeof(changed)) != 0) {
        step_fail(s, "%s", changed);
        return;
    }
    s->piece = 0;
    s->plan = NULL;
    if (size <= s->max_download) {
        s->n_pieces = 1;
        s->sub = FL_DOWNLOAD;
        flash_next(s);
        return;
    }
    uint64_t limit = eng_sparse_piece_limit(s->max_download);
    struct eng_plan_entry *e = eng__plan_get(s->prof, (unsigned)cur(s)->image, limit);
    if (!e) {
        step_fail(s, "split: out of memory");
        return;
    }
    if (!e->done) {
        s->waiting_plan = e;
        return; /* eng__session_plan_ready() resumes */
    }
    eng__session_plan_ready(s, e);
}

bool eng__session_waits_for_plan(const struct eng_session *s, const struct eng_plan_entry *e)
{
    return s->phase == PH_RUNNING && s->waiting_plan == e;
}

void eng__session_plan_ready(struct eng_session *s, struct eng_plan_entry *e)
{
    s->waiting_plan = NULL;
    if (e->status) {
        step_fail(s, "cannot split image %s for max-download-size %" PRIu64 ": %s",
                  eng_image_name(step_image(s)), s->max_download, e->message);
        return;
    }
    s->plan = e->plan;
    s->n_pieces = eng_sparse_plan_count(e->plan);
    s->sub = FL_DOWNLOAD;
    set_qual(s);
    flash_next(s);
}

static void flash_next(struct eng_session *s)
{
    const struct cfg_step *st = cur(s);
    struct eng_image *img = step_image(s);
    char cmd[CFG_ARG_MAX + 32]; /* longer than 64 is refused by the driver */
    int rc = 0;
    switch (s->sub) {
    case FL_HAS_SLOT:
        snprintf(cmd, sizeof(cmd), "getvar:has-slot:%s", st->arg);
        rc = eng_fb_command(s->fb, cmd, reply_timeout(s), on_flash_sub_done, s);
        break;
    case FL_CURRENT_SLOT:
        rc = eng_fb_command(s->fb, "getvar:current-slot", reply_timeout(s), on_flash_sub_done, s);
        break;
    case FL_MAX_DOWNLOAD:
        if (s->max_download) {
            s->sub = FL_PLAN;
            flash_next(s);
            return;
        }
        rc = eng_fb_command(s->fb, "getvar:max-download-size", reply_timeout(s), on_flash_sub_done,
                            s);
        break;
    case FL_PLAN:
        flash_plan(s);
        return;
    case FL_DOWNLOAD:
        eng_fb_set_file(s->fb, eng_image_fd(img), eng_image_data(img), eng_image_size(img));
        if (s->plan) {
            const struct eng_sparse_piece *pc = eng_sparse_plan_piece(s->plan, s->piece);
            rc = eng_fb_download_iov(s->fb, pc->iov, pc->n_iov, pc->bytes,
                                     data_timeout(s, pc->bytes), on_flash_sub_done, s);
        } else {
            uint64_t size = eng_image_size(img);
            rc = eng_fb_download(s->fb, eng_image_data(img), size, data_timeout(s, size),
                                 on_flash_sub_done, s);
        }
        break;
    case FL_FLASH: {
        uint64_t size =
            s->plan ? eng_sparse_plan_piece(s->plan, s->piece)->bytes : eng_image_size(img);
        snprintf(cmd, sizeof(cmd), "flash:%s%s", st->arg, s->has_slot ? s->slot_suffix : "");
        rc = eng_fb_command(s->fb, cmd, data_timeout(s, size), on_flash_sub_done, s);
        break;
    }
    }
    if (rc == ST_ENODEV)
        step_fail(s, "%s: device disconnected", flash_sub_name[s->sub]);
    else if (rc)
        step_fail(s, "%s: cannot start: %s", flash_sub_name[s->sub], st_strerror(rc));
}

static void on_wait_timeout(uv_timer_t *t)
{
    struct eng_session *s = t->data;
    step_fail(s, "device did not come back within %g s", s->eng->opts.reenum_timeout_ms / 1000.0);
}

static void on_reboot_bootloader_done(struct eng_fb *fb, int status, const char *text,
                                      void *user_data)
{
    struct eng_session *s = user_data;
    if (status) {
        step_fail(s, "%s", text);
        return;
    }
    /* The device now leaves and comes back on the same port. */
    s->phase = PH_WAIT_DEVICE;
    uv_timer_start(&s->wait_timer, on_wait_timeout, s->eng->opts.reenum_timeout_ms, 0);
    if (!s->slot->present)
        eng__session_device_left(s);
}

/* ---- DFU steps (engine/dfu.h): dfu-download ALT IMAGE, dfu-verify ALT
 * IMAGE, detach. A step after which the device leaves the bus (detach,
 * reset after manifestation) waits for it on the same port, as
 * reboot-bootloader does, unless it was the recipe's last step. ---- */

static void on_dfu_progress(struct eng_dfu *d, uint64_t done, uint64_t total, void *user_data)
{
    on_progress(NULL, done, total, user_data);
}

static void on_dfu_done(struct eng_dfu *d, int status, const char *text, void *user_data)
{
    struct eng_session *s = user_data;
    if (status) {
        step_fail(s, "%s", text);
        return;
    }
    if (eng_dfu_device_left(d) && s->step + 1 < s->prof->recipe.n_steps) {
        s->phase = PH_WAIT_DEVICE;
        uv_timer_start(&s->wait_timer, on_wait_timeout, s->eng->opts.reenum_timeout_ms, 0);
        if (!s->slot->present)
            eng__session_device_left(s);
        return;
    }
    step_ok(s, text);
}

static void dfu_step(struct eng_session *s)
{
    const struct cfg_step *st = cur(s);
    /* busy_ms: how long a device may stay in dfuDNBUSY per block */
    struct eng_dfu_limits lim = {.request_ms = reply_timeout(s), .busy_ms = reply_timeout(s)};
    char err[CFG_PATH_MAX + 200];
    int rc;
    if (st->kind == CFG_STEP_DETACH) {
        rc = eng_dfu_detach(s->dfu, &lim, on_dfu_done, s);
    } else {
        struct eng_image *img = step_image(s);
        const char *bad = NULL;
        const struct eng_dfu_file *f = eng_image_dfu_file(img, &bad);
        if (!f) {
            step_fail(s, "%s", bad);
            return;
        }
        if (eng_image_check_unchanged(img, err, sizeof(err)) != 0 ||
            eng_dfu_plan_file(s->slot->t, st->arg, f, eng_image_path(img),
                              s->prof->recipe.allow_raw_dfu, &s->dplan, err, sizeof(err)) != 0) {
            step_fail(s, "%s", err);
            return;
        }
        /* Full-speed DFU moves tens of KB/s, not fastboot's MB/s: unless
         * the profile sets a rate, the whole step gets 16 KiB/s. */
        uint64_t rate = s->prof->opts.min_rate_bps ? s->prof->opts.min_rate_bps : 16384;
        uint64_t ms = reply_timeout(s) + s->dplan.bytes * 1000 / rate;
        lim.total_ms = ms > 0x7fffffff ? 0x7fffffff : (unsigned)ms;
        if (st->kind == CFG_STEP_DFU_DOWNLOAD)
            rc = eng_dfu_download(s->dfu, s->dplan.alt, s->dplan.segs, s->dplan.n_segs, &lim,
                                  on_dfu_done, s);
        else
            rc = eng_dfu_verify(s->dfu, s->dplan.alt, s->dplan.segs, s->dplan.n_segs, &lim,
                                on_dfu_done, s);
        if (rc == 0 && st->kind == CFG_STEP_DFU_DOWNLOAD) {
            s->bytes += s->dplan.bytes;
            s->step_bytes += s->dplan.bytes;
        }
    }
    if (rc == ST_ENODEV)
        step_fail(s, "device disconnected");
    else if (rc)
        step_fail(s, "cannot start: %s", st_strerror(rc));
}

static void begin_step(struct eng_session *s)
{
    struct eng_event ev;
    cfg_step_name(cur(s), s->step_name, sizeof(s->step_name));
    s->step_started_ms = eng_now_ms();
    s->step_bytes = 0;
    s->info_len = 0;
    s->info_dropped = 0;
    s->sub = 0;
    s->qual[0] = '\0';
    s->plan = NULL;
    s->waiting_plan = NULL;
    s->n_pieces = 0;
    s->has_slot = false;
    fill_event(s, &ev, ENG_EV_STEP_BEGIN);
    eng__emit(s->eng, &ev);
}

static void run_step(struct eng_session *s)
{
    const struct cfg_recipe *r = &s->prof->recipe;
    char cmd[CFG_ARG_MAX + 32]; /* longer than 64 is refused by the driver */
    int rc = 0;
    if (s->eng->closing) {
        step_fail(s, "station stopped");
        return;
    }
    if (s->step >= r->n_steps) {
        s->step_name[0] = '\0';
        session_end(s, ENG_RESULT_PASS);
        return;
    }
    begin_step(s);
    const struct cfg_step *st = cur(s);
    bool dfu_kind = st->kind == CFG_STEP_DFU_DOWNLOAD || st->kind == CFG_STEP_DFU_VERIFY ||
                    st->kind == CFG_STEP_DETACH;
    if (s->dfu && !dfu_kind) {
        step_fail(s, "a fastboot step cannot run on a DFU device");
        return;
    }
    switch (st->kind) {
    case CFG_STEP_GETVAR:
        snprintf(cmd, sizeof(cmd), "getvar:%s", st->arg);
        rc = eng_fb_command(s->fb, cmd, reply_timeout(s), on_getvar_done, s);
        break;
    case CFG_STEP_FLASH:
        flash_next(s);
        return;
    case CFG_STEP_ERASE:
        snprintf(cmd, sizeof(cmd), "erase:%s", st->arg);
        rc = eng_fb_command(s->fb, cmd, reply_timeout(s), on_simple_done, s);
        break;
    case CFG_STEP_REBOOT:
        rc = eng_fb_command(s->fb, "reboot", reply_timeout(s), on_simple_done, s);
        break;
    case CFG_STEP_REBOOT_BOOTLOADER:
        rc = eng_fb_command(s->fb, "reboot-bootloader", reply_timeout(s), on_reboot_bootloader_done,
                            s);
        break;
    case CFG_STEP_OEM:
        snprintf(cmd, sizeof(cmd), "oem %s", st->arg);
        rc = eng_fb_command(s->fb, cmd, reply_timeout(s), on_simple_done, s);
        break;
    case CFG_STEP_SET_ACTIVE:
        snprintf(cmd, sizeof(cmd), "set_active:%s", st->arg);
        rc = eng_fb_command(s->fb, cmd, reply_timeout(s), on_simple_done, s);
        break;
    case CFG_STEP_DFU_DOWNLOAD:
    case CFG_STEP_DFU_VERIFY:
    case CFG_STEP_DETACH:
        if (!s->dfu) {
            step_fail(s, "a DFU step cannot run on a fastboot device");
            return;
        }
        dfu_step(s);
        return;
    }
    if (rc == ST_ENODEV)
        step_fail(s, "device disconnected");
    else if (rc == ST_EINVAL)
        step_fail(s, "command \"%.80s\" is longer than fastboot's %d bytes", cmd,
                  ENG_FB_COMMAND_MAX);
    else if (rc)
        step_fail(s, "cannot start: %s", st_strerror(rc));
}

static int make_driver(struct eng_session *s)
{
    if (s->slot->t && s->slot->t->protocol_kind == ENG_PROTO_DFU) {
        struct eng_dfu_hooks dh = {.progress = on_dfu_progress, .user_data = s};
        return eng_dfu_new(s->eng->loop, s->slot->t, &dh, &s->dfu);
    }
    struct eng_fb_hooks hooks = {.info = on_info, .progress = on_progress, .user_data = s};
    return eng_fb_new(s->eng->loop, s->slot->t, &hooks, s->eng->opts.chunk_size, &s->fb);
}

int eng__session_start(struct eng_engine *eng, struct eng_slot *slot, struct eng_profile *prof)
{
    struct eng_event ev;
    struct eng_session *s = calloc(1, sizeof(*s));
    if (!s)
        return ST_ENOMEM;
    s->eng = eng;
    s->prof = prof;
    s->slot = slot;
    s->id = eng->next_session_id++;
    s->started_ms = eng_now_ms();
    int rc = make_driver(s);
    if (rc) {
        free(s);
        return rc;
    }
    uv_timer_init(eng->loop, &s->wait_timer);
    s->wait_timer.data = s;
    eng__profile_ref(prof);
    slot->session = s;
    eng->active++;
    fill_event(s, &ev, ENG_EV_SESSION_BEGIN);
    eng__emit(eng, &ev);
    run_step(s);
    return 0;
}

bool eng__session_waits_for_device(const struct eng_session *s)
{
    return s->phase == PH_WAIT_DEVICE;
}

static void old_driver_closed(void *user_data)
{
    struct eng_session *s = user_data;
    s->fb = NULL;
    s->dfu = NULL;
    eng__close_transport(s->eng, s->slot);
    if (s->phase == PH_WAIT_DEVICE && s->slot->t && s->slot->present)
        eng__session_device_back(s); /* it came back while we closed */
}

void eng__session_device_left(struct eng_session *s)
{
    if (s->phase == PH_ENDING)
        return; /* the transport is closed once the session is freed */
    if (s->phase == PH_WAIT_DEVICE) {
        if (s->fb)
            eng_fb_close(s->fb, old_driver_closed, s);
        else if (s->dfu)
            eng_dfu_close(s->dfu, old_driver_closed, s);
        return;
    }
    if (s->fb && eng_fb_busy(s->fb))
        eng_fb_abort(s->fb, ST_ENODEV, "device disconnected");
    if (s->dfu && eng_dfu_busy(s->dfu))
        eng_dfu_abort(s->dfu, ST_ENODEV, "device disconnected");
    /* Otherwise the next command fails with ST_ENODEV by itself. */
}

void eng__session_device_back(struct eng_session *s)
{
    if (s->phase != PH_WAIT_DEVICE || s->fb || s->dfu)
        return; /* still closing the old driver: old_driver_closed() calls again */
    uv_timer_stop(&s->wait_timer);
    s->phase = PH_RUNNING;
    /* A device back from a reboot may have changed: ask again. */
    s->max_download = 0;
    s->slot_suffix[0] = '\0';
    int rc = make_driver(s);
    if (rc) {
        step_fail(s, "cannot reopen the device: %s", st_strerror(rc));
        return;
    }
    char text[64];
    snprintf(text, sizeof(text), "back after %" PRId64 " ms", eng_now_ms() - s->step_started_ms);
    step_ok(s, text);
}

void eng__session_abort(struct eng_session *s)
{
    if (s->phase == PH_ENDING)
        return;
    if (s->phase == PH_WAIT_VERDICT) {
        /* No command in flight and the serialno step already recorded. */
        snprintf(s->failed_step, sizeof(s->failed_step), "%s", s->step_name);
        snprintf(s->reason, sizeof(s->reason), "station stopped during %s", s->step_name);
        session_end(s, ENG_RESULT_ABORTED);
        return;
    }
    if (s->fb && eng_fb_busy(s->fb)) {
        eng_fb_abort(s->fb, ST_ECANCELED, "station stopped");
        return;
    }
    if (s->dfu && eng_dfu_busy(s->dfu)) {
        eng_dfu_abort(s->dfu, ST_ECANCELED, "station stopped");
        return;
    }
    step_fail(s, "station stopped");
}
