/* HTTP/2 codec, header translation for both roles: a px_msg to nghttp2 name/value
 * pairs (pseudo-headers first, connection-specific fields dropped) and nghttp2's
 * header callbacks to a px_msg (:status, content-length and the limits checked as
 * the h1 codec does). See docs/h2.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/xalloc.h"
#include "proxy/h2.h"
#include "proxy/h2_common.h"
#include "proxy/http.h"
#include "proxy/server.h"

static void nv_set(nghttp2_nv *nv, const char *name, size_t namelen, const char *value,
                   size_t valuelen)
{
    nv->name = (uint8_t *)name;
    nv->namelen = namelen;
    nv->value = (uint8_t *)value;
    nv->valuelen = valuelen;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

/* HTTP/2 peers (nghttp2 among them) reset streams whose field values start
 * or end with whitespace (RFC 9113 8.2.1); an h1 peer may have sent some. */
static void add_field_nv(nghttp2_nv *nv, const struct px_hdr *h)
{
    const char *v = h->value;
    size_t len = h->valuelen;
    while (len > 0 && (v[0] == ' ' || v[0] == '\t')) {
        v++;
        len--;
    }
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    nv_set(nv, h->name, h->namelen, v, len);
}

/* Connection-specific fields never go out on HTTP/2 (RFC 9113 8.2.2). */
static bool connection_specific(const struct px_hdr *h)
{
    static const char *const names[] = {"connection",        "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade",    "http2-settings"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(h->name, names[i]) == 0)
            return true;
    return false;
}

size_t px_h2_make_nv(const struct px_msg *m, bool request, nghttp2_nv **nva, char *statusbuf,
                     char **clmem)
{
    nghttp2_nv *nv = cm_xmalloc((m->nhdrs + 6) * sizeof(*nv));
    size_t n = 0;
    if (request) {
        const char *method = m->method ? m->method : "GET";
        const char *path = m->path && m->path[0] ? m->path : "/";
        const char *authority = m->authority;
        if (authority == NULL) {
            const struct px_hdr *host = px_msg_find(m, "host");
            if (host != NULL)
                authority = host->value;
        }
        nv_set(&nv[n++], ":method", 7, method, strlen(method));
        nv_set(&nv[n++], ":scheme", 7, "http", 4);
        if (authority != NULL && authority[0])
            nv_set(&nv[n++], ":authority", 10, authority, strlen(authority));
        nv_set(&nv[n++], ":path", 5, path, strlen(path));
    } else {
        int status = m->status >= 100 && m->status <= 999 ? m->status : 502;
        snprintf(statusbuf, 4, "%03d", status);
        nv_set(&nv[n++], ":status", 7, statusbuf, 3);
    }
    /* the length lives in m->content_length (the h1 codec's convention);
     * a header copy in the list, if any, is skipped below */
    char *clbuf = NULL;
    bool no_body_status = !request && (m->status == 204 || m->status < 200);
    if (m->content_length >= 0 && !no_body_status) {
        clbuf = cm_xasprintf("%lld", (long long)m->content_length);
        nv_set(&nv[n++], "content-length", 14, clbuf, strlen(clbuf));
    }
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        if (h->namelen == 0 || h->name[0] == ':' || connection_specific(h))
            continue;
        if (strcmp(h->name, "host") == 0 || strcmp(h->name, "content-length") == 0)
            continue; /* carried by :authority / m->content_length */
        if (strcmp(h->name, "te") == 0) {
            if (request && px_hdr_has_token(h->value, h->valuelen, "trailers"))
                nv_set(&nv[n++], "te", 2, "trailers", 8);
            continue;
        }
        add_field_nv(&nv[n++], h);
    }
    *nva = nv;
    *clmem = clbuf;
    return n;
}

size_t px_h2_make_trailer_nv(const struct px_msg *m, nghttp2_nv **nva)
{
    nghttp2_nv *nv = cm_xmalloc((m->nhdrs + 1) * sizeof(*nv));
    size_t n = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        if (h->namelen == 0 || h->name[0] == ':' || connection_specific(h) ||
            strcmp(h->name, "te") == 0 || strcmp(h->name, "host") == 0 ||
            strcmp(h->name, "content-length") == 0)
            continue;
        add_field_nv(&nv[n++], h);
    }
    *nva = nv;
    return n;
}

static bool name_is(const uint8_t *name, size_t len, const char *lit)
{
    size_t l = strlen(lit);
    return len == l && memcmp(name, lit, l) == 0;
}

