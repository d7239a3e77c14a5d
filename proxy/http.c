#include "proxy/http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/xalloc.h"

/* Arena chunks: most heads fit in the first 4 KiB; larger requests get
 * chunks sized to the allocation. */
#define ARENA_CHUNK 4096

struct px_arena_chunk {
    struct px_arena_chunk *next;
    size_t size, off;
    max_align_t data[]; /* aligned storage */
};

void px_arena_init(struct px_arena *a)
{
    a->head = NULL;
    a->used = 0;
}

void px_arena_deinit(struct px_arena *a)
{
    struct px_arena_chunk *c = a->head;
    while (c != NULL) {
        struct px_arena_chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->used = 0;
}

void px_arena_reset(struct px_arena *a)
{
    struct px_arena_chunk *keep = NULL, *c = a->head;
    while (c != NULL) {
        struct px_arena_chunk *n = c->next;
        if (keep == NULL && c->size == ARENA_CHUNK - sizeof(*c))
            keep = c;
        else
            free(c);
        c = n;
    }
    if (keep != NULL) {
        keep->next = NULL;
        keep->off = 0;
    }
    a->head = keep;
    a->used = 0;
}

void *px_arena_alloc(struct px_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct px_arena_chunk *c = a->head;
    if (c == NULL || c->size - c->off < n) {
        size_t size = n > ARENA_CHUNK - sizeof(*c) ? n : ARENA_CHUNK - sizeof(*c);
        c = cm_xmalloc(sizeof(*c) + size);
        c->size = size;
        c->off = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = (char *)c->data + c->off;
    c->off += n;
    a->used += n;
    return p;
}

char *px_arena_strndup(struct px_arena *a, const char *s, size_t n)
{
    char *p = px_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void px_msg_init(struct px_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->content_length = -1;
}

int px_msg_add(struct px_arena *a, struct px_msg *m, const char *name, size_t namelen,
               const char *value, size_t valuelen, uint32_t max_bytes, uint32_t max_count)
{
    if (namelen + valuelen > max_bytes || m->head_bytes + namelen + valuelen > max_bytes ||
        m->nhdrs >= max_count)
        return CM_ERR_LIMIT;
    if (m->nhdrs == m->cap) {
        uint32_t ncap = m->cap ? m->cap * 2 : 16;
        struct px_hdr *n = px_arena_alloc(a, ncap * sizeof(*n));
        if (m->nhdrs)
            memcpy(n, m->hdrs, m->nhdrs * sizeof(*n));
        m->hdrs = n;
        m->cap = ncap;
    }
    char *nm = px_arena_strndup(a, name, namelen);
    for (size_t i = 0; i < namelen; i++)
        if (nm[i] >= 'A' && nm[i] <= 'Z')
            nm[i] = (char)(nm[i] + 32);
    struct px_hdr *h = &m->hdrs[m->nhdrs++];
    h->name = nm;
    h->namelen = (uint32_t)namelen;
    h->value = px_arena_strndup(a, value, valuelen);
    h->valuelen = (uint32_t)valuelen;
    m->head_bytes += (uint32_t)(namelen + valuelen);
    return 0;
}

const struct px_hdr *px_msg_find(const struct px_msg *m, const char *name)
{
    size_t n = strlen(name);
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (px_hdr_is(&m->hdrs[i], name, n))
            return &m->hdrs[i];
    return NULL;
}

int px_msg_remove(struct px_msg *m, const char *name)
{
    uint32_t o = 0;
    int removed = 0;
    size_t n = strlen(name);
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        if (px_hdr_is(&m->hdrs[i], name, n)) {
            removed++;
            continue;
        }
        m->hdrs[o++] = m->hdrs[i];
    }
    m->nhdrs = o;
    return removed;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* The next element of a comma-separated list value from *i on, without
 * surrounding whitespace (possibly empty): its offset *start and length *n.
 * False at the end of the value. */
static bool next_element(const char *value, size_t len, size_t *i, size_t *start, size_t *n)
{
    if (*i >= len)
        return false;
    while (*i < len && (is_ows(value[*i]) || value[*i] == ','))
        (*i)++;
    size_t s = *i;
    while (*i < len && value[*i] != ',')
        (*i)++;
    size_t end = *i;
    while (end > s && is_ows(value[end - 1]))
        end--;
    *start = s;
    *n = end - s;
    return true;
}

bool px_hdr_has_token(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0, start, n;
    while (next_element(value, len, &i, &start, &n))
        if (n == tlen && strncasecmp(value + start, token, tlen) == 0)
            return true;
    return false;
}

#define DROP UINT32_MAX /* namelen marker: the header goes at the next compaction */

/* Mark every header named by the n bytes at name (case-insensitively). */
static void mark_named(struct px_msg *m, const char *name, size_t n)
{
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (m->hdrs[i].namelen != DROP && strlen(m->hdrs[i].name) == n &&
            strncasecmp(m->hdrs[i].name, name, n) == 0)
            m->hdrs[i].namelen = DROP;
}

/* Mark the headers named by one Connection value. Never lets a token remove
 * what framing needs (Content-Length, Host). */
static void mark_connection_tokens(struct px_msg *m, const char *value, size_t len)
{
    size_t i = 0, start, n;
    while (next_element(value, len, &i, &start, &n)) {
        if (n == 0 || (n == 14 && strncasecmp(value + start, "content-length", 14) == 0) ||
            (n == 4 && strncasecmp(value + start, "host", 4) == 0))
            continue;
        mark_named(m, value + start, n);
    }
}

/* The fixed hop-by-hop list (RFC 9110 7.6.1, RFC 9113 8.2.2): the one list,
 * also used by the health port's prober (px_http_is_hop_by_hop). */
static const struct {
    const char *name;
    size_t len;
} hop_by_hop[] = {{"te", 2},
                  {"upgrade", 7},
                  {"connection", 10},
                  {"keep-alive", 10},
                  {"http2-settings", 14},
                  {"proxy-connection", 16},
                  {"transfer-encoding", 17}};

static bool is_hop_by_hop(const struct px_hdr *h)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++)
        if (px_hdr_is(h, hop_by_hop[i].name, hop_by_hop[i].len))
            return true;
    return false;
}

bool px_http_is_hop_by_hop(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++)
        if (len == hop_by_hop[i].len && strncasecmp(name, hop_by_hop[i].name, len) == 0)
            return true;
    return false;
}

