/*
 * minisign verification (engine/trust.h) against keys and signatures made
 * by the real `minisign` tool (Debian package minisign): good signatures
 * of both kinds accepted; a changed byte, another key, a missing or
 * damaged signature file refused with a message naming the file.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "common/st_error.h"
#include "engine/trust.h"

#define DATA_BYTES ((3u << 20) + 17) /* more than one hashing chunk */

struct fixture {
    char dir[256];
    uint8_t *data;
    size_t len;
    struct eng_pubkey pk, other;
    char err[1024];
};

static void path_of(const struct fixture *f, const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", f->dir, name);
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 8192);
    size_t n = fread(buf, 1, 8191, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char pub[512], file[512];
    if (!f)
        return -1;
    if (run("command -v minisign >/dev/null") != 0) {
        fprintf(stderr, "test_trust: minisign not found (apt-get install minisign; "
                        "scripts/setup.sh installs it)\n");
        free(f);
        return -1;
    }
    snprintf(f->dir, sizeof(f->dir), "%s/trustXXXXXX", TEST_TMPDIR);
    if (!mkdtemp(f->dir))
        return -1;
    f->len = DATA_BYTES;
    f->data = malloc(f->len);
    uint32_t x = 0x2545f491u;
    for (size_t i = 0; i < f->len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f->data[i] = (uint8_t)x;
    }
    path_of(f, "system.img", file, sizeof(file));
    write_bytes(file, f->data, f->len);
    /* two key pairs without passwords; signatures prehashed (the default)
     * and legacy (-l) */
    if (run("cd '%s' && minisign -G -p station.pub -s station.key -W >/dev/null </dev/null && "
            "minisign -G -p other.pub -s other.key -W >/dev/null </dev/null && "
            "minisign -S -s station.key -m system.img -t 'build 42' >/dev/null </dev/null && "
            "minisign -S -l -s station.key -m system.img -x system.img.legacy "
            ">/dev/null </dev/null && "
            "minisign -S -s other.key -m system.img -x system.img.other >/dev/null </dev/null",
            f->dir) != 0)
        return -1;
    path_of(f, "station.pub", pub, sizeof(pub));
    if (eng_trust_load_pubkey(pub, &f->pk, f->err, sizeof(f->err)) != 0) {
        fprintf(stderr, "%s\n", f->err);
        return -1;
    }
    path_of(f, "other.pub", pub, sizeof(pub));
    if (eng_trust_load_pubkey(pub, &f->other, f->err, sizeof(f->err)) != 0)
        return -1;
    *state = f;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    int rc = nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f->data);
    free(f);
    return rc;
}

/* err with the fixture's folder removed */
static const char *msg(struct fixture *f)
{
    static char out[1024];
    size_t dl = strlen(f->dir);
    if (!strncmp(f->err, f->dir, dl) && f->err[dl] == '/')
        snprintf(out, sizeof(out), "%s", f->err + dl + 1);
    else
        snprintf(out, sizeof(out), "%s", f->err);
    return out;
}

static int verify(struct fixture *f, const struct eng_pubkey *pk, const char *sig_name)
{
    char sig[512];
    path_of(f, sig_name, sig, sizeof(sig));
    f->err[0] = '\0';
    return eng_trust_verify(pk, f->data, f->len, sig, f->err, sizeof(f->err));
}

static void test_good_signatures(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(verify(f, &f->pk, "system.img.minisig"), 0);
    assert_string_equal(f->err, "");
    assert_int_equal(verify(f, &f->pk, "system.img.legacy"), 0);
    assert_int_equal(verify(f, &f->other, "system.img.other"), 0);

    /* the two kinds really are the two algorithms */
    char path[512];
    path_of(f, "system.img.minisig", path, sizeof(path));
    char *text = read_text(path);
    assert_non_null(strstr(text, "\nRU")); /* base64 of "ED" + ... */
    assert_non_null(strstr(text, "trusted comment: build 42\n"));
    free(text);
    path_of(f, "system.img.legacy", path, sizeof(path));
    text = read_text(path);
    assert_non_null(strstr(text, "\nRW")); /* base64 of "Ed" + ... */
    free(text);
}

