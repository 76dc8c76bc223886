/*
 * Unit tests of what the screen shows, without a terminal: the model kept
 * from engine events (ui/model.c), the view's layout and keys
 * (ui/view.c), and the JSON Lines writer (ui/json.c, ui/headless.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ui/headless.h"
#include "ui/json.h"
#include "ui/model.h"
#include "ui/view.h"

#define T0 1795000000000LL /* a fixed wall-clock time, ms */

static const struct eng_image_info images[] = {
    {"boot", "(demo)", "", 1u << 20, false},
    {"system", "(demo)", "", 4u << 20, false},
};

static struct eng_event ev_of(enum eng_event_type type, const char *slot, int64_t t)
{
    struct eng_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.t_ms = t;
    ev.slot = slot;
    ev.port = slot;
    ev.serial = "";
    ev.usb_serial = "";
    return ev;
}

static void begin(struct ui_model *m, const char *slot, int64_t t, int64_t id)
{
    struct eng_event ev = ev_of(ENG_EV_ARRIVED, slot, t);
    ui_model_event(m, &ev);
    ev = ev_of(ENG_EV_SESSION_BEGIN, slot, t);
    ev.session_id = id;
    ev.session_started_ms = t;
    ev.step_count = 5;
    ev.n_images = 2;
    ev.images = images;
    ev.recipe = "demo-phone";
    ev.recipe_version = "1.0";
    ui_model_event(m, &ev);
}

static void step(struct ui_model *m, const char *slot, const char *name, unsigned index, int64_t t0,
                 int64_t t1, enum eng_result r, uint64_t bytes, const char *text)
{
    struct eng_event ev = ev_of(ENG_EV_STEP_BEGIN, slot, t0);
    ev.step = name;
    ev.step_index = index;
    ev.step_count = 5;
    ev.step_started_ms = t0;
    ui_model_event(m, &ev);
    ev.type = ENG_EV_STEP_END;
    ev.t_ms = t1;
    ev.result = r;
    ev.bytes_done = bytes;
    ev.text = text;
    ui_model_event(m, &ev);
}

static void end(struct ui_model *m, const char *slot, int64_t t, enum eng_result r,
                const char *failed_step, const char *reason)
{
    struct eng_event ev = ev_of(ENG_EV_SESSION_END, slot, t);
    ev.result = r;
    ev.failed_step = failed_step;
    ev.text = reason;
    ev.session_bytes = 5u << 20;
    ui_model_event(m, &ev);
}

static int setup_utc(void **state)
{
    setenv("TZ", "UTC", 1);
    tzset();
    return 0;
}

static void test_slots_sorted_and_states(void **state)
{
    struct ui_model m;
    ui_model_init(&m);
    const char *names[] = {"virt-10", "virt-2", "virt-01", "virt-1a"};
    for (unsigned i = 0; i < 4; i++) {
        struct eng_event ev = ev_of(ENG_EV_ARRIVED, names[i], T0);
        assert_non_null(ui_model_event(&m, &ev));
    }
    assert_int_equal(m.n_slots, 4);
    assert_string_equal(m.slots[0].name, "virt-01");
    assert_string_equal(m.slots[1].name, "virt-1a");
    assert_string_equal(m.slots[2].name, "virt-2");
    assert_string_equal(m.slots[3].name, "virt-10");
    assert_int_equal(m.slots[0].state, UI_SLOT_PRESENT);

    struct eng_event ev = ev_of(ENG_EV_WAITING, "virt-2", T0);
    ui_model_event(&m, &ev);
    assert_int_equal(ui_model_find(&m, "virt-2")->state, UI_SLOT_WAITING);
    ev = ev_of(ENG_EV_LEFT, "virt-2", T0);
    ui_model_event(&m, &ev);
    assert_int_equal(ui_model_find(&m, "virt-2")->state, UI_SLOT_EMPTY);
    assert_int_equal(m.in_progress, 0);
    assert_null(ui_model_find(&m, "virt-3"));
    ev = ev_of(ENG_EV_ARRIVED, NULL, T0);
    assert_null(ui_model_event(&m, &ev));
    ui_model_free(&m);
}

