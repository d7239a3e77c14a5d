/* The discovery service of remora-injector (docs/discovery.md, issue 17).
 *
 *   discovery_decode.c  Kubernetes objects and watch events -> compact records (pure)
 *   discovery_store.c   the records, their indexes, answers and what a change touches
 *   discovery_watch.c   one list+watch thread per kind (Services, EndpointSlices, Pods)
 *   discovery_server.c  GET /v1/destination on discovery.address (mTLS, long-poll)
 *
 * The store is written by the three watch threads and read by the
 * libmicrohttpd threads under a rwlock; an answer's version is a hash of
 * its content, so a long-poll wakes only when what it would be told differs. */
#ifndef IJ_DISCOVERY_H
#define IJ_DISCOVERY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "injector/config.h"

#define IJ_DISC_MAX_NAME      253        /* metadata.name / namespace / service account */
#define IJ_DISC_MAX_PORTS     128        /* ports of one Service or EndpointSlice */
#define IJ_DISC_MAX_ENDPOINTS 1000       /* addresses of one EndpointSlice (the API's own cap) */
#define IJ_DISC_MAX_LINE      (4u << 20) /* one watch event (a JSON object on one line) */
#define IJ_DISC_MAX_RV        128        /* resourceVersion */
#define IJ_DISC_LIST_LIMIT    500        /* objects per list page */

enum ij_disc_kind { IJ_DISC_SERVICE = 0, IJ_DISC_SLICE, IJ_DISC_POD, IJ_DISC__KINDS };
const char *ij_disc_kind_name(enum ij_disc_kind k); /* "services", "endpointslices", "pods" */

/* An IPv4 or IPv6 address, as bytes. */
struct ij_disc_ip {
    unsigned char b[16];
    uint8_t len; /* 4 or 16 */
};
/* Parse a textual address; false when it is none. */
bool ij_disc_ip_parse(const char *s, struct ij_disc_ip *out);
/* The canonical text (inet_ntop) into buf (>= 46 bytes). */
const char *ij_disc_ip_str(const struct ij_disc_ip *ip, char *buf, size_t len);

struct ij_disc_port {
    char *name;    /* "" when unnamed; heap, one block with app */
    char *app;     /* appProtocol, "" when unset */
    uint16_t port; /* 0: an EndpointSlice port without a number (all ports) */
    uint8_t udp;   /* protocol UDP or SCTP: never proxied, kept for matching */
};

struct ij_disc_svc {
    char *key; /* "ns/name"; heap, with ns_len */
    uint16_t ns_len;
    bool headless; /* clusterIP None */
    uint8_t nips;
    struct ij_disc_ip ips[2]; /* clusterIPs */
    uint16_t nports;
    struct ij_disc_port *ports;
};

struct ij_disc_ep {
    struct ij_disc_ip ip;
    bool ready, serving, terminating;
    char *zone; /* "" unknown; one heap block: zone\0node\0pod */
    char *node;
    char *pod; /* "ns/name" of targetRef kind Pod, "" otherwise */
};

struct ij_disc_slice {
    char *key;     /* "ns/name" */
    char *service; /* "ns/<kubernetes.io/service-name>", NULL when the label is absent */
    uint16_t nports;
    struct ij_disc_port *ports;
    uint32_t neps;
    struct ij_disc_ep *eps;
};

struct ij_disc_pod {
    char *key; /* "ns/name" */
    uint16_t ns_len;
    char *sa;         /* spec.serviceAccountName ("default" when unset) */
    bool meshed;      /* annotation remora.io/status present */
    bool ready;       /* condition Ready True */
    bool terminating; /* metadata.deletionTimestamp set */
    uint8_t nips;
    struct ij_disc_ip ips[2];
};

/* One decoded record of any kind. */
struct ij_disc_obj {
    enum ij_disc_kind kind;
    union {
        struct ij_disc_svc *svc;
        struct ij_disc_slice *slice;
        struct ij_disc_pod *pod;
    } u;
};
void ij_disc_obj_free(struct ij_disc_obj *o); /* frees the record, leaves o empty */
/* "ns/name" of the record. */
const char *ij_disc_obj_key(const struct ij_disc_obj *o);
/* Bytes the record holds on the heap (docs/discovery.md states them). */
size_t ij_disc_obj_bytes(const struct ij_disc_obj *o);

