/*
 * minisign public keys and signatures (engine/trust.h), verified with
 * libsodium. Written from minisign's published format description.
 */
#include "engine/trust.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/st_error.h"

#define TRUST_FILE_MAX 16384 /* a key or signature file is a few hundred bytes */
#define TRUST_MAX_LINES 4
#define SIG_BYTES crypto_sign_BYTES                /* 64 */
#define PREHASH_BYTES crypto_generichash_BYTES_MAX /* 64: BLAKE2b-512 */
#define HASH_CHUNK (1u << 20)

static const char untrusted_prefix[] = "untrusted comment:";
static const char trusted_prefix[] = "trusted comment: ";

struct lines {
    char buf[TRUST_FILE_MAX + 1];
    char *line[TRUST_MAX_LINES];
    unsigned n;
};

/* Read `path` and split its first lines (without "\n" or "\r\n"). */
static int read_lines(const char *path, struct lines *l, bool missing_msg, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        if (e == ENOENT && missing_msg)
            snprintf(err, errlen, "%s: missing", path);
        else
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return st_error_from_errno(e);
    }
    size_t n = fread(l->buf, 1, TRUST_FILE_MAX + 1, f);
    int rc = 0;
    if (ferror(f)) {
        rc = ST_EIO;
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    } else if (n > TRUST_FILE_MAX) {
        rc = ST_EINVAL;
        snprintf(err, errlen, "%s: larger than %u bytes; not a minisign file", path,
                 TRUST_FILE_MAX);
    }
    fclose(f);
    if (rc)
        return rc;
    l->buf[n] = '\0';
    if (memchr(l->buf, '\0', n)) {
        snprintf(err, errlen, "%s: not a minisign file (contains NUL bytes)", path);
        return ST_EINVAL;
    }
    l->n = 0;
    char *s = l->buf;
    while (*s && l->n < TRUST_MAX_LINES) {
        char *nl = strchr(s, '\n');
        if (nl)
            *nl = '\0';
        size_t len = strlen(s);
        if (len && s[len - 1] == '\r')
            s[len - 1] = '\0';
        l->line[l->n++] = s;
        if (!nl)
            break;
        s = nl + 1;
    }
    return 0;
}

/* Exactly `want` bytes of standard base64 (surrounding blanks ignored). */
static bool decode_b64(const char *text, uint8_t *out, size_t want)
{
    size_t len = strlen(text), bin_len = 0;
    const char *end = NULL;
    while (len && (text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    while (len && (*text == ' ' || *text == '\t')) {
        text++;
        len--;
    }
    if (sodium_base642bin(out, want, text, len, NULL, &bin_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return false;
    return bin_len == want && end == text + len;
}

void eng_trust_key_id_hex(const uint8_t id[ENG_TRUST_KEY_ID_BYTES], char out[17])
{
    /* minisign prints the id as a little-endian 64-bit number in upper-case
     * hex without leading zeros ("minisign public key C13E7294F3AF07E") */
    uint64_t v = 0;
    for (int i = ENG_TRUST_KEY_ID_BYTES - 1; i >= 0; i--)
        v = v << 8 | id[i];
    snprintf(out, 17, "%" PRIX64, v);
}

int eng_trust_load_pubkey(const char *path, struct eng_pubkey *out, char *err, size_t errlen)
{
    uint8_t raw[2 + ENG_TRUST_KEY_ID_BYTES + ENG_TRUST_KEY_BYTES];
    int rc;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "%s: libsodium failed to initialise", path);
        return ST_EINTERNAL;
    }
    struct lines *l = malloc(sizeof(*l));
    if (!l) {
        snprintf(err, errlen, "%s: %s", path, st_strerror(ST_ENOMEM));
        return ST_ENOMEM;
    }
    if ((rc = read_lines(path, l, false, err, errlen)) != 0)
        goto out_free;
    /* the comment line is optional, as minisign -P takes the bare key */
    unsigned k = l->n && !strncmp(l->line[0], untrusted_prefix, sizeof(untrusted_prefix) - 1);
    rc = ST_EINVAL;
    if (k >= l->n || !decode_b64(l->line[k], raw, sizeof(raw))) {
        snprintf(err, errlen,
                 "%s: not a minisign public key (expected base64 of %zu bytes on line %u)", path,
                 sizeof(raw), k + 1);
        goto out_free;
    }
    if (raw[0] != 'E' || raw[1] != 'd') {
        snprintf(err, errlen, "%s: unsupported key algorithm \"%c%c\" (expected Ed)", path,
                 raw[0] >= 0x20 && raw[0] < 0x7f ? raw[0] : '?',
                 raw[1] >= 0x20 && raw[1] < 0x7f ? raw[1] : '?');
        goto out_free;
    }
    memcpy(out->key_id, raw + 2, ENG_TRUST_KEY_ID_BYTES);
    memcpy(out->key, raw + 2 + ENG_TRUST_KEY_ID_BYTES, ENG_TRUST_KEY_BYTES);
    rc = 0;
out_free:
    free(l);
    return rc;
}

static void blake2b_512(const uint8_t *data, uint64_t len, uint8_t out[PREHASH_BYTES])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, PREHASH_BYTES);
    for (uint64_t off = 0; off < len; off += HASH_CHUNK) {
        uint64_t n = len - off < HASH_CHUNK ? len - off : HASH_CHUNK;
        crypto_generichash_update(&st, data + off, n);
    }
    crypto_generichash_final(&st, out, PREHASH_BYTES);
}

