#include "engine/image.h"

#include <errno.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/st_error.h"
#include "engine/dfu_file.h"
#include "engine/trust.h"

struct eng_image {
    struct cfg_image cfg;
    unsigned refs;
    bool loading;
    uv_work_t work;
    eng_image_cb cb;
    void *user_data;
    /* written by the worker, read on the loop after the callback */
    int status;
    char message[CFG_PATH_MAX + 600];
    uint8_t *data;
    uint64_t size;
    int fd;         /* kept open for libsparse's reads (sparse planning) */
    struct stat st; /* the file as verified */
    bool have_signer;
    struct eng_pubkey signer;
    bool require_signature;
    char hash_cache[CFG_PATH_MAX];
    bool hash_cache_refresh;
    bool remembered;
    char sha256[65];
    /* The image read as a DFU file (suffix, DfuSe container), once, for
     * the DFU steps that flash it; dfu_rc and dfu_err when it is not one. */
    struct eng_dfu_file dfu;
    int dfu_rc;
    char dfu_err[CFG_PATH_MAX + 200];
};

void eng_image_demo_fill(uint8_t *buf, uint64_t len, uint32_t seed)
{
    /* xorshift64: cheap, deterministic, and not compressible into runs */
    uint64_t x = 0x9e3779b97f4a7c15ull ^ seed;
    uint64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    for (; i < len; i++)
        buf[i] = (uint8_t)(x >> (8 * (i % 8)));
}

static int map_demo(struct eng_image *img)
{
    int fd = memfd_create("station-demo-image", MFD_CLOEXEC);
    if (fd < 0)
        return st_error_from_errno(errno);
    int rc = 0;
    if (ftruncate(fd, (off_t)img->cfg.demo_size) != 0) {
        rc = st_error_from_errno(errno);
        goto out_close;
    }
    void *p = mmap(NULL, img->cfg.demo_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = st_error_from_errno(errno);
        goto out_close;
    }
    eng_image_demo_fill(p, img->cfg.demo_size, img->cfg.demo_seed);
    mprotect(p, img->cfg.demo_size, PROT_READ);
    img->data = p;
    img->size = img->cfg.demo_size;
    img->fd = fd;
    fd = -1;
out_close:
    if (fd >= 0)
        close(fd);
    if (rc)
        snprintf(img->message, sizeof(img->message), "demo image %s: %s", img->cfg.name,
                 st_strerror(rc));
    return rc;
}

static int map_file(struct eng_image *img)
{
    const char *path = img->cfg.path;
    struct stat st;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = st_error_from_errno(errno);
        snprintf(img->message, sizeof(img->message), "%s: cannot open image: %s", path,
                 strerror(errno));
        return rc;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = ST_EINVAL;
        snprintf(img->message, sizeof(img->message), "%s: not a regular file", path);
        goto out_close;
    }
    if (st.st_size == 0) {
        rc = ST_EINVAL;
        snprintf(img->message, sizeof(img->message), "%s: image is empty", path);
        goto out_close;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = st_error_from_errno(errno);
        snprintf(img->message, sizeof(img->message), "%s: cannot map image: %s", path,
                 strerror(errno));
        goto out_close;
    }
    img->data = p;
    img->size = (uint64_t)st.st_size;
    img->fd = fd;
    img->st = st;
    return 0;
out_close:
    close(fd);
    return rc;
}

/* SHA-256 with GNU Nettle: it uses the CPU's SHA instructions where there
 * are some (512 MiB in about 0.55 s on these machines, as fast as
 * OpenSSL's libcrypto and 7x libsodium's portable code), keeps no global
 * state, so pool threads need no set-up, and costs the process no
 * start-up memory (libcrypto's relocations and provider tables were
 * about 0.45 MiB of the station's 1.8 MiB private memory). */
static void hash_image(struct eng_image *img)
{
    uint8_t out[SHA256_DIGEST_SIZE];
    const uint64_t step = 1u << 20;
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    for (uint64_t off = 0; off < img->size; off += step) {
        uint64_t n = img->size - off < step ? img->size - off : step;
        sha256_update(&ctx, (size_t)n, img->data + off);
    }
    sha256_digest(&ctx, sizeof(out), out);
    sodium_bin2hex(img->sha256, sizeof(img->sha256), out, sizeof(out));
}

/* ---- remembered hashes (see image.h) ---- */

#define CACHE_MAGIC "station-image-hash 1"

