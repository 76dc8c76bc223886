/*
 * station.ini and recipe files (config/config.h): tables of bad input,
 * each with the exact "FILE:LINE:COLUMN: message" it must produce, and
 * good input parsed into the expected structs, including the examples.
 *
 * Every test works in its own folder under TEST_TMPDIR; messages are
 * compared with that folder's path (and the '/' after it) removed.
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "common/st_error.h"
#include "config/config.h"

struct dir {
    char path[256];
};

static void write_file(const struct dir *d, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", d->path, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static void in_dir(const struct dir *d, const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", d->path, name);
}

/* The message with every "<dir>/" removed. */
static void strip_dir(const struct dir *d, const char *msg, char *out, size_t len)
{
    char prefix[300];
    size_t plen = (size_t)snprintf(prefix, sizeof(prefix), "%s/", d->path);
    size_t n = 0;
    while (*msg && n + 1 < len) {
        if (!strncmp(msg, prefix, plen)) {
            msg += plen;
            continue;
        }
        out[n++] = *msg++;
    }
    out[n] = '\0';
}

static int setup(void **state)
{
    struct dir *d = calloc(1, sizeof(*d));
    if (!d)
        return -1;
    snprintf(d->path, sizeof(d->path), "%s/cfgXXXXXX", TEST_TMPDIR);
    if (!mkdtemp(d->path))
        return -1;
    char p[512];
    in_dir(d, "img", p, sizeof(p));
    mkdir(p, 0755);
    in_dir(d, "img/adir", p, sizeof(p));
    mkdir(p, 0755);
    in_dir(d, "keys", p, sizeof(p));
    mkdir(p, 0755);
    write_file(d, "img/boot.img", "boot image bytes\n");
    write_file(d, "img/system.img", "system image bytes\n");
    write_file(d, "img/fw.bin", "firmware bytes\n");
    write_file(d, "keys/station.pub", "untrusted comment: test\nRWQAAAAAAAAAAAAA\n");
    write_file(d, "r.recipe", "recipe r 1\nimage boot img/boot.img\nflash boot boot\n");
    write_file(d, "d.recipe", "recipe d 1\nprotocol dfu\nimage fw img/fw.bin\ndfu-download 0 fw\n");
    *state = d;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int teardown(void **state)
{
    struct dir *d = *state;
    int rc = nftw(d->path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
    return rc;
}

/* ---- bad station.ini ----------------------------------------------- */

struct bad_ini {
    const char *ini;
    const char *recipe; /* written to x.recipe first, when set */
    const char *want;
};

static const struct bad_ini bad_inis[] = {
    {"[station]\n[slots A]\npath = 1-1\n", NULL,
     "station.ini:2:2: unknown section [slots A] (expected station, slot NAME, profile NAME or "
     "simulate)"},
    {"[station]\nname = x\n", NULL,
     "station.ini:2:1: unknown key \"name\" in [station] (expected id, db, max_sessions, ui, "
     "minisign_key, require_signatures)"},
    {"id = x\n", NULL,
     "station.ini:1:1: key \"id\" outside a section (expected [station], [slot NAME], [profile "
     "NAME] or [simulate] first)"},
    {"[slot A]\npath = 1-1\n\n[slot A]\npath = 1-2\n", NULL,
     "station.ini:4:2: duplicate section [slot A] (first on line 1)"},
    {"[station]\n[simulate]\n[station]\n", NULL,
     "station.ini:3:2: duplicate section [station] (first on line 1)"},
    {"[station]\nid = a\nid = b\n", NULL,
     "station.ini:3:1: duplicate key \"id\" (first on line 2)"},
    {"[station]\nid\n", NULL,
     "station.ini:2:1: expected \"key = value\", a [section] or a comment, got \"id\""},
    {"[station\nid = a\n", NULL, "station.ini:1:9: expected \"]\" to close the section header"},
    {"[station] x\n", NULL, "station.ini:1:11: unexpected \"x\" after \"]\""},
    {"[slot]\n", NULL, "station.ini:1:6: [slot NAME]: expected a name after \"slot\""},
    {"[profile bad name!]\n", NULL,
     "station.ini:1:10: [profile NAME]: expected a name (letters, digits, ._-), got \"bad "
     "name!\""},
    {"[station main]\n", NULL, "station.ini:1:10: [station] takes no name, got \"main\""},
    {"[slot A]\npath = usb1\n", NULL,
     "station.ini:2:8: path: expected a port path like 1-4.2.3, virt-07 or tcp:HOST:PORT, or a "
     "glob like 1-1.*, got \"usb1\""},
    {"[slot A]\npath = 1-4..2\n", NULL,
     "station.ini:2:8: path: expected a port path like 1-4.2.3, virt-07 or tcp:HOST:PORT, or a "
     "glob like 1-1.*, got \"1-4..2\""},
    {"[slot A]\npath = 1-4.2\n[slot B]\npath = 1-4.2\n", NULL,
     "station.ini:4:8: path \"1-4.2\" is in both [slot A] (line 2) and [slot B]"},
    {"[slot A]\npath = 1-4.2\npath = 1-4.2\n", NULL,
     "station.ini:3:8: path \"1-4.2\" is listed twice in [slot A] (first on line 2)"},
    {"[slot A]\n[slot B]\npath = 1-1\n", NULL,
     "station.ini:1:0: [slot A] has no path (expected path = PORT-PATH)"},
    {"[slot A]\npath=1-1.1\npath=1-1.2\npath=1-1.3\npath=1-1.4\npath=1-1.5\npath=1-1.6\n"
     "path=1-1.7\npath=1-2.1\npath=1-2.2\n",
     NULL, "station.ini:10:6: [slot A] has more than 8 paths"},
    {"[station]\nmax_sessions = lots\n", NULL,
     "station.ini:2:16: max_sessions: expected a number from 0 to 1024 (0 = no limit), got "
     "\"lots\""},
    {"[station]\nui = fancy\n", NULL,
     "station.ini:2:6: ui: expected auto, dashboard or headless, got \"fancy\""},
    {"[station]\nid = line 3\n", NULL,
     "station.ini:2:6: id: expected a station id (letters, digits, ._-), got \"line 3\""},
    {"[station]\nrequire_signatures = maybe\n", NULL,
     "station.ini:2:22: require_signatures: expected yes or no, got \"maybe\""},
    {"[station]\nrequire_signatures = yes\n", NULL,
     "station.ini:2:22: require_signatures: needs minisign_key in [station]"},
    {"[station]\nminisign_key = keys/none.pub\n", NULL,
     "station.ini:2:16: minisign_key: cannot open \"keys/none.pub\": No such file or directory"},
    {"[profile p]\nrecipe = r.recipe\n", NULL,
     "station.ini:1:0: [profile p] has no match (expected match = class FF/42/03, usb VVVV:PPPP "
     "or tcp:HOST:PORT)"},
    {"[profile p]\nmatch = usb 18d1:4ee0\n", NULL,
     "station.ini:1:0: [profile p] has no recipe (expected recipe = PATH)"},
    {"[profile p]\nmatch = serial 123\n", NULL,
     "station.ini:2:9: match: expected \"class FF/42/03\", \"usb VVVV:PPPP\" or "
     "\"tcp:HOST:PORT\", got \"serial 123\""},
    {"[profile p]\nmatch = usb 18d1-4ee0\n", NULL,
     "station.ini:2:13: match: expected VID:PID like 18d1:4ee0 (hex), got \"18d1-4ee0\""},
    {"[profile p]\nmatch = class FF/42\n", NULL,
     "station.ini:2:15: match: expected a class triple like FF/42/03 (hex "
     "class/subclass/protocol), got \"FF/42\""},
    {"[profile p]\nmatch = tcp:localhost:70000\n", NULL,
     "station.ini:2:23: match: expected a port from 1 to 65535 in tcp:HOST:PORT, got "
     "\"tcp:localhost:70000\""},
    {"[profile p]\nmatch = tcp::5554\n", NULL,
     "station.ini:2:13: match: expected a host name or address in tcp:HOST:PORT, got "
     "\"tcp::5554\""},
    {"[profile p]\nmatch = usb 18d1:4ee0\nrecipe = r.recipe\n"
     "[profile q]\nmatch = usb 18D1:4EE0\nrecipe = r.recipe\n",
     NULL,
     "station.ini:5:9: match \"usb 18d1:4ee0\" is in both [profile p] (line 2) and [profile q]"},
    {"[profile p]\nprotocol = usb\n", NULL,
     "station.ini:2:12: protocol: expected fastboot or dfu, got \"usb\""},
    {"[profile p]\nmatch = usb 18d1:4ee0\nrecipe = r.recipe\nprotocol = dfu\n", NULL,
     "station.ini:4:12: protocol: [profile p] says dfu but recipe \"r.recipe\" is fastboot"},
    {"[profile p]\nmatch = usb 18d1:4ee0\nrecipe = none.recipe\n", NULL,
     "station.ini:3:10: recipe: cannot open \"none.recipe\": No such file or directory"},
    {"[profile p]\nrecipe = img\n", NULL,
     "station.ini:2:10: recipe: \"img\" is not a regular file"},
    {"[profile p]\nmatch = usb 18d1:4ee0\nrecipe = x.recipe\n",
     "recipe x 1\nimage boot img/boot.img\nflash boot bot\n",
     "x.recipe:3:12: unknown image \"bot\" (declared: boot)"},
    {"[profile p]\nserial_policy = always\n", NULL,
     "station.ini:2:17: serial_policy: expected skip, reflash or fail, got \"always\""},
    {"[profile p]\nretries = 11\n", NULL,
     "station.ini:2:11: retries: expected a number from 0 to 10, got \"11\""},
    {"[profile p]\ntimeout = 5\n", NULL,
     "station.ini:2:11: timeout: expected a duration like 5s, 1500ms or 2m, got \"5\""},
    {"[profile p]\nmin_rate = fast\n", NULL,
     "station.ini:2:12: min_rate: expected bytes per second like 1M, 500k or 2000000, got "
     "\"fast\""},
    {"[profile p]\ncolour = red\n", NULL,
     "station.ini:2:1: unknown key \"colour\" in [profile] (expected match, protocol, recipe, "
     "serial_policy, retries, timeout, min_rate)"},
    {"[simulate]\nplug_interval = fast\n", NULL,
     "station.ini:2:17: plug_interval: expected a number of milliseconds, got \"fast\""},
    {"[simulate]\ncount = 0\n", NULL,
     "station.ini:2:9: count: expected a number from 1 to 256, got \"0\""},
    {"[simulate]\npace = quick\n", NULL,
     "station.ini:2:8: pace: expected MB/s like 8 or 0.5 (0 = unpaced), got \"quick\""},
    {"[simulate]\nfault = 3:explode=x\n", NULL,
     "station.ini:2:11: fault: expected fail, silent, garbage, oversize or disconnect, got "
     "\"explode\""},
    {"[simulate]\nfault = 3:disconnect=lots\n", NULL,
     "station.ini:2:22: fault: disconnect= expected a number of bytes, got \"lots\""},
    {"[simulate]\nfault_rate = 2\n", NULL,
     "station.ini:2:14: fault_rate: expected a number from 0 to 1, got \"2\""},
    {"[profile p]\nmatch = usb 18d1:4ee0\nrecipe = r.recipe\n[simulate]\nprofile = q\n", NULL,
     "station.ini:5:11: profile: no [profile q] (defined: p)"},
    {"[station]\nid = a\x01"
     "b\n",
     NULL, "station.ini:2:7: unexpected control character 0x01"},
    /* an indented line is a line of its own, not inih's continuation */
    {"[station]\nid = a\n    ui = fancy\n", NULL,
     "station.ini:3:10: ui: expected auto, dashboard or headless, got \"fancy\""},
    {"[station]\r\nid = a\r\nui = fancy\r\n", NULL,
     "station.ini:3:6: ui: expected auto, dashboard or headless, got \"fancy\""},
};

static void check_bad_ini(const struct dir *d, const char *ini, const char *recipe,
                          const char *want, unsigned index)
{
    char path[512], msg[CFG_ERROR_MAX], got[CFG_ERROR_MAX];
    struct cfg_config *cfg = (struct cfg_config *)(uintptr_t)1; /* must stay untouched */
    write_file(d, "station.ini", ini);
    if (recipe)
        write_file(d, "x.recipe", recipe);
    in_dir(d, "station.ini", path, sizeof(path));
    msg[0] = '\0';
    int rc = cfg_load(path, &cfg, msg, sizeof(msg));
    strip_dir(d, msg, got, sizeof(got));
    if (rc == 0 || strcmp(got, want) != 0)
        print_error("bad ini #%u:\n%s\n", index, ini);
    assert_int_not_equal(rc, 0);
    assert_string_equal(got, want);
    assert_ptr_equal(cfg, (struct cfg_config *)(uintptr_t)1);
}

static void test_bad_ini(void **state)
{
    const struct dir *d = *state;
    for (unsigned i = 0; i < sizeof(bad_inis) / sizeof(bad_inis[0]); i++)
        check_bad_ini(d, bad_inis[i].ini, bad_inis[i].recipe, bad_inis[i].want, i);
}

/* Lines too long for inih's buffer, and names it would cut short. */
static void test_bad_ini_long(void **state)
{
    const struct dir *d = *state;
    char ini[600];
    snprintf(ini, sizeof(ini), "[station]\n; %0250d\n", 0);
    check_bad_ini(d, ini, NULL,
                  "station.ini:2:199: line longer than 198 bytes (not counting indentation)", 0);
    snprintf(ini, sizeof(ini), "[slot %060d]\n", 0);
    check_bad_ini(d, ini, NULL, "station.ini:1:2: section name longer than 49 characters", 1);
}

static void test_missing_file(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX], got[CFG_ERROR_MAX];
    struct cfg_config *cfg = NULL;
    in_dir(d, "nothing.ini", path, sizeof(path));
    assert_int_equal(cfg_load(path, &cfg, msg, sizeof(msg)), ST_ENOENT);
    strip_dir(d, msg, got, sizeof(got));
    assert_string_equal(got, "nothing.ini: cannot open: No such file or directory");
    assert_null(cfg);
}

/* ---- bad recipes --------------------------------------------------- */

struct bad_recipe {
    const char *text;
    const char *want;
};

static const struct bad_recipe bad_recipes[] = {
    {"# comment\n\nflash boot boot\n",
     "x.recipe:3:1: expected \"recipe NAME VERSION\" before anything else, got \"flash\""},
    {"", "x.recipe:1:0: expected \"recipe NAME VERSION\" before anything else, got end of file"},
    {"recipe r\n", "x.recipe:1:9: recipe: expected a VERSION after the name, got end of line"},
    {"recipe r 1 x\n", "x.recipe:1:12: recipe: unexpected \"x\" after the version"},
    {"recipe r/s 1\n", "x.recipe:1:8: recipe: expected a NAME (letters, digits, ._-), got \"r/s\""},
    {"recipe r 1\nrecipe r 2\n", "x.recipe:2:1: \"recipe\" may appear only once (first on line 1)"},
    {"recipe r 1\nimage boot img/boot.img\nprotocol dfu\n",
     "x.recipe:3:1: \"protocol\" belongs in the header, before the first image or step"},
    {"recipe r 1\nprotocol usb\n",
     "x.recipe:2:10: protocol: expected fastboot or dfu, got \"usb\""},
    {"recipe r 1\nallow-raw-dfu\n", "x.recipe:2:1: allow-raw-dfu: only after \"protocol dfu\""},
    {"recipe r 1\nimage boot img/boot.img\nimage system img/system.img\nflash boot boot\n"
     "flash system sytem\n",
     "x.recipe:5:14: unknown image \"sytem\" (declared: boot, system)"},
    {"recipe r 1\nflash boot boot\n",
     "x.recipe:2:12: unknown image \"boot\" (no image is declared)"},
    {"recipe r 1\nimage boot img/boot.img\nimage boot img/system.img\n",
     "x.recipe:3:7: duplicate image \"boot\" (first on line 2)"},
    {"recipe r 1\nimage boot img/none.img\n",
     "x.recipe:2:12: image \"boot\": cannot open \"img/none.img\": No such file or directory"},
    {"recipe r 1\nimage boot img/adir\n",
     "x.recipe:2:12: image \"boot\": \"img/adir\" is not a regular file"},
    {"recipe r 1\nimage boot\n",
     "x.recipe:2:11: image: expected a PATH after the name, got end of line"},
    {"recipe r 1\nimage boot img/boot.img sha256=abc\n",
     "x.recipe:2:32: sha256: expected 64 hexadecimal digits, got \"abc\""},
    {"recipe r 1\nimage boot img/boot.img md5=abc\n",
     "x.recipe:2:25: image: unexpected \"md5=abc\" (expected sha256=HEX)"},
    {"recipe r 1\nimage boot img/boot.img\nflash boot boot timeout=soon\n",
     "x.recipe:3:25: timeout: expected a duration like 30s or 500ms, got \"soon\""},
    {"recipe r 1\nerase cache retries=11\n",
     "x.recipe:2:21: retries: expected a number from 0 to 10, got \"11\""},
    {"recipe r 1\nerase cache timeout=1s timeout=2s\n",
     "x.recipe:2:24: erase: timeout= given twice"},
    {"recipe r 1\nerase userdata wipe=yes\n",
     "x.recipe:2:16: erase: unexpected \"wipe=yes\" (expected timeout=DURATION or retries=N)"},
    {"recipe r 1\nflsh boot boot\n",
     "x.recipe:2:1: expected image or a step (require, getvar, flash, erase, set-active, reboot, "
     "oem, dfu-download, dfu-verify, detach), got \"flsh\""},
    {"recipe r 1\ncontinue\n", "x.recipe:2:1: \"continue\" is not supported (end with \"reboot\")"},
    {"recipe r 1\nprotocol dfu\nflash boot boot\n",
     "x.recipe:3:1: \"flash\" is a fastboot step but this recipe is dfu"},
    {"recipe r 1\nprotocol dfu\nrequire product=x\n",
     "x.recipe:3:1: \"require\" is a fastboot step but this recipe is dfu"},
    {"recipe r 1\ndfu-download 0 fw\n",
     "x.recipe:2:1: \"dfu-download\" is a dfu step but this recipe is fastboot (add \"protocol "
     "dfu\" to the header)"},
    {"recipe r 1\nimage boot img/boot.img\nflash boot\n",
     "x.recipe:3:11: flash: expected IMAGE, got end of line"},
    {"recipe r 1\nrequire product\n",
     "x.recipe:2:9: require: expected VAR=VALUE|VALUE..., got \"product\""},
    {"recipe r 1\nrequire product=a||b\n", "x.recipe:2:19: require: expected a VALUE after \"|\""},
    {"recipe r 1\nrequire product=\n", "x.recipe:2:17: require: expected a VALUE after \"=\""},
    {"recipe r 1\nrequire p=1|2|3|4|5|6|7|8|9\n", "x.recipe:2:27: require: at most 8 alternatives"},
    {"recipe r 1\nset-active c\n", "x.recipe:2:12: set-active: expected a or b, got \"c\""},
    {"recipe r 1\nreboot recovery\n",
     "x.recipe:2:8: reboot: unexpected \"recovery\" (expected bootloader, timeout=DURATION or "
     "retries=N)"},
    {"recipe r 1\noem timeout=1s\n", "x.recipe:2:5: oem: expected a command, got \"timeout=1s\""},
    {"recipe r 1\ngetvar pro/duct\n",
     "x.recipe:2:8: getvar: expected a variable name, got \"pro/duct\""},
    {"recipe r 1 # header\n# nothing else\n", "x.recipe:1:0: recipe \"r\" has no steps"},
    {"recipe r 1\nreboot\tbootloader\x7f\n", "x.recipe:2:18: unexpected control character 0x7f"},
    {"recipe r 1\nprotocol dfu\nimage fw img/fw.bin\ndfu-download x/y fw\n",
     "x.recipe:4:14: dfu-download: expected an ALT setting (number or name), got \"x/y\""},
};

static void test_bad_recipe(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX], got[CFG_ERROR_MAX];
    struct cfg_recipe *r = malloc(sizeof(*r));
    assert_non_null(r);
    in_dir(d, "x.recipe", path, sizeof(path));
    for (unsigned i = 0; i < sizeof(bad_recipes) / sizeof(bad_recipes[0]); i++) {
        write_file(d, "x.recipe", bad_recipes[i].text);
        msg[0] = '\0';
        int rc = cfg_recipe_load(path, r, msg, sizeof(msg));
        strip_dir(d, msg, got, sizeof(got));
        if (rc == 0 || strcmp(got, bad_recipes[i].want) != 0)
            print_error("bad recipe #%u:\n%s\n", i, bad_recipes[i].text);
        assert_int_not_equal(rc, 0);
        assert_string_equal(got, bad_recipes[i].want);
    }
    free(r);
}

