#include "station/usb_rules.h"

#include <string.h>

static void add(struct eng_usb_options *o, uint8_t cls, uint8_t sub, uint8_t proto, uint16_t vid,
                uint16_t pid, unsigned profile)
{
    if (o->n_rules == ENG_USB_MAX_RULES)
        return;
    o->rules[o->n_rules++] = (struct eng_usb_rule){cls, sub, proto, vid, pid, profile};
}

void st_usb_rules(const struct cfg_config *cfg, struct eng_usb_options *out)
{
    memset(out, 0, sizeof(*out));
    if (!cfg || cfg->n_profiles == 0) {
        add(out, 0xff, 0x42, 0x03, 0, 0, 0); /* fastboot (shared/notes/fastboot.md) */
        return;
    }
    for (unsigned p = 0; p < cfg->n_profiles; p++) {
        const struct cfg_profile *pr = &cfg->profiles[p];
        bool dfu = pr->protocol == CFG_PROTO_DFU;
        for (unsigned m = 0; m < pr->n_matches; m++) {
            const struct cfg_match *mt = &pr->matches[m];
            if (mt->kind == CFG_MATCH_CLASS) {
                add(out, mt->cls, mt->subclass, mt->protocol, 0, 0, p);
            } else if (mt->kind == CFG_MATCH_USB) {
                /* VID:PID narrows the protocol's own interface class. */
                if (dfu) {
                    add(out, 0xfe, 0x01, 0x02, mt->vid, mt->pid, p);
                    add(out, 0xfe, 0x01, 0x01, mt->vid, mt->pid, p);
                } else {
                    add(out, 0xff, 0x42, 0x03, mt->vid, mt->pid, p);
                }
            }
        }
    }
}
