/* A small, blocking Kubernetes API client for the CA-root publisher
 * (`remora-injector publish-ca-root`, docs/ca.md), the CA's token reviews and
 * the discovery service's list+watch (docs/discovery.md): HTTPS/1.1 on mbedTLS,
 * one request per connection (Connection: close), the API server's
 * certificate verified against the service-account CA with the URL's host
 * (a DNS name through mbedTLS, an IP literal against the certificate's IP
 * SANs, as client-go does), a bearer token, responses parsed with llhttp and
 * bodies with jansson.
 *
 * Everything is bounded: a per-request deadline covers connect, handshake,
 * write and read (poll() on a non-blocking socket), response heads are at
 * most IJ_KUBE_MAX_HEAD bytes and bodies IJ_KUBE_MAX_BODY.
 *
 * The response and object decoders are pure functions over bytes (the fuzz
 * target test/fuzz/fuzz_kube_response.c drives them). Every function that can
 * fail returns 0 or a negative cm_err and sets *errmsg (heap, caller frees). */
#ifndef IJ_KUBE_H
#define IJ_KUBE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IJ_KUBE_MAX_BODY        (16u << 20) /* largest response body we keep */
#define IJ_KUBE_MAX_HEAD        (64u << 10) /* status line + headers, 1xx heads included */
#define IJ_KUBE_MAX_TOKEN       (64u << 10) /* bearer token file */
#define IJ_KUBE_MAX_ITEMS       100000      /* namespaces in one list page */
#define IJ_KUBE_MAX_STATUS_BODY (64u << 10) /* a streamed request's non-200 body */

#define IJ_KUBE_DEFAULT_API        "https://kubernetes.default.svc"
#define IJ_KUBE_DEFAULT_TOKEN_FILE "/var/run/secrets/kubernetes.io/serviceaccount/token"
#define IJ_KUBE_DEFAULT_CA_FILE    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

/* ---- URLs ---------------------------------------------------------------------- */
/* An https:// API server URL taken apart. */
struct ij_kube_url {
    char host[256];       /* without brackets: "10.96.0.1", "::1", "kubernetes.default.svc" */
    char port[6];         /* "443" when the URL has none */
    char base[256];       /* path prefix without a trailing '/' ("" usually) */
    unsigned char ip[16]; /* the host's address when it is an IP literal */
    size_t iplen;         /* 4 or 16 for an IP literal, 0 for a DNS name */
};

/* Parse "https://host[:port][/prefix]" (IPv6 hosts in brackets). Returns 0
 * or CM_ERR_INVAL naming what is wrong. */
int ij_kube_url_parse(const char *url, struct ij_kube_url *out, char **errmsg);
/* The default API URL as client-go's in-cluster config finds it:
 * https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT when both are
 * set, else IJ_KUBE_DEFAULT_API. Heap string, caller frees. */
char *ij_kube_default_api(void);
/* Percent-encode s for a query value (everything but RFC 3986 unreserved).
 * Heap string, caller frees. */
char *ij_kube_query_escape(const char *s);

/* ---- responses (pure) ------------------------------------------------------------ */
/* A final (non-1xx) HTTP response. */
struct ij_kube_resp {
    int status;      /* 200..599 */
    char reason[64]; /* reason phrase, truncated, control bytes replaced */
    char *body;      /* heap, NUL-terminated at body_len; never NULL after a parse */
    size_t body_len;
};

/* Parse bytes read from a connection up to EOF: the first final response
 * (1xx heads skipped), body de-chunked, at most max_body bytes. Bytes after
 * the response are ignored. Returns 0 and *out (ij_kube_resp_deinit), or
 * CM_ERR_PROTO (not HTTP, truncated) / CM_ERR_LIMIT (a bound) with *errmsg. */
int ij_kube_parse_response(const char *buf, size_t len, size_t max_body, struct ij_kube_resp *out,
                           char **errmsg);
void ij_kube_resp_deinit(struct ij_kube_resp *r);
/* "404 Not Found: configmaps \"remora-ca-root\" not found": the status, the
 * reason phrase and, when the body is a Kubernetes Status, its message
 * (sanitised, at most 512 bytes). Heap string, caller frees. */
char *ij_kube_resp_describe(const struct ij_kube_resp *r);
/* When the body is a Kubernetes Status: its details.kind ("namespaces"...),
 * or NULL. Heap string, caller frees. */