static void test_result_only_when_committed(void **state)
{
    struct ui_model m;
    ui_model_init(&m);
    ui_model_set_station(&m, "st1", "demo-phone", "1.0", T0);
    begin(&m, "virt-01", T0, 7);
    struct ui_slot *s = ui_model_find(&m, "virt-01");
    assert_int_equal(s->state, UI_SLOT_WORKING);
    assert_int_equal(m.in_progress, 1);
    assert_int_equal(s->session_total, 5u << 20);
    step(&m, "virt-01", "getvar:product", 0, T0, T0 + 10, ENG_RESULT_PASS, 0, "simphone");
    step(&m, "virt-01", "flash:boot", 1, T0 + 10, T0 + 300, ENG_RESULT_PASS, 1u << 20, "");
    assert_int_equal(ui_slot_percent(s), 20);

    /* progress within flash:system: bytes of the whole session count */
    struct eng_event ev = ev_of(ENG_EV_STEP_BEGIN, "virt-01", T0 + 300);
    ev.step = "flash:system";
    ev.step_index = 2;
    ev.step_count = 5;
    ev.step_started_ms = T0 + 300;
    ev.serial = "SER1";
    ui_model_event(&m, &ev);
    assert_string_equal(s->serial, "SER1");
    for (int i = 1; i <= 4; i++) {
        ev = ev_of(ENG_EV_PROGRESS, "virt-01", T0 + 300 + i * 250);
        ev.bytes_done = (uint64_t)i << 20;
        ev.bytes_total = 4u << 20;
        ui_model_event(&m, &ev);
    }
    /* 1 MiB each 250 ms: 4.19 MB/s */
    assert_true(s->rate_bps > 4.0e6 && s->rate_bps < 4.4e6);
    assert_int_equal(ui_slot_percent(s), 99); /* 100 % only once recorded */
    assert_int_equal(ui_slot_elapsed_ms(s, T0 + 1000), 1000);

    end(&m, "virt-01", T0 + 1400, ENG_RESULT_PASS, NULL, "");
    assert_int_equal(s->state, UI_SLOT_SAVING);
    assert_int_equal(m.in_progress, 0);
    assert_int_equal(m.passed, 0);
    assert_int_equal(ui_slot_elapsed_ms(s, T0 + 9999), 1400); /* frozen at the end */

    ui_model_committed(&m, "virt-01", ENG_RESULT_PASS, "", T0 + 1450);
    assert_int_equal(s->state, UI_SLOT_PASS);
    assert_int_equal(m.passed, 1);
    assert_int_equal(ui_slot_percent(s), 100);
    assert_true(ui_slot_average_bps(s) > 3.7e6 && ui_slot_average_bps(s) < 3.8e6);
    const struct ui_note *n = ui_model_recent(&m, 0);
    assert_non_null(n);
    assert_int_equal(n->kind, UI_NOTE_PASS);
    assert_non_null(strstr(n->text, "virt-01 SER1 PASS 1.4s"));
    ui_model_free(&m);
}

