#include "ui/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ui_model_init(struct ui_model *m)
{
    memset(m, 0, sizeof(*m));
}

void ui_model_free(struct ui_model *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static struct ui_slot *find(struct ui_model *m, const char *name, bool create)
{
    for (unsigned i = 0; i < m->n_slots; i++)
        if (!strcmp(m->slots[i].name, name))
            return &m->slots[i];
    if (!create)
        return NULL;
    if (m->n_slots == m->cap_slots) {
        unsigned cap = m->cap_slots ? m->cap_slots * 2 : 16;
        struct ui_slot *n = realloc(m->slots, cap * sizeof(*n));
        if (!n)
            return NULL;
        m->slots = n;
        m->cap_slots = cap;
    }
    struct ui_slot *s = &m->slots[m->n_slots++];
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    return s;
}

struct ui_slot *ui_model_event(struct ui_model *m, const struct eng_event *ev)
{
    if (!ev->slot)
        return NULL;
    struct ui_slot *s = find(m, ev->slot, true);
    if (!s)
        return NULL;
    snprintf(s->port, sizeof(s->port), "%s", ev->port ? ev->port : "");
    if (ev->serial && ev->serial[0])
        snprintf(s->serial, sizeof(s->serial), "%s", ev->serial);
    switch (ev->type) {
    case ENG_EV_ARRIVED:
        s->state = UI_SLOT_EMPTY;
        s->reason[0] = '\0';
        s->step[0] = '\0';
        break;
    case ENG_EV_WAITING:
        s->state = UI_SLOT_WAITING;
        break;
    case ENG_EV_SESSION_BEGIN:
        s->state = UI_SLOT_WORKING;
        s->started_ms = ev->t_ms;
        s->reason[0] = '\0';
        s->step_count = ev->step_count;
        m->in_progress++;
        break;
    case ENG_EV_STEP_BEGIN:
        snprintf(s->step, sizeof(s->step), "%s", ev->step);
        s->step_index = ev->step_index;
        s->bytes_done = s->bytes_total = 0;
        s->last_pct_bucket = -1;
        break;
    case ENG_EV_PROGRESS:
        s->bytes_done = ev->bytes_done;
        s->bytes_total = ev->bytes_total;
        break;
    case ENG_EV_SESSION_END:
        s->state = UI_SLOT_SAVING;
        if (ev->result != ENG_RESULT_PASS)
            snprintf(s->reason, sizeof(s->reason), "%s", ev->text ? ev->text : "");
        if (m->in_progress)
            m->in_progress--;
        break;
    case ENG_EV_LEFT:
        if (s->state != UI_SLOT_SAVING)
            s->state = UI_SLOT_EMPTY;
        s->serial[0] = '\0';
        break;
    default:
        break;
    }
    return s;
}

struct ui_slot *ui_model_committed(struct ui_model *m, const char *slot, enum eng_result result,
                                   const char *reason)
{
    struct ui_slot *s = find(m, slot, true);
    if (!s)
        return NULL;
    switch (result) {
    case ENG_RESULT_PASS:
        s->state = UI_SLOT_PASS;
        m->passed++;
        break;
    case ENG_RESULT_ABORTED:
        s->state = UI_SLOT_ABORTED;
        m->aborted++;
        break;
    default:
        s->state = UI_SLOT_FAIL;
        m->failed++;
        break;
    }
    snprintf(s->reason, sizeof(s->reason), "%s", reason ? reason : "");
    return s;
}

const char *ui_slot_state_name(enum ui_slot_state st)
{
    static const char *const names[] = {"EMPTY", "WAITING", "WORKING", "SAVING",
                                        "PASS",  "FAIL",    "ABORTED"};
    return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}
