/* Shared between engine.c (slots, loading, lifecycle) and session.c (the
 * recipe runner). Not part of the public API. */
#ifndef ENG_ENGINE_INTERNAL_H
#define ENG_ENGINE_INTERNAL_H

#include "engine/engine.h"
#include "engine/fastboot.h"
#include "engine/image.h"

#include "engine/sparse.h"
#include "engine/trust.h"

struct eng_session;

struct eng_profile;

/* A sparse split, planned once per (image, limit) and shared. */
struct eng_plan_entry {
    struct eng_engine *eng;
    struct eng_profile *prof;
    unsigned image;
    uint64_t limit;
    bool done;
    int status; /* when done: 0 or a negative code */
    char message[200];
    struct eng_sparse_plan *plan; /* when done and status == 0 */
    uv_work_t work;
    struct eng_plan_entry *next;
};

struct eng_slot {
    char name[64];
    char port[64];
    struct eng_transport *t;      /* the device on the slot, owned; NULL when empty */
    bool present;                 /* t is a live device (not yet reported gone) */
    struct eng_session *session;  /* running (or ending) session */
    struct eng_transport *queued; /* arrived while the old one was still in use */
    enum eng_result latched;      /* last result, until the device leaves */
};

/*
 * A profile: a recipe with its images (opened once, shared by every
 * session) and its sparse plans. Reference-counted: the engine holds one
 * reference while the profile is current, each session one while it runs,
 * so a reloaded configuration never pulls images from under a session.
 */
struct eng_profile {
    struct eng_engine *eng;
    unsigned refs;
    char name[CFG_NAME_MAX];
    struct eng_profile_options opts;
    bool have_signer;
    struct eng_pubkey signer;
    struct cfg_recipe recipe;
    struct eng_image *images[CFG_MAX_IMAGES];
    struct eng_image_info infos[CFG_MAX_IMAGES];
    unsigned n_loading;
    bool loaded, load_failed;
    eng_load_cb load_cb;
    void *load_user_data;
    char load_msg[CFG_PATH_MAX + 200];
    struct eng_plan_entry *plans;
};

struct eng_engine {
    uv_loop_t *loop;
    struct eng_options opts;
    eng_event_cb cb;
    void *user_data;
    /* profiles: transports name theirs by index (eng_transport.profile);
     * room for the current generation and one being loaded by a reload
     * (eng_engine_drop_profiles) */
    struct eng_profile *profiles[2 * ENG_MAX_PROFILES];
    unsigned n_profiles;
    /* slots */
    struct eng_slot **slots;
    unsigned n_slots, cap_slots;
    /* sessions */
    int64_t next_session_id;
    unsigned active;
    bool paused;
    /* shutdown */
    bool closing;
    unsigned pending; /* async closes in flight */
    void (*close_cb)(struct eng_engine *eng, void *user_data);
    void *close_user_data;
};

/* session.c */
int eng__session_start(struct eng_engine *eng, struct eng_slot *slot, struct eng_profile *prof);
void eng__session_device_left(struct eng_session *s);
void eng__session_device_back(struct eng_session *s);
void eng__session_abort(struct eng_session *s);
bool eng__session_waits_for_device(const struct eng_session *s);
void eng__session_plan_ready(struct eng_session *s, struct eng_plan_entry *e);
bool eng__session_waits_for_plan(const struct eng_session *s, const struct eng_plan_entry *e);

/* engine.c */
void eng__emit(struct eng_engine *eng, struct eng_event *ev);
void eng__session_freed(struct eng_engine *eng, struct eng_slot *slot, enum eng_result result);
void eng__pending_done(struct eng_engine *eng);
void eng__close_transport(struct eng_engine *eng, struct eng_slot *slot);
/* profile.c. The plan for (image, limit): returns the entry (maybe not
 * done yet: the session is then resumed through eng__session_plan_ready),
 * or NULL when out of memory. */
struct eng_plan_entry *eng__plan_get(struct eng_profile *prof, unsigned image, uint64_t limit);
struct eng_image *eng__image(struct eng_profile *prof, unsigned i);
void eng__profile_ref(struct eng_profile *prof);
void eng__profile_unref(struct eng_profile *prof);
/* The profile for a device arriving on `t`, or NULL (none loaded). */
struct eng_profile *eng__profile_for(struct eng_engine *eng, const struct eng_transport *t);
bool eng__any_profile_loaded(const struct eng_engine *eng);
/* A profile finished loading: start sessions that waited for it. */
void eng__start_waiting(struct eng_engine *eng);

#endif
