/*
 * fuzz_config: station.ini (config/config.c) through cfg_load(), which
 * reads it from a file, then the slot lookup (cfg_slot_for_port, globs).
 *
 * The input is written to station.ini in the harness's folder, beside
 * what a config may name: a fastboot recipe (phone.recipe), a DFU recipe
 * (board.recipe), their images and a minisign key (station.pub).
 *
 * Checked: a config that loads has at most the documented number of
 * slots, paths, profiles and matches, each profile with its recipe, and
 * a [simulate] profile that exists.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
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

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char phone[] = "recipe phone 1.0\n"
                                "image boot boot.img\n"
                                "require product=sim|sim2\n"
                                "flash boot boot\n"
                                "reboot\n";
    static const char board[] = "recipe board 1.0\n"
                                "protocol dfu\n"
                                "allow-raw-dfu\n"
                                "image fw fw.bin\n"
                                "dfu-download 0 fw\n"
                                "detach\n";
    static const char key[] = "untrusted comment: minisign public key 755F26D21D2188F4\n"
                              "RWT0iCEd0iZfdYJ9x7fhmvFq1ZPAjgdcldYwOEmWksDVO9yfDHTtr9+p\n";
    static const uint8_t img[512];
    char path[512];
    (void)argc;
    (void)argv;
    fuzz_write_file("phone.recipe", phone, strlen(phone), path, sizeof(path));
    fuzz_write_file("board.recipe", board, strlen(board), path, sizeof(path));
    fuzz_write_file("boot.img", img, sizeof(img), path, sizeof(path));
    fuzz_write_file("fw.bin", img, 64, path, sizeof(path));
    fuzz_write_file("station.pub", key, strlen(key), path, sizeof(path));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const ports[] = {"1-4.1", "1-5.3", "tcp:127.0.0.1:5554", "virt-07",
                                        "2-1.1.1.1"};
    char path[512], err[CFG_ERROR_MAX];
    struct cfg_config *cfg = NULL;
    if (names_special_file(data, size))
        return 0;
    fuzz_write_file("station.ini", data, size, path, sizeof(path));
    if (cfg_load(path, &cfg, err, sizeof(err)) != 0) {
        fuzz_debug("cfg_load: %s", err);
        fail_if(memchr(err, '\0', sizeof(err)) == NULL || cfg != NULL);
        return 0;
    }
    fuzz_debug("cfg_load: %u slots, %u profiles", cfg->n_slots, cfg->n_profiles);
    fail_if(cfg->n_slots > CFG_MAX_SLOTS || cfg->n_profiles > CFG_MAX_PROFILES);
    for (unsigned i = 0; i < cfg->n_slots; i++)
        fail_if(cfg->slots[i].n_paths == 0 || cfg->slots[i].n_paths > CFG_MAX_SLOT_PATHS);
    for (unsigned i = 0; i < cfg->n_profiles; i++) {
        const struct cfg_profile *p = &cfg->profiles[i];
        fail_if(p->n_matches == 0 || p->n_matches > CFG_MAX_MATCHES || p->recipe == NULL);
    }
    if (cfg->simulate.present && cfg->n_profiles) {
        bool found = false;
        for (unsigned i = 0; i < cfg->n_profiles; i++)
            found |= !strcmp(cfg->profiles[i].name, cfg->simulate.profile);
        fail_if(!found);
    }
    for (unsigned i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
        const struct cfg_slot *s = cfg_slot_for_port(cfg, ports[i]);
        fail_if(s && (s < cfg->slots || s >= cfg->slots + cfg->n_slots));
    }
    cfg_free(cfg);
    return 0;
}
