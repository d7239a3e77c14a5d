#include "proxy/grpc.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "proxy/server.h"

bool px_grpc_is_request_slow(const struct px_msg *req)
{
    if (req->method == NULL || strcmp(req->method, "POST") != 0)
        return false;
    static const char ct[] = "application/grpc";
    size_t n = sizeof(ct) - 1;
    for (uint32_t i = 0; i < req->nhdrs; i++) {
        const struct px_hdr *h = &req->hdrs[i];
        if (!PX_HDR_IS(h, "content-type"))
            continue;
        if (h->valuelen < n || strncasecmp(h->value, ct, n) != 0)
            return false;
        return h->valuelen == n || h->value[n] == '+' || h->value[n] == ';';
    }
    return false;
}

int px_grpc_timeout_parse(const char *v, size_t len, uint64_t *ms)
{
    /* TimeoutValue: 1*8 DIGIT; TimeoutUnit: H M S m u n (gRPC over HTTP/2) */
    if (len < 2 || len > 9)
        return -1;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    /* n < 10^8: every product below fits in 64 bits */
    uint64_t r;
    switch (v[len - 1]) {
    case 'H':
        r = n * 3600000;
        break;
    case 'M':
        r = n * 60000;
        break;
    case 'S':
        r = n * 1000;
        break;
    case 'm':
        r = n;
        break;
    case 'u':
        r = (n + 999) / 1000;
        break;
    case 'n':
        r = (n + 999999) / 1000000;
        break;
    default:
        return -1;
    }
    if (r == 0)
        r = 1; /* "0m" is a deadline already due: the shortest timer we have */
    *ms = r > PX_GRPC_TIMEOUT_MAX_MS ? PX_GRPC_TIMEOUT_MAX_MS : r;
    return 0;
}

int px_grpc_status_parse(const char *v, size_t len)
{
    if (len == 0)
        return -1;
    uint32_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        if (n <= PX_GRPC_STATUS_MAX) /* past it the value is "other" anyway: no overflow */
            n = n * 10 + (uint32_t)(v[i] - '0');
    }
    return n <= PX_GRPC_STATUS_MAX ? (int)n : PX_GRPC_STATUS_MAX + 1;
}

static int status_of(const struct px_msg *m)
{
    const struct px_hdr *h = m != NULL ? px_msg_find(m, "grpc-status") : NULL;
    return h != NULL ? px_grpc_status_parse(h->value, h->valuelen) : -1;
}

int px_grpc_resp_status(const struct px_msg *head, const struct px_msg *trailers)
{
    int t = status_of(trailers);
    return t >= 0 ? t : status_of(head);
}

int px_grpc_status_by_name(const char *name, int *code)
{
    static const struct {
        const char *name;
        int code;
    } names[] = {
        {"cancelled", PX_GRPC_CANCELLED},     {"deadline-exceeded", PX_GRPC_DEADLINE_EXCEEDED},
        {"internal", PX_GRPC_INTERNAL},       {"resource-exhausted", PX_GRPC_RESOURCE_EXHAUSTED},
        {"unavailable", PX_GRPC_UNAVAILABLE},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(name, names[i].name) == 0) {
            *code = names[i].code;
            return 0;
        }
    return -1;
}

int px_grpc_status_of_http(int status, enum px_cause cause)
{
    (void)cause; /* every 503 is UNAVAILABLE, overload included: clients retry it */
    switch (status) {
    case 400:
        return PX_GRPC_INTERNAL; /* the request was malformed (gRPC's own mapping) */
    case 401:
        return PX_GRPC_UNAUTHENTICATED;
    case 403:
        return PX_GRPC_PERMISSION_DENIED;
    case 404:
    case 405:
        return PX_GRPC_UNIMPLEMENTED;
    case 413:
    case 429:
    case 431:
        return PX_GRPC_RESOURCE_EXHAUSTED;
    case 502:
    case 503:
        return PX_GRPC_UNAVAILABLE;
    case 504:
        return PX_GRPC_DEADLINE_EXCEEDED;
    case 500:
    case 508:
        return PX_GRPC_INTERNAL;
    default:
        return PX_GRPC_UNKNOWN;
    }
}

size_t px_grpc_percent_encode(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        bool plain = c >= 0x20 && c <= 0x7e && c != '%';
        size_t need = plain ? 1 : 3;
        if (o + need >= cap)
            break;
        if (plain) {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '%';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o] = '\0';
    return o;
}

static bool down_is_h2(const struct px_stream *s)
{
    return s->ops[PX_DOWN] != NULL && strcmp(s->ops[PX_DOWN]->name, "h2-server") == 0;
}

/* grpc-status and grpc-message into m (fields the proxy made: no bound
 * applies, as for the plain-text answer's own head). */
static void add_status(struct px_stream *s, struct px_msg *m, int code, const char *msg)
{
    uint32_t big = UINT32_MAX;
    char num[8], enc[512];
    int n = snprintf(num, sizeof(num), "%d", code);
    size_t elen = px_grpc_percent_encode(enc, sizeof(enc), msg, strlen(msg));
    px_msg_add(&s->arena, m, "grpc-status", 11, num, (size_t)n, big, big);
    if (elen > 0)
        px_msg_add(&s->arena, m, "grpc-message", 12, enc, elen, big, big);
    s->grpc_status = (int8_t)code;
}

bool px_grpc_respond(struct px_stream *s, int status, const char *msg)
{
    if (!down_is_h2(s))
        return false;
    uint32_t big = UINT32_MAX;
    px_msg_init(&s->resp);
    s->resp.status = 200;
    s->resp.content_length = -1;
    s->resp.end_stream = true; /* trailers-only: one HEADERS frame with END_STREAM */
    px_msg_add(&s->arena, &s->resp, "content-type", 12, "application/grpc", 16, big, big);
    add_status(s, &s->resp, px_grpc_status_of_http(status, s->cause), msg);
    px_msg_add(&s->arena, &s->resp, "server", 6, "remora", 6, big, big);
    px_trace_on_respond(s); /* x-request-id (proxy/trace.h) */
    s->resp_trailers = NULL;
    s->head_sent[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_head(s);
    s->ended[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_end(s);
    return true;
}

bool px_grpc_end_with(struct px_stream *s, int code, const char *msg)
{
    if (!down_is_h2(s) || !s->head_sent[PX_DOWN] || s->ended[PX_DOWN])
        return false;
    struct px_msg *t = px_arena_alloc(&s->arena, sizeof(*t));
    px_msg_init(t);
    add_status(s, t, code, msg);
    s->resp_trailers = t;
    s->ended[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_end(s);
    return true;
}