static void test_recipe_long_line(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX], got[CFG_ERROR_MAX];
    char text[1200];
    struct cfg_recipe *r = malloc(sizeof(*r));
    snprintf(text, sizeof(text), "recipe r 1\n# %01100d\n", 0);
    write_file(d, "x.recipe", text);
    in_dir(d, "x.recipe", path, sizeof(path));
    assert_int_equal(cfg_recipe_load(path, r, msg, sizeof(msg)), ST_EINVAL);
    strip_dir(d, msg, got, sizeof(got));
    assert_string_equal(got, "x.recipe:2:1025: line longer than 1024 bytes");
    free(r);
}

/* ---- good input ---------------------------------------------------- */

static void test_good_ini(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX] = "", want[600];
    struct cfg_config *cfg = NULL;
    write_file(d, "station.ini",
               "\xef\xbb\xbf; station under test\n"
               "[station]\n"
               "id = line3-st07\n"
               "db = records/line3.db\n"
               "max_sessions = 12\n"
               "ui = headless ; no terminal on this one\n"
               "minisign_key = keys/station.pub\n"
               "require_signatures = yes\n"
               "\n"
               "[slot A1]\n"
               "  path = 1-4.1\n"
               "  path = 1-4.2.3\n"
               "[ slot  B ]\n"
               "path: 1-5.*\n"
               "path = virt-0?\n"
               "[slot net]\n"
               "path = tcp:127.0.0.1:5554\n"
               "# DFU boards\n"
               "[profile board]\n"
               "match = usb 0483:DF11\n"
               "match = class FE/01/02\n"
               "recipe = d.recipe\n"
               "timeout = 1500ms\n"
               "[profile phone]\n"
               "match = class ff/42/03\n"
               "match = usb 18d1:4ee0\n"
               "match = tcp:[::1]:5555\n"
               "protocol = fastboot\n"
               "recipe = r.recipe\n"
               "serial_policy = reflash\n"
               "retries = 3\n"
               "timeout = 2m\n"
               "min_rate = 500k\n"
               "[simulate]\n"
               "count = 16\n"
               "pace = 2.5\n"
               "plug_interval = 2s\n"
               "replug = 1500\n"
               "fault = 3:fail=flash:system\n"
               "fault = 7:disconnect=2097152\n"
               "fault_rate = 0.25\n"
               "seed = 4294967295\n"
               "max_download = 256M\n"
               "profile = phone\n");
    in_dir(d, "station.ini", path, sizeof(path));
    int rc = cfg_load(path, &cfg, msg, sizeof(msg));
    assert_string_equal(msg, "");
    assert_int_equal(rc, 0);

    assert_string_equal(cfg->path, path);
    assert_string_equal(cfg->id, "line3-st07");
    in_dir(d, "records/line3.db", want, sizeof(want));
    assert_string_equal(cfg->db, want);
    assert_int_equal(cfg->max_sessions, 12);
    assert_string_equal(cfg->ui, "headless");
    in_dir(d, "keys/station.pub", want, sizeof(want));
    assert_string_equal(cfg->minisign_key, want);
    assert_true(cfg->require_signatures);

    assert_int_equal(cfg->n_slots, 3);
    assert_string_equal(cfg->slots[0].name, "A1");
    assert_int_equal(cfg->slots[0].n_paths, 2);
    assert_string_equal(cfg->slots[0].paths[1], "1-4.2.3");
    assert_int_equal(cfg->slots[0].line, 10);
    assert_string_equal(cfg->slots[1].name, "B");
    assert_string_equal(cfg->slots[1].paths[0], "1-5.*");
    assert_string_equal(cfg->slots[1].paths[1], "virt-0?");
    assert_string_equal(cfg->slots[2].paths[0], "tcp:127.0.0.1:5554");

    assert_int_equal(cfg->n_profiles, 2);
    const struct cfg_profile *b = &cfg->profiles[0], *p = &cfg->profiles[1];
    assert_string_equal(b->name, "board");
    assert_int_equal(b->line, 19);
    assert_int_equal(b->protocol, CFG_PROTO_DFU); /* from its recipe */
    assert_int_equal(b->n_matches, 2);
    assert_int_equal(b->matches[0].kind, CFG_MATCH_USB);
    assert_int_equal(b->matches[0].vid, 0x0483);
    assert_int_equal(b->matches[0].pid, 0xdf11);
    assert_int_equal(b->matches[1].kind, CFG_MATCH_CLASS);
    assert_int_equal(b->matches[1].cls, 0xfe);
    assert_int_equal(b->matches[1].subclass, 0x01);
    assert_int_equal(b->matches[1].protocol, 0x02);
    assert_int_equal(b->timeout_ms, 1500);
    assert_int_equal(b->serial_policy, CFG_SERIAL_SKIP);
    in_dir(d, "d.recipe", want, sizeof(want));
    assert_string_equal(b->recipe_path, want);
    assert_string_equal(b->recipe->name, "d");

    assert_string_equal(p->name, "phone");
    assert_int_equal(p->protocol, CFG_PROTO_FASTBOOT);
    assert_int_equal(p->n_matches, 3);
    assert_int_equal(p->matches[0].cls, 0xff);
    assert_int_equal(p->matches[1].vid, 0x18d1);
    assert_int_equal(p->matches[2].kind, CFG_MATCH_TCP);
    assert_string_equal(p->matches[2].host, "::1");
    assert_int_equal(p->matches[2].port, 5555);
    assert_int_equal(p->serial_policy, CFG_SERIAL_REFLASH);
    assert_int_equal(p->retries, 3);
    assert_int_equal(p->timeout_ms, 120000);
    assert_int_equal(p->min_rate_bps, 500 * 1024);
    assert_string_equal(p->recipe->name, "r");
    assert_int_equal(p->recipe->n_steps, 1);

    const struct cfg_simulate *s = &cfg->simulate;
    assert_true(s->present);
    assert_int_equal(s->count, 16);
    assert_true(s->pace_mbps == 2.5);
    assert_int_equal(s->plug_interval_ms, 2000);
    assert_int_equal(s->replug_ms, 1500);
    assert_int_equal(s->n_faults, 2);
    assert_string_equal(s->faults[1], "7:disconnect=2097152");
    assert_true(s->fault_rate == 0.25);
    assert_int_equal(s->seed, 4294967295u);
    assert_int_equal(s->max_download, 256u << 20);
    assert_string_equal(s->profile, "phone");

    /* an exact path wins over a glob; globs in file order */
    assert_ptr_equal(cfg_slot_for_port(cfg, "1-4.2.3"), &cfg->slots[0]);
    assert_ptr_equal(cfg_slot_for_port(cfg, "1-5.2"), &cfg->slots[1]);
    assert_ptr_equal(cfg_slot_for_port(cfg, "1-5.2.4"), &cfg->slots[1]);
    assert_ptr_equal(cfg_slot_for_port(cfg, "virt-07"), &cfg->slots[1]);
    assert_null(cfg_slot_for_port(cfg, "virt-17"));
    assert_ptr_equal(cfg_slot_for_port(cfg, "tcp:127.0.0.1:5554"), &cfg->slots[2]);
    assert_null(cfg_slot_for_port(cfg, "1-4.2"));
    assert_null(cfg_slot_for_port(cfg, NULL));
    cfg_free(cfg);
}