static void test_fail_reason_and_counters(void **state)
{
    struct ui_model m;
    ui_model_init(&m);
    ui_model_set_station(&m, "st1", "demo-phone", "1.0", T0);
    begin(&m, "virt-03", T0, 1);
    step(&m, "virt-03", "flash:system", 2, T0, T0 + 500, ENG_RESULT_FAIL, 0,
         "flash: device replied FAIL: injected fault");
    end(&m, "virt-03", T0 + 500, ENG_RESULT_FAIL, "flash:system",
        "flash:system: flash: device replied FAIL: injected fault");
    struct ui_slot *s = ui_model_find(&m, "virt-03");
    assert_int_equal(s->state, UI_SLOT_SAVING);
    assert_string_equal(ui_slot_short_reason(s), "device replied FAIL: injected fault");
    /* the device leaves before the record is committed: the result stays */
    struct eng_event ev = ev_of(ENG_EV_LEFT, "virt-03", T0 + 600);
    ui_model_event(&m, &ev);
    assert_int_equal(s->state, UI_SLOT_SAVING);
    ui_model_committed(&m, "virt-03", ENG_RESULT_FAIL,
                       "flash:system: flash: device replied FAIL: injected fault", T0 + 700);
    assert_int_equal(s->state, UI_SLOT_FAIL);
    assert_int_equal(m.failed, 1);
    assert_int_equal(s->n_steps, 1);
    assert_int_equal(s->steps[0].result, ENG_RESULT_FAIL);
    assert_int_equal(s->steps[0].ended_ms - s->steps[0].started_ms, 500);

    /* other shapes of reasons */
    snprintf(s->failed_step, sizeof(s->failed_step), "flash:system");
    snprintf(s->reason, sizeof(s->reason),
             "flash:system: download: device disconnected after 1048576 of 4194304 bytes");
    assert_string_equal(ui_slot_short_reason(s),
                        "device disconnected after 1048576 of 4194304 bytes");
    snprintf(s->failed_step, sizeof(s->failed_step), "getvar:product");
    snprintf(s->reason, sizeof(s->reason), "getvar:product: no reply within 5 s");
    assert_string_equal(ui_slot_short_reason(s), "no reply within 5 s");
    snprintf(s->reason, sizeof(s->reason), "station stopped during flash:boot");
    assert_string_equal(ui_slot_short_reason(s), "station stopped during flash:boot");

    /* a result for a slot whose next device already started counts but
     * does not overwrite the new session */
    begin(&m, "virt-04", T0, 2);
    ui_model_committed(&m, "virt-04", ENG_RESULT_ABORTED, "station stopped", T0 + 800);
    assert_int_equal(ui_model_find(&m, "virt-04")->state, UI_SLOT_WORKING);
    assert_int_equal(m.aborted, 1);
    /* a result the model has no slot for still counts */
    ui_model_committed(&m, "gone", ENG_RESULT_PASS, "", T0 + 900);
    assert_int_equal(m.passed, 1);
    ui_model_free(&m);
}

static void test_yield_and_units_per_hour(void **state)
{
    struct ui_model m;
    double y = -1;
    ui_model_init(&m);
    ui_model_set_station(&m, "st1", "r", "1", T0);
    assert_false(ui_model_yield_today(&m, T0, &y));
    assert_true(ui_model_units_per_hour(&m, T0) == 0.0);
    for (int i = 0; i < 9; i++)
        ui_model_committed(&m, "a", ENG_RESULT_PASS, "", T0 + i * 1000);
    ui_model_committed(&m, "a", ENG_RESULT_FAIL, "x", T0 + 10000);
    ui_model_committed(&m, "a", ENG_RESULT_ABORTED, "x", T0 + 10000);
    assert_true(ui_model_yield_today(&m, T0 + 20000, &y));
    assert_true(y > 89.9 && y < 90.1);
    /* 10 units within the first minute: uptime under a minute counts as one */
    assert_true(ui_model_units_per_hour(&m, T0 + 30000) > 599.0 &&
                ui_model_units_per_hour(&m, T0 + 30000) < 601.0);
    /* two hours later: the window is the last hour and they are out of it */
    assert_true(ui_model_units_per_hour(&m, T0 + 2 * 3600000) == 0.0);
    /* the next day starts a new yield */
    assert_false(ui_model_yield_today(&m, T0 + 24 * 3600000LL, &y));
    ui_model_committed(&m, "a", ENG_RESULT_FAIL, "x", T0 + 24 * 3600000LL);
    assert_true(ui_model_yield_today(&m, T0 + 24 * 3600000LL, &y));
    assert_true(y == 0.0);
    ui_model_free(&m);
}

