/* Shared between engine.c (slots, loading, lifecycle) and session.c (the
 * recipe runner). Not part of the public API. */
#ifndef ENG_ENGINE_INTERNAL_H
#define ENG_ENGINE_INTERNAL_H

#include "engine/engine.h"
#include "engine/fastboot.h"
#include "engine/image.h"

struct eng_session;

struct eng_slot {
    char name[64];
    char port[64];
    struct eng_transport *t;     /* the device on the slot, owned; NULL when empty */
    bool present;                /* t is a live device (not yet reported gone) */
    struct eng_session *session; /* running (or ending) session */
    enum eng_result latched;     /* last result, until the device leaves */
};

struct eng_engine {
    uv_loop_t *loop;
    struct eng_options opts;
    eng_event_cb cb;
    void *user_data;
    /* recipe and its images */
    struct cfg_recipe recipe;
    struct eng_image *images[CFG_MAX_IMAGES];
    struct eng_image_info infos[CFG_MAX_IMAGES];
    unsigned n_loading;
    bool loaded, load_failed;
    eng_load_cb load_cb;
    void *load_user_data;
    char load_msg[CFG_PATH_MAX + 200];
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
int eng__session_start(struct eng_engine *eng, struct eng_slot *slot);
void eng__session_device_left(struct eng_session *s);
void eng__session_device_back(struct eng_session *s);
void eng__session_abort(struct eng_session *s);
bool eng__session_waits_for_device(const struct eng_session *s);

/* engine.c */
void eng__emit(struct eng_engine *eng, struct eng_event *ev);
void eng__session_freed(struct eng_engine *eng, struct eng_slot *slot, enum eng_result result);
void eng__pending_done(struct eng_engine *eng);
void eng__close_transport(struct eng_engine *eng, struct eng_slot *slot);

#endif
