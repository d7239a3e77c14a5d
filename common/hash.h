/* A string hash for the small open-addressing and bucket tables of both
 * programs (FNV-1a, 32 bits): not for anything an attacker must not steer
 * into collisions beyond a table's own bound. */
#ifndef CM_HASH_H
#define CM_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint32_t cm_hash_mem(const void *p, size_t len)
{
    const unsigned char *s = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

static inline uint32_t cm_hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

#endif
