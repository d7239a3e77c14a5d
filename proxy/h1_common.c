#include "proxy/h1_common.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xalloc.h"

void px_h1_acc_reset(struct h1_acc *a)
{
    a->len = 0;
    a->name_len = 0;
}

void px_h1_acc_free(struct h1_acc *a)
{
    free(a->buf);
    a->buf = NULL;
    a->len = a->cap = a->name_len = 0;
}

bool px_h1_acc_append(struct h1_acc *a, const char *at, size_t len, size_t max)
{
    if (len == 0)
        return true; /* llhttp may hand over an empty piece (e.g. "CONNECT \n") */
    if (a->len + len > max)
        return false;
    if (a->len + len > a->cap) {
        size_t ncap = a->cap ? a->cap : 256;
        while (ncap < a->len + len)
            ncap *= 2;
        if (ncap > max)
            ncap = max;
        a->buf = cm_xrealloc(a->buf, ncap);
        a->cap = ncap;
    }
    memcpy(a->buf + a->len, at, len);
    a->len += len;
    return true;
}

int px_h1_acc_take_header(struct h1_acc *a, struct px_arena *arena, struct px_msg *m,
                          uint32_t max_bytes, uint32_t max_count)
{
    const char *buf = a->buf ? a->buf : "";
    size_t nlen = a->name_len, vlen = a->len - a->name_len;
    /* trailing whitespace is not part of the value (RFC 9110 5.5) */
    while (vlen > 0 && (buf[nlen + vlen - 1] == ' ' || buf[nlen + vlen - 1] == '\t'))
        vlen--;
    if (!px_http_valid_name(buf, nlen) || !px_http_valid_value(buf + nlen, vlen))
        return 400;
    if (px_msg_add(arena, m, buf, nlen, buf + nlen, vlen, max_bytes, max_count) != 0)
        return 431;
    px_h1_acc_reset(a);
    return 0;
}

/* 1*DIGIT up to 2^63-1: no sign, no space, no list ("5, 5"). */
static int64_t parse_length(const char *v, size_t len)
{
    if (len == 0 || len > 19)
        return -1;
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (uint64_t)(v[i] - '0'); /* 19 digits fit in 64 bits */
    }
    return n > (uint64_t)INT64_MAX ? -1 : (int64_t)n;
}

const char *px_h1_check_framing(const struct px_msg *m, int http_minor, struct px_h1_framing *out,
                                int *status)
{
    out->content_length = -1;
    out->chunked = false;
    *status = 400;
    unsigned ncl = 0, nte = 0, codings = 0;
    bool chunked_last = false, chunked_seen = false;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        if (PX_HDR_IS(h, "content-length")) {
            if (++ncl > 1)
                return "more than one Content-Length";
            out->content_length = parse_length(h->value, h->valuelen);
            if (out->content_length < 0) {
                bool digits = h->valuelen > 0;
                for (uint32_t k = 0; k < h->valuelen; k++)
                    digits = digits && h->value[k] >= '0' && h->value[k] <= '9';
                return digits ? "Content-Length above 2^63-1" : "Content-Length is not a number";
            }
        } else if (PX_HDR_IS(h, "transfer-encoding")) {
            nte++;
            /* codings are a comma list, possibly over several field lines */
            size_t k = 0;
            bool empty = true;
            while (k < h->valuelen) {
                while (k < h->valuelen &&
                       (h->value[k] == ' ' || h->value[k] == '\t' || h->value[k] == ','))
                    k++;
                size_t start = k;
                while (k < h->valuelen && h->value[k] != ',')
                    k++;
                size_t end = k;
                while (end > start && (h->value[end - 1] == ' ' || h->value[end - 1] == '\t'))
                    end--;
                if (end == start)
                    continue;
                empty = false;
                codings++;
                bool is_chunked =
                    end - start == 7 && strncasecmp(h->value + start, "chunked", 7) == 0;
                if (is_chunked && chunked_seen)
                    return "chunked applied twice";
                chunked_seen = chunked_seen || is_chunked;
                chunked_last = is_chunked;
            }
            if (empty)
                return "empty Transfer-Encoding";
        }
    }
    if (nte == 0)
        return NULL;
    if (http_minor == 0)
        return "Transfer-Encoding in an HTTP/1.0 message";
    if (ncl > 0)
        return "both Content-Length and Transfer-Encoding";
    if (!chunked_last)
        return "Transfer-Encoding does not end with chunked";
    if (codings > 1) {
        *status = 501;
        return "transfer coding other than chunked";
    }
    out->chunked = true;
    return NULL;
}

