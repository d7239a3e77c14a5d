#include "proxy/detect.h"

#include <string.h>

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* An HTTP/1.x request line starts at buf: a method token (upper-case letters,
 * '-', '_') then a space. llhttp judges the rest; this only routes. */
static enum px_conn_proto detect_h1(const uint8_t *buf, size_t len)
{
    size_t i = 0;
    while (i < len && i < 20 &&
           ((buf[i] >= 'A' && buf[i] <= 'Z') || buf[i] == '-' || buf[i] == '_'))
        i++;
    if (i == len && i < 20)
        return PX_PROTO_UNKNOWN;
    if (i >= 3 && i < 20 && i < len && buf[i] == ' ')
        return PX_PROTO_HTTP1;
    return PX_PROTO_TCP;
}

enum px_conn_proto px_detect(const uint8_t *buf, size_t len)
{
    if (len == 0)
        return PX_PROTO_UNKNOWN;
    /* RFC 9112 section 2.2: a server SHOULD ignore at least one empty line
     * before a request line, and llhttp and nginx do. Detection must agree
     * with the app, or "\r\nGET /admin" would pass as opaque TCP. */
    size_t skip = 0;
    while (skip < len && skip < PX_DETECT_MAX_SKIP && (buf[skip] == '\r' || buf[skip] == '\n'))
        skip++;
    if (skip > 0) {
        if (skip == len)
            return PX_PROTO_UNKNOWN;
        if (buf[skip] == '\r' || buf[skip] == '\n')
            return PX_PROTO_TCP; /* more empty lines than anyone sends */
        return detect_h1(buf + skip, len - skip);
    }
    if (buf[0] == 0x16) {
        /* TLS record: handshake, version 3.x */
        if (len < 2)
            return PX_PROTO_UNKNOWN;
        return buf[1] == 0x03 ? PX_PROTO_TLS : PX_PROTO_TCP;
    }
    size_t n = len < 24 ? len : 24;
    if (memcmp(buf, preface, n) == 0)
        return len >= 24 ? PX_PROTO_H2 : PX_PROTO_UNKNOWN;
    return detect_h1(buf, len);
}

const char *px_proto_name(enum px_conn_proto p)
{
    switch (p) {
    case PX_PROTO_HTTP1:
        return "http1";
    case PX_PROTO_H2:
        return "h2c";
    case PX_PROTO_TLS:
        return "tls";
    case PX_PROTO_TCP:
        return "tcp";
    default:
        return "unknown";
    }
}
