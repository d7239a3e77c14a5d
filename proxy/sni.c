/* The SNI of a TLS ClientHello (proxy/sni.h). The layout (RFC 8446 section
 * 4.1.2, RFC 5246 section 7.4.1.2, RFC 6066 section 3):
 *
 *   record:  type(1)=22 version(2)=3.x length(2) body
 *   body:    msg_type(1)=1 length(3) ClientHello
 *   ClientHello: version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
 *                compression_methods<1..2^8-1> extensions<0..2^16-1>
 *   extension:   type(2) data<0..2^16-1>; server_name is type 0:
 *                server_name_list<1..2^16-1> of name_type(1) name<1..2^16-1>
 *
 * Every length is checked against the bytes of its enclosing structure, which
 * are all inside the first record, which is inside len. */
#include "proxy/sni.h"

#include <stdbool.h>
#include <string.h>

#define REC_MAX 16384

/* A cursor over [p, end): reads fail (false) instead of passing end. */
struct cur {
    const uint8_t *p, *end;
};

static bool take(struct cur *c, size_t n, const uint8_t **out)
{
    if ((size_t)(c->end - c->p) < n)
        return false;
    if (out != NULL)
        *out = c->p;
    c->p += n;
    return true;
}

static bool u8(struct cur *c, size_t *v)
{
    const uint8_t *b;
    if (!take(c, 1, &b))
        return false;
    *v = b[0];
    return true;
}

static bool u16(struct cur *c, size_t *v)
{
    const uint8_t *b;
    if (!take(c, 2, &b))
        return false;
    *v = (size_t)b[0] << 8 | b[1];
    return true;
}

/* A length-prefixed vector (prefix of w bytes) as its own cursor. */
static bool vec(struct cur *c, int w, struct cur *out)
{
    size_t n;
    if (!(w == 1 ? u8(c, &n) : u16(c, &n)))
        return false;
    const uint8_t *b;
    if (!take(c, n, &b))
        return false;
    out->p = b;
    out->end = b + n;
    return true;
}

/* A host name as DNS writes it: labels of [A-Za-z0-9_-], 1..63 bytes, dots
 * between; one trailing dot allowed. Lower-cased into name. */
static bool host_name(const uint8_t *s, size_t n, char *name)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > PX_SNI_NAME_MAX)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = s[i];
        if (ch == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_') {
            label++;
        } else if (ch >= 'A' && ch <= 'Z') {
            ch = (uint8_t)(ch - 'A' + 'a');
            label++;
        } else {
            return false;
        }
        if (label > 63)
            return false;
        name[i] = (char)ch;
    }
    name[n] = '\0';
    return true;
}

/* The server_name extension's data: the first host_name entry. */
static bool server_name(struct cur *ext, char *name)
{
    struct cur list;
    if (!vec(ext, 2, &list) || ext->p != ext->end || list.p == list.end)
        return false;
    while (list.p < list.end) {
        size_t type;
        struct cur v;
        if (!u8(&list, &type) || !vec(&list, 2, &v))
            return false;
        if (type == 0) /* host_name */
            return host_name(v.p, (size_t)(v.end - v.p), name);
    }
    return false;
}

static enum px_sni_result client_hello(struct cur *c, char *name)
{
    struct cur skip, exts;
    if (!take(c, 2 + 32, NULL) || !vec(c, 1, &skip) || skip.end - skip.p > 32 /* session_id */ ||
        !vec(c, 2, &skip) || skip.p == skip.end || (skip.end - skip.p) % 2 != 0 /* suites */ ||
        !vec(c, 1, &skip) || skip.p == skip.end /* compression */)
        return PX_SNI_NONE;
    if (c->p == c->end)
        return PX_SNI_NONE; /* no extensions: no name */
    if (!vec(c, 2, &exts) || c->p != c->end)
        return PX_SNI_NONE;
    bool found = false;
    while (exts.p < exts.end) {
        size_t type;
        struct cur data;
        if (!u16(&exts, &type) || !vec(&exts, 2, &data))
            return PX_SNI_NONE;
        if (type != 0)
            continue;
        if (found || !server_name(&data, name))
            return PX_SNI_NONE; /* two names, or a bad one: ambiguous, so none */
        found = true;
    }
    return found ? PX_SNI_FOUND : PX_SNI_NONE;
}

enum px_sni_result px_sni_parse(const uint8_t *buf, size_t len, char name[PX_SNI_NAME_BUF])
{
    name[0] = '\0';
    if (len >= 1 && buf[0] != 22)
        return PX_SNI_NONE;
    if (len >= 2 && buf[1] != 3)
        return PX_SNI_NONE;
    if (len < 5)
        return PX_SNI_MORE;
    size_t rlen = (size_t)buf[3] << 8 | buf[4];
    if (rlen < 4 || rlen > REC_MAX)
        return PX_SNI_NONE;
    /* the handshake header decides early whether the hello fits this record */
    if (len >= 6 && buf[5] != 1)
        return PX_SNI_NONE;
    if (len < 9)
        return PX_SNI_MORE; /* rlen >= 4: the record is not complete either */
    size_t hlen = (size_t)buf[6] << 16 | (size_t)buf[7] << 8 | buf[8];
    if (hlen + 4 > rlen)
        return PX_SNI_NONE; /* fragmented over records (or a wrong length): no name */
    if (len < 5 + rlen)
        return PX_SNI_MORE;
    struct cur c = {buf + 9, buf + 9 + hlen};
    enum px_sni_result r = client_hello(&c, name);
    if (r != PX_SNI_FOUND)
        name[0] = '\0';
    return r;
}
