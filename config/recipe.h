/*
 * cfg_recipe: what a station does to one device, as plain data.
 *
 * A recipe has a name and a version (both recorded with every session),
 * a list of named images and an ordered list of steps. It is built either
 * from a recipe file or from the embedded demo default; the engine only
 * reads it. No I/O happens here beyond what the caller asks for.
 */
#ifndef CFG_RECIPE_H
#define CFG_RECIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_NAME_MAX 64
#define CFG_PATH_MAX 512
#define CFG_ARG_MAX 128
#define CFG_MAX_IMAGES 16
#define CFG_MAX_STEPS 64
#define CFG_MAX_ALTERNATIVES 8

enum cfg_step_kind {
    CFG_STEP_GETVAR,            /* getvar VAR [= A|B|C]: read, optionally require */
    CFG_STEP_FLASH,             /* flash PART IMAGE: download + flash */
    CFG_STEP_ERASE,             /* erase PART */
    CFG_STEP_REBOOT,            /* reboot */
    CFG_STEP_REBOOT_BOOTLOADER, /* reboot-bootloader */
    CFG_STEP_OEM,               /* oem ARGS */
    CFG_STEP_SET_ACTIVE,        /* set_active SLOT */
    CFG_STEP_DFU_DOWNLOAD,      /* dfu-download ALT IMAGE */
    CFG_STEP_DFU_VERIFY,        /* dfu-verify ALT IMAGE */
    CFG_STEP_DETACH,            /* detach */
};

struct cfg_image {
    char name[CFG_NAME_MAX]; /* referenced by steps */
    unsigned line;           /* in the recipe file, for messages */
    char path[CFG_PATH_MAX]; /* file path; empty for a generated demo image */
    uint64_t demo_size;      /* generated demo image: bytes (path empty) */
    uint32_t demo_seed;      /* generated demo image: content seed */
    char sha256[65];         /* pinned lowercase hex, or empty */
};

struct cfg_step {
    enum cfg_step_kind kind;
    char arg[CFG_ARG_MAX]; /* variable, partition, oem text or slot */
    int image;             /* index into cfg_recipe.images, or -1 */
    /* getvar with requirements: the value must equal one of these. */
    unsigned n_alternatives;
    char alternatives[CFG_MAX_ALTERNATIVES][CFG_NAME_MAX];
    unsigned timeout_ms; /* 0: the engine's default for this step */
    unsigned retries;    /* transport-error retries (not for FAIL) */
    unsigned line;       /* in the recipe file, for messages; 0 = built in */
};

struct cfg_recipe {
    char name[CFG_NAME_MAX];
    char version[CFG_NAME_MAX];
    char path[CFG_PATH_MAX]; /* the recipe file; empty for the built-in demo */
    bool allow_raw_dfu;      /* DFU: a .bin without a DFU suffix is allowed */
    unsigned n_images;
    struct cfg_image images[CFG_MAX_IMAGES];
    unsigned n_steps;
    struct cfg_step steps[CFG_MAX_STEPS];
};

/*
 * Fill `out` with the embedded demo recipe: getvar product (requires the
 * virtual devices' product), flash boot (1 MiB) and system (4 MiB, or
 * `system_bytes` when non-zero) from generated images, then reboot.
 */
void cfg_recipe_default(struct cfg_recipe *out, uint64_t system_bytes);

/* Write the canonical short name of a step ("flash:system") into buf. */
void cfg_step_name(const struct cfg_step *step, char *buf, size_t len);

#endif
