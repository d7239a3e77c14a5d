#include "common/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"

#define MIN_CAP 64

void cm_buf_init(struct cm_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

/* Room for n more bytes and the terminator; the caller checked the maximum. */
static void reserve(struct cm_buf *b, size_t n)
{
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1; /* need <= max + 1, so this still fits */
    b->data = cm_xrealloc(b->data, cap);
    b->cap = cap;
}

int cm_buf_add(struct cm_buf *b, const void *p, size_t n)
{
    if (n > b->max - b->len)
        return CM_ERR_LIMIT;
    reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return CM_OK;
}

int cm_buf_adds(struct cm_buf *b, const char *s)
{
    return cm_buf_add(b, s, strlen(s));
}

int cm_buf_vprintf(struct cm_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char *dst = b->cap ? b->data + b->len : NULL;
    size_t room = b->cap ? b->cap - b->len : 0;
    int n = vsnprintf(dst, room, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        if (b->data)
            b->data[b->len] = '\0';
        return CM_ERR_INVAL;
    }
    if ((size_t)n > b->max - b->len) {
        if (b->data)
            b->data[b->len] = '\0'; /* undo a truncated prefix */
        return CM_ERR_LIMIT;
    }
    if ((size_t)n >= room) {
        reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    }
    b->len += (size_t)n;
    return CM_OK;
}

int cm_buf_printf(struct cm_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cm_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void cm_buf_reset(struct cm_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *cm_buf_take(struct cm_buf *b, size_t *len)
{
    char *p = b->data ? b->data : cm_xstrdup("");
    if (len)
        *len = b->len;
    cm_buf_init(b, b->max);
    return p;
}

void cm_buf_free(struct cm_buf *b)
{
    free(b->data);
    cm_buf_init(b, b->max);
}
