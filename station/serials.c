/*
 * serials.c: the serial policy and the "same serial on two slots" check;
 * see serials.h.
 */
#include "station/serials.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/st_error.h"

struct active {
    int64_t id;
    char slot[64];
    char serial[64]; /* "" until the session has read it */
};

struct st_serials {
    struct db *db;
    enum st_serial_policy policy;
    struct active *act;
    unsigned n, cap;
};

/* One db_find_pass() in flight. */
struct lookup {
    struct st_serials *owner;
    struct eng_engine *eng;
    int64_t id;
    char serial[64], recipe[64], version[64];
};

int st_serial_policy_parse(const char *name, enum st_serial_policy *out)
{
    if (!strcmp(name, "skip"))
        *out = ST_SERIAL_SKIP;
    else if (!strcmp(name, "reflash"))
        *out = ST_SERIAL_REFLASH;
    else if (!strcmp(name, "fail"))
        *out = ST_SERIAL_FAIL;
    else
        return ST_EINVAL;
    return 0;
}

int st_serials_new(struct db *db, enum st_serial_policy policy, struct st_serials **out)
{
    struct st_serials *s = calloc(1, sizeof(*s));

    if (!s)
        return ST_ENOMEM;
    s->db = db;
    s->policy = policy;
    *out = s;
    return 0;
}

void st_serials_free(struct st_serials *s)
{
    if (!s)
        return;
    free(s->act);
    free(s);
}

static struct active *find(struct st_serials *s, int64_t id)
{
    for (unsigned i = 0; i < s->n; i++)
        if (s->act[i].id == id)
            return &s->act[i];
    return NULL;
}

int st_serials_begin(struct st_serials *s, int64_t session_id, const char *slot)
{
    struct active *a;

    if (s->n == s->cap) {
        unsigned cap = s->cap ? s->cap * 2 : 16;
        struct active *n = realloc(s->act, cap * sizeof(*n));
        if (!n)
            return ST_ENOMEM;
        s->act = n;
        s->cap = cap;
    }
    a = &s->act[s->n++];
    memset(a, 0, sizeof(*a));
    a->id = session_id;
    snprintf(a->slot, sizeof(a->slot), "%s", slot ? slot : "");
    return 0;
}

void st_serials_end(struct st_serials *s, int64_t session_id)
{
    struct active *a = find(s, session_id);

    if (a)
        *a = s->act[--s->n]; /* order does not matter */
}

static void format_utc(int64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (!gmtime_r(&secs, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(buf, len, "%" PRId64 " ms", ms);
}

static void on_found(int status, int64_t passed_ms, void *user_data)
{
    struct lookup *l = user_data;
    char reason[400], when[40];

    if (status) {
        snprintf(reason, sizeof(reason), "cannot check serial %s: %s", l->serial,
                 st_strerror(status));
        eng_engine_serial_verdict(l->eng, l->id, ENG_SERIAL_FAIL, reason);
    } else if (passed_ms <= 0) {
        eng_engine_serial_verdict(l->eng, l->id, ENG_SERIAL_PROCEED, NULL);
    } else {
        format_utc(passed_ms, when, sizeof(when));
        if (l->owner->policy == ST_SERIAL_SKIP) {
            snprintf(reason, sizeof(reason), "already passed %s %s on %s", l->recipe, l->version,
                     when);
            eng_engine_serial_verdict(l->eng, l->id, ENG_SERIAL_SKIP, reason);
        } else {
            snprintf(reason, sizeof(reason), "serial %s already passed %s %s on %s", l->serial,
                     l->recipe, l->version, when);
            eng_engine_serial_verdict(l->eng, l->id, ENG_SERIAL_FAIL, reason);
        }
    }
    free(l);
}

void st_serials_check(struct st_serials *s, struct eng_engine *eng, int64_t session_id,
                      const char *serial, const char *recipe, const char *version)
{
    struct active *self = find(s, session_id);
    struct lookup *l;
    char reason[400];
    int rc;

    if (!serial || !serial[0]) {
        eng_engine_serial_verdict(eng, session_id, ENG_SERIAL_PROCEED, NULL);
        return;
    }
    for (unsigned i = 0; i < s->n; i++) {
        if (s->act[i].id != session_id && !strcmp(s->act[i].serial, serial)) {
            snprintf(reason, sizeof(reason), "serial %s is also on slot %s", serial,
                     s->act[i].slot);
            eng_engine_serial_verdict(eng, session_id, ENG_SERIAL_FAIL, reason);
            return;
        }
    }
    if (self)
        snprintf(self->serial, sizeof(self->serial), "%s", serial);
    if (s->policy == ST_SERIAL_REFLASH) {
        eng_engine_serial_verdict(eng, session_id, ENG_SERIAL_PROCEED, NULL);
        return;
    }
    l = calloc(1, sizeof(*l));
    if (!l) {
        rc = ST_ENOMEM;
        goto out_fail;
    }
    l->owner = s;
    l->eng = eng;
    l->id = session_id;
    snprintf(l->serial, sizeof(l->serial), "%s", serial);
    snprintf(l->recipe, sizeof(l->recipe), "%s", recipe ? recipe : "");
    snprintf(l->version, sizeof(l->version), "%s", version ? version : "");
    rc = db_find_pass(s->db, serial, recipe, version, on_found, l);
    if (rc == 0)
        return;
    free(l);
out_fail:
    /* Without an answer the unit might be one that must not be reflashed. */
    snprintf(reason, sizeof(reason), "cannot check serial %s: %s", serial, st_strerror(rc));
    eng_engine_serial_verdict(eng, session_id, ENG_SERIAL_FAIL, reason);
}