static void cache_entry_path(const struct eng_image *img, char *out, size_t len)
{
    snprintf(out, len, "%s/%llx-%llx", img->hash_cache, (unsigned long long)img->st.st_dev,
             (unsigned long long)img->st.st_ino);
}

static void format_stat(const struct stat *st, char *out, size_t len)
{
    snprintf(out, len, "%lld %lld.%09ld %lld.%09ld", (long long)st->st_size,
             (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec,
             st->st_ctim.tv_nsec);
}

/* True, with img->sha256 set, when an entry matches the file's stat. */
static bool cache_lookup(struct eng_image *img)
{
    char path[CFG_PATH_MAX + 64], want[128], line[3][160];
    cache_entry_path(img, path, sizeof(path));
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    bool ok = true;
    for (int i = 0; i < 3 && ok; i++) {
        ok = fgets(line[i], sizeof(line[i]), f) != NULL;
        if (ok)
            line[i][strcspn(line[i], "\n")] = '\0';
    }
    fclose(f);
    format_stat(&img->st, want, sizeof(want));
    if (!ok || strcmp(line[0], CACHE_MAGIC) || strcmp(line[1], want) || strlen(line[2]) != 64 ||
        strspn(line[2], "0123456789abcdef") != 64)
        return false;
    memcpy(img->sha256, line[2], 65);
    return true;
}

/* Remember the hash when the file did not change while it was read and
 * its last change is old enough to be told from a later one. Failures
 * only cost the next start a rehash, so they are not reported. */
static void cache_store(struct eng_image *img, time_t hash_started)
{
    struct stat now;
    char was[128], is[128];
    format_stat(&img->st, was, sizeof(was));
    if (fstat(img->fd, &now) != 0)
        return;
    format_stat(&now, is, sizeof(is));
    if (strcmp(was, is) != 0)
        return; /* written to while it was read */
    if (now.st_ctim.tv_sec > hash_started - 2 || now.st_mtim.tv_sec > hash_started - 2)
        return;
    if (mkdir(img->hash_cache, 0700) != 0 && errno != EEXIST)
        return;
    char path[CFG_PATH_MAX + 64], tmp[CFG_PATH_MAX + 96];
    cache_entry_path(img, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "we");
    if (!f)
        return;
    int wr = fprintf(f, "%s\n%s\n%s\n", CACHE_MAGIC, was, img->sha256);
    if (fclose(f) != 0 || wr < 0 || rename(tmp, path) != 0)
        unlink(tmp);
}

/* Map or generate, hash or recall the hash, check pin and signature. */
static void load(struct eng_image *img)
{
    img->status = img->cfg.path[0] ? map_file(img) : map_demo(img);
    if (img->status)
        return;
    bool cached = img->cfg.path[0] && img->hash_cache[0];
    if (cached && !img->hash_cache_refresh && cache_lookup(img)) {
        img->remembered = true;
        /* Nothing has read the file: ask for it now, here on the pool,
         * rather than have the first sessions' sends wait for the disk on
         * the loop (hashing it did this before). */
        (void)posix_fadvise(img->fd, 0, 0, POSIX_FADV_WILLNEED);
    } else {
        time_t started = time(NULL);
        hash_image(img);
        if (cached)
            cache_store(img, started);
    }
    if (img->cfg.sha256[0] && strcasecmp(img->cfg.sha256, img->sha256) != 0) {
        img->status = ST_EINVAL;
        snprintf(img->message, sizeof(img->message),
                 "%s: sha256 mismatch (pinned %.16s..., file %.16s...)",
                 img->cfg.path[0] ? img->cfg.path : img->cfg.name, img->cfg.sha256, img->sha256);
        return;
    }
    if (img->cfg.path[0] && img->have_signer) {
        char sig[CFG_PATH_MAX + 16], err[400];
        snprintf(sig, sizeof(sig), "%s.minisig", img->cfg.path);
        int rc = eng_trust_verify(&img->signer, img->data, img->size, sig, err, sizeof(err));
        if (rc == ST_ENOENT && !img->require_signature)
            return; /* signatures checked where present, required only when configured */
        if (rc) {
            img->status = rc;
            snprintf(img->message, sizeof(img->message), "%s: refused: %s", img->cfg.path, err);
        }
    } else if (img->cfg.path[0] && img->require_signature) {
        img->status = ST_EINVAL;
        snprintf(img->message, sizeof(img->message),
                 "%s: a signature is required but no minisign key is configured", img->cfg.path);
    }
}

static void work(uv_work_t *w)
{
    struct eng_image *img = w->data;
    load(img);
    /* Cheap unless the file ends in a DFU suffix (then its CRC): every
     * session's DFU step uses this parse instead of its own. */
    if (img->status == 0)
        img->dfu_rc = eng_dfu_file_parse(img->data, img->size, eng_image_path(img), &img->dfu,
                                         img->dfu_err, sizeof(img->dfu_err));
}

static void image_free(struct eng_image *img)
{
    if (img->dfu_rc == 0)
        eng_dfu_file_free(&img->dfu);
    if (img->data)
        munmap(img->data, img->size);
    if (img->fd >= 0)
        close(img->fd);
    free(img);
}

static void after_work(uv_work_t *w, int status)
{
    struct eng_image *img = w->data;
    img->loading = false;
    if (status == UV_ECANCELED) {
        img->status = ST_ECANCELED;
        snprintf(img->message, sizeof(img->message), "%s: loading cancelled", img->cfg.name);
    }
    img->refs++; /* keep it alive through the callback */
    if (img->cb)
        img->cb(img, img->status, img->status ? img->message : "", img->user_data);
    eng_image_unref(img);
}

int eng_image_open(uv_loop_t *loop, const struct cfg_image *cfg,
                   const struct eng_image_trust *trust, eng_image_cb cb, void *user_data,
                   struct eng_image **out)
{
    if (!cfg->path[0] && cfg->demo_size == 0)
        return ST_EINVAL;
    struct eng_image *img = calloc(1, sizeof(*img));
    if (!img)
        return ST_ENOMEM;
    img->cfg = *cfg;
    img->fd = -1;
    if (trust && trust->signer) {
        img->have_signer = true;
        img->signer = *trust->signer;
    }
    img->require_signature = trust && trust->require_signature;
    if (trust && trust->hash_cache)
        snprintf(img->hash_cache, sizeof(img->hash_cache), "%s", trust->hash_cache);
    img->hash_cache_refresh = trust && trust->hash_cache_refresh;
    img->refs = 1;
    img->cb = cb;
    img->user_data = user_data;
    img->work.data = img;
    int rc = uv_queue_work(loop, &img->work, work, after_work);
    if (rc) {
        free(img);
        return st_error_from_errno(rc);
    }
    img->loading = true;
    *out = img;
    return 0;
}

void eng_image_ref(struct eng_image *img)
{
    img->refs++;
}

void eng_image_unref(struct eng_image *img)
{
    if (!img || --img->refs > 0)
        return;
    if (img->loading) {
        img->cb = NULL; /* nobody listens any more; after_work frees it */
        return;
    }
    image_free(img);
}

const uint8_t *eng_image_data(const struct eng_image *img)
{
    return img->data;
}
uint64_t eng_image_size(const struct eng_image *img)
{
    return img->size;
}
const char *eng_image_sha256(const struct eng_image *img)
{
    return img->sha256;
}
bool eng_image_hash_remembered(const struct eng_image *img)
{
    return img->remembered;
}
const struct eng_dfu_file *eng_image_dfu_file(const struct eng_image *img, const char **err)
{
    *err = img->dfu_rc ? img->dfu_err : NULL;
    return img->dfu_rc ? NULL : &img->dfu;
}
const char *eng_image_name(const struct eng_image *img)
{
    return img->cfg.name;
}

int eng_image_check_unchanged(const struct eng_image *img, char *msg, size_t len)
{
    struct stat now;
    if (!img->cfg.path[0])
        return 0;
    if (stat(img->cfg.path, &now) != 0 || now.st_ino != img->st.st_ino ||
        now.st_dev != img->st.st_dev || now.st_size != img->st.st_size ||
        now.st_mtim.tv_sec != img->st.st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != img->st.st_mtim.tv_nsec) {
        snprintf(msg, len,
                 "%s changed on disk since it was verified; nothing was sent "
                 "(reload the station to verify it again)",
                 img->cfg.path);
        return ST_EINVAL;
    }
    return 0;
}
int eng_image_fd(const struct eng_image *img)
{
    return img->fd;
}
const char *eng_image_path(const struct eng_image *img)
{
    return img->cfg.path[0] ? img->cfg.path : "(demo)";
}
