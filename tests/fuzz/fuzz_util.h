/*
 * fuzz_util: what the fuzz targets share (tests/fuzz/README.md).
 *
 * A reader that takes bytes off the front of a fuzz input (zeros once it
 * runs out, so every input is a valid script), and a private temporary
 * folder for targets whose parser reads a file (config, recipe, trust).
 * Harness code only: never linked into the station.
 */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct fz {
    const uint8_t *p;
    size_t n;
};

static inline bool fz_empty(const struct fz *f)
{
    return f->n == 0;
}

static inline uint8_t fz_u8(struct fz *f)
{
    if (f->n == 0)
        return 0;
    f->n--;
    return *f->p++;
}

static inline uint16_t fz_u16(struct fz *f)
{
    uint16_t lo = fz_u8(f);
    return (uint16_t)(lo | fz_u8(f) << 8);
}

static inline uint32_t fz_u32(struct fz *f)
{
    uint32_t lo = fz_u16(f);
    return lo | (uint32_t)fz_u16(f) << 16;
}

/* Up to `want` bytes; *got says how many there were. */
static inline const uint8_t *fz_bytes(struct fz *f, size_t want, size_t *got)
{
    const uint8_t *p = f->p;
    *got = want < f->n ? want : f->n;
    f->p += *got;
    f->n -= *got;
    return p;
}

/* A NUL-terminated string of at most cap-1 bytes, ended by a 0 byte in
 * the input or by the input's end. */
static inline void fz_str(struct fz *f, char *out, size_t cap)
{
    size_t o = 0;
    while (f->n > 0) {
        uint8_t c = fz_u8(f);
        if (c == 0)
            break;
        if (o + 1 < cap)
            out[o++] = (char)c;
    }
    out[o] = '\0';
}

/* With FUZZ_DEBUG set, say what happened (for checking seeds by hand:
 * FUZZ_DEBUG=1 ./fuzz_x corpus/x/seed-y). */
static inline void fuzz_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void fuzz_debug(const char *fmt, ...)
{
    if (!getenv("FUZZ_DEBUG"))
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The folder made by fuzz_tmpdir() (removed at exit with what it holds). */
const char *fuzz_tmpdir(void);

/* Write `len` bytes to `name` inside fuzz_tmpdir(); the full path goes to
 * `path`. Aborts on an I/O error (a harness fault, not a finding). */
void fuzz_write_file(const char *name, const void *data, size_t len, char *path, size_t cap);

#endif