char *ij_kube_status_details_kind(const struct ij_kube_resp *r);

/* One namespace of a NamespaceList. */
struct ij_kube_ns {
    char *name;       /* heap */
    bool terminating; /* status.phase Terminating or a deletionTimestamp */
};
struct ij_kube_ns_list {
    struct ij_kube_ns *items; /* heap array of n */
    size_t n;
    char *cont; /* metadata.continue, NULL when this is the last page */
};
/* Decode a NamespaceList body. Returns 0 and *out (ij_kube_ns_list_deinit)
 * or CM_ERR_INVAL naming the member at fault; *out is empty on failure. */
int ij_kube_ns_list_parse(const char *body, size_t len, struct ij_kube_ns_list *out, char **errmsg);
void ij_kube_ns_list_deinit(struct ij_kube_ns_list *l);

/* Decode a ConfigMap body and look up data[key]. Returns 0 with *value (heap,
 * NUL-terminated, *vlen bytes) or *value NULL when the key (or data) is
 * absent; CM_ERR_INVAL when the body is not a ConfigMap object or data[key]
 * is not a string. */
int ij_kube_configmap_value(const char *body, size_t len, const char *key, char **value,
                            size_t *vlen, char **errmsg);

/* ---- the client ---------------------------------------------------------------------- */
struct ij_kube_opts {
    const char *api;        /* https URL */
    const char *token_file; /* bearer token, read by ij_kube_new */
    const char *ca_file;    /* PEM bundle the API server's certificate must chain to */
    int timeout_ms;         /* per request: connect + handshake + write + read */
    const char *agent;      /* User-Agent comment; NULL: "publish-ca-root" */
};
struct ij_kube;

/* A client: parses the URL, reads the token and the CA file (errors name the
 * file). Returns 0 and *out (ij_kube_free) or a negative cm_err. */
int ij_kube_new(const struct ij_kube_opts *o, struct ij_kube **out, char **errmsg);
void ij_kube_free(struct ij_kube *k);
/* "host:port" of the API server, for messages; owned by k. */
const char *ij_kube_endpoint(const struct ij_kube *k);
/* Safe to call from several threads at once on one client (the CA's token
 * reviews): the TLS session and the token are guarded. The token file is
 * looked at again when it changes on disk (kubelet rotates projected tokens),
 * the last good token kept when the new file is unreadable.
 * One request on a new connection. `path` starts with '/' and is appended to
 * the URL's prefix; body may be NULL (then no Content-Type is sent). Any
 * final HTTP status is a success here (the caller judges it); errors are
 * transport, TLS, protocol and bounds, and the message starts with
 * "METHOD path: ". Returns 0 and *out (ij_kube_resp_deinit). */
int ij_kube_request(struct ij_kube *k, const char *method, const char *path, const char *ctype,
                    const char *body, size_t body_len, struct ij_kube_resp *out, char **errmsg);

/* A streamed 200 body goes to the sink as it arrives (de-chunked; once with
 * (NULL, 0) first, when the head is in): return 0, or non-zero to stop reading (the request then
 * fails with CM_ERR_LIMIT and, when the sink set it, the sink's message in *errmsg). */
typedef int (*ij_kube_sink_fn)(void *arg, const char *at, size_t n);

/* One streamed GET on a new connection (a watch): connect, handshake and the
 * response head within the client's timeout_ms; then the connection may stay
 * silent up to idle_ms between reads. A 200's body goes to sink, any other
 * final status's (at most IJ_KUBE_MAX_STATUS_BODY) to out->body. *stop, looked
 * at every 200 ms, ends it quietly. Returns 0 when the response ended (EOF,
 * the server's timeoutSeconds) or was stopped, out->status telling what came
 * (0: nothing), else a negative cm_err as ij_kube_request does.
 * With sink NULL and idle_ms 0 it is ij_kube_request's GET (the body kept,
 * at most IJ_KUBE_MAX_BODY, one deadline) that *stop can cut short. */
int ij_kube_stream(struct ij_kube *k, const char *path, int idle_ms, const atomic_bool *stop,
                   ij_kube_sink_fn sink, void *sink_arg, struct ij_kube_resp *out, char **errmsg);

#endif
