/* The discovery store (discovery.h): the compact records of Services,
 * EndpointSlices and Pods, indexed by name and by address, under one
 * rwlock; the answers of GET /v1/destination built from them; and, for each
 * change, the wake keys whose answers it may have changed. */
#include <ctype.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"
#include "common/net.h"
#include "common/xalloc.h"
#include "injector/discovery.h"

/* ---- a multimap: string key -> pointers, chained ------------------------------------- */

struct ment {
    struct ment *next;
    void *val;
    uint32_t hash;
    char key[]; /* NUL-terminated */
};
struct mmap {
    struct ment **b;
    size_t nb, n;
};

static void mm_init(struct mmap *m)
{
    m->nb = 64;
    m->n = 0;
    m->b = cm_xcalloc(m->nb, sizeof(*m->b));
}

static void mm_deinit(struct mmap *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (struct ment *e = m->b[i], *nx; e != NULL; e = nx) {
            nx = e->next;
            free(e);
        }
    }
    free(m->b);
    memset(m, 0, sizeof(*m));
}

static void mm_add(struct mmap *m, const char *key, void *val)
{
    if (m->n >= m->nb) {
        size_t nb = m->nb * 2;
        struct ment **b = cm_xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i < m->nb; i++) {
            for (struct ment *e = m->b[i], *nx; e != NULL; e = nx) {
                nx = e->next;
                e->next = b[e->hash & (nb - 1)];
                b[e->hash & (nb - 1)] = e;
            }
        }
        free(m->b);
        m->b = b;
        m->nb = nb;
    }
    size_t kl = strlen(key);
    struct ment *e = cm_xmalloc(sizeof(*e) + kl + 1);
    memcpy(e->key, key, kl + 1);
    e->val = val;
    e->hash = cm_hash_str(key);
    e->next = m->b[e->hash & (m->nb - 1)];
    m->b[e->hash & (m->nb - 1)] = e;
    m->n++;
}

static void mm_del(struct mmap *m, const char *key, void *val)
{
    uint32_t h = cm_hash_str(key);
    for (struct ment **pp = &m->b[h & (m->nb - 1)]; *pp != NULL; pp = &(*pp)->next) {
        struct ment *e = *pp;
        if (e->hash == h && e->val == val && strcmp(e->key, key) == 0) {
            *pp = e->next;
            free(e);
            m->n--;
            return;
        }
    }
}

/* The first entry of key, then the next ones with mm_next. */
static struct ment *mm_first(const struct mmap *m, const char *key)
{
    uint32_t h = cm_hash_str(key);
    for (struct ment *e = m->b[h & (m->nb - 1)]; e != NULL; e = e->next)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static struct ment *mm_next(struct ment *e)
{
    for (struct ment *x = e->next; x != NULL; x = x->next)
        if (x->hash == e->hash && strcmp(x->key, e->key) == 0)
            return x;
    return NULL;
}

static void *mm_get(const struct mmap *m, const char *key)
{
    struct ment *e = mm_first(m, key);
    return e ? e->val : NULL;
}

/* ---- wake keys ---------------------------------------------------------------------------- */

void ij_disc_keys_deinit(struct ij_disc_keys *k)
{
    for (size_t i = 0; i < k->n; i++)
        free(k->v[i]);
    free(k->v);
    memset(k, 0, sizeof(*k));
}

static void keys_add(struct ij_disc_keys *k, const char *prefix, const char *s)
{
    if (k == NULL)
        return;
    size_t pl = strlen(prefix), sl = strlen(s);
    /* Duplicates are harmless (a waiter is released once); only the
     * recent few are looked at, so a 1000-address slice stays linear. */
    for (size_t i = k->n > 8 ? k->n - 8 : 0; i < k->n; i++)
        if (strncmp(k->v[i], prefix, pl) == 0 && strcmp(k->v[i] + pl, s) == 0)
            return;
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 8;
        k->v = cm_xrealloc(k->v, k->cap * sizeof(*k->v));
    }
    char *v = cm_xmalloc(pl + sl + 1);
    memcpy(v, prefix, pl);
    memcpy(v + pl, s, sl + 1);
    k->v[k->n++] = v;
}

