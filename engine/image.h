/*
 * eng_image: an image file opened once, mapped read-only and shared by
 * every session that flashes it.
 *
 * eng_image_open() does the slow part (open, mmap or generate a demo
 * image, SHA-256 of every byte) on the libuv thread pool and calls back on
 * the loop thread. With a signer, PATH.minisig is verified there too
 * (engine/trust.h). Images are reference-counted: each user takes a
 * reference and drops it; the mapping goes with the last reference.
 *
 * Remembered hashes: with a hash cache directory, a file's SHA-256 is
 * written there after hashing, keyed by its device and inode, together
 * with its size, modification and change times. A later load of the same
 * file whose stat() still matches takes the remembered hash instead of
 * reading every byte again (a multi-gigabyte image costs seconds of CPU at
 * each start otherwise). The change time cannot be set from user space,
 * so any write or rename onto the file misses the cache. A file changed
 * less than two seconds before it was hashed is not remembered (a write in
 * the same timestamp tick would not show). Signatures are verified at
 * every load regardless.
 */
#ifndef ENG_IMAGE_H
#define ENG_IMAGE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config/recipe.h"

struct eng_image;
struct eng_pubkey;

/* Optional trust settings for eng_image_open(). */
struct eng_image_trust {
    const struct eng_pubkey *signer; /* minisign key; NULL = none */
    bool require_signature;          /* refuse the image without a good PATH.minisig */
    const char *hash_cache;          /* directory of remembered hashes; NULL = none */
    bool hash_cache_refresh;         /* never recall: read every byte, then remember */
};

/* status 0, or a negative code with `message` naming the file. The image
 * pointer stays valid until the caller drops its reference. */
typedef void (*eng_image_cb)(struct eng_image *img, int status, const char *message,
                             void *user_data);

/* Start loading. On 0, *out holds one reference owned by the caller and
 * `cb` will run exactly once; dropping that reference before the callback
 * is allowed (the callback still runs, and the image is freed after it). */
int eng_image_open(uv_loop_t *loop, const struct cfg_image *cfg,
                   const struct eng_image_trust *trust, eng_image_cb cb, void *user_data,
                   struct eng_image **out);

/* 0 if the file behind the image is still the one that was verified (same
 * inode, size and modification time), else ST_EINVAL and a message such
 * as "images/system.img changed on disk since it was verified". Demo
 * images never change. One stat(); cheap enough for each flash step. */
int eng_image_check_unchanged(const struct eng_image *img, char *msg, size_t len);

void eng_image_ref(struct eng_image *img);
void eng_image_unref(struct eng_image *img);

const uint8_t *eng_image_data(const struct eng_image *img);
uint64_t eng_image_size(const struct eng_image *img);
const char *eng_image_sha256(const struct eng_image *img); /* lowercase hex */
/* True when the hash came from the hash cache rather than from reading
 * the file at this load. */
bool eng_image_hash_remembered(const struct eng_image *img);
/* The image read as a DFU file (engine/dfu_file.h), parsed once when it
 * loaded; NULL with *err saying why when it is not a valid one. */
struct eng_dfu_file;
const struct eng_dfu_file *eng_image_dfu_file(const struct eng_image *img, const char **err);
const char *eng_image_name(const struct eng_image *img);
const char *eng_image_path(const struct eng_image *img); /* "(demo)" for generated */
/* A read-only descriptor of the content, owned by the image. */
int eng_image_fd(const struct eng_image *img);

/* Fill `buf` with the demo content for (seed) at offset 0..len: the same
 * bytes eng_image_open() generates, for tests to compare. */
void eng_image_demo_fill(uint8_t *buf, uint64_t len, uint32_t seed);

#endif
