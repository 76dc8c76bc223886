/*
 * The USB transport's budget order (engine/usb_budget.h): a device's
 * command or reply never waits behind other devices' image data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/usb_budget.h"

#define MiB (1u << 20)
#define BUDGET (16u * MiB)

static void test_small_transfers_may_use_the_whole_budget(void **state)
{
    (void)state;
    /* 15 MiB of image data in flight: another 1 MiB chunk would cut into
     * the reserve, a 64-byte command goes */
    assert_false(eng_usb_budget_fits(BUDGET, 15 * MiB, MiB));
    assert_true(eng_usb_budget_fits(BUDGET, 15 * MiB, 64));
    assert_true(eng_usb_budget_fits(BUDGET, BUDGET - ENG_USB_SMALL_RESERVE - MiB, MiB));
    assert_false(eng_usb_budget_fits(BUDGET, BUDGET - ENG_USB_SMALL_RESERVE - MiB + 1, MiB));
    /* the reserve is the small transfers' only: up to the budget itself */
    assert_true(eng_usb_budget_fits(BUDGET, BUDGET - ENG_USB_SMALL_XFER, ENG_USB_SMALL_XFER));
    assert_false(eng_usb_budget_fits(BUDGET, BUDGET - ENG_USB_SMALL_XFER + 1, ENG_USB_SMALL_XFER));
    assert_true(eng_usb_small(ENG_USB_SMALL_XFER));
    assert_false(eng_usb_small(ENG_USB_SMALL_XFER + 1));
}

static void test_nothing_in_flight_lets_anything_go(void **state)
{
    (void)state;
    assert_true(eng_usb_budget_fits(BUDGET, 0, 64 * MiB));
    assert_true(eng_usb_budget_fits(BUDGET, 0, 64));
}

static void test_a_small_budget_keeps_no_reserve(void **state)
{
    (void)state;
    /* a budget too small to keep a reserve: everything shares it */
    size_t small_budget = 2 * ENG_USB_SMALL_RESERVE;
    assert_true(eng_usb_budget_fits(small_budget, ENG_USB_SMALL_RESERVE, ENG_USB_SMALL_RESERVE));
    assert_false(
        eng_usb_budget_fits(small_budget, ENG_USB_SMALL_RESERVE + 1, ENG_USB_SMALL_RESERVE));
}

static void test_small_transfers_queue_ahead_of_image_data(void **state)
{
    (void)state;
    struct eng_usb_wait big1 = {.len = MiB}, big2 = {.len = MiB}, cmd1 = {.len = 64},
                        cmd2 = {.len = 512}, big3 = {.len = 2 * MiB}, ctl = {.len = 4096};
    struct eng_usb_wait *head = NULL;
    /* nothing waits: anything may try at once */
    assert_false(eng_usb_must_queue(head, MiB));
    assert_false(eng_usb_must_queue(head, 64));
    eng_usb_wait_push(&head, &big1);
    eng_usb_wait_push(&head, &big2);
    /* only image data waits: a command still tries at once, data queues */
    assert_false(eng_usb_must_queue(head, 64));
    assert_true(eng_usb_must_queue(head, MiB));
    eng_usb_wait_push(&head, &cmd1);
    eng_usb_wait_push(&head, &big3);
    eng_usb_wait_push(&head, &cmd2);
    eng_usb_wait_push(&head, &ctl);
    /* a command waits: the next command queues behind it */
    assert_true(eng_usb_must_queue(head, 64));
    const struct eng_usb_wait *want[] = {&cmd1, &cmd2, &ctl, &big1, &big2, &big3};
    const struct eng_usb_wait *w = head;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++, w = w->next)
        assert_ptr_equal(w, want[i]);
    assert_null(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_transfers_may_use_the_whole_budget),
        cmocka_unit_test(test_nothing_in_flight_lets_anything_go),
        cmocka_unit_test(test_a_small_budget_keeps_no_reserve),
        cmocka_unit_test(test_small_transfers_queue_ahead_of_image_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
