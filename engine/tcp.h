/*
 * eng_tcp: fastboot over TCP (shared/notes/fastboot.md, "TCP transport").
 *
 * The wire: the host sends "FB01", the device answers "FB" and two
 * digits; after that every message in either direction is an 8-byte
 * big-endian length followed by that many payload bytes.
 *
 * A source (struct eng_tcp_source) stands for one network slot, a device
 * address HOST:PORT. It connects (with a time limit), does the handshake
 * (with a time limit) and hands the connection to the engine as an
 * eng_transport whose port is "tcp:HOST:PORT" (eng_engine_device_arrived).
 * The engine owns that transport until it closes it. When the device
 * goes away (EOF, reset, a protocol error) the transport completes what
 * is in flight with ST_ENODEV and reports eng_engine_device_left(). Once
 * the transport is closed, the source connects again every retry
 * interval: that is how a session continues across "reboot bootloader"
 * (the device closes the connection and comes back on the same port) and
 * how the next unit on a network slot is found. A refused connection is
 * expected (the device is not there yet) and only retried.
 *
 * Transport behaviour (engine/transport.h):
 *   - BULK_OUT sends one frame: the header and the caller's buffer go to
 *     one uv_write; a transfer whose bytes are in a file (from_file, an
 *     image) is sent from the file with sendfile(2), so the kernel takes
 *     the pages from the page cache and no CPU copies them into the
 *     socket (a file the kernel cannot send from falls back to memory);
 *   - BULK_IN completes with the next received frame's payload, or
 *     ST_EOVERFLOW when the frame is longer than the transfer's buffer
 *     (the frame is consumed); frames above `max_frame` bytes are a
 *     protocol error that drops the link;
 *   - received frames wait in a bounded queue; when it is full the
 *     transport stops reading (a device that floods the host costs the
 *     host a bounded amount of memory, and TCP pushes back on it);
 *   - cancel() of an IN completes it with ST_ECANCELED on the next loop
 *     iteration; a write cannot be taken back, so cancel() of an OUT
 *     drops the connection and the write's callback reports ST_ECANCELED;
 *   - callbacks never run from inside submit(), cancel() or close().
 *
 * Everything runs on the loop thread. Lifecycle: eng_tcp_source_new()
 * (starts connecting at once), ..., eng_tcp_source_stop() (no more
 * connecting; a transport already handed over stays with the engine,
 * which closes it), then after the stop callback eng_tcp_source_free().
 * At station shutdown the sources stop before the engine closes.
 */
#ifndef ENG_TCP_H
#define ENG_TCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"

#define ENG_TCP_HOST_MAX 46 /* an IPv6 address in text, with its NUL */

struct eng_tcp_source;

struct eng_tcp_options {
    unsigned connect_timeout_ms;   /* TCP connect; default 2000 */
    unsigned handshake_timeout_ms; /* "FB01" answered; default 2000 */
    unsigned retry_ms;             /* between connection attempts; default 500 */
    size_t max_frame;              /* larger received frames drop the link; default 1 MiB */
    unsigned queue_frames;         /* stop reading with this many frames queued; default 16 */
    size_t queue_bytes;            /* ... or this many bytes queued; default 64 KiB */
    unsigned profile; /* engine profile of this slot's devices (eng_transport.profile) */
    bool no_sendfile; /* send every frame from memory, never from its file (tests) */
};

/*
 * Parse a device address "HOST:PORT" or a range "HOST:FIRST-LAST" (HOST
 * is an IPv4 address, "localhost", or an IPv6 address in brackets).
 * Fills host (at least ENG_TCP_HOST_MAX bytes, brackets removed) and
 * first/last (equal for a single port). Returns 0 or ST_EINVAL; resolves
 * nothing.
 */
int eng_tcp_parse_address(const char *spec, char *host, size_t host_len, uint16_t *first,
                          uint16_t *last);

/*
 * A source for the device at host:port, reporting to `eng` on `loop`.
 * `host` is a numeric address (or "localhost"); `opts` may be NULL. Starts
 * connecting right away. Returns 0 and *out, or ST_EINVAL (bad address)
 * or ST_ENOMEM; then nothing was started.
 */
int eng_tcp_source_new(uv_loop_t *loop, struct eng_engine *eng, const char *host, uint16_t port,
                       const struct eng_tcp_options *opts, struct eng_tcp_source **out);

/* "tcp:HOST:PORT", the port name of the source's transports. */
const char *eng_tcp_source_port(const struct eng_tcp_source *src);

/* Connections handed to the engine so far. */
unsigned eng_tcp_source_arrivals(const struct eng_tcp_source *src);

/* Frame payload bytes sent straight from files (sendfile) so far. */
uint64_t eng_tcp_source_file_bytes(const struct eng_tcp_source *src);

/*
 * Stop connecting: the retry timer and any connection not yet handed to
 * the engine are closed; a transport the engine holds is left to it. `cb`
 * (may be NULL) runs once nothing of the source is open. Call once.
 */
void eng_tcp_source_stop(struct eng_tcp_source *src,
                         void (*cb)(struct eng_tcp_source *src, void *user_data), void *user_data);

/* Free a source whose stop callback has run (or NULL). */
void eng_tcp_source_free(struct eng_tcp_source *src);

#endif