/* ---- decoding (discovery_decode.c, pure; fuzzed by test/fuzz/fuzz_watch_event.c) ---- */
/* Decode one object of `kind` (a list item or a watch event's object).
 * Returns 0 with *out (ij_disc_obj_free), 1 when the object is one to skip
 * quietly (a pod that is done or on the host network: out->kind set, no
 * record, *key_out still named), or CM_ERR_INVAL naming what is wrong. *key_out
 * (heap, may be NULL) gets "ns/name" whenever the metadata held them, so a
 * bad object can be named in the log. */
int ij_disc_decode_object(enum ij_disc_kind kind, json_t *obj, struct ij_disc_obj *out,
                          char **key_out, char **errmsg);

enum ij_disc_ev_type { IJ_EV_ADDED, IJ_EV_MODIFIED, IJ_EV_DELETED, IJ_EV_BOOKMARK, IJ_EV_ERROR };
struct ij_disc_event {
    enum ij_disc_ev_type type;
    char rv[IJ_DISC_MAX_RV + 1]; /* the object's metadata.resourceVersion, "" when absent */
    struct ij_disc_obj obj;      /* ADDED / MODIFIED / DELETED, when it decoded */
    char *key;                   /* "ns/name" when known (heap) */
    int code;                    /* ERROR: the Status's code (410: re-list) */
    char *message;               /* ERROR: the Status's message, sanitised (heap) */
    bool skipped;                /* the object is one we keep nothing of */
};
/* Decode one line of a watch stream. Returns 0 with *ev
 * (ij_disc_event_deinit); CM_ERR_PROTO when the line is not a watch event
 * (the stream is broken: reconnect); CM_ERR_INVAL when it is one but its
 * object does not decode (ev->type, ev->rv and ev->key are still set: skip it,
 * count it, name it). */
int ij_disc_decode_event(enum ij_disc_kind kind, const char *line, size_t len,
                         struct ij_disc_event *ev, char **errmsg);
void ij_disc_event_deinit(struct ij_disc_event *ev);

/* Split a byte stream into lines of at most IJ_DISC_MAX_LINE bytes. */
struct ij_disc_lines {
    char *buf;
    size_t len, cap;
    bool overflow; /* a line passed the bound: the stream is refused */
};
typedef int (*ij_disc_line_fn)(void *arg, const char *line, size_t len);
/* Feed bytes; each complete non-empty line goes to fn (its return, when not
 * 0, stops and is returned). CM_ERR_LIMIT on a line over the bound. */
int ij_disc_lines_feed(struct ij_disc_lines *l, const char *p, size_t n, ij_disc_line_fn fn,
                       void *arg);
void ij_disc_lines_reset(struct ij_disc_lines *l);

/* ---- the store (discovery_store.c) ------------------------------------------------ */
struct ij_disc_store;
/* A set of wake keys: "s:ns/name" (a Service's name) and "ip:ADDR" (an
 * address a proxy may ask about). */
struct ij_disc_keys {
    char **v;
    size_t n, cap;
};
void ij_disc_keys_deinit(struct ij_disc_keys *k);

struct ij_disc_store *ij_disc_store_new(const char *trust_domain, const char *cluster_domain);
void ij_disc_store_free(struct ij_disc_store *s);
/* Insert or replace the record (taken: o is left empty); the keys whose
 * answers it may change are added to wake. */
void ij_disc_store_put(struct ij_disc_store *s, struct ij_disc_obj *o, struct ij_disc_keys *wake);
/* Remove kind's record named key (nothing when absent). */
void ij_disc_store_del(struct ij_disc_store *s, enum ij_disc_kind kind, const char *key,
                       struct ij_disc_keys *wake);
/* A full list of kind came: remove every record of that kind not named in
 * keep (keys, n of them), under one write lock. */
