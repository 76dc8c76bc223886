/*
 * What a station PC gets: `cmake --install` into a DESTDIR (the exact list
 * of files, printed), the binary's --version and every subcommand's
 * --help, the man page (every subcommand, every exit code, no roff
 * warnings), the systemd unit (`systemd-analyze verify` with no complaint,
 * hardening that still allows USB), the udev rules (a syntax check of our
 * own, and udev's own parser through `udevadm test` where it can run), and
 * the .deb from `cpack -G DEB` (its Depends, its files, its postinst).
 *
 * The build directory is the one this test belongs to: TEST_TMPDIR is
 * BUILD/tests/tmp. Tools that are missing make their test skip with a
 * message, never pass silently.
 *
 * Not here: installing the .deb into a clean Debian 12 root (debootstrap
 * needs the network and minutes; see packaging/README.md).
 */
#include <errno.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"
#include "station/commands.h"

struct fx {
    char dir[256];
    char build[256];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    th_tmpdir("install", fx->dir, sizeof(fx->dir));
    snprintf(fx->build, sizeof(fx->build), "%s", TEST_TMPDIR);
    char *t = strstr(fx->build, "/tests/tmp");
    assert_non_null(t);
    *t = '\0';
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    th_rmtree(fx->dir);
    free(fx);
    return 0;
}

/* Run a shell command (stderr joined to stdout) with a time limit; its
 * output in *out (malloc'd, may be NULL to drop it); its exit status. */
static int sh(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int sh(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return th_sh_out(out, "timeout 240 sh -c '%s' 2>&1", cmd);
}

/* The subcommands, from `station --help` (two-space indent, a name). */
static unsigned commands(char names[][16], unsigned max)
{
    char *out, *line, *save;
    unsigned n = 0;
    assert_int_equal(sh(&out, "%s --help", STATION_BIN), 0);
    for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[16];
        if (!strncmp(line, "  ", 2) && line[2] != ' ' && sscanf(line, " %15s", name) == 1 &&
            n < max)
            snprintf(names[n++], 16, "%s", name);
    }
    free(out);
    return n;
}

/* ---- cmake --install ---- */

static const char *const installed[] = {
    "usr/bin/station",
    "usr/lib/systemd/system/station.service",
    "usr/lib/udev/rules.d/70-station.rules",
    "usr/share/doc/station/examples/README.md",
    "usr/share/doc/station/examples/make-images.sh",
    "usr/share/doc/station/examples/recipes/board.recipe",
    "usr/share/doc/station/examples/recipes/phone.recipe",
    "usr/share/doc/station/examples/station-service.ini",
    "usr/share/doc/station/examples/station.ini",
    "usr/share/man/man1/station.1",
    NULL,
};

static void install_to(struct fx *fx, const char *destdir, const char *prefix)
{
    char *out;
    int rc = sh(&out, "DESTDIR=%s cmake --install %s --prefix %s", destdir, fx->build, prefix);
    if (rc != 0)
        fail_msg("cmake --install failed (%d):\n%s", rc, out);
    free(out);
}

