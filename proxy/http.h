/* HTTP message heads shared by the HTTP/1.1 and HTTP/2 codecs: a request or
 * response head as a list of lower-case header fields, stored in the
 * stream's arena. Pseudo headers (:method, :path, :authority, :scheme,
 * :status) are fields of the struct, never in the list. */
#ifndef PX_HTTP_H
#define PX_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct px_arena;

struct px_hdr {
    const char *name; /* lower case, NUL-terminated */
    const char *value;
    uint32_t namelen;
    uint32_t valuelen;
};

struct px_msg {
    const char *method;    /* request: "GET"...; NULL on responses */
    const char *scheme;    /* "http" / "https" */
    const char *authority; /* Host / :authority, or NULL */
    const char *path;      /* request target (origin form) */
    int status;            /* response status; 0 on requests */
    int http_minor;        /* HTTP/1.x minor version seen from an h1 peer (0 or 1) */
    struct px_hdr *hdrs;
    uint32_t nhdrs;
    uint32_t cap;
    uint32_t head_bytes;    /* sum of name+value lengths, checked against the bound */
    int64_t content_length; /* -1 when unknown */
    bool end_stream;        /* no body follows the head */
};

/* Bump allocator living as long as one stream; freed whole. */
struct px_arena_chunk;
struct px_arena {
    struct px_arena_chunk *head;
    size_t used; /* bytes handed out, for bounds and stats */
};

void px_arena_init(struct px_arena *a);
void px_arena_deinit(struct px_arena *a);
/* Empty the arena for reuse, keeping one standard chunk so a recycled stream
 * does not allocate again for an ordinary head. */
void px_arena_reset(struct px_arena *a);
void *px_arena_alloc(struct px_arena *a, size_t n);
char *px_arena_strndup(struct px_arena *a, const char *s, size_t n);

void px_msg_init(struct px_msg *m);
/* Append a header (the name is lower-cased in the copy). Returns 0, or
 * CM_ERR_LIMIT when the head would pass max_bytes / max_count. */
int px_msg_add(struct px_arena *a, struct px_msg *m, const char *name, size_t namelen,
               const char *value, size_t valuelen, uint32_t max_bytes, uint32_t max_count);
/* Is h's name the lower-case `name` of n bytes? namelen always equals the
 * name's strlen, so the length settles most comparisons. PX_HDR_IS takes a
 * string literal. */
static inline bool px_hdr_is(const struct px_hdr *h, const char *name, size_t n)
{
    return h->namelen == n && memcmp(h->name, name, n) == 0;
}
#define PX_HDR_IS(h, lit) px_hdr_is((h), (lit), sizeof(lit) - 1)

/* First header with this (lower-case) name, or NULL. */
const struct px_hdr *px_msg_find(const struct px_msg *m, const char *name);
/* Remove every header with this name; returns how many. */
int px_msg_remove(struct px_msg *m, const char *name);
/* Does a comma-separated header value contain token (case-insensitive)? */
bool px_hdr_has_token(const char *value, size_t len, const char *token);
/* Remove hop-by-hop headers (RFC 9110 7.6.1): Connection and every header it
 * names, Keep-Alive, Proxy-Connection, Transfer-Encoding, TE (except
 * "trailers" when keep_te_trailers), Upgrade, Proxy-Authorization is NOT
 * removed (end-to-end for us). */
void px_msg_strip_hop_by_hop(struct px_msg *m, bool keep_te_trailers);
/* Is `name` (len bytes, any case) one of the fixed hop-by-hop fields that
 * px_msg_strip_hop_by_hop removes (Connection, Keep-Alive, Proxy-Connection,
 * Transfer-Encoding, TE, Upgrade, HTTP2-Settings)? Fields a Connection
 * header names are the caller's to check (px_hdr_has_token). */
bool px_http_is_hop_by_hop(const char *name, size_t len);
/* Is this a valid header field name / value (RFC 9110 tokens, no CR/LF/NUL)? */
bool px_http_valid_name(const char *s, size_t len);
bool px_http_valid_value(const char *s, size_t len);
/* Is this a valid authority (RFC 3986 3.2: host [":" port]) for Host or an
 * absolute-form target: unreserved, pct-encoded, sub-delims, ':' and the
 * brackets of an IP literal, and nothing else (no userinfo '@', no space,
 * no '/', '?', '#', no byte above 0x7e). Empty is valid (RFC 9112 3.2). */
bool px_http_valid_authority(const char *s, size_t len);

/* The forms of a request target (RFC 9112 3.2). */
enum px_target_form {
    PX_TARGET_INVALID = 0, /* none of the forms below: refuse with 400 */
    PX_TARGET_ORIGIN,      /* "/path?query" */
    PX_TARGET_ABSOLUTE,    /* "http://authority/path?query" (http or https) */
    PX_TARGET_ASTERISK     /* "*", OPTIONS only */
};
struct px_target {
    enum px_target_form form;
    const char *scheme; /* ABSOLUTE: "http" or "https" (static) */
    size_t auth_off;    /* ABSOLUTE: where the authority starts in the target */
    size_t auth_len;    /* ABSOLUTE: its length (never 0) */
    size_t path_off;    /* ABSOLUTE: where the path or query starts (may be len) */
};
/* Classify the target t of len bytes; `options` is whether the method is
 * OPTIONS (the only one allowed "*"). A fragment ('#') is in no form. An
 * absolute-form target must name an http(s) scheme and a non-empty valid
 * authority (px_http_valid_authority). Returns t's form (also in out). */
enum px_target_form px_http_parse_target(const char *t, size_t len, bool options,
                                         struct px_target *out);

/* Method class for metrics: "read" (GET/HEAD/OPTIONS), "write", "other". */
const char *px_method_class(const char *method);
/* Standard reason phrase for a status code ("OK", "Not Found", ...). */
const char *px_http_reason(int status);

#endif
