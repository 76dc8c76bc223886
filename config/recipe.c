#include "recipe.h"

#include <stdio.h>
#include <string.h>

static int add_image(struct cfg_recipe *r, const char *name, uint64_t size, uint32_t seed)
{
    struct cfg_image *img = &r->images[r->n_images];
    memset(img, 0, sizeof(*img));
    snprintf(img->name, sizeof(img->name), "%s", name);
    img->demo_size = size;
    img->demo_seed = seed;
    return (int)r->n_images++;
}

static struct cfg_step *add_step(struct cfg_recipe *r, enum cfg_step_kind kind, const char *arg)
{
    struct cfg_step *s = &r->steps[r->n_steps++];
    memset(s, 0, sizeof(*s));
    s->kind = kind;
    s->image = -1;
    snprintf(s->arg, sizeof(s->arg), "%s", arg);
    return s;
}

void cfg_recipe_default(struct cfg_recipe *out, uint64_t system_bytes)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "demo-phone");
    snprintf(out->version, sizeof(out->version), "1.0");
    int boot = add_image(out, "boot", 1u << 20, 0xb007u);
    int system = add_image(out, "system", system_bytes ? system_bytes : 4u << 20, 0x5157u);

    struct cfg_step *s = add_step(out, CFG_STEP_GETVAR, "product");
    s->n_alternatives = 1;
    snprintf(s->alternatives[0], sizeof(s->alternatives[0]), "simphone");
    add_step(out, CFG_STEP_GETVAR, "serialno");
    add_step(out, CFG_STEP_FLASH, "boot")->image = boot;
    add_step(out, CFG_STEP_FLASH, "system")->image = system;
    add_step(out, CFG_STEP_REBOOT, "");
}

void cfg_step_name(const struct cfg_step *step, char *buf, size_t len)
{
    switch (step->kind) {
    case CFG_STEP_GETVAR:
        snprintf(buf, len, "getvar:%s", step->arg);
        break;
    case CFG_STEP_FLASH:
        snprintf(buf, len, "flash:%s", step->arg);
        break;
    case CFG_STEP_ERASE:
        snprintf(buf, len, "erase:%s", step->arg);
        break;
    case CFG_STEP_REBOOT:
        snprintf(buf, len, "reboot");
        break;
    case CFG_STEP_REBOOT_BOOTLOADER:
        snprintf(buf, len, "reboot-bootloader");
        break;
    case CFG_STEP_OEM:
        snprintf(buf, len, "oem %s", step->arg);
        break;
    case CFG_STEP_SET_ACTIVE:
        snprintf(buf, len, "set_active:%s", step->arg);
        break;
    case CFG_STEP_DFU_DOWNLOAD:
        snprintf(buf, len, "dfu-download:%s", step->arg);
        break;
    case CFG_STEP_DFU_VERIFY:
        snprintf(buf, len, "dfu-verify:%s", step->arg);
        break;
    case CFG_STEP_DETACH:
        snprintf(buf, len, "detach");
        break;
    default:
        snprintf(buf, len, "step?");
        break;
    }
}
