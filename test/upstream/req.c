/* Request model, routing and response bodies shared by the h1 and h2c codecs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"
#include "test/upstream/upstream.h"

/* 256 + TU_PATTERN_RUN bytes: tu_pattern_at(i) points at offset i % 256. */
static uint8_t pattern_table[256 + TU_PATTERN_RUN];

void tu_pattern_init(void)
{
    for (size_t i = 0; i < sizeof(pattern_table); i++)
        pattern_table[i] = tu_pattern_byte(i);
}

const uint8_t *tu_pattern_at(uint64_t i)
{
    return pattern_table + (i & 255);
}

void tu_req_init(struct tu_req *r)
{
    memset(r, 0, sizeof(*r));
    r->headers = json_object();
    if (r->headers == NULL)
        abort();
    mbedtls_sha256_init(&r->sha);
    mbedtls_sha256_starts_ret(&r->sha, 0);
}

void tu_req_deinit(struct tu_req *r)
{
    free(r->method);
    free(r->target);
    free(r->authority);
    json_decref(r->headers);
    mbedtls_sha256_free(&r->sha);
    memset(r, 0, sizeof(*r));
}

int tu_req_add_header(struct tu_req *r, const char *name, size_t nlen, const char *value,
                      size_t vlen)
{
    r->head_bytes += nlen + vlen + 4;
    if (r->head_bytes > TU_MAX_HEAD)
        return CM_ERR_LIMIT;
    char *k = cm_xstrndup(name, nlen);
    for (char *p = k; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (strcmp(k, "host") == 0 && r->authority == NULL)
        r->authority = cm_xstrndup(value, vlen);
    json_t *old = json_object_get(r->headers, k);
    json_t *v;
    if (old != NULL) {
        const char *o = json_string_value(old);
        size_t olen = json_string_length(old);
        char *joined = cm_xmalloc(olen + 2 + vlen);
        memcpy(joined, o, olen);
        memcpy(joined + olen, ", ", 2);
        memcpy(joined + olen + 2, value, vlen);
        v = json_stringn_nocheck(joined, olen + 2 + vlen);
        free(joined);
    } else {
        /* Header values are bytes, not necessarily UTF-8: keep them as they came. */
        v = json_stringn_nocheck(value, vlen);
    }
    if (v == NULL || json_object_set_new_nocheck(r->headers, k, v) != 0)
        abort();
    free(k);
    return 0;
}

void tu_req_body(struct tu_req *r, const void *data, size_t len)
{
    r->body_bytes += len;
    mbedtls_sha256_update_ret(&r->sha, data, len);
}

/* Decimal digits [s, s+len) into *out, at most max; 0 or CM_ERR_INVAL. */
static int parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20)
        return CM_ERR_INVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return CM_ERR_INVAL;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (max - d) / 10)
            return CM_ERR_INVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Value of query parameter `key` in "a=1&b=2" (not NUL-terminated: [q, q+qlen)). */
static bool query_get(const char *q, size_t qlen, const char *key, const char **val, size_t *vlen)
{
    size_t klen = strlen(key);
    const char *end = q + qlen;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        if ((size_t)(pe - q) > klen && memcmp(q, key, klen) == 0 && q[klen] == '=') {
            *val = q + klen + 1;
            *vlen = (size_t)(pe - *val);
            return true;
        }
        q = amp ? amp + 1 : end;
    }
    return false;
}

/* If path starts with prefix, the rest in [*arg, *arg + *alen). */
static bool path_arg(const char *path, size_t plen, const char *prefix, const char **arg,
                     size_t *alen)
{
    size_t n = strlen(prefix);
    if (plen < n || memcmp(path, prefix, n) != 0)
        return false;
    *arg = path + n;
    *alen = plen - n;
    return true;
}

static void route_error(struct tu_req *r, int status, const char *why)
{
    r->route = TU_ROUTE_ERROR;
    r->status = status;
    r->why = why;
}

void tu_req_route(struct tu_req *r)
{
    const char *t = r->target ? r->target : "/";
    const char *qm = strchr(t, '?');
    size_t plen = qm ? (size_t)(qm - t) : strlen(t);
    const char *q = qm ? qm + 1 : "";
    size_t qlen = strlen(q);
    const char *m = r->method ? r->method : "GET";
    bool get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
    const char *arg, *v;
    size_t alen, vlen;

    r->route = TU_ROUTE_ECHO;
    if (path_arg(t, plen, "/bytes/", &arg, &alen)) {
        if (!get) {
            route_error(r, 405, "use GET");
            return;
        }
        if (parse_u64(arg, alen, TU_MAX_BYTES, &r->n) != 0) {
            route_error(r, 400, "bad byte count");
            return;
        }
        r->chunked = query_get(q, qlen, "chunked", &v, &vlen) && vlen == 1 && v[0] == '1';
        r->route = TU_ROUTE_BYTES;
    } else if (path_arg(t, plen, "/status/", &arg, &alen)) {
        uint64_t code;
        if (parse_u64(arg, alen, 599, &code) != 0 || code < 200) {
            route_error(r, 400, "bad status code");
            return;
        }
        r->status = (int)code;
        r->route = TU_ROUTE_STATUS;
    } else if (path_arg(t, plen, "/delay/", &arg, &alen)) {
        if (parse_u64(arg, alen, TU_MAX_DELAY_MS, &r->ms) != 0) {
            route_error(r, 400, "bad delay");
            return;
        }
        r->route = TU_ROUTE_DELAY;
    } else if (plen == 6 && memcmp(t, "/close", 6) == 0) {
        r->route = TU_ROUTE_CLOSE;
    } else if (path_arg(t, plen, "/slowbody/", &arg, &alen)) {
        if (parse_u64(arg, alen, TU_MAX_DELAY_MS, &r->ms) != 0) {
            route_error(r, 400, "bad interval");
            return;
        }
        r->n = 10;
        if (query_get(q, qlen, "bytes", &v, &vlen) &&
            parse_u64(v, vlen, TU_MAX_SLOW_BYTES, &r->n) != 0) {
            route_error(r, 400, "bad byte count");
            return;
        }
        r->route = TU_ROUTE_SLOWBODY;
    } else if (plen == 5 && memcmp(t, "/sink", 5) == 0) {
        if (strcmp(m, "POST") != 0 && strcmp(m, "PUT") != 0) {
            route_error(r, 405, "use POST or PUT");
            return;
        }
    }
}

