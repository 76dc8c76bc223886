#include "ui/headless.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ui_headless {
    FILE *out;
    struct ui_model *model;
};

int ui_headless_new(FILE *out, struct ui_model *model, struct ui_headless **out_h)
{
    struct ui_headless *h = calloc(1, sizeof(*h));
    if (!h)
        return -1;
    h->out = out;
    h->model = model;
    *out_h = h;
    return 0;
}

void ui_headless_free(struct ui_headless *h)
{
    free(h);
}

static void stamp(struct ui_headless *h, int64_t t_ms)
{
    time_t secs = (time_t)(t_ms / 1000);
    struct tm tm;
    char buf[32];
    gmtime_r(&secs, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(h->out, "%s.%03dZ ", buf, (int)(t_ms % 1000));
}

static const char *or_dash(const char *s)
{
    return s && s[0] ? s : "-";
}

void ui_headless_event(struct ui_headless *h, const struct eng_event *ev)
{
    const char *who = or_dash(ev->serial);
    switch (ev->type) {
    case ENG_EV_ARRIVED:
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s %s arrived on %s\n", ev->slot, who, ev->port);
        break;
    case ENG_EV_WAITING:
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s %s WAITING (intake paused)\n", ev->slot, who);
        break;
    case ENG_EV_SESSION_BEGIN:
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s %s session %" PRId64 " started: %s %s\n", ev->slot, who,
                ev->session_id, ev->recipe, ev->recipe_version);
        break;
    case ENG_EV_PROGRESS: {
        if (!ev->bytes_total)
            break;
        int pct = (int)(ev->bytes_done * 100 / ev->bytes_total);
        struct ui_slot *s = NULL;
        for (unsigned i = 0; i < h->model->n_slots; i++)
            if (!strcmp(h->model->slots[i].name, ev->slot))
                s = &h->model->slots[i];
        int bucket = pct / 25;
        if (!s || bucket <= s->last_pct_bucket || pct == 100)
            break;
        s->last_pct_bucket = bucket;
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s %s %s %d%%\n", ev->slot, who, ev->step, bucket * 25);
        break;
    }
    case ENG_EV_INFO:
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s %s %s INFO %s\n", ev->slot, who, ev->step, ev->text);
        break;
    case ENG_EV_STEP_END:
        stamp(h, ev->t_ms);
        if (ev->result == ENG_RESULT_PASS)
            fprintf(h->out, "%s %s %s ok %.2fs%s%s\n", ev->slot, who, ev->step,
                    (double)(ev->t_ms - ev->step_started_ms) / 1000.0,
                    ev->text && ev->text[0] ? " " : "", ev->text ? ev->text : "");
        else
            fprintf(h->out, "%s %s %s %s %s\n", ev->slot, who, ev->step,
                    eng_result_name(ev->result), or_dash(ev->text));
        break;
    case ENG_EV_SESSION_END:
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s %s finished, recording result\n", ev->slot, who);
        break;
    case ENG_EV_LEFT:
        stamp(h, ev->t_ms);
        fprintf(h->out, "%s left\n", ev->slot);
        break;
    default:
        break;
    }
}

void ui_headless_result(struct ui_headless *h, const char *slot, const char *serial,
                        enum eng_result result, const char *reason, int64_t duration_ms,
                        uint64_t bytes)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    stamp(h, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    if (result == ENG_RESULT_PASS)
        fprintf(h->out, "%s %s PASS %.2fs %" PRIu64 " bytes\n", slot, or_dash(serial),
                (double)duration_ms / 1000.0, bytes);
    else
        fprintf(h->out, "%s %s %s %s\n", slot, or_dash(serial), eng_result_name(result),
                or_dash(reason));
}

void ui_headless_note(struct ui_headless *h, const char *fmt, ...)
{
    struct timespec ts;
    va_list ap;
    clock_gettime(CLOCK_REALTIME, &ts);
    stamp(h, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    va_start(ap, fmt);
    vfprintf(h->out, fmt, ap);
    va_end(ap);
    fputc('\n', h->out);
}
