/*
 * ui_json: a writer of JSON Lines, one object per line, for
 * `station run --log-format json`. Strings are escaped per RFC 8259;
 * bytes that are not valid UTF-8 (a device may send anything) become
 * U+FFFD, so every line parses.
 *
 *   struct ui_json j;
 *   ui_json_begin(&j, out);
 *   ui_json_str(&j, "event", "result");
 *   ui_json_int(&j, "bytes", 5242880);
 *   ui_json_end(&j);            -> {"event":"result","bytes":5242880}\n
 *
 * Nothing is written until ui_json_end(), which writes the line with one
 * fwrite so lines from one thread never interleave partially.
 */
#ifndef UI_JSON_H
#define UI_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct ui_json {
    FILE *f;
    char buf[4096];
    size_t len;
    bool overflow;
};

void ui_json_begin(struct ui_json *j, FILE *f);
/* A string member; NULL writes null. */
void ui_json_str(struct ui_json *j, const char *key, const char *value);
void ui_json_int(struct ui_json *j, const char *key, int64_t value);
/* A number member; non-finite values write null. */
void ui_json_num(struct ui_json *j, const char *key, double value);
void ui_json_bool(struct ui_json *j, const char *key, bool value);
void ui_json_end(struct ui_json *j);

/* Append `s` as a quoted, escaped JSON string to out (at most n bytes with
 * the terminating NUL); returns the length it needed, like snprintf. */
size_t ui_json_quote(char *out, size_t n, const char *s);

#endif