static void test_install_tree(void **state)
{
    struct fx *fx = *state;
    char dest[400], path[600], *out;
    snprintf(dest, sizeof(dest), "%s/dest", fx->dir);
    install_to(fx, dest, "/usr");

    /* exactly these files: nothing missing, no test or bench binary */
    assert_int_equal(
        sh(&out, "cd %s && find . -type f -o -type l | sed s,^./,, | LC_ALL=C sort", dest), 0);
    printf("installed with DESTDIR=%s --prefix /usr:\n%s", dest, out);
    char expect[2048] = "";
    for (const char *const *f = installed; *f; f++)
        snprintf(expect + strlen(expect), sizeof(expect) - strlen(expect), "%s\n", *f);
    assert_string_equal(out, expect);
    free(out);

    /* the binary runs from there: libsparse through its rpath */
    snprintf(path, sizeof(path), "%s/usr/bin/station", dest);
    assert_int_equal(access(path, X_OK), 0);
    assert_int_equal(sh(&out, "%s --version", path), 0);
    assert_string_equal(out, "station " STATION_VERSION "\n");
    free(out);
    if (th_have("readelf")) {
        assert_int_equal(sh(&out, "readelf -d %s", path), 0);
        if (!strstr(out, "android"))
            fail_msg("no rpath to the private libsparse folder:\n%s", out);
        free(out);
    }

    /* the unit: the service the issue asks for */
    snprintf(path, sizeof(path), "%s/usr/lib/systemd/system/station.service", dest);
    char *unit = th_slurp(path, NULL);
    const char *lines[] = {
        "\nExecStart=/usr/bin/station run -c /etc/station/station.ini --headless "
        "--log-format json\n",
        "\nRestart=on-failure\n",
        "\nUser=station\n",
        "\nGroup=station\n",
        "\nDeviceAllow=char-usb_device rw\n",
        "\nNoNewPrivileges=yes\n",
        "\nProtectSystem=strict\n",
        "\nStateDirectory=station\n",
        "\nWantedBy=multi-user.target\n",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        if (!strstr(unit, lines[i]))
            fail_msg("station.service lacks %s", lines[i] + 1);
    /* USB: /dev/bus/usb must stay reachable */
    assert_null(strstr(unit, "PrivateDevices=yes"));
    assert_null(strstr(unit, "@BINDIR@")); /* configured at install time */
    assert_null(strstr(unit, "@DOCDIR@"));
    free(unit);
}

static void test_version_and_help_everywhere(void **state)
{
    char names[32][16], *out;
    unsigned n = commands(names, 32);
    assert_true(n >= 9);
    assert_int_equal(sh(&out, "%s --version", STATION_BIN), 0);
    assert_string_equal(out, "station " STATION_VERSION "\n");
    free(out);
    bool watch = false;
    for (unsigned i = 0; i < n; i++) {
        int rc = sh(&out, "%s %s --help", STATION_BIN, names[i]);
        if (rc != 0 || !strstr(out, "usage: station"))
            fail_msg("station %s --help: exit %d:\n%s", names[i], rc, out);
        free(out);
        watch |= !strcmp(names[i], "watch");
    }
    assert_true(watch);
}

/* ---- the man page ---- */

static void test_man_page(void **state)
{
    char names[32][16], path[400], *out;
    unsigned n = commands(names, 32);
    snprintf(path, sizeof(path), "%s/packaging/station.1", SOURCE_DIR);
    char *man = th_slurp(path, NULL);
    /* a section per subcommand (report, stats and history share one) */
    for (unsigned i = 0; i < n; i++) {
        bool found = false;
        for (char *p = man; (p = strstr(p, "\n.SS \"station ")); p++) {
            size_t len = strcspn(p + 1, "\n");
            char line[256];
            snprintf(line, sizeof(line), "%.*s", (int)len, p + 1);
            for (char *w = strtok(line + 13, " ,\""); w; w = strtok(NULL, " ,\""))
                found |= !strcmp(w, names[i]);
        }
        if (!found)
            fail_msg("station.1 has no .SS section for '%s'", names[i]);
        /* and in the synopsis */
        const char *syn = strstr(man, "\n.SH SYNOPSIS\n"), *desc = strstr(man, "\n.SH DESCRIPTION");
        assert_non_null(syn);
        assert_non_null(desc);
        const char *at = strstr(syn, names[i]);
        if (!at || at > desc)
            fail_msg("station.1's synopsis lacks '%s'", names[i]);
    }
    /* every exit code */
    char *ex = strstr(man, "\n.SH EXIT STATUS\n");
    assert_non_null(ex);
    for (int code = 0; code <= 3; code++) {
        char b[16];
        snprintf(b, sizeof(b), "\n.B %d\n", code);
        assert_non_null(strstr(ex, b));
    }
    free(man);
    if (!th_have("groff")) {
        skip();
        return;
    }
    /* roff without a warning; and man(1) renders it */
    assert_int_equal(sh(&out, "groff -man -Tutf8 -ww -z %s", path), 0);
    if (out[0])
        fail_msg("groff warns about station.1:\n%s", out);
    free(out);
    if (th_have("man")) {
        assert_int_equal(sh(&out, "MANWIDTH=80 man -l %s | grep -c \"station watch\"", path), 0);
        free(out);
    }
}

/* ---- systemd ---- */

static void test_systemd_unit_verifies(void **state)
{
    struct fx *fx = *state;
    char prefix[400], unit[500], bad[500], *out;
    if (!th_have("systemd-analyze")) {
        printf("systemd-analyze not found (Debian package systemd): not verified\n");
        skip();
        return;
    }
    /* Installed under a real prefix (not a DESTDIR), so that the unit's
     * ExecStart names a binary that exists, as verify checks; MANPATH
     * lets it check Documentation=man:station(1) too. */
    snprintf(prefix, sizeof(prefix), "%s/px/usr", fx->dir);
    install_to(fx, "", prefix);
    snprintf(unit, sizeof(unit), "%s/lib/systemd/system/station.service", prefix);
    int rc = sh(&out, "MANPATH=%s/share/man systemd-analyze verify %s", prefix, unit);
    if (rc != 0 || out[0])
        fail_msg("systemd-analyze verify (exit %d):\n%s", rc, out);
    free(out);
    /* verify does speak up (a misspelt key is only a warning: exit 0) */
    snprintf(bad, sizeof(bad), "%s/bad.service", fx->dir);
    assert_int_equal(sh(NULL, "sed s/^DeviceAllow=/DeviceAlow=/ %s > %s", unit, bad), 0);
    sh(&out, "MANPATH=%s/share/man systemd-analyze verify %s", prefix, bad);
    assert_non_null(strstr(out, "DeviceAlow"));
    free(out);
    /* the hardening, as systemd scores it (lower is better; 10 = none) */
    rc = sh(&out, "MANPATH=%s/share/man systemd-analyze security --offline=yes %s", prefix, unit);
    char *lvl = strstr(out, "Overall exposure level for station.service: ");
    if (rc == 0 && lvl) {
        double x = atof(lvl + strlen("Overall exposure level for station.service: "));
        printf("systemd-analyze security: exposure %.1f\n", x);
        assert_true(x <= 3.0);
    }
    free(out);
}

/* ---- udev ---- */

/* Our own check of the rules' syntax, where udev's parser cannot run:
 * every line is comma-separated KEY[{ATTR}]OP"VALUE" with a key udev
 * knows, match operators only on match keys, assignments only on
 * assignment keys; every GOTO has its LABEL. Returns the first problem. */
static bool rules_syntax_ok(const char *text, char *why, size_t why_size)
{
    static const char *const match_keys[] = {
        "ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "DRIVER", "DRIVERS", "ATTR",
        "ATTRS",  "ENV",       "TAG",        "TAGS",   "DEVPATH", "TEST",   NULL};
    static const char *const assign_keys[] = {"MODE", "GROUP",   "OWNER", "GOTO", "LABEL", "ENV",
                                              "TAG",  "SYMLINK", "RUN",   "ATTR", NULL};
    regex_t re;
    char gotos[16][64], labels[16][64];
    unsigned ng = 0, nl = 0, lineno = 0;
    assert_int_equal(regcomp(&re,
                             "^([A-Z_]+)(\\{[A-Za-z0-9_]+\\})?(==|!=|\\+=|-=|:=|=)\"([^\"]*)\"$",
                             REG_EXTENDED),
                     0);
    char *copy = strdup(text), *save, *line;
    bool ok = true;
    for (line = strtok_r(copy, "\n", &save); line && ok; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#')
            continue;
        /* split at commas outside quotes */
        char *tok = line;
        bool inq = false;
        for (char *p = line;; p++) {
            if (*p == '"')
                inq = !inq;
            if ((*p == ',' && !inq) || !*p) {
                char end = *p;
                *p = '\0';
                while (*tok == ' ')
                    tok++;
                char *e = tok + strlen(tok);
                while (e > tok && e[-1] == ' ')
                    *--e = '\0';
                regmatch_t m[5];
                if (regexec(&re, tok, 5, m, 0) != 0) {
                    snprintf(why, why_size, "line %u: not KEY==\"value\": %s", lineno, tok);
                    ok = false;
                    break;
                }
                char key[32], op[4], val[64];
                snprintf(key, sizeof(key), "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
                         tok + m[1].rm_so);
                snprintf(op, sizeof(op), "%.*s", (int)(m[3].rm_eo - m[3].rm_so), tok + m[3].rm_so);
                snprintf(val, sizeof(val), "%.*s", (int)(m[4].rm_eo - m[4].rm_so),
                         tok + m[4].rm_so);
                bool is_match = !strcmp(op, "==") || !strcmp(op, "!=");
                const char *const *keys = is_match ? match_keys : assign_keys;
                bool known = false;
                for (const char *const *k = keys; *k; k++)
                    known |= !strcmp(*k, key);
                if (!known) {
                    snprintf(why, why_size, "line %u: %s cannot take %s", lineno, key, op);
                    ok = false;
                    break;
                }
                if (!strcmp(key, "GOTO") && ng < 16)
                    snprintf(gotos[ng++], 64, "%s", val);
                if (!strcmp(key, "LABEL") && nl < 16)
                    snprintf(labels[nl++], 64, "%s", val);
                if (!strcmp(key, "MODE") && (strlen(val) != 4 || strspn(val, "01234567") != 4)) {
                    snprintf(why, why_size, "line %u: MODE %s is not octal", lineno, val);
                    ok = false;
                    break;
                }
                if (!end)
                    break;
                tok = p + 1;
            }
        }
        if (ok && inq) {
            snprintf(why, why_size, "line %u: unbalanced quote", lineno);
            ok = false;
        }
    }
    for (unsigned g = 0; ok && g < ng; g++) {
        bool found = false;
        for (unsigned l = 0; l < nl; l++)
            found |= !strcmp(gotos[g], labels[l]);
        if (!found) {
            snprintf(why, why_size, "GOTO=\"%.60s\" has no LABEL", gotos[g]);
            ok = false;
        }
    }
    free(copy);
    regfree(&re);
    return ok;
}

/* udev's own parser: `udevadm test` reads every rules file and names each
 * line it cannot parse ("FILE:LINE Invalid key/value pair"). In a private
 * mount namespace the rules folders hold only ours, and /run/udev and
 * /dev/char are scratch, so the host is not touched. Needs root. */
static int udevadm_parse(struct fx *fx, const char *rules, char **out)
{
    char cmd[2048];
    snprintf(
        cmd, sizeof(cmd),
        "set -e; d=%s/udev; rm -rf $d; mkdir -p $d/rules $d/empty; cp %s $d/rules/; "
        "unshare -m sh -c \"mount --make-rprivate / && "
        "mount --bind $d/rules /usr/lib/udev/rules.d && "
        "for x in /etc/udev/rules.d /run/udev/rules.d /usr/local/lib/udev/rules.d "
        "/lib/udev/rules.d; do if [ -d \\$x ] && [ \\$x != /lib/udev/rules.d -o ! -L /lib ]; "
        "then mount --bind $d/empty \\$x; fi; done && "
        "mount -t tmpfs none /run/udev && mkdir -p /dev/char && mount -t tmpfs none /dev/char && "
        "udevadm test --action=add /sys/devices/virtual/mem/null\"",
        fx->dir, rules);
    /* the single quotes of sh() would end at ours: write a script */
    char script[400];
    th_path(script, sizeof(script), fx->dir, "udevtest.sh");
    th_spit(script, cmd, strlen(cmd));
    return sh(out, "sh %s", script);
}

static void check_udevadm_output(const char *out, bool expect_clean)
{
    bool problem = false;
    char *copy = strdup(out), *save;
    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (!strstr(l, "70-station.rules:"))
            continue;
        /* without the package's postinst, the group may not exist here */
        if (strstr(l, "Unknown group 'station'"))
            continue;
        problem = true;
    }
    free(copy);
    if (expect_clean && problem)
        fail_msg("udevadm complains about 70-station.rules:\n%s", out);
    if (!expect_clean && !problem)
        fail_msg("udevadm did not notice the broken rules:\n%s", out);
}