static void keys_add_ip(struct ij_disc_keys *k, const struct ij_disc_ip *ip)
{
    char buf[64];
    keys_add(k, "ip:", ij_disc_ip_str(ip, buf, sizeof(buf)));
}

/* ---- the store ------------------------------------------------------------------------ */

struct ij_disc_store {
    pthread_rwlock_t lock;
    char *td, *cd;      /* trust domain, cluster domain */
    struct mmap svc;    /* "ns/name" -> ij_disc_svc */
    struct mmap svc_ip; /* clusterIP text -> ij_disc_svc */
    struct mmap slice;  /* "ns/name" -> ij_disc_slice */
    struct mmap by_svc; /* service "ns/name" -> ij_disc_slice */
    struct mmap ep_ip;  /* endpoint address text -> ij_disc_slice (once per address) */
    struct mmap pod;    /* "ns/name" -> ij_disc_pod */
    struct mmap pod_ip; /* pod IP text -> ij_disc_pod */
    size_t bytes[IJ_DISC__KINDS];
};

struct ij_disc_store *ij_disc_store_new(const char *trust_domain, const char *cluster_domain)
{
    struct ij_disc_store *s = cm_xcalloc(1, sizeof(*s));
    pthread_rwlock_init(&s->lock, NULL);
    s->td = cm_xstrdup(trust_domain);
    s->cd = cm_xstrdup(cluster_domain);
    mm_init(&s->svc);
    mm_init(&s->svc_ip);
    mm_init(&s->slice);
    mm_init(&s->by_svc);
    mm_init(&s->ep_ip);
    mm_init(&s->pod);
    mm_init(&s->pod_ip);
    return s;
}

static void free_all(struct mmap *m, enum ij_disc_kind kind)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (struct ment *e = m->b[i]; e != NULL; e = e->next) {
            struct ij_disc_obj o = {.kind = kind, .u.svc = e->val};
            ij_disc_obj_free(&o);
        }
    }
}

void ij_disc_store_free(struct ij_disc_store *s)
{
    if (s == NULL)
        return;
    free_all(&s->svc, IJ_DISC_SERVICE);
    free_all(&s->slice, IJ_DISC_SLICE);
    free_all(&s->pod, IJ_DISC_POD);
    mm_deinit(&s->svc);
    mm_deinit(&s->svc_ip);
    mm_deinit(&s->slice);
    mm_deinit(&s->by_svc);
    mm_deinit(&s->ep_ip);
    mm_deinit(&s->pod);
    mm_deinit(&s->pod_ip);
    pthread_rwlock_destroy(&s->lock);
    free(s->td);
    free(s->cd);
    free(s);
}

void ij_disc_store_rdlock(struct ij_disc_store *s)
{
    pthread_rwlock_rdlock(&s->lock);
}

void ij_disc_store_unlock(struct ij_disc_store *s)
{
    pthread_rwlock_unlock(&s->lock);
}

/* A Service's answers change: its name, and its cluster IPs. */
static void wake_service(struct ij_disc_store *s, const char *key, struct ij_disc_keys *wake)
{
    if (key == NULL || wake == NULL)
        return;
    keys_add(wake, "s:", key);
    struct ij_disc_svc *v = mm_get(&s->svc, key);
    for (uint8_t i = 0; v != NULL && i < v->nips; i++)
        keys_add_ip(wake, &v->ips[i]);
}

static void svc_index(struct ij_disc_store *s, struct ij_disc_svc *v, bool add)
{
    char buf[64];
    for (uint8_t i = 0; i < v->nips; i++) {
        ij_disc_ip_str(&v->ips[i], buf, sizeof(buf));
        if (add)
            mm_add(&s->svc_ip, buf, v);
        else
            mm_del(&s->svc_ip, buf, v);
    }
    if (add)
        mm_add(&s->svc, v->key, v);
    else
        mm_del(&s->svc, v->key, v);
}

