#include "ui/json.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s, or 0 (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if (c == 0xe0 && s[1] < 0xa0)
        return 0; /* overlong */
    if (c == 0xed && s[1] >= 0xa0)
        return 0; /* surrogate */
    if (c == 0xf0 && s[1] < 0x90)
        return 0; /* overlong */
    if (c == 0xf4 && s[1] >= 0x90)
        return 0; /* above U+10FFFF */
    return n;
}

struct sink {
    char *out;
    size_t n, len;
};

static void emit(struct sink *k, const char *s, size_t n)
{
    if (k->len < k->n) {
        size_t room = k->n - k->len;
        memcpy(k->out + k->len, s, n < room ? n : room);
    }
    k->len += n;
}

size_t ui_json_quote(char *out, size_t n, const char *s)
{
    struct sink k = {out, n ? n - 1 : 0, 0};
    const unsigned char *p = (const unsigned char *)s;
    emit(&k, "\"", 1);
    while (*p) {
        unsigned c = *p;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            emit(&k, esc, 2);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            const char *named = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
            if (named) {
                emit(&k, named, 2);
            } else {
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                emit(&k, esc, 6);
            }
            p++;
        } else {
            size_t len = utf8_len(p);
            if (len == 0) {
                emit(&k, "\\ufffd", 6);
                p++;
            } else {
                emit(&k, (const char *)p, len);
                p += len;
            }
        }
    }
    emit(&k, "\"", 1);
    if (n)
        out[k.len < n - 1 ? k.len : n - 1] = '\0';
    return k.len;
}

void ui_json_begin(struct ui_json *j, FILE *f)
{
    j->f = f;
    j->buf[0] = '{';
    j->len = 1;
    j->overflow = false;
}

static void append(struct ui_json *j, const char *s, size_t n)
{
    /* keep room for "}\n" */
    if (j->overflow || j->len + n + 2 >= sizeof(j->buf)) {
        j->overflow = true;
        return;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
}

static void key(struct ui_json *j, const char *k)
{
    char q[128];
    size_t n = ui_json_quote(q, sizeof(q), k);
    if (j->len > 1)
        append(j, ",", 1);
    append(j, q, n < sizeof(q) ? n : sizeof(q) - 1);
    append(j, ":", 1);
}

void ui_json_str(struct ui_json *j, const char *k, const char *value)
{
    char q[2048];
    key(j, k);
    if (!value) {
        append(j, "null", 4);
        return;
    }
    size_t n = ui_json_quote(q, sizeof(q), value);
    if (n >= sizeof(q)) {
        /* too long for one line: cut at a character boundary and re-quote */
        char cut[sizeof(q) / 8];
        size_t m = strlen(value);
        if (m > sizeof(cut) - 1)
            m = sizeof(cut) - 1;
        while (m > 0 && ((unsigned char)value[m] & 0xc0) == 0x80)
            m--;
        memcpy(cut, value, m);
        cut[m] = '\0';
        n = ui_json_quote(q, sizeof(q), cut);
    }
    append(j, q, n);
}

void ui_json_int(struct ui_json *j, const char *k, int64_t value)
{
    char b[32];
    key(j, k);
    int n = snprintf(b, sizeof(b), "%" PRId64, value);
    append(j, b, (size_t)n);
}

void ui_json_num(struct ui_json *j, const char *k, double value)
{
    char b[48];
    key(j, k);
    if (!isfinite(value)) {
        append(j, "null", 4);
        return;
    }
    int n = snprintf(b, sizeof(b), "%.3f", value);
    append(j, b, (size_t)n);
}

void ui_json_bool(struct ui_json *j, const char *k, bool value)
{
    key(j, k);
    append(j, value ? "true" : "false", value ? 4 : 5);
}

void ui_json_end(struct ui_json *j)
{
    if (j->overflow) {
        /* never a broken line: say what happened instead */
        static const char msg[] = "{\"event\":\"note\",\"text\":\"log line too long, dropped\"}\n";
        fwrite(msg, 1, sizeof(msg) - 1, j->f);
        return;
    }
    j->buf[j->len++] = '}';
    j->buf[j->len++] = '\n';
    fwrite(j->buf, 1, j->len, j->f);
}
