/* Internals shared by the Kubernetes API client's files (kube.h):
 *   kube.c        URLs, the response parser, the object decoders (pure)
 *   kube_http.c   the client: connections, TLS, one request, a streamed watch
 * and the unit tests / fuzz targets that drive the parser in pieces. */
#ifndef IJ_KUBE_INT_H
#define IJ_KUBE_INT_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>

#include "injector/kube.h"

#define IJ_KUBE_STATUS_MESSAGE_MAX 512 /* of a Status.message quoted in an error */

/* Set *errmsg (heap, replacing what was there) and return rc. */
int ij_kube_fail(char **errmsg, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Copy at most max bytes of untrusted text, control bytes and non-ASCII
 * replaced, so a message from a server cannot forge log lines. Heap. */
char *ij_kube_sanitize(const char *s, size_t n, size_t max);

/* Incremental state of one response being read. */
struct ij_kube_rparser {
    llhttp_t http;
    llhttp_settings_t settings;
    struct ij_kube_resp *resp;
    size_t max_body;
    size_t cap;        /* allocated bytes of resp->body */
    size_t head_bytes; /* status line and header bytes so far, 1xx included */
    size_t reason_len;
    bool done;            /* a final response is complete */
    int limit;            /* 0, or which bound a callback hit: 1 head, 2 body, 3 the sink */
    ij_kube_sink_fn sink; /* NULL: bodies are kept in resp->body */
    void *sink_arg;
    bool head_done; /* a final response's head is in (resp->status set) */
};

void ij_kube_rparser_init(struct ij_kube_rparser *p, struct ij_kube_resp *resp, size_t max_body);
/* Feed bytes; returns 0 (p->done tells whether the response is complete) or
 * a negative cm_err. */
int ij_kube_rparser_feed(struct ij_kube_rparser *p, const char *buf, size_t len, char **errmsg);
/* The peer closed the connection. */
int ij_kube_rparser_eof(struct ij_kube_rparser *p, char **errmsg);

#endif