static void test_udev_rules_parse(void **state)
{
    struct fx *fx = *state;
    char path[400], bad[400], why[256], *out;
    snprintf(path, sizeof(path), "%s/udev/70-station.rules", SOURCE_DIR);
    char *rules = th_slurp(path, NULL);
    if (!rules_syntax_ok(rules, why, sizeof(why)))
        fail_msg("70-station.rules: %s", why);
    /* the fastboot and both DFU interface classes, for group station */
    assert_non_null(strstr(rules, "ENV{ID_USB_INTERFACES}==\"*:ff4203:*\""));
    assert_non_null(strstr(rules, "ENV{ID_USB_INTERFACES}==\"*:fe0101:*\""));
    assert_non_null(strstr(rules, "ENV{ID_USB_INTERFACES}==\"*:fe0102:*\""));
    assert_non_null(strstr(rules, "GROUP=\"station\""));

    /* a broken copy: both checks must see it */
    snprintf(bad, sizeof(bad), "%s/70-station.rules", fx->dir);
    char *broken = strdup(rules);
    char *m = strstr(broken, "MODE=\"0660\"");
    m[4] = ':'; /* MODE:"0660" */
    th_spit(bad, broken, strlen(broken));
    assert_false(rules_syntax_ok(broken, why, sizeof(why)));
    free(broken);

    /* udev 252 (Debian 12) has no `udevadm verify` (253 and later) */
    if (!th_have("udevadm") || !th_have("unshare") || geteuid() != 0) {
        printf("udevadm test needs udevadm (Debian package udev), unshare and root: "
               "only the syntax check ran\n");
        free(rules);
        skip();
        return;
    }
    int rc = udevadm_parse(fx, path, &out);
    if (rc != 0) {
        printf("udevadm test could not run here (exit %d): only the syntax check ran\n%s", rc, out);
        free(out);
        free(rules);
        skip();
        return;
    }
    assert_non_null(strstr(out, "Reading rules file: /usr/lib/udev/rules.d/70-station.rules"));
    check_udevadm_output(out, true);
    free(out);
    assert_int_equal(udevadm_parse(fx, bad, &out), 0);
    check_udevadm_output(out, false);
    free(out);
    free(rules);
}

