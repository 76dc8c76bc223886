/*
 * `station check [-c FILE]`: validate the configuration, every recipe it
 * names and every image those recipes use (size, SHA-256 against its pin,
 * minisign signature when a key is configured), printing what it found.
 * Touches no device. Exit 0 when everything is usable, 2 otherwise.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "common/st_error.h"
#include "config/config.h"
#include "engine/dfu_file.h"
#include "engine/image.h"
#include "engine/trust.h"
#include "station/commands.h"
#include "station/station.h"

struct check {
    unsigned pending;
    unsigned errors;
};

struct image_check {
    struct check *ck;
    const struct cfg_image *cfg;
    const struct cfg_profile *profile;
};

/* A DFU image must carry a good suffix (or the recipe allows raw .bin)
 * and be made for one of the profile's VID:PIDs (any, when it names none). */
static int check_dfu_image(const struct image_check *ic, const struct eng_image *img, char *err,
                           size_t errlen)
{
    const struct cfg_profile *p = ic->profile;
    bool any_usb = false;
    int rc = ST_EINVAL;
    for (unsigned m = 0; m < p->n_matches; m++) {
        const struct cfg_match *mt = &p->matches[m];
        if (mt->kind != CFG_MATCH_USB)
            continue;
        any_usb = true;
        rc = eng_dfu_file_check(eng_image_data(img), (size_t)eng_image_size(img),
                                eng_image_path(img), mt->vid, mt->pid, p->recipe->allow_raw_dfu,
                                err, errlen);
        if (rc == 0)
            return 0;
    }
    if (!any_usb)
        rc = eng_dfu_file_check(eng_image_data(img), (size_t)eng_image_size(img),
                                eng_image_path(img), ENG_DFU_ID_ANY, ENG_DFU_ID_ANY,
                                p->recipe->allow_raw_dfu, err, errlen);
    return rc;
}

static void on_image(struct eng_image *img, int status, const char *message, void *user_data)
{
    struct image_check *ic = user_data;
    ic->ck->pending--;
    if (status) {
        ic->ck->errors++;
        printf("  image %-10s ERROR %s\n", ic->cfg->name, message);
        return;
    }
    char err[400];
    if (ic->profile->protocol == CFG_PROTO_DFU && check_dfu_image(ic, img, err, sizeof(err))) {
        ic->ck->errors++;
        printf("  image %-10s ERROR %s\n", ic->cfg->name, err);
        return;
    }
    printf("  image %-10s %s  %" PRIu64 " bytes  sha256 %s%s\n", ic->cfg->name, eng_image_path(img),
           eng_image_size(img), eng_image_sha256(img),
           ic->cfg->sha256[0] ? "  (pinned: ok)" : "  (not pinned)");
}

static const char *policy_name(enum cfg_serial_policy p)
{
    return p == CFG_SERIAL_REFLASH ? "reflash" : p == CFG_SERIAL_FAIL ? "fail" : "skip";
}

static void print_match(const struct cfg_match *m)
{
    switch (m->kind) {
    case CFG_MATCH_CLASS:
        printf(" class %02X/%02X/%02X", m->cls, m->subclass, m->protocol);
        break;
    case CFG_MATCH_USB:
        printf(" usb %04x:%04x", m->vid, m->pid);
        break;
    case CFG_MATCH_TCP:
        printf(" tcp:%s:%u", m->host, m->port);
        break;
    }
}

