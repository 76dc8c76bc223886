#include "ui/headless.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ui/json.h"

struct ui_headless {
    FILE *out;
    struct ui_model *model;
    enum ui_log_format format;
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

void ui_headless_set_format(struct ui_headless *h, enum ui_log_format format)
{
    if (h)
        h->format = format;
}

static void iso_time(int64_t t_ms, char *out, size_t n)
{
    time_t secs = (time_t)(t_ms / 1000);
    struct tm tm;
    char buf[32];
    gmtime_r(&secs, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%03dZ", buf, (int)(t_ms % 1000));
}

static void stamp(struct ui_headless *h, int64_t t_ms)
{
    char buf[48];
    iso_time(t_ms, buf, sizeof(buf));
    fprintf(h->out, "%s ", buf);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *or_dash(const char *s)
{
    return s && s[0] ? s : "-";
}

static const char *or_null(const char *s)
{
    return s && s[0] ? s : NULL;
}

/* Start a JSON line with the time and the event name. */
static void jbegin(struct ui_json *j, struct ui_headless *h, int64_t t_ms, const char *event)
{
    char t[48];
    iso_time(t_ms, t, sizeof(t));
    ui_json_begin(j, h->out);
    ui_json_str(j, "t", t);
    ui_json_int(j, "t_ms", t_ms);
    ui_json_str(j, "event", event);
}

static void jslot(struct ui_json *j, const struct eng_event *ev)
{
    ui_json_str(j, "slot", ev->slot);
    ui_json_str(j, "serial", or_null(ev->serial));
}

/* Progress is printed at 25 % steps: the bucket to print, or -1. */
static int progress_bucket(struct ui_headless *h, const struct eng_event *ev)
{
    if (!ev->bytes_total)
        return -1;
    int pct = (int)(ev->bytes_done * 100 / ev->bytes_total);
    struct ui_slot *s = ui_model_find(h->model, ev->slot);
    int bucket = pct / 25;
    if (!s || bucket <= s->last_pct_bucket || pct == 100)
        return -1;
    s->last_pct_bucket = bucket;
    return bucket;
}

static void json_event(struct ui_headless *h, const struct eng_event *ev)
{
    struct ui_json j;
    switch (ev->type) {
    case ENG_EV_ARRIVED:
        jbegin(&j, h, ev->t_ms, "arrived");
        jslot(&j, ev);
        ui_json_str(&j, "port", ev->port);
        break;
    case ENG_EV_WAITING:
        jbegin(&j, h, ev->t_ms, "waiting");
        jslot(&j, ev);
        ui_json_str(&j, "why", "intake paused");
        break;
    case ENG_EV_SESSION_BEGIN:
        jbegin(&j, h, ev->t_ms, "session_begin");
        jslot(&j, ev);
        ui_json_int(&j, "session_id", ev->session_id);
        ui_json_str(&j, "recipe", ev->recipe);
        ui_json_str(&j, "recipe_version", ev->recipe_version);
        break;
    case ENG_EV_PROGRESS: {
        int bucket = progress_bucket(h, ev);
        if (bucket < 0)
            return;
        jbegin(&j, h, ev->t_ms, "progress");
        jslot(&j, ev);
        ui_json_str(&j, "step", ev->step);
        ui_json_int(&j, "pct", bucket * 25);
        break;
    }
    case ENG_EV_INFO:
        jbegin(&j, h, ev->t_ms, "info");
        jslot(&j, ev);
        ui_json_str(&j, "step", ev->step);
        ui_json_str(&j, "text", ev->text);
        break;
    case ENG_EV_STEP_END:
        jbegin(&j, h, ev->t_ms, "step_end");
        jslot(&j, ev);
        ui_json_str(&j, "step", ev->step);
        ui_json_str(&j, "result", eng_result_name(ev->result));
        ui_json_int(&j, "duration_ms", ev->t_ms - ev->step_started_ms);
        ui_json_str(&j, "text", ev->text ? ev->text : "");
        break;
    case ENG_EV_SESSION_END:
        jbegin(&j, h, ev->t_ms, "session_end");
        jslot(&j, ev);
        ui_json_str(&j, "what", "finished, recording result");
        break;
    case ENG_EV_LEFT:
        jbegin(&j, h, ev->t_ms, "left");
        ui_json_str(&j, "slot", ev->slot);
        break;
    default:
        return;
    }
    ui_json_end(&j);
}

void ui_headless_event(struct ui_headless *h, const struct eng_event *ev)
{
    if (!h)
        return;
    if (h->format == UI_LOG_JSON) {
        json_event(h, ev);
        return;
    }
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
        fprintf(h->out, "%s %s session %" PRId64 " started: %s %s\n", ev->slot, who, ev->session_id,
                ev->recipe, ev->recipe_version);
        break;
    case ENG_EV_PROGRESS: {
        int bucket = progress_bucket(h, ev);
        if (bucket < 0)
            break;
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
    if (!h)
        return;
    int64_t now = wall_ms();
    if (h->format == UI_LOG_JSON) {
        struct ui_json j;
        jbegin(&j, h, now, "result");
        ui_json_str(&j, "slot", slot);
        ui_json_str(&j, "serial", or_null(serial));
        ui_json_str(&j, "result", eng_result_name(result));
        if (result != ENG_RESULT_PASS)
            ui_json_str(&j, "reason", reason ? reason : "");
        ui_json_int(&j, "duration_ms", duration_ms);
        ui_json_int(&j, "bytes", (int64_t)bytes);
        ui_json_end(&j);
        return;
    }
    stamp(h, now);
    if (result == ENG_RESULT_PASS)
        fprintf(h->out, "%s %s PASS %.2fs %" PRIu64 " bytes\n", slot, or_dash(serial),
                (double)duration_ms / 1000.0, bytes);
    else
        fprintf(h->out, "%s %s %s %s\n", slot, or_dash(serial), eng_result_name(result),
                or_dash(reason));
}

void ui_headless_note(struct ui_headless *h, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    if (!h)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    int64_t now = wall_ms();
    if (h->format == UI_LOG_JSON) {
        struct ui_json j;
        jbegin(&j, h, now, "note");
        ui_json_str(&j, "text", text);
        ui_json_end(&j);
        return;
    }
    stamp(h, now);
    fprintf(h->out, "%s\n", text);
}
