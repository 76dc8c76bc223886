/*
 * Which USB interfaces the station takes, from the configuration's
 * profiles (their `match = class ...` and `match = usb VID:PID` lines), or
 * the built-in fastboot class FF/42/03 when there is no configuration.
 */
#ifndef ST_USB_RULES_H
#define ST_USB_RULES_H

#include "config/config.h"
#include "engine/usb.h"

/* Fill `out` (zeroed first). `cfg` may be NULL. */
void st_usb_rules(const struct cfg_config *cfg, struct eng_usb_options *out);

#endif