static void slice_index(struct ij_disc_store *s, struct ij_disc_slice *v, bool add,
                        struct ij_disc_keys *wake)
{
    char buf[64];
    for (uint32_t i = 0; i < v->neps; i++) {
        ij_disc_ip_str(&v->eps[i].ip, buf, sizeof(buf));
        bool dup = false; /* an address twice in one slice is indexed once */
        for (uint32_t j = 0; j < i && !dup; j++)
            dup = memcmp(&v->eps[j].ip, &v->eps[i].ip, sizeof(v->eps[i].ip)) == 0;
        if (!dup) {
            if (add)
                mm_add(&s->ep_ip, buf, v);
            else
                mm_del(&s->ep_ip, buf, v);
        }
        keys_add(wake, "ip:", buf);
    }
    if (add)
        mm_add(&s->slice, v->key, v);
    else
        mm_del(&s->slice, v->key, v);
    if (v->service != NULL) {
        if (add)
            mm_add(&s->by_svc, v->service, v);
        else
            mm_del(&s->by_svc, v->service, v);
    }
}

static void pod_index(struct ij_disc_store *s, struct ij_disc_pod *v, bool add,
                      struct ij_disc_keys *wake)
{
    char buf[64];
    for (uint8_t i = 0; i < v->nips; i++) {
        ij_disc_ip_str(&v->ips[i], buf, sizeof(buf));
        if (add)
            mm_add(&s->pod_ip, buf, v);
        else
            mm_del(&s->pod_ip, buf, v);
        keys_add(wake, "ip:", buf);
        /* the Services whose slices hold this address */
        for (struct ment *e = mm_first(&s->ep_ip, buf); e != NULL && wake != NULL; e = mm_next(e))
            wake_service(s, ((struct ij_disc_slice *)e->val)->service, wake);
    }
    if (add)
        mm_add(&s->pod, v->key, v);
    else
        mm_del(&s->pod, v->key, v);
}

/* Unlink and free kind's record named key; under the write lock. */
static void remove_locked(struct ij_disc_store *s, enum ij_disc_kind kind, const char *key,
                          struct ij_disc_keys *wake)
{
    struct ij_disc_obj o = {.kind = kind};
    switch (kind) {
    case IJ_DISC_SERVICE:
        if ((o.u.svc = mm_get(&s->svc, key)) == NULL)
            return;
        wake_service(s, key, wake);
        svc_index(s, o.u.svc, false);
        break;
    case IJ_DISC_SLICE:
        if ((o.u.slice = mm_get(&s->slice, key)) == NULL)
            return;
        wake_service(s, o.u.slice->service, wake);
        slice_index(s, o.u.slice, false, wake);
        break;
    case IJ_DISC_POD:
        if ((o.u.pod = mm_get(&s->pod, key)) == NULL)
            return;
        pod_index(s, o.u.pod, false, wake);
        break;
    default:
        return;
    }
    s->bytes[kind] -= ij_disc_obj_bytes(&o);
    ij_disc_obj_free(&o);
}

void ij_disc_store_put(struct ij_disc_store *s, struct ij_disc_obj *o, struct ij_disc_keys *wake)
{
    const char *key = ij_disc_obj_key(o);
    if (key == NULL)
        return;
    pthread_rwlock_wrlock(&s->lock);
    remove_locked(s, o->kind, key, wake);
    s->bytes[o->kind] += ij_disc_obj_bytes(o);
    switch (o->kind) {
    case IJ_DISC_SERVICE:
        svc_index(s, o->u.svc, true);
        wake_service(s, key, wake);
        break;
    case IJ_DISC_SLICE:
        slice_index(s, o->u.slice, true, wake);
        wake_service(s, o->u.slice->service, wake);
        break;
    case IJ_DISC_POD:
        pod_index(s, o->u.pod, true, wake);
        break;
    default:
        break;
    }
    pthread_rwlock_unlock(&s->lock);
    o->u.svc = NULL; /* the store owns it now */
}

