/*
 * Value parsers shared by station.ini and recipe files (cfg_internal.h).
 */
#include "config/cfg_internal.h"

#include <stdio.h>
#include <string.h>

bool cfg__parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Split "123abc" into the number and its suffix; false without digits. */
static bool split_number(const char *s, uint64_t *num, const char **suffix)
{
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p == s)
        return false;
    *num = v;
    *suffix = p;
    return true;
}

bool cfg__parse_duration(const char *s, bool bare_ms, unsigned *out_ms)
{
    const uint64_t day_ms = 24ull * 3600 * 1000;
    uint64_t v, mult;
    const char *suffix;
    if (!split_number(s, &v, &suffix))
        return false;
    if (!strcmp(suffix, "ms") || (bare_ms && !*suffix))
        mult = 1;
    else if (!strcmp(suffix, "s"))
        mult = 1000;
    else if (!strcmp(suffix, "m"))
        mult = 60000;
    else
        return false;
    if (v > day_ms / mult)
        return false;
    *out_ms = (unsigned)(v * mult);
    return true;
}

bool cfg__parse_size(const char *s, uint64_t *out)
{
    uint64_t v, mult;
    const char *suffix;
    if (!split_number(s, &v, &suffix))
        return false;
    if (!*suffix)
        mult = 1;
    else if (!strcmp(suffix, "k") || !strcmp(suffix, "K"))
        mult = 1ull << 10;
    else if (!strcmp(suffix, "M"))
        mult = 1ull << 20;
    else if (!strcmp(suffix, "G"))
        mult = 1ull << 30;
    else
        return false;
    if (v > UINT64_MAX / mult)
        return false;
    *out = v * mult;
    return true;
}

bool cfg__is_word(const char *s, size_t len, const char *extra, size_t max_len)
{
    if (len == 0 || len > max_len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-' || (extra && c && strchr(extra, c));
        if (!ok)
            return false;
    }
    return true;
}

bool cfg__join(char *out, size_t outlen, const char *dir, const char *rel)
{
    int n;
    size_t dlen = strlen(dir);
    if (rel[0] == '/' || !dlen || !strcmp(dir, "."))
        n = snprintf(out, outlen, "%s", rel);
    else
        n = snprintf(out, outlen, "%s%s%s", dir, dir[dlen - 1] == '/' ? "" : "/", rel);
    return n >= 0 && (size_t)n < outlen;
}

void cfg__dirname(char *out, size_t outlen, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, outlen, ".");
    else if (slash == path)
        snprintf(out, outlen, "/");
    else
        snprintf(out, outlen, "%.*s", (int)(slash - path), path);
}