static void test_defaults(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX] = "", want[600];
    struct cfg_config *cfg = NULL;
    write_file(d, "station.ini",
               "[station]\n[profile p]\nmatch = usb 1234:5678\nrecipe = r.recipe\n"
               "[simulate]\n");
    in_dir(d, "station.ini", path, sizeof(path));
    assert_int_equal(cfg_load(path, &cfg, msg, sizeof(msg)), 0);
    assert_string_equal(cfg->id, "");
    in_dir(d, "station.db", want, sizeof(want));
    assert_string_equal(cfg->db, want);
    assert_string_equal(cfg->ui, "auto");
    assert_int_equal(cfg->max_sessions, 0);
    assert_false(cfg->require_signatures);
    assert_int_equal(cfg->n_slots, 0);
    assert_int_equal(cfg->profiles[0].retries, 0);
    assert_int_equal(cfg->profiles[0].timeout_ms, 0);
    assert_true(cfg->simulate.present);
    assert_string_equal(cfg->simulate.profile, "p"); /* the first profile */
    assert_null(cfg_slot_for_port(cfg, "1-1"));
    cfg_free(cfg);

    /* an empty file is a valid (empty) station */
    write_file(d, "station.ini", "");
    assert_int_equal(cfg_load(path, &cfg, msg, sizeof(msg)), 0);
    assert_false(cfg->simulate.present);
    assert_int_equal(cfg->n_profiles, 0);
    cfg_free(cfg);
}

