/* Character classes of the request-target normalization (proxy/pathnorm.c),
 * shared with its fuzz target's reference (test/fuzz/fuzz_policy_decide.c).
 * Not an API: proxy/pathnorm.h is. */
#ifndef PX_PATHNORM_INT_H
#define PX_PATHNORM_INT_H

#include <stdbool.h>

/* The value of a hex digit, or -1. */
static inline int px_pathnorm_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 3986 2.3 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~" */
static inline bool px_pathnorm_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

#endif