static int parse_status(const uint8_t *v, size_t len)
{
    if (len != 3)
        return -1;
    int st = 0;
    for (size_t i = 0; i < 3; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        st = st * 10 + (v[i] - '0');
    }
    return st >= 100 ? st : -1;
}

static int64_t parse_length(const uint8_t *v, size_t len)
{
    if (len == 0 || len > 18)
        return -1;
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

int px_h2_add_field(struct px_stream *s, struct px_msg *m, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    const char *v = (const char *)value;
    if (namelen > 0 && name[0] == ':') {
        if ((uint64_t)m->head_bytes + namelen + valuelen > lim->max_header_bytes)
            return CM_ERR_LIMIT;
        const char **field = NULL;
        if (name_is(name, namelen, ":method"))
            field = &m->method;
        else if (name_is(name, namelen, ":scheme"))
            field = &m->scheme;
        else if (name_is(name, namelen, ":authority"))
            field = &m->authority;
        else if (name_is(name, namelen, ":path"))
            field = &m->path;
        else if (name_is(name, namelen, ":status")) {
            int st = parse_status(value, valuelen);
            if (st < 0)
                return CM_ERR_PROTO;
            m->status = st;
        } else if (name_is(name, namelen, ":protocol") && m == &s->req) {
            /* extended CONNECT (RFC 8441): the protocol of the tunnel, an
             * HTTP Upgrade token for the stream (docs/h2.md) */
            if (s->upgrade != NULL || !px_http_valid_name(v, valuelen))
                return CM_ERR_PROTO;
            s->upgrade = px_arena_strndup(&s->arena, v, valuelen);
        } else {
            return CM_ERR_PROTO; /* :protocol in a response, unknown ones */
        }
        if (field != NULL) {
            if (*field != NULL || !px_http_valid_value(v, valuelen))
                return CM_ERR_PROTO;
            if (field == &m->authority && !px_http_valid_authority(v, valuelen))
                return CM_ERR_PROTO; /* as Host over HTTP/1.1: what policy and app read alike */
            *field = px_arena_strndup(&s->arena, v, valuelen);
        }
        m->head_bytes += (uint32_t)(namelen + valuelen);
        return 0;
    }
    if (!px_http_valid_name((const char *)name, namelen) || !px_http_valid_value(v, valuelen))
        return CM_ERR_PROTO;
    if (m->status == 0 && name_is(name, namelen, "host")) {
        /* Host only stands in for a missing :authority; one that names
         * another authority makes the request malformed (RFC 9113 8.3.1),
         * or the app could route on what the policy never saw */
        if ((uint64_t)m->head_bytes + namelen + valuelen > lim->max_header_bytes)
            return CM_ERR_LIMIT;
        if (!px_http_valid_authority(v, valuelen))
            return CM_ERR_PROTO;
        if (m->authority == NULL)
            m->authority = px_arena_strndup(&s->arena, v, valuelen);
        else if (strlen(m->authority) != valuelen || strncasecmp(m->authority, v, valuelen) != 0)
            return CM_ERR_PROTO;
        m->head_bytes += (uint32_t)(namelen + valuelen);
        return 0;
    }
    if (name_is(name, namelen, "content-length")) {
        int64_t cl = parse_length(value, valuelen);
        if (cl < 0 || (m->content_length >= 0 && m->content_length != cl))
            return CM_ERR_PROTO;
        m->content_length = cl;
        m->head_bytes += (uint32_t)(namelen + valuelen);
        return 0; /* kept in m->content_length only, as the h1 codec does */
    }
    return px_msg_add(&s->arena, m, (const char *)name, namelen, v, valuelen, lim->max_header_bytes,
                      lim->max_headers);
}

int px_h2_stream_add_field(struct px_h2_stream *st, struct px_msg *head, const uint8_t *name,
                           size_t namelen, const uint8_t *value, size_t valuelen)
{
    struct px_msg *m = st->in == PX_H2_IN_HEAD       ? head
                       : st->in == PX_H2_IN_TRAILERS ? st->trailers
                                                     : NULL;
    if (m == NULL)
        return 0;
    int rv = px_h2_add_field(st->s, m, name, namelen, value, valuelen);
    if (rv == CM_ERR_LIMIT) {
        st->too_big = true; /* answered once the head (or trailers) is complete */
        return 0;
    }
    return rv;
}