static void test_memory_is_bounded(void **state)
{
    struct ui_model m;
    char name[32], line[200];
    ui_model_init(&m);
    begin(&m, "virt-01", T0, 1);
    for (unsigned i = 0; i < UI_STEPS_MAX + 4; i++) {
        snprintf(name, sizeof(name), "oem step-%u", i);
        step(&m, "virt-01", name, i, T0 + i, T0 + i + 1, ENG_RESULT_PASS, 0, "");
    }
    struct ui_slot *s = ui_model_find(&m, "virt-01");
    assert_int_equal(s->n_steps, UI_STEPS_MAX);
    assert_int_equal(s->steps_dropped, 4);
    assert_string_equal(s->steps[0].name, "oem step-4");
    for (unsigned i = 0; i < UI_INFO_MAX + 5; i++) {
        struct eng_event ev = ev_of(ENG_EV_INFO, "virt-01", T0);
        memset(line, 'x', sizeof(line) - 1);
        line[sizeof(line) - 1] = '\0';
        snprintf(line, 12, "info %u", i);
        line[strlen(line)] = ' ';
        ev.text = line;
        ui_model_event(&m, &ev);
    }
    assert_int_equal(ui_slot_info_count(s), UI_INFO_MAX);
    assert_int_equal(strncmp(ui_slot_info_line(s, 0), "info 5 ", 7), 0);
    assert_int_equal(strlen(ui_slot_info_line(s, 0)), UI_TEXT_MAX - 1);
    assert_int_equal(strncmp(ui_slot_info_line(s, UI_INFO_MAX - 1), "info 16 ", 8), 0);
    assert_null(ui_slot_info_line(s, UI_INFO_MAX));
    for (unsigned i = 0; i < UI_NOTES_MAX + 8; i++)
        ui_model_note(&m, T0, UI_NOTE_INFO, "note %u", i);
    assert_string_equal(ui_model_recent(&m, 0)->text, "note 39");
    assert_string_equal(ui_model_recent(&m, UI_NOTES_MAX - 1)->text, "note 8");
    assert_null(ui_model_recent(&m, UI_NOTES_MAX));
    ui_model_free(&m);
}

static void test_dirty_flag(void **state)
{
    struct ui_model m;
    ui_model_init(&m);
    assert_true(ui_model_take_dirty(&m));
    assert_false(ui_model_take_dirty(&m));
    ui_model_set_paused(&m, true);
    assert_true(m.paused);
    assert_true(ui_model_take_dirty(&m));
    begin(&m, "virt-01", T0, 1);
    assert_true(ui_model_take_dirty(&m));
    ui_model_set_db_error(&m);
    assert_true(ui_model_take_dirty(&m));
    assert_true(m.db_error);
    ui_model_set_stopping(&m);
    assert_true(ui_model_take_dirty(&m));
    assert_false(ui_model_take_dirty(&m));
    ui_model_free(&m);
}

static void fill(struct ui_model *m, unsigned n)
{
    char name[32];
    ui_model_init(m);
    for (unsigned i = 1; i <= n; i++) {
        snprintf(name, sizeof(name), "virt-%02u", i);
        struct eng_event ev = ev_of(ENG_EV_ARRIVED, name, T0);
        ui_model_event(m, &ev);
    }
}

