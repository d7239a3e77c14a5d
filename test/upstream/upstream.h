/* test-upstream: the HTTP/1.1 and h2c server every integration test and benchmark talks to.
 *
 * One request model (struct tu_req, filled by either codec) and one response model
 * (struct tu_resp, built by tu_resp_build from the route) are shared by h1.c and h2.c,
 * so both protocols answer every endpoint identically:
 *   /bytes/N[?chunked=1]   N bytes of tu_pattern, generated as the socket drains
 *   /status/CODE           that status, short JSON body
 *   /delay/MS              the echo answer after MS
 *   /close                 no answer: close (h1) / RST_STREAM (h2)
 *   /slowbody/MS[?bytes=K] headers, then one byte every MS (K bytes, default 10)
 *   /sink, anything else   echo JSON: name, method, path, headers, body_bytes, body_sha256
 * Request bodies only pass through a SHA-256; nothing is ever held whole. */
#ifndef TU_UPSTREAM_H
#define TU_UPSTREAM_H

#include <event2/event.h>
#include <jansson.h>
#include <mbedtls/sha256.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"

/* Bound on request line + headers (h1) / header block (h2): past it, 431. */
#define TU_MAX_HEAD 65536
/* Output buffered per connection before generated bodies wait for the socket. */
#define TU_OUT_HIGH (256 * 1024)
#define TU_OUT_LOW  (64 * 1024)
/* Largest /bytes/N, /delay/MS, /slowbody/MS and ?bytes=K. */
#define TU_MAX_BYTES      1000000000000ULL
#define TU_MAX_DELAY_MS   600000
#define TU_MAX_SLOW_BYTES 1000000

/* The process: its loop and every open connection (freed at exit, so ASan sees no leak). */
struct tu_server {
    struct event_base *base;
    const char *name;   /* --name, echoed as "name" and the x-upstream header */
    bool h2;            /* --h2: every connection is h2c prior knowledge */
    uint32_t h2_window; /* --h2-window: SETTINGS_INITIAL_WINDOW_SIZE we announce (default 1 MiB) */
    struct cm_list conns;
};

/* Where a request goes, decided once its head is complete. */
enum tu_route {
    TU_ROUTE_ECHO,     /* 200 + echo JSON once the whole body has been hashed (also /sink) */
    TU_ROUTE_STATUS,   /* /status/CODE: that status, short body */
    TU_ROUTE_DELAY,    /* /delay/MS: the echo answer, MS after the request ended */
    TU_ROUTE_CLOSE,    /* /close: no answer at all */
    TU_ROUTE_BYTES,    /* /bytes/N: N pattern bytes, streamed */
    TU_ROUTE_SLOWBODY, /* /slowbody/MS: headers now, then one pattern byte every MS */
    TU_ROUTE_ERROR     /* bad number or method: err_status with a short body */
};

/* One request as either codec sees it. Strings are owned and freed by tu_req_deinit. */
struct tu_req {
    char *method;
    char *target;    /* request target as sent, query included */
    char *authority; /* Host header (h1) or :authority (h2); may be NULL */
    json_t *headers; /* lower-case name -> value; repeated names joined with ", " */
    size_t head_bytes;
    uint64_t body_bytes;
    mbedtls_sha256_context sha;
    /* set by tu_req_route */
    enum tu_route route;
    int status;      /* STATUS: the code; ERROR: 400/405 */
    uint64_t n;      /* BYTES: length; SLOWBODY: byte count */
    uint64_t ms;     /* DELAY, SLOWBODY: milliseconds */
    bool chunked;    /* BYTES: ?chunked=1 (h1 only; h2 just omits content-length) */
    const char *why; /* ERROR: short reason */
};

void tu_req_init(struct tu_req *r);
void tu_req_deinit(struct tu_req *r);
/* Record a header (name lower-cased here). Returns 0, or CM_ERR_LIMIT past TU_MAX_HEAD. */
int tu_req_add_header(struct tu_req *r, const char *name, size_t nlen, const char *value,
                      size_t vlen);
/* Hash a piece of the request body. */
void tu_req_body(struct tu_req *r, const void *data, size_t len);
/* Decide r->route and its parameters from method and target. */
void tu_req_route(struct tu_req *r);

/* What to send back. */
enum tu_body {
    TU_BODY_NONE,    /* no body bytes (HEAD, 204, 304) */
    TU_BODY_BUF,     /* buf[0..length), owned */
    TU_BODY_PATTERN, /* tu_pattern bytes [0..length) */
    TU_BODY_SLOW     /* tu_pattern bytes, one each slow_ms */
};

struct tu_resp {
    int status;
    enum tu_body kind;
    bool has_length; /* announce length (content-length); else chunked (h1) / none (h2) */
    uint64_t length;
    uint64_t sent; /* body bytes handed to the codec so far */
    uint64_t slow_ms;
    uint64_t slow_ready; /* SLOW: bytes released by the timer, not yet sent */
    char *buf;
    const char *content_type;
};

/* Build the response for a request whose body has ended. proto is "HTTP/1.1" or "HTTP/2".
 * The caller owns *out and frees it with tu_resp_deinit. */
void tu_resp_build(const struct tu_req *r, const char *name, const char *proto,
                   struct tu_resp *out);
void tu_resp_deinit(struct tu_resp *resp);
/* Copy up to len body bytes at the current position into dst (BUF, PATTERN, SLOW),
 * advance resp->sent; returns the count. */
size_t tu_resp_read(struct tu_resp *resp, uint8_t *dst, size_t len);
/* Reason phrase for a status code. */
const char *tu_reason(int status);

/* The deterministic body: byte i is (i * 31 + 7) & 0xff, period 256. */
static inline uint8_t tu_pattern_byte(uint64_t i)
{
    return (uint8_t)((i * 31 + 7) & 0xff);
}
/* A read-only run of up to TU_PATTERN_RUN pattern bytes starting at offset i; lets h1
 * add body data by reference instead of copying. */
#define TU_PATTERN_RUN 65536
const uint8_t *tu_pattern_at(uint64_t i);
void tu_pattern_init(void);

/* Codecs: take an accepted socket; the connection links itself into srv->conns. */
void tu_h1_accept(struct tu_server *srv, int fd);
void tu_h2_accept(struct tu_server *srv, int fd);
/* Free every connection (process exit). */
void tu_h1_free_all(struct tu_server *srv);
void tu_h2_free_all(struct tu_server *srv);

#endif
