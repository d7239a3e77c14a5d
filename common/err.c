#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/xalloc.h"

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

int cm_fail(char **errmsg, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cm_vfail(errmsg, rc, fmt, ap);
    va_end(ap);
    return rc;
}

int cm_vfail(char **errmsg, int rc, const char *fmt, va_list ap)
{
    if (errmsg == NULL)
        return rc;
    char buf[CM_FAIL_MAX];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    free(*errmsg);
    *errmsg = cm_xstrdup(buf);
    return rc;
}

int cm_fail_printable(char **errmsg, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cm_vfail(errmsg, rc, fmt, ap);
    va_end(ap);
    for (char *p = errmsg != NULL ? *errmsg : NULL; p != NULL && *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            *p = '?';
    return rc;
}