int eng_trust_verify(const struct eng_pubkey *pk, const uint8_t *data, uint64_t len,
                     const char *sig_path, char *err, size_t errlen)
{
    uint8_t sig[2 + ENG_TRUST_KEY_ID_BYTES + SIG_BYTES];
    uint8_t global[SIG_BYTES];
    uint8_t hash[PREHASH_BYTES];
    uint8_t *signed_text = NULL;
    int rc;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "%s: libsodium failed to initialise", sig_path);
        return ST_EINTERNAL;
    }
    struct lines *l = malloc(sizeof(*l));
    if (!l) {
        snprintf(err, errlen, "%s: %s", sig_path, st_strerror(ST_ENOMEM));
        return ST_ENOMEM;
    }
    if ((rc = read_lines(sig_path, l, true, err, errlen)) != 0)
        goto out_free;

    rc = ST_EINVAL;
    if (l->n < 1 || strncmp(l->line[0], untrusted_prefix, sizeof(untrusted_prefix) - 1) != 0) {
        snprintf(err, errlen, "%s: not a minisign signature (expected \"%s\" on line 1)", sig_path,
                 untrusted_prefix);
        goto out_free;
    }
    if (l->n < 2 || !decode_b64(l->line[1], sig, sizeof(sig))) {
        snprintf(err, errlen,
                 "%s: not a minisign signature (expected base64 of %zu bytes on line 2)", sig_path,
                 sizeof(sig));
        goto out_free;
    }
    if (l->n < 3 || strncmp(l->line[2], trusted_prefix, sizeof(trusted_prefix) - 1) != 0) {
        snprintf(err, errlen, "%s: not a minisign signature (expected \"%s\" on line 3)", sig_path,
                 trusted_prefix);
        goto out_free;
    }
    if (l->n < 4 || !decode_b64(l->line[3], global, sizeof(global))) {
        snprintf(err, errlen,
                 "%s: not a minisign signature (expected base64 of %zu bytes on line 4)", sig_path,
                 sizeof(global));
        goto out_free;
    }
    bool prehashed = sig[0] == 'E' && sig[1] == 'D';
    if (!prehashed && !(sig[0] == 'E' && sig[1] == 'd')) {
        snprintf(err, errlen, "%s: unsupported signature algorithm (expected Ed or ED)", sig_path);
        goto out_free;
    }
    if (memcmp(sig + 2, pk->key_id, ENG_TRUST_KEY_ID_BYTES) != 0) {
        char got[17], want[17];
        eng_trust_key_id_hex(sig + 2, got);
        eng_trust_key_id_hex(pk->key_id, want);
        snprintf(err, errlen, "%s: signed by another key (id %s, expected %s)", sig_path, got,
                 want);
        goto out_free;
    }
    const uint8_t *s = sig + 2 + ENG_TRUST_KEY_ID_BYTES;
    int bad;
    if (prehashed) {
        blake2b_512(data, len, hash);
        bad = crypto_sign_verify_detached(s, hash, sizeof(hash), pk->key);
    } else {
        bad = crypto_sign_verify_detached(s, data, (unsigned long long)len, pk->key);
    }
    if (bad) {
        snprintf(err, errlen, "%s: signature does not match", sig_path);
        goto out_free;
    }
    /* the global signature covers the signature and the trusted comment */
    const char *comment = l->line[2] + sizeof(trusted_prefix) - 1;
    size_t clen = strlen(comment);
    signed_text = malloc(SIG_BYTES + clen);
    if (!signed_text) {
        rc = ST_ENOMEM;
        snprintf(err, errlen, "%s: %s", sig_path, st_strerror(rc));
        goto out_free;
    }
    memcpy(signed_text, s, SIG_BYTES);
    memcpy(signed_text + SIG_BYTES, comment, clen);
    if (crypto_sign_verify_detached(global, signed_text, SIG_BYTES + clen, pk->key) != 0) {
        snprintf(err, errlen, "%s: trusted comment signature does not match", sig_path);
        goto out_free;
    }
    rc = 0;
out_free:
    free(signed_text);
    free(l);
    return rc;
}
