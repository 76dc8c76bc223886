/*
 * Profiles: a recipe, its images and its sparse plans. Images are opened
 * and hashed on the thread pool once per profile and shared by every
 * session; a plan is built once per (image, limit).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"
#include "engine/engine_internal.h"

void eng__profile_ref(struct eng_profile *prof)
{
    prof->refs++;
}

void eng__profile_unref(struct eng_profile *prof)
{
    if (!prof || --prof->refs > 0)
        return;
    while (prof->plans) {
        struct eng_plan_entry *e = prof->plans;
        prof->plans = e->next;
        eng_sparse_plan_free(e->plan);
        free(e);
    }
    for (unsigned i = 0; i < prof->recipe.n_images; i++)
        eng_image_unref(prof->images[i]);
    free(prof);
}

struct eng_image *eng__image(struct eng_profile *prof, unsigned i)
{
    return prof->images[i];
}

struct eng_profile *eng__profile_for(struct eng_engine *eng, const struct eng_transport *t)
{
    unsigned i = t ? t->profile : 0;
    return i < eng->n_profiles ? eng->profiles[i] : NULL;
}

bool eng__any_profile_loaded(const struct eng_engine *eng)
{
    for (unsigned i = 0; i < eng->n_profiles; i++)
        if (eng->profiles[i]->loaded)
            return true;
    return false;
}

static void image_loaded(struct eng_image *img, int status, const char *message, void *user_data)
{
    struct eng_profile *prof = user_data;
    struct eng_engine *eng = prof->eng;
    prof->n_loading--;
    if (status && !prof->load_failed) {
        prof->load_failed = true;
        snprintf(prof->load_msg, sizeof(prof->load_msg), "%s", message);
    }
    if (prof->n_loading > 0) {
        eng__pending_done(eng);
        return;
    }
    if (!prof->load_failed) {
        for (unsigned i = 0; i < prof->recipe.n_images; i++) {
            struct eng_image *im = prof->images[i];
            prof->infos[i] = (struct eng_image_info){
                .name = eng_image_name(im),
                .path = eng_image_path(im),
                .sha256 = eng_image_sha256(im),
                .size = eng_image_size(im),
                .remembered = eng_image_hash_remembered(im),
            };
        }
        prof->loaded = true;
    }
    bool loaded = prof->loaded;
    eng__profile_ref(prof); /* the callback may drop the profile (a reload) */
    if (prof->load_cb)
        prof->load_cb(prof->load_failed ? ST_EINVAL : 0, prof->load_failed ? prof->load_msg : "",
                      prof->load_user_data);
    eng__profile_unref(prof);
    if (loaded && !eng->closing)
        eng__start_waiting(eng);
    eng__pending_done(eng);
}

static int check_recipe(const struct cfg_recipe *recipe)
{
    if (recipe->n_images > CFG_MAX_IMAGES || recipe->n_steps > CFG_MAX_STEPS)
        return ST_EINVAL;
    for (unsigned i = 0; i < recipe->n_steps; i++) {
        const struct cfg_step *st = &recipe->steps[i];
        bool needs_image = st->kind == CFG_STEP_FLASH || st->kind == CFG_STEP_DFU_DOWNLOAD ||
                           st->kind == CFG_STEP_DFU_VERIFY;
        if (needs_image && (st->image < 0 || (unsigned)st->image >= recipe->n_images))
            return ST_EINVAL;
    }
    return 0;
}