static const struct {
    int status;
    const char *text;
} reasons[] = {
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {304, "Not Modified"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
};

const char *tu_reason(int status)
{
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].status == status)
            return reasons[i].text;
    return "Status";
}

/* Serialize and release a jansson value (NULL only on OOM, which aborts). */
static char *dump(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (s == NULL)
        abort();
    return s;
}

static char *echo_json(const struct tu_req *r, const char *name, const char *proto)
{
    /* finish on a copy: the request's context stays valid for tu_req_deinit */
    mbedtls_sha256_context sha;
    unsigned char digest[32];
    char hex[65];
    mbedtls_sha256_init(&sha);
    mbedtls_sha256_clone(&sha, &r->sha);
    mbedtls_sha256_finish_ret(&sha, digest);
    mbedtls_sha256_free(&sha);
    for (size_t i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);

    json_t *o = json_object();
    if (o == NULL)
        abort();
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "protocol", json_string(proto));
    json_object_set_new(
        o, "method",
        json_stringn_nocheck(r->method ? r->method : "", r->method ? strlen(r->method) : 0));
    json_object_set_new(
        o, "path",
        json_stringn_nocheck(r->target ? r->target : "", r->target ? strlen(r->target) : 0));
    json_object_set_new(o, "authority",
                        r->authority ? json_stringn_nocheck(r->authority, strlen(r->authority))
                                     : json_null());
    json_object_set(o, "headers", r->headers);
    json_object_set_new(o, "body_bytes", json_integer((json_int_t)r->body_bytes));
    json_object_set_new(o, "body_sha256", json_string(hex));
    return dump(o);
}

static void set_buf(struct tu_resp *resp, char *buf, const char *ctype)
{
    resp->kind = TU_BODY_BUF;
    resp->buf = buf;
    resp->length = strlen(buf);
    resp->has_length = true;
    resp->content_type = ctype;
}

void tu_resp_build(const struct tu_req *r, const char *name, const char *proto, struct tu_resp *out)
{
    memset(out, 0, sizeof(*out));
    out->status = 200;
    switch (r->route) {
    case TU_ROUTE_ECHO:
    case TU_ROUTE_DELAY:
        set_buf(out, echo_json(r, name, proto), "application/json");
        break;
    case TU_ROUTE_STATUS:
        out->status = r->status;
        set_buf(out, dump(json_pack("{s:s,s:i}", "name", name, "status", r->status)),
                "application/json");
        break;
    case TU_ROUTE_ERROR:
        out->status = r->status;
        set_buf(out, cm_xasprintf("%s\n", r->why), "text/plain");
        break;
    case TU_ROUTE_BYTES:
        out->kind = TU_BODY_PATTERN;
        out->length = r->n;
        out->has_length = !r->chunked;
        out->content_type = "application/octet-stream";
        break;
    case TU_ROUTE_SLOWBODY:
        out->kind = TU_BODY_SLOW;
        out->length = r->n;
        out->has_length = true;
        out->slow_ms = r->ms;
        out->content_type = "application/octet-stream";
        break;
    case TU_ROUTE_CLOSE:
        out->kind = TU_BODY_NONE;
        out->has_length = true;
        break;
    }
    /* The head still announces what GET would have carried; no body follows. */
    bool head = r->method && strcmp(r->method, "HEAD") == 0;
    if (out->status == 204 || out->status == 304) {
        free(out->buf);
        out->buf = NULL;
        out->kind = TU_BODY_NONE;
        out->length = 0;
        out->has_length = false;
        out->content_type = NULL;
    } else if (head) {
        free(out->buf);
        out->buf = NULL;
        out->kind = TU_BODY_NONE;
    }
}

void tu_resp_deinit(struct tu_resp *resp)
{
    free(resp->buf);
    memset(resp, 0, sizeof(*resp));
}

size_t tu_resp_read(struct tu_resp *resp, uint8_t *dst, size_t len)
{
    uint64_t left = resp->length - resp->sent;
    if (resp->kind == TU_BODY_SLOW && left > resp->slow_ready)
        left = resp->slow_ready;
    if (len > left)
        len = (size_t)left;
    switch (resp->kind) {
    case TU_BODY_NONE:
        return 0;
    case TU_BODY_BUF:
        memcpy(dst, resp->buf + resp->sent, len);
        break;
    case TU_BODY_SLOW:
        resp->slow_ready -= len;
        /* fall through */
    case TU_BODY_PATTERN:
        for (size_t done = 0; done < len;) {
            size_t n = len - done < TU_PATTERN_RUN ? len - done : TU_PATTERN_RUN;
            memcpy(dst + done, tu_pattern_at(resp->sent + done), n);
            done += n;
        }
        break;
    }
    resp->sent += len;
    return len;
}
