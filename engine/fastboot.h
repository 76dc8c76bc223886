/*
 * eng_fb: the host side of the fastboot protocol, as a state machine over
 * an eng_transport (shared/notes/fastboot.md has the wire facts).
 *
 * One operation at a time: eng_fb_command() sends a command and waits for
 * its final reply (INFO lines are passed to the info callback on the way);
 * eng_fb_download() sends "download:%08x", checks the DATA reply, streams
 * the bytes from the caller's buffer (never copied) and waits for OKAY.
 * Every operation has a time limit; on expiry the transfer in flight is
 * cancelled and the operation ends with ST_ETIMEDOUT. An INFO line
 * restarts the limit: a device that reports progress is alive.
 *
 * The completion callback runs exactly once for an operation whose start
 * returned 0, on the loop thread; `text` is the OKAY payload on success or
 * a message that says what happened ("device replied FAIL: ...", "no reply
 * within 5 s", "device disconnected after 1048576 of 4194304 bytes").
 */
#ifndef ENG_FASTBOOT_H
#define ENG_FASTBOOT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "engine/sparse.h"
#include "engine/transport.h"

#define ENG_FB_COMMAND_MAX 64
#define ENG_FB_REPLY_MAX 256

struct eng_fb;

typedef void (*eng_fb_done_cb)(struct eng_fb *fb, int status, const char *text, void *user_data);
typedef void (*eng_fb_info_cb)(struct eng_fb *fb, const char *line, void *user_data);
typedef void (*eng_fb_progress_cb)(struct eng_fb *fb, uint64_t done, uint64_t total,
                                   void *user_data);

struct eng_fb_hooks {
    eng_fb_info_cb info;         /* may be NULL */
    eng_fb_progress_cb progress; /* may be NULL */
    void *user_data;
};

/* Create a driver on an open transport (borrowed, not owned). */
int eng_fb_new(uv_loop_t *loop, struct eng_transport *t, const struct eng_fb_hooks *hooks,
               size_t chunk_size, struct eng_fb **out);

/* Send `cmd` (at most 64 bytes) and wait up to timeout_ms for the final
 * reply. Returns 0 (callback will run) or a negative code (it will not):
 * ST_EBUSY if an operation is running, ST_EINVAL for a bad command. */
int eng_fb_command(struct eng_fb *fb, const char *cmd, unsigned timeout_ms, eng_fb_done_cb cb,
                   void *user_data);

/* Download `len` bytes from `data` (which must stay valid until the
 * callback). The whole exchange must finish within timeout_ms. */
int eng_fb_download(struct eng_fb *fb, const void *data, uint64_t len, unsigned timeout_ms,
                    eng_fb_done_cb cb, void *user_data);

/* Download the concatenation of `n` ranges (`total` bytes in all; the
 * array and what it points to must stay valid until the callback). Each
 * transfer carries bytes of one range only, so nothing is copied. */
int eng_fb_download_iov(struct eng_fb *fb, const struct eng_iov *iov, unsigned n, uint64_t total,
                        unsigned timeout_ms, eng_fb_done_cb cb, void *user_data);

/* The bytes of later downloads that lie inside `map` (`size` bytes) are
 * also in the open file `fd` at the same offset: transfers carrying them
 * say so (eng_xfer.from_file), and a transport that can send from a file
 * copies nothing. fd < 0 forgets it. The file must stay open as long. */
void eng_fb_set_file(struct eng_fb *fb, int fd, const void *map, uint64_t size);

/* Cancel the running operation; its callback runs with `status` (for
 * example ST_ENODEV or ST_ECANCELED) and `reason`. No-op when idle. */
void eng_fb_abort(struct eng_fb *fb, int status, const char *reason);

/* Bytes of the last download the transport reported sent (all of them
 * after a successful download). */
uint64_t eng_fb_data_sent(const struct eng_fb *fb);

/* True while an operation runs. */
bool eng_fb_busy(const struct eng_fb *fb);

/* Cancel what runs (its callback fires with ST_ECANCELED), close the timer
 * and free the driver; `cb` runs after that. */
void eng_fb_close(struct eng_fb *fb, void (*cb)(void *user_data), void *user_data);

#endif