static void test_good_recipe_fastboot(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX] = "", want[600], name[64];
    struct cfg_recipe *r = calloc(1, sizeof(*r));
    write_file(d, "x.recipe",
               "# a phone\n"
               "recipe phone-x 2.0.1+b7   # trailing comment\n"
               "protocol fastboot\n"
               "\n"
               "getvar serialno\n"
               "flash boot boot timeout=30s retries=2\n"
               "require product=alpha|beta\n"
               "\tflash system system\n"
               "require has-slot:boot=yes retries=1\n"
               "erase userdata timeout=2m\n"
               "set-active b\n"
               "oem   unlock  now#1 retries=0\n"
               "reboot bootloader timeout=500ms\n"
               "reboot-bootloader\n"
               "reboot\n"
               "image boot img/boot.img sha256="
               "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789\n"
               "image system img/system.img\n"
               "image unused img/fw.bin\n");
    in_dir(d, "x.recipe", path, sizeof(path));
    assert_int_equal(cfg_recipe_load(path, r, msg, sizeof(msg)), 0);
    assert_string_equal(msg, "");
    assert_string_equal(r->name, "phone-x");
    assert_string_equal(r->version, "2.0.1+b7");
    assert_string_equal(r->path, path);
    assert_false(r->allow_raw_dfu);
    assert_int_equal(r->n_images, 3);
    assert_string_equal(r->images[0].name, "boot");
    in_dir(d, "img/boot.img", want, sizeof(want));
    assert_string_equal(r->images[0].path, want);
    assert_string_equal(r->images[0].sha256,
                        "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    assert_int_equal(r->images[0].line, 16);
    assert_string_equal(r->images[1].sha256, "");

    static const char *const steps[] = {
        "getvar:product",    "getvar:has-slot:boot", "getvar:serialno", "flash:boot",
        "flash:system",      "erase:userdata",       "set_active:b",    "oem unlock now#1",
        "reboot-bootloader", "reboot-bootloader",    "reboot",
    };
    static const unsigned lines[] = {7, 9, 5, 6, 8, 10, 11, 12, 13, 14, 15};
    assert_int_equal(r->n_steps, 11);
    for (unsigned i = 0; i < 11; i++) {
        cfg_step_name(&r->steps[i], name, sizeof(name));
        assert_string_equal(name, steps[i]);
        assert_int_equal(r->steps[i].line, lines[i]);
    }
    /* requires hoisted, in the order written */
    assert_int_equal(r->steps[0].n_alternatives, 2);
    assert_string_equal(r->steps[0].alternatives[0], "alpha");
    assert_string_equal(r->steps[0].alternatives[1], "beta");
    assert_int_equal(r->steps[1].n_alternatives, 1);
    assert_string_equal(r->steps[1].alternatives[0], "yes");
    assert_int_equal(r->steps[1].retries, 1);
    assert_int_equal(r->steps[2].n_alternatives, 0);
    assert_int_equal(r->steps[2].image, -1);
    /* images declared after their use */
    assert_int_equal(r->steps[3].image, 0);
    assert_int_equal(r->steps[3].timeout_ms, 30000);
    assert_int_equal(r->steps[3].retries, 2);
    assert_int_equal(r->steps[4].image, 1);
    assert_int_equal(r->steps[4].timeout_ms, 0);
    assert_int_equal(r->steps[5].timeout_ms, 120000);
    assert_int_equal(r->steps[6].kind, CFG_STEP_SET_ACTIVE);
    assert_string_equal(r->steps[6].arg, "b");
    assert_int_equal(r->steps[7].kind, CFG_STEP_OEM);
    assert_int_equal(r->steps[8].kind, CFG_STEP_REBOOT_BOOTLOADER);
    assert_int_equal(r->steps[8].timeout_ms, 500);
    assert_int_equal(r->steps[10].kind, CFG_STEP_REBOOT);
    free(r);
}

