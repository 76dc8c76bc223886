#include "ui/model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void ui_model_init(struct ui_model *m)
{
    memset(m, 0, sizeof(*m));
    m->day_key = -1;
    m->dirty = true;
}

void ui_model_free(struct ui_model *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static void copy(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

void ui_model_set_station(struct ui_model *m, const char *station, const char *recipe,
                          const char *version, int64_t now_ms)
{
    copy(m->station, sizeof(m->station), station);
    copy(m->recipe, sizeof(m->recipe), recipe);
    copy(m->recipe_version, sizeof(m->recipe_version), version);
    m->started_ms = now_ms;
    m->dirty = true;
}

/* Binary search in the natural order of names; *at is where `name` is or
 * would be inserted. */
static bool locate(const struct ui_model *m, const char *name, unsigned *at)
{
    unsigned lo = 0, hi = m->n_slots;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        int c = strverscmp(m->slots[mid].name, name);
        if (c == 0) {
            *at = mid;
            return true;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *at = lo;
    return false;
}

struct ui_slot *ui_model_find(struct ui_model *m, const char *name)
{
    unsigned at;
    return locate(m, name, &at) ? &m->slots[at] : NULL;
}

static struct ui_slot *find_or_add(struct ui_model *m, const char *name)
{
    unsigned at;
    if (locate(m, name, &at))
        return &m->slots[at];
    if (m->n_slots == m->cap_slots) {
        unsigned cap = m->cap_slots ? m->cap_slots * 2 : 16;
        struct ui_slot *n = realloc(m->slots, cap * sizeof(*n));
        if (!n)
            return NULL;
        m->slots = n;
        m->cap_slots = cap;
    }
    memmove(&m->slots[at + 1], &m->slots[at], (m->n_slots - at) * sizeof(*m->slots));
    m->n_slots++;
    struct ui_slot *s = &m->slots[at];
    memset(s, 0, sizeof(*s));
    copy(s->name, sizeof(s->name), name);
    s->last_pct_bucket = -1;
    return s;
}

/* Forget the previous occupant's session. */
static void reset_session(struct ui_slot *s)
{
    s->step[0] = s->failed_step[0] = s->reason[0] = '\0';
    s->session_id = 0;
    s->step_index = s->step_count = 0;
    s->bytes_done = s->bytes_total = s->bytes_before = s->session_total = 0;
    s->session_bytes = 0;
    s->rate_bps = 0;
    s->rate_t_ms = 0;
    s->rate_bytes = 0;
    s->last_pct_bucket = -1;
    s->started_ms = s->ended_ms = 0;
    s->n_steps = s->steps_dropped = 0;
    s->n_info = 0;
}

static struct ui_step *push_step(struct ui_slot *s)
{
    if (s->n_steps == UI_STEPS_MAX) {
        memmove(&s->steps[0], &s->steps[1], (UI_STEPS_MAX - 1) * sizeof(s->steps[0]));
        s->n_steps--;
        s->steps_dropped++;
    }
    struct ui_step *st = &s->steps[s->n_steps++];
    memset(st, 0, sizeof(*st));
    return st;
}

static struct ui_step *current_step(struct ui_slot *s)
{
    if (!s->n_steps || s->steps[s->n_steps - 1].ended_ms)
        return NULL;
    return &s->steps[s->n_steps - 1];
}

static void sample_rate(struct ui_slot *s, int64_t t_ms, uint64_t done)
{
    if (!s->rate_t_ms || done < s->rate_bytes) {
        /* first sample, or a new transfer within the step */
        s->rate_t_ms = t_ms;
        s->rate_bytes = done;
        return;
    }
    int64_t dt = t_ms - s->rate_t_ms;
    if (dt < 200)
        return;
    double inst = (double)(done - s->rate_bytes) * 1000.0 / (double)dt;
    s->rate_bps = s->rate_bps > 0 ? 0.5 * s->rate_bps + 0.5 * inst : inst;
    s->rate_t_ms = t_ms;
    s->rate_bytes = done;
}

struct ui_slot *ui_model_event(struct ui_model *m, const struct eng_event *ev)
{
    if (!ev->slot)
        return NULL;
    struct ui_slot *s = find_or_add(m, ev->slot);
    if (!s)
        return NULL;
    m->dirty = true;
    copy(s->port, sizeof(s->port), ev->port);
    if (ev->serial && ev->serial[0])
        copy(s->serial, sizeof(s->serial), ev->serial);
    switch (ev->type) {
    case ENG_EV_ARRIVED:
        reset_session(s);
        copy(s->serial, sizeof(s->serial), ev->serial);
        s->state = UI_SLOT_PRESENT;
        break;
    case ENG_EV_WAITING:
        s->state = UI_SLOT_WAITING;
        break;
    case ENG_EV_SESSION_BEGIN:
        reset_session(s);
        s->state = UI_SLOT_WORKING;
        s->session_id = ev->session_id;
        s->started_ms = ev->session_started_ms ? ev->session_started_ms : ev->t_ms;
        s->step_count = ev->step_count;
        for (unsigned i = 0; i < ev->n_images; i++)
            s->session_total += ev->images[i].size;
        m->in_progress++;
        break;
    case ENG_EV_STEP_BEGIN: {
        copy(s->step, sizeof(s->step), ev->step);
        s->step_index = ev->step_index;
        s->step_count = ev->step_count;
        s->bytes_done = s->bytes_total = 0;
        s->rate_bps = 0;
        s->rate_t_ms = 0;
        s->last_pct_bucket = -1;
        struct ui_step *st = push_step(s);
        copy(st->name, sizeof(st->name), ev->step);
        st->started_ms = ev->step_started_ms ? ev->step_started_ms : ev->t_ms;
        break;
    }
    case ENG_EV_PROGRESS:
        s->bytes_done = ev->bytes_done;
        s->bytes_total = ev->bytes_total;
        sample_rate(s, ev->t_ms, ev->bytes_done);
        break;
    case ENG_EV_INFO:
        copy(s->info[s->n_info % UI_INFO_MAX], UI_TEXT_MAX, ev->text);
        s->n_info++;
        break;
    case ENG_EV_STEP_END: {
        struct ui_step *st = current_step(s);
        if (st) {
            st->ended_ms = ev->t_ms;
            st->result = ev->result;
            st->bytes = ev->bytes_done;
            copy(st->detail, sizeof(st->detail), ev->text);
        }
        s->bytes_before += ev->bytes_done;
        s->bytes_done = s->bytes_total = 0;
        s->rate_bps = 0;
        break;
    }
    case ENG_EV_SESSION_END:
        if (s->state == UI_SLOT_WORKING && m->in_progress)
            m->in_progress--;
        s->state = UI_SLOT_SAVING;
        s->ended_ms = ev->t_ms;
        s->session_bytes = ev->session_bytes;
        s->rate_bps = 0;
        if (ev->result != ENG_RESULT_PASS) {
            copy(s->reason, sizeof(s->reason), ev->text);
            copy(s->failed_step, sizeof(s->failed_step), ev->failed_step);
        }
        break;
    case ENG_EV_LEFT:
        if (s->state == UI_SLOT_WORKING && m->in_progress)
            m->in_progress--; /* not expected: the engine ends sessions first */
        if (s->state != UI_SLOT_SAVING) {
            s->state = UI_SLOT_EMPTY;
            reset_session(s);
            s->serial[0] = '\0';
        }
        break;
    default:
        break;
    }
    return s;
}

static int day_of(int64_t t_ms)
{
    time_t secs = (time_t)(t_ms / 1000);
    struct tm tm;
    if (!localtime_r(&secs, &tm))
        return 0;
    return tm.tm_year * 400 + tm.tm_yday;
}

static void count_unit(struct ui_model *m, enum eng_result result, int64_t t_ms)
{
    int day = day_of(t_ms);
    if (day != m->day_key) {
        m->day_key = day;
        m->today_passed = m->today_failed = 0;
    }
    if (result == ENG_RESULT_PASS)
        m->today_passed++;
    else
        m->today_failed++;
    int64_t minute = t_ms / 60000;
    unsigned i = (unsigned)(minute % UI_UPH_MINUTES);
    if (m->minute_key[i] != minute) {
        m->minute_key[i] = minute;
        m->minute_count[i] = 0;
    }
    m->minute_count[i]++;
}

static double seconds(int64_t ms)
{
    return (double)ms / 1000.0;
}

struct ui_slot *ui_model_committed(struct ui_model *m, const char *slot, enum eng_result result,
                                   const char *reason, int64_t t_ms)
{
    struct ui_slot *s = ui_model_find(m, slot);
    const char *who = s && s->serial[0] ? s->serial : "-";
    m->dirty = true;
    switch (result) {
    case ENG_RESULT_PASS:
        m->passed++;
        count_unit(m, result, t_ms);
        ui_model_note(m, t_ms, UI_NOTE_PASS, "%s %s PASS %.1fs", slot, who,
                      s ? seconds(ui_slot_elapsed_ms(s, t_ms)) : 0.0);
        break;
    case ENG_RESULT_ABORTED:
        m->aborted++;
        ui_model_note(m, t_ms, UI_NOTE_WARN, "%s %s ABORTED %s", slot, who, reason ? reason : "");
        break;
    case ENG_RESULT_FAIL:
        m->failed++;
        count_unit(m, result, t_ms);
        ui_model_note(m, t_ms, UI_NOTE_FAIL, "%s %s FAIL %s", slot, who, reason ? reason : "");
        break;
    default:
        /* not a unit flashed (a serial already done): neither yield nor rate */
        m->skipped++;
        ui_model_note(m, t_ms, UI_NOTE_INFO, "%s %s %s %s", slot, who, eng_result_name(result),
                      reason ? reason : "");
        break;
    }
    /* Only the session that was saving shows it: a device plugged since
     * then keeps its own state. */
    if (!s || s->state != UI_SLOT_SAVING)
        return s;
    s->state = result == ENG_RESULT_PASS      ? UI_SLOT_PASS
               : result == ENG_RESULT_ABORTED ? UI_SLOT_ABORTED
               : result == ENG_RESULT_FAIL    ? UI_SLOT_FAIL
                                              : UI_SLOT_SKIPPED;
    if (result != ENG_RESULT_PASS && reason && reason[0])
        copy(s->reason, sizeof(s->reason), reason);
    return s;
}

void ui_model_set_paused(struct ui_model *m, bool paused)
{
    m->paused = paused;
    m->dirty = true;
}

void ui_model_set_stopping(struct ui_model *m)
{
    m->stopping = true;
    m->dirty = true;
}

void ui_model_set_db_error(struct ui_model *m)
{
    m->db_error = true;
    m->dirty = true;
}

void ui_model_note(struct ui_model *m, int64_t t_ms, enum ui_note_kind kind, const char *fmt, ...)
{
    struct ui_note *n = &m->notes[m->n_notes % UI_NOTES_MAX];
    va_list ap;
    n->t_ms = t_ms;
    n->kind = kind;
    va_start(ap, fmt);
    vsnprintf(n->text, sizeof(n->text), fmt, ap);
    va_end(ap);
    m->n_notes++;
    m->dirty = true;
}

const struct ui_note *ui_model_recent(const struct ui_model *m, unsigned i)
{
    if (i >= m->n_notes || i >= UI_NOTES_MAX)
        return NULL;
    return &m->notes[(m->n_notes - 1 - i) % UI_NOTES_MAX];
}

bool ui_model_take_dirty(struct ui_model *m)
{
    bool d = m->dirty;
    m->dirty = false;
    return d;
}

bool ui_model_yield_today(const struct ui_model *m, int64_t now_ms, double *pct)
{
    unsigned total = m->today_passed + m->today_failed;
    if (m->day_key != day_of(now_ms) || total == 0)
        return false;
    *pct = 100.0 * m->today_passed / total;
    return true;
}

double ui_model_units_per_hour(const struct ui_model *m, int64_t now_ms)
{
    int64_t minute = now_ms / 60000;
    unsigned count = 0;
    for (unsigned i = 0; i < UI_UPH_MINUTES; i++)
        if (m->minute_key[i] > minute - UI_UPH_MINUTES && m->minute_key[i] <= minute)
            count += m->minute_count[i];
    int64_t window = now_ms - m->started_ms;
    if (!m->started_ms || window > 3600000)
        window = 3600000;
    if (window < 60000)
        window = 60000;
    return (double)count * 3600000.0 / (double)window;
}

int ui_slot_percent(const struct ui_slot *s)
{
    if (s->state == UI_SLOT_PASS)
        return 100;
    if (!s->started_ms)
        return 0;
    int pct;
    if (s->session_total) {
        uint64_t done = s->bytes_before + s->bytes_done;
        pct = (int)(done >= s->session_total ? 100 : done * 100 / s->session_total);
    } else if (s->step_count) {
        pct = (int)(s->step_index * 100 / s->step_count);
    } else {
        pct = 0;
    }
    /* 100 % only once the record says PASS */
    return pct > 99 ? 99 : pct;
}

int64_t ui_slot_elapsed_ms(const struct ui_slot *s, int64_t now_ms)
{
    if (!s->started_ms)
        return 0;
    int64_t end = s->ended_ms ? s->ended_ms : now_ms;
    return end > s->started_ms ? end - s->started_ms : 0;
}

double ui_slot_average_bps(const struct ui_slot *s)
{
    int64_t ms = s->ended_ms - s->started_ms;
    if (!s->ended_ms || ms <= 0)
        return 0;
    return (double)s->session_bytes * 1000.0 / (double)ms;
}

const char *ui_slot_short_reason(const struct ui_slot *s)
{
    const char *r = s->reason;
    size_t n = strlen(s->failed_step);
    if (n && !strncmp(r, s->failed_step, n) && r[n] == ':' && r[n + 1] == ' ')
        r += n + 2;
    /* a phase word such as "download: " or "getvar:max-download-size: " */
    const char *colon = strstr(r, ": ");
    if (colon && colon - r <= 32 && !memchr(r, ' ', (size_t)(colon - r)) && colon[2])
        r = colon + 2;
    return r;
}

unsigned ui_slot_info_count(const struct ui_slot *s)
{
    return s->n_info < UI_INFO_MAX ? s->n_info : UI_INFO_MAX;
}

const char *ui_slot_info_line(const struct ui_slot *s, unsigned i)
{
    unsigned kept = ui_slot_info_count(s);
    if (i >= kept)
        return NULL;
    return s->info[(s->n_info - kept + i) % UI_INFO_MAX];
}

const char *ui_slot_state_name(enum ui_slot_state st)
{
    static const char *const names[] = {"EMPTY", "WAITING", "WORKING", "SAVING", "PASS",
                                        "FAIL",  "ABORTED", "PLUGGED", "SKIPPED"};
    return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}
