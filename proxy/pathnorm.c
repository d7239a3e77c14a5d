/* Request-target normalization (proxy/pathnorm.h): one pass decoding
 * percent-escapes and refusing what must not reach a rule, then one pass in
 * place merging slashes and removing dot segments. */
#include "proxy/pathnorm.h"
#include "proxy/pathnorm_int.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

size_t px_policy_scratch_size(const char *path)
{
    return (path ? strlen(path) : 0) + 2;
}

int px_policy_normalize_path(const char *target, char *out, size_t outlen, const char **why)
{
    static const char hex[] = "0123456789ABCDEF";
    const char *s = target ? target : "";
    size_t n = strcspn(s, "?");
    if (outlen < n + 2) {
        *why = "path too long";
        return -1;
    }
    if (n == 1 && s[0] == '*') { /* OPTIONS * */
        memcpy(out, "*", 2);
        return 1;
    }
    if (n > 0 && s[0] != '/') {
        /* absolute-form (RFC 9112 3.2.2): drop scheme and authority */
        size_t skip = 0;
        if (n >= 7 && strncasecmp(s, "http://", 7) == 0)
            skip = 7;
        else if (n >= 8 && strncasecmp(s, "https://", 8) == 0)
            skip = 8;
        else {
            *why = "request target is not a path";
            return -1;
        }
        const char *slash = memchr(s + skip, '/', n - skip);
        if (slash == NULL) {
            s = "/";
            n = 1;
        } else {
            n -= (size_t)(slash - s);
            s = slash;
        }
    }
    if (n == 0) {
        s = "/";
        n = 1;
    }

    /* 1: percent-decoding of unreserved characters, checks */
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 2 < n ? px_pathnorm_hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? px_pathnorm_hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                *why = "malformed percent-encoding in path";
                return -1;
            }
            unsigned char v = (unsigned char)(hi * 16 + lo);
            if (v == '/' || v == '\\') {
                *why = "encoded slash or backslash in path";
                return -1;
            }
            if (v == 0) {
                *why = "encoded NUL in path";
                return -1;
            }
            if (px_pathnorm_unreserved(v)) {
                out[w++] = (char)v;
            } else {
                out[w++] = '%';
                out[w++] = hex[hi];
                out[w++] = hex[lo];
            }
            i += 2;
        } else if (c == '\\') {
            *why = "backslash in path";
            return -1;
        } else if (c == '#') {
            *why = "fragment in request target";
            return -1;
        } else if (c < 0x20 || c == 0x7f) {
            *why = "control character in path";
            return -1;
        } else {
            out[w++] = (char)c;
        }
    }

    /* 2: merge slashes, remove dot segments, in place. out[0] is '/'; o only
     * ever trails r, and out[0..o) always ends with '/'. */
    size_t r = 1, o = 1;
    bool slash_end = true; /* the result ends with '/' */
    while (r < w) {
        if (out[r] == '/') {
            r++;
            slash_end = true;
            continue;
        }
        size_t e = r;
        while (e < w && out[e] != '/')
            e++;
        size_t len = e - r;
        if (len == 1 && out[r] == '.') {
            slash_end = true;
        } else if (len == 2 && out[r] == '.' && out[r + 1] == '.') {
            if (o > 1) {
                o--;
                while (o > 0 && out[o - 1] != '/')
                    o--;
            }
            slash_end = true;
        } else {
            memmove(out + o, out + r, len);
            o += len;
            out[o++] = '/';
            slash_end = false;
        }
        r = e;
    }
    if (!slash_end && o > 1)
        o--;
    out[o] = '\0';
    return (int)o;
}