int eng_engine_add_profile(struct eng_engine *eng, const char *name,
                           const struct cfg_recipe *recipe, const struct eng_profile_options *opts,
                           eng_load_cb cb, void *user_data, unsigned *index)
{
    if (eng->closing)
        return ST_ECLOSED;
    if (eng->n_profiles == 2 * ENG_MAX_PROFILES)
        return ST_ERANGE;
    int rc = check_recipe(recipe);
    if (rc)
        return rc;
    struct eng_profile *prof = calloc(1, sizeof(*prof));
    if (!prof)
        return ST_ENOMEM;
    prof->eng = eng;
    prof->refs = 1;
    snprintf(prof->name, sizeof(prof->name), "%s", name ? name : "default");
    if (opts) {
        prof->opts = *opts;
        if (opts->signer) {
            prof->have_signer = true;
            prof->signer = *opts->signer;
        }
        prof->opts.signer = NULL; /* the copy above is the one to use */
    }
    struct eng_image_trust trust = {.signer = prof->have_signer ? &prof->signer : NULL,
                                    .require_signature = prof->opts.require_signatures,
                                    .hash_cache = prof->opts.hash_cache};
    prof->recipe = *recipe;
    prof->load_cb = cb;
    prof->load_user_data = user_data;
    unsigned n = recipe->n_images;
    prof->recipe.n_images = 0;
    for (unsigned i = 0; i < n; i++) {
        rc = eng_image_open(eng->loop, &prof->recipe.images[i], &trust, image_loaded, prof,
                            &prof->images[i]);
        if (rc)
            break;
        prof->recipe.n_images = i + 1;
        prof->n_loading++;
        eng->pending++;
    }
    if (rc && prof->n_loading == 0) {
        free(prof);
        return rc;
    }
    if (rc) {
        /* Those already started still call back; they see load_failed. */
        prof->load_failed = true;
        snprintf(prof->load_msg, sizeof(prof->load_msg), "%s: %s", recipe->images[n - 1].name,
                 st_strerror(rc));
    }
    if (index)
        *index = eng->n_profiles;
    eng->profiles[eng->n_profiles++] = prof;
    if (n == 0) {
        prof->loaded = true;
        if (cb)
            cb(0, "", user_data);
    }
    return 0;
}

int eng_engine_load(struct eng_engine *eng, const struct cfg_recipe *recipe, eng_load_cb cb,
                    void *user_data)
{
    if (eng->n_profiles)
        return ST_EBUSY;
    return eng_engine_add_profile(eng, "default", recipe, NULL, cb, user_data, NULL);
}

int eng_engine_drop_profiles(struct eng_engine *eng, unsigned first, unsigned count)
{
    if (first > eng->n_profiles || count > eng->n_profiles - first)
        return ST_EINVAL;
    for (unsigned i = first; i < first + count; i++)
        if (eng->profiles[i]->n_loading > 0)
            return ST_EBUSY; /* its images still call back into it */
    for (unsigned i = first; i < first + count; i++)
        eng__profile_unref(eng->profiles[i]); /* sessions hold their own references */
    memmove(&eng->profiles[first], &eng->profiles[first + count],
            (eng->n_profiles - first - count) * sizeof(eng->profiles[0]));
    eng->n_profiles -= count;
    if (!eng->closing)
        eng__start_waiting(eng); /* a waiting device's index may name a loaded profile now */
    return 0;
}

const struct eng_image_info *eng_engine_images(const struct eng_engine *eng, unsigned *n)
{
    const struct eng_profile *prof = eng->n_profiles ? eng->profiles[0] : NULL;
    *n = prof && prof->loaded ? prof->recipe.n_images : 0;
    return prof && prof->loaded ? prof->infos : NULL;
}

/* ---- sparse plans ---- */

static void plan_work(uv_work_t *w)
{
    struct eng_plan_entry *e = w->data;
    struct eng_image *img = e->prof->images[e->image];
    e->status = eng_sparse_plan_new(eng_image_fd(img), eng_image_data(img), eng_image_size(img),
                                    e->limit, &e->plan, e->message, sizeof(e->message));
}

static void plan_done(uv_work_t *w, int status)
{
    struct eng_plan_entry *e = w->data;
    struct eng_engine *eng = e->eng;
    e->done = true;
    if (status == UV_ECANCELED && e->status == 0 && !e->plan) {
        e->status = ST_ECANCELED;
        snprintf(e->message, sizeof(e->message), "cancelled");
    }
    for (unsigned i = 0; i < eng->n_slots; i++) {
        struct eng_session *s = eng->slots[i]->session;
        if (s && eng__session_waits_for_plan(s, e))
            eng__session_plan_ready(s, e);
    }
    eng__profile_unref(e->prof);
    eng__pending_done(eng);
}

struct eng_plan_entry *eng__plan_get(struct eng_profile *prof, unsigned image, uint64_t limit)
{
    struct eng_engine *eng = prof->eng;
    for (struct eng_plan_entry *e = prof->plans; e; e = e->next)
        if (e->image == image && e->limit == limit)
            return e;
    struct eng_plan_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->eng = eng;
    e->prof = prof;
    e->image = image;
    e->limit = limit;
    e->work.data = e;
    if (uv_queue_work(eng->loop, &e->work, plan_work, plan_done) != 0) {
        free(e);
        return NULL;
    }
    eng__profile_ref(prof); /* the work uses the images */
    eng->pending++;
    e->next = prof->plans;
    prof->plans = e;
    return e;
}
