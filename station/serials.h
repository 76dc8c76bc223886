/*
 * st_serials: the serial policy (field note 9: a unit that already passed
 * is not reflashed by accident) and the duplicate check (field note 3: the
 * same serial on two slots at once is flagged, not trusted).
 *
 * It answers the engine's eng_options.serial_check. The map of serials on
 * slots right now lives here, on the loop thread; whether a serial already
 * PASSED the recipe is asked of the database through db_find_pass(), so the
 * lookup runs on the db writer thread and the loop never calls SQLite.
 *
 * Lifecycle: st_serials_new() once the database is open; st_serials_begin()
 * and st_serials_end() from the engine's SESSION_BEGIN and SESSION_END
 * events; st_serials_check() from serial_check; st_serials_free() only
 * after the db writer has stopped (its drain answers every pending lookup,
 * and each answer uses this object and the engine). Loop thread only.
 */
#ifndef ST_SERIALS_H
#define ST_SERIALS_H

#include <stdint.h>

#include "db/db.h"
#include "engine/engine.h"
#include "station/station.h"

struct st_serials;

/* 0 and *out, or ST_ENOMEM. `db` is borrowed and must outlive the object. */
int st_serials_new(struct db *db, enum st_serial_policy policy, struct st_serials **out);
void st_serials_free(struct st_serials *s);

/* A session began on `slot` (copied). 0 or ST_ENOMEM (then the session is
 * simply not known to the duplicate check). */
int st_serials_begin(struct st_serials *s, int64_t session_id, const char *slot);

/* The session ended: its serial is no longer on a slot. */
void st_serials_end(struct st_serials *s, int64_t session_id);

/*
 * The engine asks about `serial` of `session_id` (see serial_check in
 * engine.h); this answers with eng_engine_serial_verdict(), at once or
 * when the database has answered:
 *   - the serial is on another slot now: FAIL "serial X is also on slot Y";
 *   - policy reflash, or an empty serial: PROCEED;
 *   - it PASSED `recipe` `version` before: skip -> SKIP "already passed R V
 *     on DATE", fail -> FAIL "serial X already passed R V on DATE";
 *   - the database cannot answer: FAIL "cannot check serial X: ...".
 */
void st_serials_check(struct st_serials *s, struct eng_engine *eng, int64_t session_id,
                      const char *serial, const char *recipe, const char *version);

/* "skip", "reflash", "fail" -> policy; 0 or ST_EINVAL. */
int st_serial_policy_parse(const char *name, enum st_serial_policy *out);

#endif