static void test_layout(void **state)
{
    struct ui_view v;
    memset(&v, 0, sizeof(v));
    /* 32 slots at 120x40: 4 x 8 tiles, all visible */
    ui_view_layout(&v, 120, 40, 32);
    assert_int_equal(v.lay.kind, UI_LAYOUT_TILES);
    assert_int_equal(v.lay.per_row, 4);
    assert_int_equal(v.lay.n_rows, 8);
    assert_true(v.lay.rows_visible >= 8);
    assert_int_equal(v.lay.cell_w, 30);
    /* 12 at 120x40: tiles with a gap line */
    ui_view_layout(&v, 120, 40, 12);
    assert_int_equal(v.lay.kind, UI_LAYOUT_TILES);
    assert_int_equal(v.lay.cell_h, UI_TILE_LINES + 1);
    /* 12 at 80x24: one line per slot */
    ui_view_layout(&v, 80, 24, 12);
    assert_int_equal(v.lay.kind, UI_LAYOUT_LINES);
    assert_int_equal(v.lay.per_row, 1);
    assert_true(v.lay.rows_visible >= 12);
    assert_int_equal(v.lay.grid_y + v.lay.grid_h + v.lay.footer_events + 1, 24);
    /* 128 at 200x60: lines, three side by side, all visible */
    ui_view_layout(&v, 200, 60, 128);
    assert_int_equal(v.lay.kind, UI_LAYOUT_LINES);
    assert_int_equal(v.lay.per_row, 3);
    assert_true((unsigned)v.lay.rows_visible >= v.lay.n_rows);
    /* 128 at 80x24: scrolling keeps the selection visible */
    ui_view_layout(&v, 80, 24, 128);
    assert_true((unsigned)v.lay.rows_visible < v.lay.n_rows);
    v.sel = 100;
    ui_view_layout(&v, 80, 24, 128);
    assert_true(v.top_row <= 100 && 100 < v.top_row + (unsigned)v.lay.rows_visible);
    /* selection beyond the slots is pulled back */
    v.sel = 500;
    ui_view_layout(&v, 80, 24, 10);
    assert_int_equal(v.sel, 9);
    assert_int_equal(v.top_row, 0);
    ui_view_layout(&v, 30, 8, 10);
    assert_int_equal(v.lay.kind, UI_LAYOUT_TOO_SMALL);
}

static void test_keys(void **state)
{
    struct ui_model m;
    struct ui_view v;
    fill(&m, 12);
    memset(&v, 0, sizeof(v));
    ui_view_layout(&v, 120, 40, m.n_slots); /* 4 per row */
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_RIGHT), UI_ACTION_REDRAW);
    assert_int_equal(ui_view_key(&v, &m, 'l'), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 2);
    assert_int_equal(ui_view_key(&v, &m, 'j'), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 6);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_DOWN), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 10);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_DOWN), UI_ACTION_NONE);
    assert_int_equal(ui_view_key(&v, &m, 'k'), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 6);
    assert_int_equal(ui_view_key(&v, &m, 'h'), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 5);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_END), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 11);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_RIGHT), UI_ACTION_NONE);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_HOME), UI_ACTION_REDRAW);
    assert_int_equal(v.sel, 0);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_LEFT), UI_ACTION_NONE);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_UP), UI_ACTION_NONE);

    /* detail opens and closes */
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_ENTER), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_DETAIL);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_DOWN), UI_ACTION_REDRAW);
    assert_int_equal(v.detail_top, 1);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_ESC), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_GRID);
    ui_view_key(&v, &m, UI_KEY_ENTER);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_ENTER), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_GRID);

    /* help closes on any key */
    assert_int_equal(ui_view_key(&v, &m, '?'), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_HELP);
    assert_int_equal(ui_view_key(&v, &m, 'x'), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_GRID);

    assert_int_equal(ui_view_key(&v, &m, 'p'), UI_ACTION_PAUSE_TOGGLE);

    /* quit: at once when nothing runs, asked when sessions run */
    assert_int_equal(ui_view_key(&v, &m, 'q'), UI_ACTION_QUIT);
    m.in_progress = 3;
    assert_int_equal(ui_view_key(&v, &m, 'q'), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_CONFIRM_QUIT);
    assert_int_equal(ui_view_key(&v, &m, 'x'), UI_ACTION_NONE);
    assert_int_equal(ui_view_key(&v, &m, 'n'), UI_ACTION_REDRAW);
    assert_int_equal(v.screen, UI_SCREEN_GRID);
    ui_view_key(&v, &m, 'q');
    assert_int_equal(ui_view_key(&v, &m, 'y'), UI_ACTION_QUIT);
    assert_int_equal(v.screen, UI_SCREEN_GRID);
    m.stopping = true;
    assert_int_equal(ui_view_key(&v, &m, 'q'), UI_ACTION_NONE);
    ui_model_free(&m);

    /* no slots: nothing to select or open */
    fill(&m, 0);
    memset(&v, 0, sizeof(v));
    ui_view_layout(&v, 80, 24, 0);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_RIGHT), UI_ACTION_NONE);
    assert_int_equal(ui_view_key(&v, &m, UI_KEY_ENTER), UI_ACTION_NONE);
    ui_model_free(&m);
}