/* Our key id text is minisign's own (it prints it in the .pub comment). */
static void test_key_id(void **state)
{
    struct fixture *f = *state;
    char path[512], id[17], want[64];
    path_of(f, "station.pub", path, sizeof(path));
    char *text = read_text(path);
    eng_trust_key_id_hex(f->pk.key_id, id);
    snprintf(want, sizeof(want), "minisign public key %s\n", id);
    assert_non_null(strstr(text, want));
    free(text);
    /* a small id is printed without leading zeros, as minisign does */
    static const uint8_t small[8] = {0x7e, 0xf0, 0x3a, 0x4f, 0x29, 0xe7, 0x13, 0x0c};
    eng_trust_key_id_hex(small, id);
    assert_string_equal(id, "C13E7294F3AF07E");
}

static void test_tampered(void **state)
{
    struct fixture *f = *state;
    f->data[f->len / 2] ^= 0x01;
    assert_int_equal(verify(f, &f->pk, "system.img.minisig"), ST_EINVAL);
    assert_string_equal(msg(f), "system.img.minisig: signature does not match");
    assert_int_equal(verify(f, &f->pk, "system.img.legacy"), ST_EINVAL);
    assert_string_equal(msg(f), "system.img.legacy: signature does not match");
    f->data[f->len / 2] ^= 0x01;
    f->data[f->len - 1] ^= 0x80; /* the last byte, past the last full chunk */
    assert_int_equal(verify(f, &f->pk, "system.img.minisig"), ST_EINVAL);
    f->data[f->len - 1] ^= 0x80;
    assert_int_equal(verify(f, &f->pk, "system.img.minisig"), 0);
}

static void test_wrong_key(void **state)
{
    struct fixture *f = *state;
    char got_id[17], want_id[17], want[128];
    eng_trust_key_id_hex(f->other.key_id, got_id);
    eng_trust_key_id_hex(f->pk.key_id, want_id);
    snprintf(want, sizeof(want), "system.img.other: signed by another key (id %s, expected %s)",
             got_id, want_id);
    assert_int_equal(verify(f, &f->pk, "system.img.other"), ST_EINVAL);
    assert_string_equal(msg(f), want);

    /* the right key id with another key's bytes: the signature fails */
    struct eng_pubkey forged = f->other;
    memcpy(forged.key_id, f->pk.key_id, sizeof(forged.key_id));
    assert_int_equal(verify(f, &forged, "system.img.minisig"), ST_EINVAL);
    assert_string_equal(msg(f), "system.img.minisig: signature does not match");
}

static void test_missing(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(verify(f, &f->pk, "vendor.img.minisig"), ST_ENOENT);
    assert_string_equal(msg(f), "vendor.img.minisig: missing");
}

/* Replace line `n` (0-based) of the good signature and verify the copy. */
static int verify_edited(struct fixture *f, unsigned n, const char *line, bool drop_rest)
{
    char path[512];
    path_of(f, "system.img.minisig", path, sizeof(path));
    char *text = read_text(path), out[8192] = "";
    char *s = text;
    for (unsigned i = 0; *s; i++) {
        char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) + 1 : strlen(s);
        if (i == n) {
            strcat(out, line);
            if (drop_rest)
                break;
        } else {
            strncat(out, s, len);
        }
        s += len;
    }
    free(text);
    path_of(f, "bad.minisig", path, sizeof(path));
    write_bytes(path, out, strlen(out));
    return verify(f, &f->pk, "bad.minisig");
}