static void test_good_recipe_dfu(void **state)
{
    const struct dir *d = *state;
    char path[512], msg[CFG_ERROR_MAX] = "";
    struct cfg_recipe *r = calloc(1, sizeof(*r));
    write_file(d, "sub.recipe",
               "recipe board 1\r\nprotocol dfu\r\nallow-raw-dfu\r\n"
               "image fw img/fw.bin\r\n"
               "dfu-download 0 fw timeout=10s retries=3\r\n"
               "dfu-verify internal-flash fw\r\n"
               "detach");
    in_dir(d, "sub.recipe", path, sizeof(path));
    assert_int_equal(cfg_recipe_load(path, r, msg, sizeof(msg)), 0);
    assert_true(r->allow_raw_dfu);
    assert_int_equal(r->n_steps, 3);
    assert_int_equal(r->steps[0].kind, CFG_STEP_DFU_DOWNLOAD);
    assert_string_equal(r->steps[0].arg, "0");
    assert_int_equal(r->steps[0].image, 0);
    assert_int_equal(r->steps[0].timeout_ms, 10000);
    assert_int_equal(r->steps[0].retries, 3);
    assert_int_equal(r->steps[1].kind, CFG_STEP_DFU_VERIFY);
    assert_string_equal(r->steps[1].arg, "internal-flash");
    assert_int_equal(r->steps[2].kind, CFG_STEP_DETACH);
    assert_int_equal(r->steps[2].line, 7);
    free(r);
}

