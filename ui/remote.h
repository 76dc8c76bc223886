/*
 * ui_remote: a struct ui_model as bytes, for `station watch` (the station
 * publishes snapshots over a Unix socket, station/publish.h; each watcher
 * rebuilds the model and draws it with the same dashboard code).
 *
 * A snapshot is one frame: a 4-byte big-endian payload length, then the
 * payload: the magic "STWM", a format version byte, and every field the
 * dashboard reads, field by field (integers big-endian, strings as a
 * 2-byte length and their bytes). Nothing depends on struct layout or
 * pointer size, and the decoder checks every length, count and enum, so
 * a truncated or garbage frame is an error, never a crash or an overread.
 *
 * Only what the screen needs travels: the notes ring and each slot's kept
 * steps and INFO lines; the model's dirty flag does not (the decoder sets
 * it). A snapshot of a few dozen slots is a few kilobytes.
 *
 * No I/O and no loop here: callers own the sockets.
 */
#ifndef UI_REMOTE_H
#define UI_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "ui/model.h"

#define UI_REMOTE_HEADER 4              /* the length prefix */
#define UI_REMOTE_MAX_FRAME (16u << 20) /* payloads beyond this are refused */
#define UI_REMOTE_MAX_SLOTS 4096

/* Encode `m` as one whole frame (length prefix included) into a buffer
 * from malloc(); the caller frees it. Returns 0 and sets *out and *len, or
 * ST_ENOMEM (or ST_TOOBIG past UI_REMOTE_MAX_FRAME) and leaves them alone. */
int ui_remote_encode(const struct ui_model *m, uint8_t **out, size_t *len);

/* The payload length announced by a frame's first UI_REMOTE_HEADER bytes. */
uint32_t ui_remote_frame_len(const uint8_t *header);

/* Decode one payload (the bytes after the length prefix) into `m`, which
 * must be initialised (ui_model_init); its previous content is replaced
 * and it is marked dirty. Returns 0, or ST_EPROTO (bad magic, version,
 * length, count or enum) or ST_ENOMEM, and then `m` is left unchanged. */
int ui_remote_decode(const uint8_t *payload, size_t len, struct ui_model *m);

#endif