void ij_disc_store_del(struct ij_disc_store *s, enum ij_disc_kind kind, const char *key,
                       struct ij_disc_keys *wake)
{
    pthread_rwlock_wrlock(&s->lock);
    remove_locked(s, kind, key, wake);
    pthread_rwlock_unlock(&s->lock);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void ij_disc_store_retain(struct ij_disc_store *s, enum ij_disc_kind kind, char *const *keep,
                          size_t n, struct ij_disc_keys *wake)
{
    struct mmap *m = kind == IJ_DISC_SERVICE ? &s->svc
                     : kind == IJ_DISC_SLICE ? &s->slice
                                             : &s->pod;
    char **sorted = cm_xmalloc((n ? n : 1) * sizeof(*sorted));
    if (n > 0)
        memcpy(sorted, keep, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_str);
    pthread_rwlock_wrlock(&s->lock);
    size_t ngone = 0;
    char **gone = NULL;
    for (size_t i = 0; i < m->nb; i++) {
        for (struct ment *e = m->b[i]; e != NULL; e = e->next) {
            const char *k = e->key;
            if (bsearch(&k, sorted, n, sizeof(*sorted), cmp_str) == NULL) {
                gone = cm_xrealloc(gone, (ngone + 1) * sizeof(*gone));
                gone[ngone++] = cm_xstrdup(k);
            }
        }
    }
    for (size_t i = 0; i < ngone; i++) {
        remove_locked(s, kind, gone[i], wake);
        free(gone[i]);
    }
    pthread_rwlock_unlock(&s->lock);
    free(gone);
    free(sorted);
}

size_t ij_disc_store_count(struct ij_disc_store *s, enum ij_disc_kind kind, size_t *bytes)
{
    pthread_rwlock_rdlock(&s->lock);
    size_t n = kind == IJ_DISC_SERVICE ? s->svc.n : kind == IJ_DISC_SLICE ? s->slice.n : s->pod.n;
    if (bytes != NULL)
        *bytes = s->bytes[kind];
    pthread_rwlock_unlock(&s->lock);
    return n;
}

/* ---- queries ----------------------------------------------------------------------------- */

static int qfail(char **errmsg, const char *msg)
{
    if (errmsg != NULL) {
        free(*errmsg);
        *errmsg = cm_xstrdup(msg);
    }
    return CM_ERR_INVAL;
}

static bool parse_port(const char *p, uint16_t *out)
{
    uint16_t v;
    if (cm_port_parse(p, &v) != 0 || v == 0)
        return false;
    *out = v;
    return true;
}

int ij_disc_query_parse(const char *addr, const char *host, const char *cluster_domain,
                        struct ij_disc_query *q, char **errmsg)
{
    memset(q, 0, sizeof(*q));
    if ((addr == NULL) == (host == NULL))
        return qfail(errmsg, addr ? "give addr= or host=, not both"
                                  : "give addr=IP:PORT or host=NAME:PORT");
    const char *v = addr ? addr : host;
    size_t n = strlen(v);
    if (n == 0 || n > 300)
        return qfail(errmsg, addr ? "addr: want IP:PORT" : "host: want NAME:PORT");
    const char *colon = strrchr(v, ':');
    if (colon == NULL || !parse_port(colon + 1, &q->port))
        return qfail(errmsg, addr ? "addr: want IP:PORT (IPv6 in brackets), port 1..65535"
                                  : "host: want NAME:PORT, port 1..65535");
    char name[301];
    size_t nl = (size_t)(colon - v);
    memcpy(name, v, nl);
    name[nl] = '\0';
    if (addr != NULL) {
        bool v6 = nl >= 2 && name[0] == '[' && name[nl - 1] == ']';
        if (v6) {
            name[nl - 1] = '\0';
            memmove(name, name + 1, nl - 1);
        }
        if (!ij_disc_ip_parse(name, &q->ip) || (q->ip.len == 16) != v6)
            return qfail(errmsg, "addr: want IP:PORT (IPv6 in brackets), port 1..65535");
        char buf[64];
        snprintf(q->wake, sizeof(q->wake), "ip:%s", ij_disc_ip_str(&q->ip, buf, sizeof(buf)));
        return 0;
    }
    /* svc.ns, svc.ns.svc, svc.ns.svc.<cluster_domain>; DNS is case-blind */
    for (size_t i = 0; i < nl; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    if (nl > 0 && name[nl - 1] == '.') /* an absolute name */
        name[--nl] = '\0';
    char suffix[300];
    snprintf(suffix, sizeof(suffix), ".svc.%s", cluster_domain);
    size_t sl = strlen(suffix);
    if (nl > sl && strcmp(name + nl - sl, suffix) == 0)
        name[nl -= sl] = '\0';
    else if (nl > 4 && strcmp(name + nl - 4, ".svc") == 0)
        name[nl -= 4] = '\0';
    char *dot = strchr(name, '.');
    if (dot == NULL || strchr(dot + 1, '.') != NULL || !cm_dns_label(name, (size_t)(dot - name)) ||
        !cm_dns_label(dot + 1, strlen(dot + 1)))
        return qfail(errmsg, "host: want svc.ns, svc.ns.svc or svc.ns.svc.<cluster domain>, "
                             "then :PORT");
    *dot = '\0';
    snprintf(q->key, sizeof(q->key), "%.63s/%.63s", dot + 1, name); /* labels: <= 63 */
    q->by_host = true;
    snprintf(q->wake, sizeof(q->wake), "s:%s", q->key);
    return 0;
}

/* ---- answers ------------------------------------------------------------------------------- */

/* The protocol as Istio reads it: appProtocol, else the port name's prefix
 * before the first '-' ("http-web" -> http, "grpc" -> grpc); "" unknown. */
static const char *protocol_of(const struct ij_disc_port *p)
{
    static const char *const known[] = {"http", "http2", "https", "grpc",  "grpc-web", "tcp",
                                        "tls",  "udp",   "mongo", "mysql", "redis",    NULL};
    char buf[64];
    const char *src = p->app[0] ? p->app : p->name;
    if (strcmp(src, "kubernetes.io/h2c") == 0)
        return "http2";
    if (strcmp(src, "kubernetes.io/ws") == 0 || strcmp(src, "kubernetes.io/wss") == 0)
        return strcmp(src, "kubernetes.io/wss") == 0 ? "https" : "http";
    size_t n = strcspn(src, p->app[0] ? "" : "-");
    if (n >= sizeof(buf))
        return "";
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)tolower((unsigned char)src[i]);
    buf[n] = '\0';
    for (size_t i = 0; known[i] != NULL; i++)
        if (strcmp(buf, known[i]) == 0)
            return known[i];
    return "";
}

struct ep_out {
    char addr[64];
    json_t *j;
};

static int cmp_ep(const void *a, const void *b)
{
    return strcmp(((const struct ep_out *)a)->addr, ((const struct ep_out *)b)->addr);
}

static const struct ij_disc_pod *pod_of(struct ij_disc_store *s, const char *pod_key,
                                        const struct ij_disc_ip *ip)
{
    struct ij_disc_pod *p = pod_key && *pod_key ? mm_get(&s->pod, pod_key) : NULL;
    if (p != NULL)
        return p;
    char buf[64];
    ij_disc_ip_str(ip, buf, sizeof(buf));
    struct ij_disc_pod *any = NULL;
    for (struct ment *e = mm_first(&s->pod_ip, buf); e != NULL; e = mm_next(e)) {
        struct ij_disc_pod *c = e->val;
        if (!c->terminating)
            return c;
        any = c;
    }
    return any;
}

static json_t *endpoint_json(struct ij_disc_store *s, const struct ij_disc_ip *ip, uint16_t port,
                             const struct ij_disc_pod *pod, const char *zone, bool ready,
                             bool serving, bool terminating, char *addr, size_t alen)
{
    char ipb[64];
    ij_disc_ip_str(ip, ipb, sizeof(ipb));
    snprintf(addr, alen, ip->len == 16 ? "[%s]:%u" : "%s:%u", ipb, port);
    json_t *id = json_null();
    if (pod != NULL && pod->meshed) {
        char *v =
            cm_xasprintf("spiffe://%s/ns/%.*s/sa/%s", s->td, (int)pod->ns_len, pod->key, pod->sa);
        id = json_string(v);
        free(v);
    }
    return json_pack("{s:s, s:o, s:b, s:s, s:b, s:b, s:b, s:s?}", "address", addr, "identity", id,
                     "meshed", pod != NULL && pod->meshed, "zone", zone, "ready", ready, "serving",
                     serving, "terminating", terminating, "pod", pod != NULL ? pod->key : NULL);
}

/* Finish a 200: the body with "version" (a hash of everything else) last. */
static void finish(json_t *doc, unsigned *status, char **body, size_t *len, char *version)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    uint64_t h = 1469598103934665603ull; /* FNV-1a 64 */
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)text[i]) * 1099511628211ull;
    snprintf(version, 17, "%016llx", (unsigned long long)h);
    text[n - 1] = '\0'; /* the closing brace */
    *body = cm_xasprintf("%s,\"version\":\"%s\"}", text, version);
    *len = strlen(*body);
    free(text);
    *status = 200;
}

