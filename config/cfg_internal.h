/*
 * Shared inside config/: the value parsers that station.ini (config.c)
 * and recipe files (recipe_parse.c) have in common, so "30s" or "1M"
 * mean the same thing in both. Each returns true and sets *out only when
 * the whole string is valid; callers word their own messages.
 */
#ifndef CFG_INTERNAL_H
#define CFG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

/* Decimal digits only (no sign, no spaces), value <= max. */
bool cfg__parse_uint(const char *s, uint64_t max, uint64_t *out);

/* NUMBER followed by ms, s or m ("1500ms", "5s", "2m"); when bare_ms is
 * true a bare NUMBER means milliseconds. Result in ms, at most 24 h. */
bool cfg__parse_duration(const char *s, bool bare_ms, unsigned *out_ms);

/* NUMBER with an optional binary suffix k/K (1024), M (1024^2) or
 * G (1024^3): "2000000", "500k", "1M". */
bool cfg__parse_size(const char *s, uint64_t *out);

/* A name made of letters, digits and ._- (also ':' and '+' when
 * `extra` lists them), 1..max_len bytes. */
bool cfg__is_word(const char *s, size_t len, const char *extra, size_t max_len);

/* `rel` resolved against `dir` ("" or "." = as is); false if too long. */
bool cfg__join(char *out, size_t outlen, const char *dir, const char *rel);

/* The folder part of `path` ("." when it has none). */
void cfg__dirname(char *out, size_t outlen, const char *path);

/* The protocol a parsed recipe speaks: every step kind belongs to one
 * (recipe_parse.c refuses mixed recipes). */
enum cfg_protocol cfg__recipe_protocol(const struct cfg_recipe *r);

#endif
