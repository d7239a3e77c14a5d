/* Allocation that aborts on out-of-memory (h2o, Envoy): the only way the
 * process allocates. Untrusted input never reaches abort(): it is bounded
 * before anything is allocated for it. */
#ifndef CM_XALLOC_H
#define CM_XALLOC_H

#include <stdarg.h>
#include <stddef.h>

void *cm_xmalloc(size_t n);
void *cm_xcalloc(size_t n, size_t size);
void *cm_xrealloc(void *p, size_t n);
char *cm_xstrdup(const char *s);
char *cm_xstrndup(const char *s, size_t n);
/* printf into a fresh heap string; caller frees. */
char *cm_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same with a va_list. */
char *cm_xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

#endif
