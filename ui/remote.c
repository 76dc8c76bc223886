/*
 * Model snapshots as bytes (ui/remote.h). The writer grows one buffer;
 * the reader is a cursor that turns sticky-bad on the first field that
 * does not fit, so each decode step needs no error branch of its own and
 * the result is checked once at the end.
 */
#include "ui/remote.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"

#define MAGIC "STWM"
#define VERSION 1

/* ---- writing ---- */

struct wbuf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
};

static void w_bytes(struct wbuf *w, const void *src, size_t n)
{
    if (w->oom)
        return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            w->oom = true;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

static void w_u64(struct wbuf *w, uint64_t v, int bytes)
{
    uint8_t b[8];
    for (int i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    w_bytes(w, b, (size_t)bytes);
}

static void w_u8(struct wbuf *w, unsigned v)
{
    w_u64(w, v, 1);
}

static void w_u32(struct wbuf *w, uint32_t v)
{
    w_u64(w, v, 4);
}

static void w_i64(struct wbuf *w, int64_t v)
{
    w_u64(w, (uint64_t)v, 8);
}

static void w_f64(struct wbuf *w, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    w_u64(w, bits, 8);
}

/* A string of a fixed-size field: never longer than the field. */
static void w_str(struct wbuf *w, const char *s, size_t field)
{
    size_t n = strnlen(s, field);
    w_u64(w, n, 2);
    w_bytes(w, s, n);
}

#define W_STR(w, arr) w_str((w), (arr), sizeof(arr))

static void w_slot(struct wbuf *w, const struct ui_slot *s)
{
    W_STR(w, s->name);
    W_STR(w, s->port);
    W_STR(w, s->serial);
    W_STR(w, s->step);
    W_STR(w, s->failed_step);
    W_STR(w, s->reason);
    w_u8(w, (unsigned)s->state);
    w_i64(w, s->session_id);
    w_u32(w, s->step_index);
    w_u32(w, s->step_count);
    w_u64(w, s->bytes_done, 8);
    w_u64(w, s->bytes_total, 8);
    w_u64(w, s->bytes_before, 8);
    w_u64(w, s->session_total, 8);
    w_u64(w, s->session_bytes, 8);
    w_f64(w, s->rate_bps);
    w_i64(w, s->started_ms);
    w_i64(w, s->ended_ms);
    unsigned n_steps = s->n_steps <= UI_STEPS_MAX ? s->n_steps : UI_STEPS_MAX;
    w_u8(w, n_steps);
    w_u32(w, s->steps_dropped);
    for (unsigned i = 0; i < n_steps; i++) {
        const struct ui_step *st = &s->steps[i];
        W_STR(w, st->name);
        w_i64(w, st->started_ms);
        w_i64(w, st->ended_ms);
        w_u8(w, (unsigned)st->result);
        w_u64(w, st->bytes, 8);
        W_STR(w, st->detail);
    }
    /* INFO lines oldest first; the reader rebuilds the ring around n_info */
    unsigned kept = ui_slot_info_count(s);
    w_u32(w, s->n_info);
    for (unsigned i = 0; i < kept; i++)
        w_str(w, ui_slot_info_line(s, i), UI_TEXT_MAX);
}

int ui_remote_encode(const struct ui_model *m, uint8_t **out, size_t *len)
{
    struct wbuf w = {0};
    w_u32(&w, 0); /* the length, filled in below */
    w_bytes(&w, MAGIC, 4);
    w_u8(&w, VERSION);
    W_STR(&w, m->station);
    W_STR(&w, m->recipe);
    W_STR(&w, m->recipe_version);
    w_i64(&w, m->started_ms);
    w_u32(&w, m->passed);
    w_u32(&w, m->failed);
    w_u32(&w, m->aborted);
    w_u32(&w, m->skipped);
    w_u32(&w, m->in_progress);
    w_u8(&w, (m->db_error ? 1u : 0) | (m->paused ? 2u : 0) | (m->stopping ? 4u : 0));
    w_u32(&w, (uint32_t)m->day_key);
    w_u32(&w, m->today_passed);
    w_u32(&w, m->today_failed);
    for (unsigned i = 0; i < UI_UPH_MINUTES; i++) {
        w_i64(&w, m->minute_key[i]);
        w_u32(&w, m->minute_count[i]);
    }
    /* notes oldest first */
    unsigned kept = m->n_notes < UI_NOTES_MAX ? m->n_notes : UI_NOTES_MAX;
    w_u32(&w, m->n_notes);
    for (unsigned i = kept; i-- > 0;) {
        const struct ui_note *n = ui_model_recent(m, i);
        w_i64(&w, n->t_ms);
        w_u8(&w, (unsigned)n->kind);
        W_STR(&w, n->text);
    }
    unsigned n_slots = m->n_slots < UI_REMOTE_MAX_SLOTS ? m->n_slots : UI_REMOTE_MAX_SLOTS;
    w_u32(&w, n_slots);
    for (unsigned i = 0; i < n_slots; i++)
        w_slot(&w, &m->slots[i]);
    if (w.oom) {
        free(w.p);
        return ST_ENOMEM;
    }
    if (w.len - UI_REMOTE_HEADER > UI_REMOTE_MAX_FRAME) {
        free(w.p);
        return ST_ETOOBIG;
    }
    uint32_t payload = (uint32_t)(w.len - UI_REMOTE_HEADER);
    for (int i = 0; i < 4; i++)
        w.p[i] = (uint8_t)(payload >> (8 * (3 - i)));
    *out = w.p;
    *len = w.len;
    return 0;
}

uint32_t ui_remote_frame_len(const uint8_t *h)
{
    return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

/* ---- reading ---- */

struct rbuf {
    const uint8_t *p;
    size_t len, off;
    bool bad;
};

static uint64_t r_u64(struct rbuf *r, int bytes)
{
    uint64_t v = 0;
    if (r->bad || r->len - r->off < (size_t)bytes) {
        r->bad = true;
        return 0;
    }
    for (int i = 0; i < bytes; i++)
        v = v << 8 | r->p[r->off++];
    return v;
}

static unsigned r_u8(struct rbuf *r)
{
    return (unsigned)r_u64(r, 1);
}

static uint32_t r_u32(struct rbuf *r)
{
    return (uint32_t)r_u64(r, 4);
}

static int64_t r_i64(struct rbuf *r)
{
    return (int64_t)r_u64(r, 8);
}

static double r_f64(struct rbuf *r)
{
    uint64_t bits = r_u64(r, 8);
    double v;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

/* Into a fixed-size field: a string longer than the field is an error
 * (the encoder never sends one), as is a NUL inside it. */
static void r_str(struct rbuf *r, char *dst, size_t field)
{
    size_t n = (size_t)r_u64(r, 2);
    dst[0] = '\0';
    if (r->bad || n >= field || r->len - r->off < n || memchr(r->p + r->off, '\0', n)) {
        r->bad = true;
        return;
    }
    memcpy(dst, r->p + r->off, n);
    dst[n] = '\0';
    r->off += n;
}

#define R_STR(r, arr) r_str((r), (arr), sizeof(arr))

/* An enum value no greater than `max`. */
static unsigned r_enum(struct rbuf *r, unsigned max)
{
    unsigned v = r_u8(r);
    if (v > max)
        r->bad = true;
    return r->bad ? 0 : v;
}

static void r_slot(struct rbuf *r, struct ui_slot *s)
{
    memset(s, 0, sizeof(*s));
    R_STR(r, s->name);
    R_STR(r, s->port);
    R_STR(r, s->serial);
    R_STR(r, s->step);
    R_STR(r, s->failed_step);
    R_STR(r, s->reason);
    s->state = (enum ui_slot_state)r_enum(r, UI_SLOT_SKIPPED);
    s->session_id = r_i64(r);
    s->step_index = r_u32(r);
    s->step_count = r_u32(r);
    s->bytes_done = r_u64(r, 8);
    s->bytes_total = r_u64(r, 8);
    s->bytes_before = r_u64(r, 8);
    s->session_total = r_u64(r, 8);
    s->session_bytes = r_u64(r, 8);
    s->rate_bps = r_f64(r);
    s->started_ms = r_i64(r);
    s->ended_ms = r_i64(r);
    s->last_pct_bucket = -1;
    s->n_steps = r_u8(r);
    if (s->n_steps > UI_STEPS_MAX) {
        r->bad = true;
        return;
    }
    s->steps_dropped = r_u32(r);
    for (unsigned i = 0; i < s->n_steps && !r->bad; i++) {
        struct ui_step *st = &s->steps[i];
        R_STR(r, st->name);
        st->started_ms = r_i64(r);
        st->ended_ms = r_i64(r);
        st->result = (enum eng_result)r_enum(r, ENG_RESULT_SKIPPED);
        st->bytes = r_u64(r, 8);
        R_STR(r, st->detail);
    }
    s->n_info = r_u32(r);
    unsigned kept = ui_slot_info_count(s);
    for (unsigned i = 0; i < kept && !r->bad; i++)
        r_str(r, s->info[(s->n_info - kept + i) % UI_INFO_MAX], UI_TEXT_MAX);
}

int ui_remote_decode(const uint8_t *payload, size_t len, struct ui_model *m)
{
    struct rbuf r = {.p = payload, .len = len};
    struct ui_model n;
    char magic[4];
    int rc = ST_EPROTO;

    ui_model_init(&n);
    for (int i = 0; i < 4; i++)
        magic[i] = (char)r_u8(&r);
    if (r.bad || memcmp(magic, MAGIC, 4) || r_u8(&r) != VERSION)
        goto out;
    R_STR(&r, n.station);
    R_STR(&r, n.recipe);
    R_STR(&r, n.recipe_version);
    n.started_ms = r_i64(&r);
    n.passed = r_u32(&r);
    n.failed = r_u32(&r);
    n.aborted = r_u32(&r);
    n.skipped = r_u32(&r);
    n.in_progress = r_u32(&r);
    unsigned flags = r_u8(&r);
    n.db_error = flags & 1;
    n.paused = flags & 2;
    n.stopping = flags & 4;
    n.day_key = (int)r_u32(&r);
    n.today_passed = r_u32(&r);
    n.today_failed = r_u32(&r);
    for (unsigned i = 0; i < UI_UPH_MINUTES; i++) {
        n.minute_key[i] = r_i64(&r);
        n.minute_count[i] = r_u32(&r);
    }
    n.n_notes = r_u32(&r);
    unsigned kept = n.n_notes < UI_NOTES_MAX ? n.n_notes : UI_NOTES_MAX;
    for (unsigned i = 0; i < kept && !r.bad; i++) {
        struct ui_note *note = &n.notes[(n.n_notes - kept + i) % UI_NOTES_MAX];
        note->t_ms = r_i64(&r);
        note->kind = (enum ui_note_kind)r_enum(&r, UI_NOTE_ERROR);
        R_STR(&r, note->text);
    }
    uint32_t n_slots = r_u32(&r);
    /* each slot takes far more than 16 bytes: a count the payload cannot
     * hold is refused before anything is allocated for it */
    if (r.bad || n_slots > UI_REMOTE_MAX_SLOTS || n_slots > (len - r.off) / 16)
        goto out;
    if (n_slots) {
        n.slots = calloc(n_slots, sizeof(*n.slots));
        if (!n.slots) {
            rc = ST_ENOMEM;
            goto out;
        }
        n.cap_slots = n.n_slots = n_slots;
    }
    for (unsigned i = 0; i < n_slots && !r.bad; i++)
        r_slot(&r, &n.slots[i]);
    if (r.bad || r.off != len)
        goto out;
    n.dirty = true;
    ui_model_free(m);
    *m = n;
    return 0;
out:
    ui_model_free(&n);
    return rc;
}