void px_msg_strip_hop_by_hop(struct px_msg *m, bool keep_te_trailers)
{
    /* TE: trailers survives toward HTTP/2 even when Connection lists TE
     * (RFC 9110 requires HTTP/1.1 clients to list it there); TE may be split
     * over several fields. */
    bool trailers = false;
    for (uint32_t i = 0; keep_te_trailers && i < m->nhdrs; i++)
        if (PX_HDR_IS(&m->hdrs[i], "te") &&
            px_hdr_has_token(m->hdrs[i].value, m->hdrs[i].valuelen, "trailers"))
            trailers = true;
    /* Mark first, compact once: every Connection field counts, whatever
     * it names (even other Connection fields). */
    for (uint32_t i = 0; i < m->nhdrs; i++) /* by name: marking may have set namelen */
        if (strcmp(m->hdrs[i].name, "connection") == 0)
            mark_connection_tokens(m, m->hdrs[i].value, m->hdrs[i].valuelen);
    uint32_t o = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        bool drop = m->hdrs[i].namelen == DROP || is_hop_by_hop(&m->hdrs[i]);
        if (!drop)
            m->hdrs[o++] = m->hdrs[i];
    }
    m->nhdrs = o;
    if (trailers) {
        /* re-add as exactly "trailers", the only TE value HTTP/2 allows; a
         * slot is free since at least the original TE was removed */
        m->hdrs[m->nhdrs].name = "te";
        m->hdrs[m->nhdrs].namelen = 2;
        m->hdrs[m->nhdrs].value = "trailers";
        m->hdrs[m->nhdrs].valuelen = 8;
        m->nhdrs++;
    }
}

