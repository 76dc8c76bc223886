/*
 * db_report: the QA queries behind `station report`, `station stats` and
 * `station history`, over one or several station databases at once.
 *
 * Lifecycle: db_reader_open() attaches every file read-only to one private
 * connection; the query functions hand their rows to a caller's sink; then
 * db_reader_close(). A reader never writes and, the files being in WAL
 * mode, never blocks a station that is recording into them.
 *
 * Every filter value travels as a bound parameter, never as SQL text. In
 * DB_SHAPE_JSON each row is one column holding a complete JSON object
 * built by SQLite's json_object()/json_group_array(), so a caller that
 * joins rows with commas inside [ ] always produces valid JSON.
 *
 * Threading: a reader belongs to the thread that opened it. Nothing here
 * runs on the station's loop; it is for the CLI and the benchmark.
 */
#ifndef DB_REPORT_H
#define DB_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct db_reader;

/* At most this many files in one reader (SQLite's attach limit). */
#define DB_READER_MAX_FILES 10

/*
 * Open `n` station databases (1 <= n <= DB_READER_MAX_FILES) read-only.
 * `paths` are copied; a path is also the label of its rows (column "db")
 * when n > 1. Returns 0 and sets *out, or a negative st_error code with a
 * message naming the file in errbuf: ST_ENOENT (no such file), ST_EDB
 * (not an SQLite file, not a station database, or a newer schema),
 * ST_EINVAL (bad arguments), ST_ENOMEM.
 */
int db_reader_open(const char *const *paths, unsigned n, struct db_reader **out, char *errbuf,
                   size_t errlen);

/* Close the reader; NULL is fine. */
void db_reader_close(struct db_reader *r);

/* Which sessions: every field optional (false/NULL means "any"). Times are
 * Unix milliseconds on sessions.started_ms, `since` inclusive, `until`
 * exclusive. `serial` matches the getvar serial or the USB iSerial. */
struct db_filter {
    bool has_since, has_until;
    int64_t since_ms, until_ms;
    const char *serial;
    const char *slot;
    const char *result; /* "PASS", "FAIL", "ABORTED" or "SKIPPED" */
    const char *recipe; /* recipe name */
};

enum db_group { DB_BY_SLOT, DB_BY_RECIPE, DB_BY_DAY, DB_BY_HOUR, DB_BY_ERROR };

enum db_shape {
    DB_SHAPE_ROWS, /* named columns of text values */
    DB_SHAPE_JSON, /* one column "json": one JSON object per row */
};

/*
 * Where rows go. `columns` is called once before the first row (also when
 * no row follows); `row` once per row. values[i] is NULL for SQL NULL;
 * the arrays and strings are valid only during the call. A non-zero
 * return from either stops the query, which then returns ST_ECANCELED.
 */
struct db_sink {
    int (*columns)(void *user, unsigned n, const char *const *names);
    int (*row)(void *user, unsigned n, const char *const *values);
    void *user;
};

/*
 * Sessions matching `f`, oldest first. Columns: [db,] id, station, slot,
 * port, serial, usb_serial, product, recipe, version, started, ended
 * (ISO 8601 UTC with milliseconds), duration_s, result, failed_step,
 * reason, bytes. Returns 0, ST_ECANCELED, or ST_EDB with a message.
 */
int db_report(struct db_reader *r, const struct db_filter *f, enum db_shape shape,
              const struct db_sink *sink, char *errbuf, size_t errlen);

/*
 * Counts per group of the sessions matching `f`. Columns: the group key
 * (named slot, recipe, day, hour or error), sessions, passed, failed,
 * aborted, skipped, yield_pct (100 * passed / (passed + failed) rounded
 * half up to one decimal, NULL when both are 0), median_s (median duration
 * of the group's PASS sessions in whole milliseconds, halves rounded up,
 * shown in seconds; NULL when none). Days and hours are UTC. By
 * error, only FAIL and ABORTED sessions count, grouped by reason, most
 * frequent first. Returns as db_report().
 */
int db_stats(struct db_reader *r, enum db_group by, const struct db_filter *f, enum db_shape shape,
             const struct db_sink *sink, char *errbuf, size_t errlen);

/*
 * Every session of `serial` (getvar serial or USB iSerial), oldest first,
 * with its image hashes and steps. Rows: one per step (a session without
 * steps gives one row with empty step columns). Columns: [db,] session,
 * station, slot, port, serial, usb_serial, product, recipe, version,
 * started, ended, result, failed_step, reason, images ("name=sha256 ..."),
 * step, step_name, step_result, step_duration_s, step_bytes, step_detail,
 * step_info. In DB_SHAPE_JSON: one object per session with "images" and
 * "steps" arrays. Returns as db_report().
 */
int db_history(struct db_reader *r, const char *serial, enum db_shape shape,
               const struct db_sink *sink, char *errbuf, size_t errlen);

/* Parse "slot", "recipe", "day", "hour" or "error"; 0 or ST_EINVAL. */
int db_group_parse(const char *s, enum db_group *out);

#endif