/* Names are lower case and NUL-terminated (http.c). */
static bool skip_header(const struct px_hdr *h)
{
    return PX_HDR_IS(h, "host") || PX_HDR_IS(h, "connection") || PX_HDR_IS(h, "content-length") ||
           PX_HDR_IS(h, "transfer-encoding");
}

size_t px_h1_headers_size(const struct px_msg *m)
{
    /* head_bytes sums every name and value added (removals do not lower
     * it), so this is exact for a message nothing was removed from and an
     * upper bound otherwise: no walk over the headers */
    return (size_t)m->head_bytes + 4 * (size_t)m->nhdrs;
}

void px_h1_head_begin(struct px_h1_head *w, struct evbuffer *out, size_t need)
{
    w->out = out;
    w->p = w->end = NULL;
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &w->v, 1) == 1) {
        w->p = w->v.iov_base;
        w->end = w->p + w->v.iov_len;
    }
}

void px_h1_put(struct px_h1_head *w, const char *s, size_t n)
{
    if (w->p != NULL && (size_t)(w->end - w->p) >= n) {
        memcpy(w->p, s, n);
        w->p += n;
        return;
    }
    if (w->p != NULL)
        px_h1_head_end(w); /* `need` was short: the rest goes piece by piece */
    evbuffer_add(w->out, s, n);
}

void px_h1_put_str(struct px_h1_head *w, const char *s)
{
    px_h1_put(w, s, strlen(s));
}

void px_h1_put_u64(struct px_h1_head *w, uint64_t v)
{
    char d[20];
    size_t i = sizeof(d);
    do
        d[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    px_h1_put(w, d + i, sizeof(d) - i);
}

void px_h1_put_headers(struct px_h1_head *w, const struct px_msg *m)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        if (skip_header(h))
            continue;
        px_h1_put(w, h->name, h->namelen);
        px_h1_put(w, ": ", 2);
        px_h1_put(w, h->value, h->valuelen);
        px_h1_put(w, "\r\n", 2);
    }
}

void px_h1_head_end(struct px_h1_head *w)
{
    if (w->p == NULL)
        return;
    w->v.iov_len = (size_t)(w->p - (char *)w->v.iov_base);
    evbuffer_commit_space(w->out, &w->v, 1);
    w->p = w->end = NULL;
}

void px_h1_write_chunk(struct evbuffer *out, const uint8_t *data, size_t len)
{
    if (len == 0)
        return; /* a zero-size chunk would end the body */
    char hex[2 * sizeof(size_t) + 2];
    size_t i = sizeof(hex);
    hex[--i] = '\n';
    hex[--i] = '\r';
    size_t v = len;
    do
        hex[--i] = "0123456789abcdef"[v & 15];
    while ((v >>= 4) != 0);
    evbuffer_add(out, hex + i, sizeof(hex) - i);
    evbuffer_add(out, data, len);
    evbuffer_add(out, "\r\n", 2);
}

void px_h1_write_last_chunk(struct evbuffer *out)
{
    evbuffer_add(out, "0\r\n\r\n", 5);
}

bool px_h1_tunnel_step(struct px_io *io, struct px_stream *s, enum px_side from, bool *paused)
{
    struct evbuffer *in = px_io_input(io);
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
        return false;
    bool full = from == PX_DOWN ? px_stream_on_req_data(s, v.iov_base, v.iov_len)
                                : px_stream_on_resp_data(s, v.iov_base, v.iov_len);
    evbuffer_drain(in, v.iov_len);
    if (full) {
        *paused = true;
        px_io_read_enable(io, false);
    }
    return true;
}
