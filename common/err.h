/* Error codes shared by every component. Functions return 0 on success and a
 * negative cm_err on failure (nghttp2's convention). */
#ifndef CM_ERR_H
#define CM_ERR_H

#include <stdarg.h>

enum cm_err {
    CM_OK = 0,
    CM_ERR_INVAL = -1,    /* bad argument or bad input from a peer / file */
    CM_ERR_IO = -2,       /* a system call failed; errno says why */
    CM_ERR_PROTO = -3,    /* protocol violation by a peer */
    CM_ERR_LIMIT = -4,    /* a configured bound was exceeded */
    CM_ERR_TIMEOUT = -5,  /* a deadline passed */
    CM_ERR_NOTFOUND = -6, /* lookup found nothing */
    CM_ERR_AGAIN = -7,    /* not ready yet; try again later */
    /* values at or below CM_ERR_FATAL end the process or the component */
    CM_ERR_FATAL = -100,
    CM_ERR_NOMEM = -101 /* out of memory (normally aborts through cm_xmalloc) */
};

/* Static text for an error code; never NULL. */
const char *cm_err_str(int err);

/* Replace *errmsg (a heap string or NULL, freed here) with the formatted
 * message, cut at CM_FAIL_MAX - 1 bytes; errmsg NULL: nothing is kept.
 * Returns rc, so a parser can `return cm_fail(errmsg, CM_ERR_INVAL, ...)`. */
#define CM_FAIL_MAX 2048
int cm_fail(char **errmsg, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int cm_vfail(char **errmsg, int rc, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* cm_fail for a message that quotes untrusted input (a parser's error text
 * quoting the bytes it choked on): control bytes and DEL become '?', so the
 * message stays one line of an answer or a log. */
int cm_fail_printable(char **errmsg, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline int cm_err_is_fatal(int err)
{
    return err <= CM_ERR_FATAL;
}

#endif