/* RFC 9110 tchar, as two bitmaps: characters 0-63 and 64-127 */
#define BIT(c) (1ULL << ((unsigned)(c)&63))
static const uint64_t tchar_lo = BIT('!') | BIT('#') | BIT('$') | BIT('%') | BIT('&') | BIT('\'') |
                                 BIT('*') | BIT('+') | BIT('-') | BIT('.') | (0x3ffULL << '0');
static const uint64_t tchar_hi = (0x3ffffffULL << ('A' - 64)) | (0x3ffffffULL << ('a' - 64)) |
                                 BIT('^') | BIT('_') | BIT('`') | BIT('|') | BIT('~');
#undef BIT

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    if (c < 64)
        return (tchar_lo >> c) & 1;
    return c < 128 && ((tchar_hi >> (c - 64)) & 1);
}

bool px_http_valid_name(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_tchar((unsigned char)s[i]))
            return false;
    return true;
}

bool px_http_valid_value(const char *s, size_t len)
{
    /* no control characters but HTAB (CR, LF and NUL among them), no DEL */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 ? c != '\t' : c == 0x7f)
            return false;
    }
    return true;
}

/* RFC 3986 unreserved, sub-delims, ':' and the IP-literal brackets: one
 * lookup per byte ('%' is handled apart) */
static bool authority_char[256];
static bool authority_ready;

static void authority_init(void)
{
    for (int c = 'a'; c <= 'z'; c++)
        authority_char[c] = authority_char[c - 32] = true;
    for (int c = '0'; c <= '9'; c++)
        authority_char[c] = true;
    for (const char *p = "-._~!$&'()*+,;=:[]"; *p; p++)
        authority_char[(unsigned char)*p] = true;
    authority_ready = true;
}

static bool is_hex(unsigned char h)
{
    return (h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F');
}

bool px_http_valid_authority(const char *s, size_t len)
{
    if (!authority_ready)
        authority_init();
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (authority_char[c])
            continue;
        /* pct-encoded: exactly two hex digits */
        if (c != '%' || i + 2 >= len || !is_hex((unsigned char)s[i + 1]) ||
            !is_hex((unsigned char)s[i + 2]))
            return false;
        i += 2;
    }
    return true;
}

enum px_target_form px_http_parse_target(const char *t, size_t len, bool options,
                                         struct px_target *out)
{
    memset(out, 0, sizeof(*out));
    if (memchr(t, '#', len) != NULL || len == 0)
        return out->form = PX_TARGET_INVALID;
    if (t[0] == '/')
        return out->form = PX_TARGET_ORIGIN;
    if (len == 1 && t[0] == '*')
        return out->form = options ? PX_TARGET_ASTERISK : PX_TARGET_INVALID;
    size_t off;
    if (len >= 7 && strncasecmp(t, "http://", 7) == 0) {
        out->scheme = "http";
        off = 7;
    } else if (len >= 8 && strncasecmp(t, "https://", 8) == 0) {
        out->scheme = "https";
        off = 8;
    } else {
        return out->form = PX_TARGET_INVALID;
    }
    size_t end = off;
    while (end < len && t[end] != '/' && t[end] != '?')
        end++;
    if (end == off || !px_http_valid_authority(t + off, end - off))
        return out->form = PX_TARGET_INVALID;
    out->auth_off = off;
    out->auth_len = end - off;
    out->path_off = end;
    return out->form = PX_TARGET_ABSOLUTE;
}

const char *px_method_class(const char *method)
{
    if (method == NULL)
        return "other";
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0)
        return "read";
    if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0 ||
        strcmp(method, "DELETE") == 0)
        return "write";
    return "other";
}

const char *px_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 508:
        return "Loop Detected";
    default:
        return status < 200   ? "Informational"
               : status < 300 ? "OK"
               : status < 400 ? "Redirect"
               : status < 500 ? "Client Error"
                              : "Server Error";
    }
}