/* ---- the examples -------------------------------------------------- */

static void sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    crypto_hash_sha256_state st;
    unsigned char buf[65536], out[crypto_hash_sha256_BYTES];
    size_t n;
    crypto_hash_sha256_init(&st);
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        crypto_hash_sha256_update(&st, buf, n);
    fclose(f);
    crypto_hash_sha256_final(&st, out);
    sodium_bin2hex(hex, 65, out, sizeof(out));
}

static void test_examples(void **state)
{
    const struct dir *d = *state;
    char src[512], cmd[4096], path[512], msg[CFG_ERROR_MAX] = "";
    struct cfg_config *cfg = NULL;
    /* tests/test_config.c -> examples/ */
    snprintf(src, sizeof(src), "%s", __FILE__);
    char *slash = strrchr(src, '/');
    assert_non_null(slash);
    snprintf(slash, sizeof(src) - (size_t)(slash - src), "/../examples");
    snprintf(cmd, sizeof(cmd),
             "cp -r '%s/station.ini' '%s/recipes' '%s/' && '%s/make-images.sh' '%s/images' "
             ">/dev/null",
             src, src, d->path, src, d->path);
    assert_int_equal(system(cmd), 0);

    in_dir(d, "station.ini", path, sizeof(path));
    int rc = cfg_load(path, &cfg, msg, sizeof(msg));
    assert_string_equal(msg, "");
    assert_int_equal(rc, 0);
    assert_true(cfg->n_slots >= 3);
    assert_int_equal(cfg->n_profiles, 2);
    assert_int_equal(cfg->profiles[0].protocol, CFG_PROTO_FASTBOOT);
    assert_int_equal(cfg->profiles[1].protocol, CFG_PROTO_DFU);
    assert_true(cfg->simulate.present);
    /* the pins in the example recipes match what make-images.sh makes */
    unsigned pinned = 0;
    for (unsigned i = 0; i < cfg->n_profiles; i++) {
        const struct cfg_recipe *r = cfg->profiles[i].recipe;
        for (unsigned k = 0; k < r->n_images; k++) {
            char hex[65];
            if (!r->images[k].sha256[0])
                continue;
            sha256_file(r->images[k].path, hex);
            assert_string_equal(hex, r->images[k].sha256);
            pinned++;
        }
    }
    assert_true(pinned >= 2);
    cfg_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_ini, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_ini_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_recipe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recipe_long_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_ini, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_recipe_fastboot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_recipe_dfu, setup, teardown),
        cmocka_unit_test_setup_teardown(test_examples, setup, teardown),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