int st_check_config(const struct cfg_config *cfg)
{
    struct check ck = {0};
    struct eng_pubkey key;
    char err[CFG_ERROR_MAX];
    bool have_key = false;
    static struct image_check ics[CFG_MAX_PROFILES * CFG_MAX_IMAGES];
    unsigned n_ics = 0;

    printf("config %s\n", cfg->path);
    printf("station id %s, db %s, max_sessions %u, ui %s\n", cfg->id[0] ? cfg->id : "(host name)",
           cfg->db, cfg->max_sessions, cfg->ui);
    if (cfg->minisign_key[0]) {
        if (eng_trust_load_pubkey(cfg->minisign_key, &key, err, sizeof(err)) != 0) {
            printf("minisign key ERROR %s\n", err);
            ck.errors++;
        } else {
            char id[17];
            eng_trust_key_id_hex(key.key_id, id);
            printf("minisign key %s (id %s), signatures %s\n", cfg->minisign_key, id,
                   cfg->require_signatures ? "required" : "checked where present");
            have_key = true;
        }
    }
    for (unsigned i = 0; i < cfg->n_slots; i++) {
        const struct cfg_slot *s = &cfg->slots[i];
        printf("slot %s:", s->name);
        for (unsigned p = 0; p < s->n_paths; p++)
            printf(" %s", s->paths[p]);
        printf("\n");
    }
    char hash_cache[CFG_PATH_MAX + 16] = "";
    if (cfg->db[0])
        st_hash_cache_dir(cfg->db, hash_cache, sizeof(hash_cache));
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct eng_image *imgs[CFG_MAX_PROFILES * CFG_MAX_IMAGES];
    unsigned n_imgs = 0;
    for (unsigned i = 0; i < cfg->n_profiles; i++) {
        const struct cfg_profile *p = &cfg->profiles[i];
        const struct cfg_recipe *r = p->recipe;
        printf("profile %s: match", p->name);
        for (unsigned m = 0; m < p->n_matches; m++)
            print_match(&p->matches[m]);
        printf("; %s; serial policy %s\n", p->protocol == CFG_PROTO_DFU ? "dfu" : "fastboot",
               policy_name(p->serial_policy));
        printf("  recipe %s: %s %s, %u step(s), %u image(s)\n", p->recipe_path, r->name, r->version,
               r->n_steps, r->n_images);
        /* Every byte is read here; what was read is remembered for the
         * station's next start with this configuration (DB.hashes/). */
        struct eng_image_trust trust = {.signer = have_key ? &key : NULL,
                                        .require_signature = cfg->require_signatures,
                                        .hash_cache = hash_cache[0] ? hash_cache : NULL,
                                        .hash_cache_refresh = true};
        for (unsigned k = 0; k < r->n_images; k++) {
            struct image_check *ic = &ics[n_ics++];
            ic->ck = &ck;
            ic->cfg = &r->images[k];
            ic->profile = p;
            int rc = eng_image_open(&loop, &r->images[k], &trust, on_image, ic, &imgs[n_imgs]);
            if (rc) {
                printf("  image %-10s ERROR %s\n", r->images[k].name, st_strerror(rc));
                ck.errors++;
                continue;
            }
            n_imgs++;
            ck.pending++;
            /* one at a time keeps the output in recipe order */
            uv_run(&loop, UV_RUN_DEFAULT);
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < n_imgs; i++)
        eng_image_unref(imgs[i]);
    uv_loop_close(&loop);
    if (cfg->simulate.present)
        printf("simulate: %u device(s) on profile %s, pace %g MB/s, %u fault(s)\n",
               cfg->simulate.count, cfg->simulate.profile, cfg->simulate.pace_mbps,
               cfg->simulate.n_faults);
    if (ck.errors) {
        printf("check: %u error(s)\n", ck.errors);
        return ST_EXIT_USAGE;
    }
    printf("check: ok\n");
    return ST_EXIT_OK;
}

int st_cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = "station.ini";
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":c:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'h':
            printf("usage: station check [-c FILE]\n"
                   "Validate FILE (default station.ini), its recipes and their images\n"
                   "(SHA-256 pins, minisign signatures). Touches no device.\n"
                   "Exit 0 when everything is usable, 2 on any error.\n");
            return ST_EXIT_OK;
        case ':':
            return st_usage_error("option %s needs a value", argv[optind - 1]);
        default:
            return st_usage_error("unknown option '%s' for 'station check'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return st_usage_error("unexpected argument '%s' for 'station check'", argv[optind]);
    struct cfg_config *cfg;
    char err[CFG_ERROR_MAX];
    if (cfg_load(config, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "station: %s\n", err);
        printf("check: 1 error(s)\n");
        return ST_EXIT_USAGE;
    }
    int rc = st_check_config(cfg);
    cfg_free(cfg);
    return rc;
}