static void not_found(unsigned *status, char **body, size_t *len, char *version, const char *fmt,
                      const char *a, unsigned port)
{
    char msg[600];
    snprintf(msg, sizeof(msg), fmt, a, port);
    json_t *doc = json_pack("{s:s}", "error", msg);
    *body = json_dumps(doc, JSON_COMPACT);
    *len = strlen(*body);
    json_decref(doc);
    *status = 404;
    version[0] = '\0';
}

static void answer_service(struct ij_disc_store *s, const struct ij_disc_svc *v, uint16_t port,
                           unsigned *status, char **body, size_t *len, char *version)
{
    const struct ij_disc_port *sp = NULL;
    for (uint16_t i = 0; i < v->nports && sp == NULL; i++)
        if (v->ports[i].port == port && !v->ports[i].udp)
            sp = &v->ports[i];
    if (sp == NULL && !v->headless) {
        not_found(status, body, len, version, "service %s has no TCP port %u", v->key, port);
        return;
    }
    size_t n = 0, cap = 16;
    struct ep_out *eps = cm_xmalloc(cap * sizeof(*eps));
    const char *proto = sp ? protocol_of(sp) : "";
    for (struct ment *e = mm_first(&s->by_svc, v->key); e != NULL; e = mm_next(e)) {
        const struct ij_disc_slice *sl = e->val;
        /* the slice's port of the same name; a headless Service without
         * that port: the port asked for */
        const struct ij_disc_port *tp = NULL;
        for (uint16_t i = 0; i < sl->nports && tp == NULL; i++)
            if (!sl->ports[i].udp && strcmp(sl->ports[i].name, sp ? sp->name : "") == 0)
                tp = &sl->ports[i];
        uint16_t target = sp == NULL ? port : tp && tp->port ? tp->port : 0;
        if (target == 0)
            continue;
        if (proto[0] == '\0' && tp != NULL)
            proto = protocol_of(tp);
        for (uint32_t i = 0; i < sl->neps; i++) {
            const struct ij_disc_ep *ep = &sl->eps[i];
            if (n == cap)
                eps = cm_xrealloc(eps, (cap *= 2) * sizeof(*eps));
            eps[n].j =
                endpoint_json(s, &ep->ip, target, pod_of(s, ep->pod, &ep->ip), ep->zone, ep->ready,
                              ep->serving, ep->terminating, eps[n].addr, sizeof(eps[n].addr));
            n++;
        }
    }
    qsort(eps, n, sizeof(*eps), cmp_ep);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(eps[i].addr, eps[i - 1].addr) == 0) { /* in two slices */
            json_decref(eps[i].j);
            continue;
        }
        json_array_append_new(arr, eps[i].j);
    }
    free(eps);
    finish(json_pack("{s:s, s:s, s:i, s:s, s:o}", "kind", "service", "service", v->key, "port",
                     (int)port, "protocol", proto, "endpoints", arr),
           status, body, len, version);
}