void ij_disc_store_retain(struct ij_disc_store *s, enum ij_disc_kind kind, char *const *keep,
                          size_t n, struct ij_disc_keys *wake);
/* Records held of kind, and their heap bytes. */
size_t ij_disc_store_count(struct ij_disc_store *s, enum ij_disc_kind kind, size_t *bytes);

/* A parsed query of GET /v1/destination. */
struct ij_disc_query {
    bool by_host;
    struct ij_disc_ip ip;               /* addr= */
    char key[2 * IJ_DISC_MAX_NAME + 2]; /* host=: "ns/name" */
    uint16_t port;
    char wake[2 * IJ_DISC_MAX_NAME + 8]; /* the wake key a long-poll on it waits for */
};
/* Parse addr= or host= (exactly one of them non-NULL). Returns 0, or
 * CM_ERR_INVAL with a message for the 400. */
int ij_disc_query_parse(const char *addr, const char *host, const char *cluster_domain,
                        struct ij_disc_query *q, char **errmsg);
/* The answer: *status 200 with the JSON body, or 404 {"error"}; *body heap,
 * NUL-terminated. version (>= 17 bytes) gets the 200's version ("" on 404). */
void ij_disc_store_answer(struct ij_disc_store *s, const struct ij_disc_query *q, unsigned *status,
                          char **body, size_t *len, char *version);
/* The read lock, for a caller that answers several queries at once. */
void ij_disc_store_rdlock(struct ij_disc_store *s);
void ij_disc_store_unlock(struct ij_disc_store *s);
/* ij_disc_store_answer with the read lock already held. */
void ij_disc_store_answer_locked(struct ij_disc_store *s, const struct ij_disc_query *q,
                                 unsigned *status, char **body, size_t *len, char *version);

/* ---- POST /v1/watch bodies (discovery_watchreq.c) ---------------------------------- */
#define IJ_DISC_WATCH_MAX_ITEMS 4096         /* destinations one watch lists (the proxy's cache) */
#define IJ_DISC_WATCH_MAX_BODY  (512 * 1024) /* bytes of its body */
#define IJ_DISC_MAX_VERSION     64
#define IJ_DISC_MAX_SESSION     64
/* One listed destination: the query, the name as the proxy gave it (echoed
 * in "changed"), and the version it holds ("" none: any answer differs). */
struct ij_disc_witem {
    struct ij_disc_query q;
    char name[304];
    char version[IJ_DISC_MAX_VERSION + 1];
};
struct ij_disc_watchreq {
    char session[IJ_DISC_MAX_SESSION + 1]; /* "" none; a new watch of a session releases its
                                            * held one (304) */
    struct ij_disc_witem *items;
    size_t n;
};
/* Parse {"session": "...", "watch": [{"addr"|"host": "...", "version": "..."}, ...]}.
 * Returns 0 and *out (free with ij_disc_watchreq_deinit), or CM_ERR_INVAL
 * with a message for the 400 naming the field ("watch[3].addr: ..."). Unknown
 * fields are refused (a typo would silently watch nothing). */
int ij_disc_watchreq_parse(const char *body, size_t len, const char *cluster_domain,
                           struct ij_disc_watchreq *out, char **errmsg);
void ij_disc_watchreq_deinit(struct ij_disc_watchreq *w);

/* ---- the service (discovery_watch.c, discovery_server.c) ------------------------------ */
struct ij_disc;
/* Start watching and serving as cfg->discovery_address says (NULL: off,
 * *out NULL). Needs the CA (ca.cert_file) for the serving certificate and
 * the trust anchors of client certificates. Returns 0 or a negative cm_err
 * with *errmsg. */
int ij_disc_start(const struct ij_config *cfg, struct ij_disc **out, char **errmsg);
void ij_disc_stop(struct ij_disc *d);
/* Every kind listed at least once (true when discovery is off). */
bool ij_disc_ready(void);
unsigned ij_disc_port(const struct ij_disc *d);
/* The discovery lines of GET /metrics (none when off). */
struct cm_prom;
void ij_disc_metrics_write(struct cm_prom *o);

#endif