static void test_corrupted(void **state)
{
    struct fixture *f = *state;
    char path[512];
    path_of(f, "system.img.minisig", path, sizeof(path));
    char *text = read_text(path);
    char sigline[256], trusted[512];
    assert_int_equal(sscanf(strchr(text, '\n') + 1, "%255[^\n]", sigline), 1);
    assert_int_equal(sscanf(strstr(text, "trusted comment:"), "%511[^\n]", trusted), 1);
    free(text);

    /* a changed signature byte (last base64 group keeps its padding) */
    sigline[40] = sigline[40] == 'A' ? 'B' : 'A';
    strcat(sigline, "\n");
    assert_int_equal(verify_edited(f, 1, sigline, false), ST_EINVAL);
    assert_string_equal(msg(f), "bad.minisig: signature does not match");

    /* a changed trusted comment: the global signature fails */
    trusted[strlen(trusted) - 1] ^= 1;
    strcat(trusted, "\n");
    assert_int_equal(verify_edited(f, 2, trusted, false), ST_EINVAL);
    assert_string_equal(msg(f), "bad.minisig: trusted comment signature does not match");

    assert_int_equal(verify_edited(f, 1, "not base64!\n", false), ST_EINVAL);
    assert_string_equal(msg(f),
                        "bad.minisig: not a minisign signature (expected base64 of 74 bytes on "
                        "line 2)");
    assert_int_equal(verify_edited(f, 0, "hello\n", false), ST_EINVAL);
    assert_string_equal(msg(f), "bad.minisig: not a minisign signature (expected \"untrusted "
                                "comment:\" on line 1)");
    assert_int_equal(verify_edited(f, 2, "", true), ST_EINVAL);
    assert_string_equal(msg(f), "bad.minisig: not a minisign signature (expected \"trusted "
                                "comment: \" on line 3)");
    assert_int_equal(verify_edited(f, 3, "AAAA\n", false), ST_EINVAL);
    assert_string_equal(msg(f),
                        "bad.minisig: not a minisign signature (expected base64 of 64 bytes on "
                        "line 4)");
    /* an empty file */
    assert_int_equal(verify_edited(f, 0, "", true), ST_EINVAL);
    assert_string_equal(msg(f), "bad.minisig: not a minisign signature (expected \"untrusted "
                                "comment:\" on line 1)");
}

static void test_bad_pubkey(void **state)
{
    struct fixture *f = *state;
    char path[512];
    struct eng_pubkey pk;
    path_of(f, "none.pub", path, sizeof(path));
    assert_int_equal(eng_trust_load_pubkey(path, &pk, f->err, sizeof(f->err)), ST_ENOENT);
    assert_string_equal(msg(f), "none.pub: cannot open: No such file or directory");

    path_of(f, "bad.pub", path, sizeof(path));
    write_bytes(path, "untrusted comment: x\nRWQAAAA\n", 29);
    assert_int_equal(eng_trust_load_pubkey(path, &pk, f->err, sizeof(f->err)), ST_EINVAL);
    assert_string_equal(msg(f),
                        "bad.pub: not a minisign public key (expected base64 of 42 bytes on line "
                        "2)");

    /* a signature file is not a key */
    path_of(f, "station.key", path, sizeof(path));
    assert_int_not_equal(eng_trust_load_pubkey(path, &pk, f->err, sizeof(f->err)), 0);

    /* the bare base64 line, as minisign -P takes it, is a key too */
    char pub[512];
    path_of(f, "station.pub", pub, sizeof(pub));
    char *text = read_text(pub);
    path_of(f, "bare.pub", path, sizeof(path));
    const char *key = strchr(text, '\n') + 1;
    write_bytes(path, key, strlen(key));
    free(text);
    assert_int_equal(eng_trust_load_pubkey(path, &pk, f->err, sizeof(f->err)), 0);
    assert_memory_equal(&pk, &f->pk, sizeof(pk));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_good_signatures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_pubkey, setup, teardown),
    };
    return cmocka_run_group_tests_name("trust", tests, NULL, NULL);
}