/* ---- the .deb ---- */

static void test_deb_package(void **state)
{
    struct fx *fx = *state;
    char pkg[400], deb[600], *out;
    if (!th_have("cpack") || !th_have("dpkg-deb") || !th_have("dpkg-shlibdeps")) {
        printf("cpack, dpkg-deb or dpkg-shlibdeps (Debian package dpkg-dev) missing: no .deb\n");
        skip();
        return;
    }
    snprintf(pkg, sizeof(pkg), "%s/pkg", fx->dir);
    int rc = sh(&out, "cpack --config %s/CPackConfig.cmake -G DEB -B %s", fx->build, pkg);
    if (rc != 0)
        fail_msg("cpack -G DEB failed (%d):\n%s", rc, out);
    free(out);
    snprintf(deb, sizeof(deb), "%s/station_" STATION_VERSION "_amd64.deb", pkg);
    if (access(deb, F_OK) != 0) {
        /* another architecture: whatever .deb was made */
        assert_int_equal(sh(&out, "ls %s/*.deb | head -n 1", pkg), 0);
        out[strcspn(out, "\n")] = '\0';
        snprintf(deb, sizeof(deb), "%s", out);
        free(out);
    }
    /* Depends: from dpkg-shlibdeps, libsparse in its private folder too */
    assert_int_equal(sh(&out, "dpkg-deb -f %s Depends", deb), 0);
    printf("Depends: %s", out);
    const char *deps[] = {"android-libsparse", "libuv1",      "libsqlite3-0", "libusb-1.0-0",
                          "libncursesw6",      "libsodium23", "libnettle8",   "libinih1",
                          "libxxhash0",        "zlib1g",      "libc6",        "passwd"};
    for (size_t i = 0; i < sizeof(deps) / sizeof(deps[0]); i++)
        if (!strstr(out, deps[i]))
            fail_msg("the .deb does not depend on %s: %s", deps[i], out);
    free(out);
    /* the files, under /usr */
    assert_int_equal(sh(&out, "dpkg-deb -c %s", deb), 0);
    for (const char *const *f = installed; *f; f++) {
        char want[300];
        snprintf(want, sizeof(want), " ./%s\n", *f);
        if (!strstr(out, want))
            fail_msg("the .deb lacks /%s:\n%s", *f, out);
    }
    free(out);
    /* the unit in the package names /usr/bin/station */
    assert_int_equal(sh(&out,
                        "dpkg-deb --fsys-tarfile %s | tar -xOf - "
                        "./usr/lib/systemd/system/station.service | grep ^ExecStart=",
                        deb),
                     0);
    assert_non_null(strstr(out, "ExecStart=/usr/bin/station run -c /etc/station/station.ini"));
    free(out);
    /* postinst: the system user and group */
    char ctl[500];
    snprintf(ctl, sizeof(ctl), "%s/control", fx->dir);
    assert_int_equal(sh(NULL, "dpkg-deb -e %s %s", deb, ctl), 0);
    snprintf(ctl, sizeof(ctl), "%s/control/postinst", fx->dir);
    assert_int_equal(access(ctl, X_OK), 0);
    assert_int_equal(sh(NULL, "sh -n %s", ctl), 0);
    char *post = th_slurp(ctl, NULL);
    assert_non_null(strstr(post, "useradd --system"));
    assert_non_null(strstr(post, "groupadd --system station"));
    free(post);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_install_tree, setup, teardown),
        cmocka_unit_test(test_version_and_help_everywhere),
        cmocka_unit_test(test_man_page),
        cmocka_unit_test_setup_teardown(test_systemd_unit_verifies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udev_rules_parse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deb_package, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
