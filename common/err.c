#include "common/err.h"

const char *cm_err_str(int err)
{
    switch (err) {
    case CM_OK:
        return "ok";
    case CM_ERR_INVAL:
        return "invalid input";
    case CM_ERR_IO:
        return "i/o error";
    case CM_ERR_PROTO:
        return "protocol error";
    case CM_ERR_LIMIT:
        return "limit exceeded";
    case CM_ERR_TIMEOUT:
        return "timed out";
    case CM_ERR_NOTFOUND:
        return "not found";
    case CM_ERR_AGAIN:
        return "try again";
    case CM_ERR_NOMEM:
        return "out of memory";
    default:
        return "unknown error";
    }
}
