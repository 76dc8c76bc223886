/*
 * eng_trust: minisign signatures on images, verified with libsodium.
 *
 * The station's public key (a minisign .pub file named by [station]
 * minisign_key) is loaded once with eng_trust_load_pubkey(); each image is
 * then checked against "IMAGE.minisig" beside it with eng_trust_verify(),
 * on the image loader's worker thread, before any device sees a byte.
 *
 * Formats (minisign's own, https://jedisct1.github.io/minisign/):
 *   public key:  "untrusted comment: ..." line, then
 *                base64("Ed" || key id (8 bytes) || Ed25519 public key (32))
 *   signature:   "untrusted comment: ..." line, then
 *                base64(algorithm (2) || key id (8) || signature (64)),
 *                "trusted comment: TEXT" line, then
 *                base64(global signature (64)) over signature || TEXT.
 *   Algorithm "Ed" signs the file itself (legacy); "ED" signs the
 *   BLAKE2b-512 hash of the file (prehashed, minisign's default since 0.10).
 *
 * Both functions block (file reads, hashing of the whole image): never call
 * them on the loop thread. They are thread-safe; a loaded key is read-only.
 */
#ifndef ENG_TRUST_H
#define ENG_TRUST_H

#include <stddef.h>
#include <stdint.h>

#define ENG_TRUST_KEY_ID_BYTES 8
#define ENG_TRUST_KEY_BYTES 32

struct eng_pubkey {
    uint8_t key_id[ENG_TRUST_KEY_ID_BYTES]; /* as stored (little-endian) */
    uint8_t key[ENG_TRUST_KEY_BYTES];       /* Ed25519 public key */
};

/*
 * Read a minisign public key file. Returns 0 and fills *out, or a negative
 * st_error code (ST_ENOENT, ST_EINVAL, ...) with "PATH: message" in err.
 */
int eng_trust_load_pubkey(const char *path, struct eng_pubkey *out, char *err, size_t errlen);

/*
 * Check the minisign signature file `sig_path` for the `len` bytes at
 * `data` (an image's mapping): the key id must be pk's, the signature must
 * verify over the data (or its BLAKE2b-512 hash for "ED"), and the global
 * signature over the trusted comment. Returns 0, or a negative code with
 * "SIG_PATH: missing", "SIG_PATH: signed by another key (id X, expected
 * Y)", "SIG_PATH: signature does not match", ... in err.
 */
int eng_trust_verify(const struct eng_pubkey *pk, const uint8_t *data, uint64_t len,
                     const char *sig_path, char *err, size_t errlen);

/* The key id as minisign prints it: upper-case hex, no leading zeros. */
void eng_trust_key_id_hex(const uint8_t id[ENG_TRUST_KEY_ID_BYTES], char out[17]);

#endif