static void answer_pod(struct ij_disc_store *s, const struct ij_disc_pod *p,
                       const struct ij_disc_ip *ip, uint16_t port, unsigned *status, char **body,
                       size_t *len, char *version)
{
    char buf[64], addr[80];
    ij_disc_ip_str(ip, buf, sizeof(buf));
    /* what the EndpointSlices say of this address, when one holds it */
    const struct ij_disc_slice *sl = NULL;
    const struct ij_disc_ep *ep = NULL;
    for (struct ment *e = mm_first(&s->ep_ip, buf); e != NULL && ep == NULL; e = mm_next(e)) {
        sl = e->val;
        for (uint32_t i = 0; i < sl->neps && ep == NULL; i++)
            if (memcmp(&sl->eps[i].ip, ip, sizeof(*ip)) == 0)
                ep = &sl->eps[i];
    }
    const char *proto = "";
    for (uint16_t i = 0; sl != NULL && i < sl->nports; i++)
        if (sl->ports[i].port == port && !sl->ports[i].udp) {
            proto = protocol_of(&sl->ports[i]);
            break;
        }
    json_t *arr = json_array();
    json_array_append_new(arr,
                          endpoint_json(s, ip, port, p, ep ? ep->zone : "",
                                        ep ? ep->ready : p->ready, ep ? ep->serving : p->ready,
                                        ep ? ep->terminating : p->terminating, addr, sizeof(addr)));
    finish(json_pack("{s:s, s:s?, s:i, s:s, s:o}", "kind", "pod", "service",
                     sl != NULL ? sl->service : NULL, "port", (int)port, "protocol", proto,
                     "endpoints", arr),
           status, body, len, version);
}

