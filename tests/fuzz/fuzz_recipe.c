/*
 * fuzz_recipe: recipe files (config/recipe_parse.c) through
 * cfg_recipe_load(), which reads them from a file.
 *
 * The input is written to fuzz.recipe in the harness's folder, beside
 * three small images (boot.img, system.img, fw.bin) that `image` lines
 * may name, so a recipe gets past the file checks.
 *
 * Checked: a recipe that loads has names, arguments and alternatives
 * NUL-terminated within their arrays, step images that exist, every
 * require hoisted before the other steps, and steps of one protocol.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/recipe.h"
#include "fuzz_util.h"

/* A path into /proc, /sys or /dev could name a file that never ends or
 * blocks (/proc/kmsg): a harness hang, not a parser finding. */
static bool names_special_file(const uint8_t *data, size_t size)
{
    static const char *const dirs[] = {"/proc", "/sys", "/dev"};
    for (unsigned i = 0; i < 3; i++)
        if (memmem(data, size, dirs[i], strlen(dirs[i])))
            return true;
    return false;
}

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static bool is_dfu(enum cfg_step_kind k)
{
    return k == CFG_STEP_DFU_DOWNLOAD || k == CFG_STEP_DFU_VERIFY || k == CFG_STEP_DETACH;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[512];
    static const uint8_t img[4096];
    (void)argc;
    (void)argv;
    fuzz_write_file("boot.img", img, sizeof(img), path, sizeof(path));
    fuzz_write_file("system.img", img, 100, path, sizeof(path));
    fuzz_write_file("fw.bin", img, 16, path, sizeof(path));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512], err[1024], name[160];
    if (names_special_file(data, size))
        return 0;
    fuzz_write_file("fuzz.recipe", data, size, path, sizeof(path));
    struct cfg_recipe *r = calloc(1, sizeof(*r));
    fail_if(!r);
    int rc = cfg_recipe_load(path, r, err, sizeof(err));
    if (rc)
        fuzz_debug("cfg_recipe_load: %s", err);
    else
        fuzz_debug("cfg_recipe_load: %u images, %u steps", r->n_images, r->n_steps);
    if (rc == 0) {
        fail_if(!terminated(r->name, sizeof(r->name)) || !r->name[0]);
        fail_if(!terminated(r->version, sizeof(r->version)) || !r->version[0]);
        fail_if(r->n_images > CFG_MAX_IMAGES || r->n_steps == 0 || r->n_steps > CFG_MAX_STEPS);
        for (unsigned i = 0; i < r->n_images; i++)
            fail_if(!terminated(r->images[i].name, sizeof(r->images[i].name)) ||
                    !terminated(r->images[i].path, sizeof(r->images[i].path)));
        bool body = false, dfu = is_dfu(r->steps[0].kind);
        for (unsigned i = 0; i < r->n_steps; i++) {
            const struct cfg_step *st = &r->steps[i];
            fail_if(!terminated(st->arg, sizeof(st->arg)));
            fail_if(st->image < -1 || st->image >= (int)r->n_images);
            fail_if(st->n_alternatives > CFG_MAX_ALTERNATIVES);
            for (unsigned k = 0; k < st->n_alternatives; k++)
                fail_if(!terminated(st->alternatives[k], CFG_NAME_MAX));
            /* requires (getvar with alternatives) come first */
            if (st->kind != CFG_STEP_GETVAR || st->n_alternatives == 0)
                body = true;
            else
                fail_if(body);
            if (st->kind != CFG_STEP_GETVAR)
                fail_if(is_dfu(st->kind) != dfu);
            cfg_step_name(st, name, sizeof(name));
        }
    } else {
        fail_if(!terminated(err, sizeof(err)));
    }
    free(r);
    return 0;
}
