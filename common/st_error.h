/*
 * st_error: the one list of error codes used across the station.
 *
 * Every function that can fail returns 0 or one of these negative codes.
 * libuv, libusb, SQLite and errno values are translated where they enter
 * our code (st_error_from_errno() and the per-module translators), so a
 * caller never has to know which library a failure came from.
 */
#ifndef ST_ERROR_H
#define ST_ERROR_H

/* X(NAME, message): codes are -1, -2, ... in this order. Append only. */
#define ST_ERROR_MAP(X)                                                    \
    X(NOMEM, "out of memory")                                              \
    X(INVAL, "invalid argument")                                           \
    X(IO, "input/output error")                                            \
    X(TIMEDOUT, "timed out")                                               \
    X(NODEV, "device disconnected")                                        \
    X(CANCELED, "operation canceled")                                      \
    X(PROTO, "protocol error")                                             \
    X(DEVFAIL, "device replied FAIL")                                      \
    X(PIPE, "endpoint stalled")                                            \
    X(OVERFLOW, "reply too long")                                          \
    X(AGAIN, "resource temporarily unavailable")                           \
    X(ACCES, "permission denied")                                          \
    X(NOENT, "no such file or directory")                                  \
    X(BUSY, "resource busy")                                               \
    X(DB, "database error")                                                \
    X(TOOBIG, "image larger than the device accepts")                      \
    X(RANGE, "value out of range")                                         \
    X(REQUIRE, "device does not meet the recipe's requirements")           \
    X(CLOSED, "handle is closing")                                         \
    X(INTERNAL, "internal error")

/* The codes themselves: ST_ENOMEM == -1, ST_EINVAL == -2, ... */
enum st_error_code {
    ST__ERR_ZERO = 0,
#define ST__ERR_POS(name, msg) ST__POS_##name,
    ST_ERROR_MAP(ST__ERR_POS)
#undef ST__ERR_POS
};
#define ST__ERR_NEG(name, msg) ST_E##name = -(int)ST__POS_##name,
enum { ST_ERROR_MAP(ST__ERR_NEG) };
#undef ST__ERR_NEG

/* A static string describing `err` (0 or a code above); never NULL. */
const char *st_strerror(int err);

/* The symbolic name ("ETIMEDOUT") of `err`; never NULL. */
const char *st_errname(int err);

/* Translate a positive or negative errno value to our code. */
int st_error_from_errno(int errnum);

#endif
