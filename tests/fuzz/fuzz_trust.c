/*
 * fuzz_trust: minisign files (engine/trust.c): the same bytes read as a
 * public key file and as a signature file for a fixed image, checked
 * against a fixed key.
 *
 * The key below is a throwaway made for this harness with
 * `minisign -G -W` (its secret half was not kept); corpus/trust/ holds
 * signatures it made for IMAGE (prehashed "ED" and legacy "Ed"), so the
 * fuzzer starts past the key id check.
 *
 * Checked: a loaded key is the 32 + 8 bytes of the file, and the good
 * seed signatures verify (at start-up, so a harness that drifted from the
 * format fails loudly rather than fuzzing nothing).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/trust.h"
#include "fuzz_util.h"

static const char pubkey_file[] = "untrusted comment: minisign public key 755F26D21D2188F4\n"
                                  "RWT0iCEd0iZfdYJ9x7fhmvFq1ZPAjgdcldYwOEmWksDVO9yfDHTtr9+p\n";
static const char image[] = "station fuzz image\n";
static const char good_sig[] =
    "untrusted comment: signature from minisign secret key\n"
    "RUT0iCEd0iZfdRXp9SO/f6QTBv9rNgjYUqmUrtluEURcrw/"
    "pts04k24bzccEM6qG0U5UyvKUqXBcSmew01vbKWmsdCoYp65TkQw=\n"
    "trusted comment: fuzz seed\n"
    "C95mcJOvsuew7waP4ztLkgKWXOYjEi/XcKX43q9luu+JxPvYcKhQdgO8SdujYCnqkWCFvIRXLYNb8Ni5qA+qBw==\n";

static struct eng_pubkey key; /* harness state, set once */

static void fail_if(bool bad)
{
    if (bad)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[512], err[512];
    (void)argc;
    (void)argv;
    fuzz_write_file("key.pub", pubkey_file, strlen(pubkey_file), path, sizeof(path));
    if (eng_trust_load_pubkey(path, &key, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_trust: the harness key does not load: %s\n", err);
        abort();
    }
    fuzz_write_file("good.minisig", good_sig, strlen(good_sig), path, sizeof(path));
    if (eng_trust_verify(&key, (const uint8_t *)image, strlen(image), path, err, sizeof(err))) {
        fprintf(stderr, "fuzz_trust: the harness signature does not verify: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512], err[512];
    struct eng_pubkey pk;
    fuzz_write_file("input", data, size, path, sizeof(path));
    memset(&pk, 0, sizeof(pk));
    int rc = eng_trust_load_pubkey(path, &pk, err, sizeof(err));
    fuzz_debug("key: %s", rc ? err : "ok");
    if (rc)
        fail_if(memchr(err, '\0', sizeof(err)) == NULL);
    rc = eng_trust_verify(&key, (const uint8_t *)image, strlen(image), path, err, sizeof(err));
    fuzz_debug("signature: %s", rc ? err : "ok");
    fail_if(rc > 0);
    if (rc)
        fail_if(memchr(err, '\0', sizeof(err)) == NULL);
    char hex[17];
    eng_trust_key_id_hex(pk.key_id, hex);
    return 0;
}