static void test_json_quote(void **state)
{
    char out[256];
    ui_json_quote(out, sizeof(out), "a\"b\\c\n\t\x01\x7f");
    assert_string_equal(out, "\"a\\\"b\\\\c\\n\\t\\u0001\\u007f\"");
    /* valid UTF-8 passes, invalid bytes become U+FFFD */
    ui_json_quote(out, sizeof(out), "\xc3\xa9t\xc3\xa9 \xff\xc0\xaf \xed\xa0\x80 \xe2\x82");
    assert_string_equal(out, "\"\xc3\xa9t\xc3\xa9 \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\\ufffd "
                             "\\ufffd\\ufffd\"");
    /* the length needed is returned, the output truncated */
    char small[5];
    assert_int_equal(ui_json_quote(small, sizeof(small), "abcdef"), 8);
    assert_string_equal(small, "\"abc");
}

static void test_headless_json_lines(void **state)
{
    struct ui_model m;
    struct ui_headless *h;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    ui_model_init(&m);
    assert_int_equal(ui_headless_new(f, &m, &h), 0);
    ui_headless_set_format(h, UI_LOG_JSON);
    struct eng_event ev = ev_of(ENG_EV_INFO, "virt-01", T0);
    ev.serial = "SER\"1";
    ev.step = "flash:boot";
    ev.text = "line\nwith \x1b[2J escape";
    ui_model_event(&m, &ev);
    ui_headless_event(h, &ev);
    ui_headless_result(h, "virt-01", "", ENG_RESULT_FAIL, "flash: bad", 1234, 99);
    ui_headless_note(h, "DB ERROR: %s", "disk full");
    ui_headless_free(h);
    fclose(f);
    assert_non_null(strstr(buf, "\"t_ms\":1795000000000,\"event\":\"info\",\"slot\":\"virt-01\","
                                "\"serial\":\"SER\\\"1\",\"step\":\"flash:boot\","
                                "\"text\":\"line\\nwith \\u001b[2J escape\"}\n"));
    assert_non_null(strstr(buf, "\"event\":\"result\",\"slot\":\"virt-01\",\"serial\":null,"
                                "\"result\":\"FAIL\",\"reason\":\"flash: bad\","
                                "\"duration_ms\":1234,\"bytes\":99}\n"));
    assert_non_null(strstr(buf, "\"event\":\"note\",\"text\":\"DB ERROR: disk full\"}\n"));
    int lines = 0;
    for (char *p = buf; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3);
    free(buf);
    ui_model_free(&m);
    /* a NULL printer does nothing */
    ui_headless_note(NULL, "x");
    ui_headless_event(NULL, &ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_sorted_and_states),
        cmocka_unit_test(test_result_only_when_committed),
        cmocka_unit_test(test_fail_reason_and_counters),
        cmocka_unit_test(test_yield_and_units_per_hour),
        cmocka_unit_test(test_memory_is_bounded),
        cmocka_unit_test(test_dirty_flag),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_json_quote),
        cmocka_unit_test(test_headless_json_lines),
    };
    return cmocka_run_group_tests(tests, setup_utc, NULL);
}
