#include "proxy/h1_common.h"

#include <stdlib.h>
#include <string.h>

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

static bool skip_header(const struct px_hdr *h)
{
    return strcmp(h->name, "content-length") == 0 || strcmp(h->name, "transfer-encoding") == 0 ||
           strcmp(h->name, "host") == 0 || strcmp(h->name, "connection") == 0;
}

void px_h1_write_headers(struct evbuffer *out, const struct px_msg *m)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        if (skip_header(h))
            continue;
        evbuffer_add(out, h->name, h->namelen);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, h->value, h->valuelen);
        evbuffer_add(out, "\r\n", 2);
    }
}

void px_h1_write_chunk(struct evbuffer *out, const uint8_t *data, size_t len)
{
    if (len == 0)
        return; /* a zero-size chunk would end the body */
    evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    evbuffer_add(out, "\r\n", 2);
}

void px_h1_write_last_chunk(struct evbuffer *out)
{
    evbuffer_add(out, "0\r\n\r\n", 5);
}
