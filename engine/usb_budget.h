/*
 * eng_usb budget: which waiting USB transfer goes next.
 *
 * usbfs lets the whole system have 16 MiB of transfers in flight by
 * default; the USB transport keeps one byte budget for all its devices
 * (engine/usb.h). Without an order, a device just plugged in waited with
 * its first 64-byte command behind every other device's next 1 MiB of
 * image data, about 16 MiB, which the harness drained in 200 ms (B4 in
 * docs/BENCHMARKS.md). So:
 *   - small transfers (commands, replies, control requests, DFU blocks:
 *     at most ENG_USB_SMALL_XFER bytes) wait ahead of large ones, first
 *     come first served among themselves, and may use the whole budget;
 *   - large transfers leave ENG_USB_SMALL_RESERVE of it to them.
 * Header-only and free of libusb, so the order is tested on its own
 * (tests/test_usb_budget.c).
 */
#ifndef ENG_USB_BUDGET_H
#define ENG_USB_BUDGET_H

#include <stdbool.h>
#include <stddef.h>

#define ENG_USB_SMALL_XFER 4096u
#define ENG_USB_SMALL_RESERVE (256u << 10)

/* One waiting transfer; the transport's record embeds it first. */
struct eng_usb_wait {
    struct eng_usb_wait *next;
    size_t len;
};

static inline bool eng_usb_small(size_t len)
{
    return len <= ENG_USB_SMALL_XFER;
}

/* May `len` more bytes go with `inflight` already in flight? Anything may
 * when nothing is in flight (a transfer larger than the budget still has
 * to go some time). */
static inline bool eng_usb_budget_fits(size_t budget, size_t inflight, size_t len)
{
    size_t limit = budget;
    if (inflight == 0)
        return true;
    if (!eng_usb_small(len) && budget > 2 * (size_t)ENG_USB_SMALL_RESERVE)
        limit = budget - ENG_USB_SMALL_RESERVE;
    return inflight + len <= limit;
}

/* Must a new transfer of `len` bytes queue behind those waiting (rather
 * than try at once)? A small one only behind other small ones. */
static inline bool eng_usb_must_queue(const struct eng_usb_wait *head, size_t len)
{
    return head && (!eng_usb_small(len) || eng_usb_small(head->len));
}

/* Queue `w`: a small one after the small ones already waiting, a large
 * one at the end. */
static inline void eng_usb_wait_push(struct eng_usb_wait **head, struct eng_usb_wait *w)
{
    struct eng_usb_wait **pp = head;
    if (eng_usb_small(w->len))
        while (*pp && eng_usb_small((*pp)->len))
            pp = &(*pp)->next;
    else
        while (*pp)
            pp = &(*pp)->next;
    w->next = *pp;
    *pp = w;
}

#endif
