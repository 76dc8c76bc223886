#include "st_error.h"

#include <errno.h>
#include <stdlib.h>

const char *st_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define ST__ERR_STR(name, msg) \
    case ST_E##name:           \
        return msg;
        ST_ERROR_MAP(ST__ERR_STR)
#undef ST__ERR_STR
    }
    return "unknown error";
}

const char *st_errname(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define ST__ERR_NAME(name, msg) \
    case ST_E##name:            \
        return "E" #name;
        ST_ERROR_MAP(ST__ERR_NAME)
#undef ST__ERR_NAME
    }
    return "EUNKNOWN";
}

int st_error_from_errno(int errnum)
{
    switch (abs(errnum)) {
    case 0:
        return 0;
    case ENOMEM:
        return ST_ENOMEM;
    case EINVAL:
        return ST_EINVAL;
    case ETIMEDOUT:
        return ST_ETIMEDOUT;
    case ENODEV:
    case ENXIO:
    case ESHUTDOWN:
        return ST_ENODEV;
    case ECANCELED:
        return ST_ECANCELED;
    case EPIPE:
        return ST_EPIPE;
    case EOVERFLOW:
        return ST_EOVERFLOW;
    case EAGAIN:
        return ST_EAGAIN;
    case EACCES:
    case EPERM:
    case EROFS:
        return ST_EACCES;
    case ENOENT:
    case ENOTDIR:
        return ST_ENOENT;
    case EBUSY:
        return ST_EBUSY;
    case EFBIG:
        return ST_ETOOBIG;
    case ERANGE:
        return ST_ERANGE;
    default:
        return ST_EIO;
    }
}
