/* A growable byte buffer with a hard maximum (curl's dynbuf): every append
 * either fits under the maximum set at init or fails with CM_ERR_LIMIT and
 * leaves the contents as they were, so an untrusted size is an error the
 * caller handles, never an abort. The data is always NUL-terminated (the
 * terminator is not counted in len and not charged to the maximum). */
#ifndef CM_BUF_H
#define CM_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct cm_buf {
    char *data; /* NULL until the first append */
    size_t len; /* bytes held, without the terminator */
    size_t cap; /* bytes allocated, with the terminator */
    size_t max; /* len never exceeds this */
};

/* An empty buffer that will never hold more than max bytes. Allocates nothing. */
void cm_buf_init(struct cm_buf *b, size_t max);
/* Append n bytes (n may be 0). 0, or CM_ERR_LIMIT: nothing appended. */
int cm_buf_add(struct cm_buf *b, const void *p, size_t n);
int cm_buf_adds(struct cm_buf *b, const char *s);
/* Append printf output. 0, or CM_ERR_LIMIT when the whole text would pass
 * the maximum (nothing appended, not even a prefix), CM_ERR_INVAL when the
 * format fails. */
int cm_buf_printf(struct cm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cm_buf_vprintf(struct cm_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Forget the contents, keep the memory. */
void cm_buf_reset(struct cm_buf *b);
/* Hand over the data (never NULL, NUL-terminated; the caller frees it) and its
 * length; the buffer is left empty, with the same maximum. */
char *cm_buf_take(struct cm_buf *b, size_t *len);
/* Free the memory; the buffer is left empty and may be used again. */
void cm_buf_free(struct cm_buf *b);

#endif