void ij_disc_store_answer_locked(struct ij_disc_store *s, const struct ij_disc_query *q,
                                 unsigned *status, char **body, size_t *len, char *version)
{
    if (q->by_host) {
        const struct ij_disc_svc *v = mm_get(&s->svc, q->key);
        if (v == NULL)
            not_found(status, body, len, version, "no service %s (port %u)", q->key, q->port);
        else
            answer_service(s, v, q->port, status, body, len, version);
        return;
    }
    char buf[64];
    ij_disc_ip_str(&q->ip, buf, sizeof(buf));
    const struct ij_disc_svc *v = mm_get(&s->svc_ip, buf);
    if (v != NULL) {
        answer_service(s, v, q->port, status, body, len, version);
        return;
    }
    const struct ij_disc_pod *p = pod_of(s, NULL, &q->ip);
    if (p != NULL) {
        answer_pod(s, p, &q->ip, q->port, status, body, len, version);
        return;
    }
    not_found(status, body, len, version, "no service or pod has address %s (port %u)", buf,
              q->port);
}

void ij_disc_store_answer(struct ij_disc_store *s, const struct ij_disc_query *q, unsigned *status,
                          char **body, size_t *len, char *version)
{
    pthread_rwlock_rdlock(&s->lock);
    ij_disc_store_answer_locked(s, q, status, body, len, version);
    pthread_rwlock_unlock(&s->lock);
}
