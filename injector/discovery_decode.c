/* Kubernetes Services, EndpointSlices and Pods, and watch events carrying
 * them, decoded into the compact records the discovery store keeps
 * (discovery.h). Pure: bytes or jansson values in, records or a message out. */
#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/err.h"
#include "common/xalloc.h"
#include "injector/discovery.h"
#include "injector/kube_int.h"

const char *ij_disc_kind_name(enum ij_disc_kind k)
{
    static const char *const names[IJ_DISC__KINDS] = {"services", "endpointslices", "pods"};
    return (unsigned)k < IJ_DISC__KINDS ? names[k] : "?";
}

bool ij_disc_ip_parse(const char *s, struct ij_disc_ip *out)
{
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, s, out->b) == 1) {
        out->len = 4;
        return true;
    }
    if (inet_pton(AF_INET6, s, out->b) == 1) {
        out->len = 16;
        return true;
    }
    return false;
}

const char *ij_disc_ip_str(const struct ij_disc_ip *ip, char *buf, size_t len)
{
    if (inet_ntop(ip->len == 4 ? AF_INET : AF_INET6, ip->b, buf, (socklen_t)len) == NULL)
        snprintf(buf, len, "?");
    return buf;
}

/* ---- records ------------------------------------------------------------------------ */

static void ports_free(struct ij_disc_port *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(p[i].name);
    free(p);
}

void ij_disc_obj_free(struct ij_disc_obj *o)
{
    switch (o->kind) {
    case IJ_DISC_SERVICE:
        if (o->u.svc != NULL) {
            free(o->u.svc->key);
            ports_free(o->u.svc->ports, o->u.svc->nports);
            free(o->u.svc);
        }
        break;
    case IJ_DISC_SLICE:
        if (o->u.slice != NULL) {
            free(o->u.slice->key);
            free(o->u.slice->service);
            ports_free(o->u.slice->ports, o->u.slice->nports);
            for (uint32_t i = 0; i < o->u.slice->neps; i++)
                free(o->u.slice->eps[i].zone);
            free(o->u.slice->eps);
            free(o->u.slice);
        }
        break;
    case IJ_DISC_POD:
        if (o->u.pod != NULL) {
            free(o->u.pod->key);
            free(o->u.pod);
        }
        break;
    default:
        break;
    }
    o->u.svc = NULL;
}

const char *ij_disc_obj_key(const struct ij_disc_obj *o)
{
    switch (o->kind) {
    case IJ_DISC_SERVICE:
        return o->u.svc ? o->u.svc->key : NULL;
    case IJ_DISC_SLICE:
        return o->u.slice ? o->u.slice->key : NULL;
    case IJ_DISC_POD:
        return o->u.pod ? o->u.pod->key : NULL;
    default:
        return NULL;
    }
}

/* What malloc hands out for n bytes, roughly: glibc chunks are 16-byte
 * aligned with an 8-byte header, 32 bytes at least. */
static size_t chunk(size_t n)
{
    size_t c = (n + 8 + 15) & ~(size_t)15;
    return c < 32 ? 32 : c;
}

static size_t ports_bytes(const struct ij_disc_port *p, size_t n)
{
    size_t b = n ? chunk(n * sizeof(*p)) : 0;
    for (size_t i = 0; i < n; i++)
        b += chunk(strlen(p[i].name) + strlen(p[i].app) + 2);
    return b;
}

size_t ij_disc_obj_bytes(const struct ij_disc_obj *o)
{
    size_t b = 0;
    switch (o->kind) {
    case IJ_DISC_SERVICE:
        b = chunk(sizeof(*o->u.svc)) + chunk(strlen(o->u.svc->key) + 1) +
            ports_bytes(o->u.svc->ports, o->u.svc->nports);
        break;
    case IJ_DISC_SLICE: {
        const struct ij_disc_slice *s = o->u.slice;
        b = chunk(sizeof(*s)) + chunk(strlen(s->key) + 1) +
            (s->service ? chunk(strlen(s->service) + 1) : 0) + ports_bytes(s->ports, s->nports) +
            (s->neps ? chunk(s->neps * sizeof(*s->eps)) : 0);
        for (uint32_t i = 0; i < s->neps; i++)
            b += chunk(strlen(s->eps[i].zone) + strlen(s->eps[i].node) + strlen(s->eps[i].pod) + 3);
        break;
    }
    case IJ_DISC_POD:
        b = chunk(sizeof(*o->u.pod)) + chunk(strlen(o->u.pod->key) + strlen(o->u.pod->sa) + 2);
        break;
    default:
        break;
    }
    return b;
}

/* ---- decoding ----------------------------------------------------------------------- */

/* A string member that is absent or null (NULL, 0), or a string of at most
 * max bytes without NULs or control bytes (1). -1: anything else. */
static int opt_str(json_t *obj, const char *key, size_t max, const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) > max)
        return -1;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return -1;
    *out = s;
    return 1;
}

/* A Kubernetes object name as a key part: printable ASCII, no '/', not empty. */
static bool name_ok(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == '/')
            return false;
    return true;
}

/* metadata.namespace and .name (required, DNS-label-ish: no '/', not empty). */
static int meta_key(json_t *obj, char **key, uint16_t *ns_len, char **errmsg)
{
    json_t *md = json_object_get(obj, "metadata");
    const char *ns = NULL, *name = NULL;
    *key = NULL;
    if (!json_is_object(md))
        return cm_fail(errmsg, CM_ERR_INVAL, "metadata: want an object");
    if (opt_str(md, "namespace", IJ_DISC_MAX_NAME, &ns) != 1 || !name_ok(ns))
        return cm_fail(errmsg, CM_ERR_INVAL, "metadata.namespace: want a non-empty name");
    if (opt_str(md, "name", IJ_DISC_MAX_NAME, &name) != 1 || !name_ok(name))
        return cm_fail(errmsg, CM_ERR_INVAL, "metadata.name: want a non-empty name");
    *key = cm_xasprintf("%s/%s", ns, name);
    if (ns_len != NULL)
        *ns_len = (uint16_t)strlen(ns);
    return 0;
}

static bool bool_or(json_t *obj, const char *key, bool dflt, bool *bad)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return dflt;
    if (!json_is_boolean(v)) {
        *bad = true;
        return dflt;
    }
    return json_is_true(v);
}

/* ports[] of a Service (service=true: port required) or an EndpointSlice. */
static int decode_ports(json_t *arr, bool service, struct ij_disc_port **out, uint16_t *n,
                        char **errmsg)
{
    *out = NULL;
    *n = 0;
    if (arr == NULL || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return cm_fail(errmsg, CM_ERR_INVAL, "ports: want an array");
    size_t cnt = json_array_size(arr);
    if (cnt > IJ_DISC_MAX_PORTS)
        return cm_fail(errmsg, CM_ERR_INVAL, "ports: %zu of them, more than %d", cnt,
                       IJ_DISC_MAX_PORTS);
    if (cnt == 0)
        return 0;
    struct ij_disc_port *p = cm_xcalloc(cnt, sizeof(*p));
    for (size_t i = 0; i < cnt; i++) {
        json_t *e = json_array_get(arr, i);
        const char *name = NULL, *app = NULL, *proto = NULL;
        json_t *num = json_object_get(e, "port");
        if (!json_is_object(e) || opt_str(e, "name", 63, &name) < 0 ||
            opt_str(e, "appProtocol", 253, &app) < 0 || opt_str(e, "protocol", 16, &proto) < 0) {
            ports_free(p, i);
            return cm_fail(errmsg, CM_ERR_INVAL,
                           "ports[%zu]: want an object with string name, protocol, "
                           "appProtocol",
                           i);
        }
        json_int_t v = json_is_integer(num) ? json_integer_value(num) : -1;
        if ((num == NULL || json_is_null(num)) && !service)
            v = 0;
        if (v < (service ? 1 : 0) || v > 65535) {
            ports_free(p, i);
            return cm_fail(errmsg, CM_ERR_INVAL, "ports[%zu].port: want 1..65535", i);
        }
        size_t nl = name ? strlen(name) : 0, al = app ? strlen(app) : 0;
        p[i].name = cm_xmalloc(nl + al + 2);
        memcpy(p[i].name, name ? name : "", nl + 1);
        p[i].app = p[i].name + nl + 1;
        memcpy(p[i].app, app ? app : "", al + 1);
        p[i].port = (uint16_t)v;
        p[i].udp = proto != NULL && (strcmp(proto, "UDP") == 0 || strcmp(proto, "SCTP") == 0);
    }
    *out = p;
    *n = (uint16_t)cnt;
    return 0;
}

static int decode_service(json_t *obj, struct ij_disc_svc **out, char **errmsg)
{
    struct ij_disc_svc *s = cm_xcalloc(1, sizeof(*s));
    json_t *spec = json_object_get(obj, "spec");
    const char *type = NULL, *cip = NULL;
    int rc = CM_ERR_INVAL;
    *out = NULL;
    if (meta_key(obj, &s->key, &s->ns_len, errmsg) != 0)
        goto fail;
    if (spec != NULL && !json_is_object(spec)) {
        cm_fail(errmsg, CM_ERR_INVAL, "spec: want an object");
        goto fail;
    }
    if (opt_str(spec, "type", 32, &type) < 0 || opt_str(spec, "clusterIP", 64, &cip) < 0) {
        cm_fail(errmsg, CM_ERR_INVAL, "spec.type / spec.clusterIP: want strings");
        goto fail;
    }
    json_t *ips = json_object_get(spec, "clusterIPs");
    if (ips != NULL && !json_is_null(ips) && !json_is_array(ips)) {
        cm_fail(errmsg, CM_ERR_INVAL, "spec.clusterIPs: want an array");
        goto fail;
    }
    bool external = type != NULL && strcmp(type, "ExternalName") == 0;
    s->headless = cip != NULL && strcmp(cip, "None") == 0;
    if (!external && !s->headless) {
        size_t n = json_array_size(ips); /* 0 when absent: clusterIP alone */
        for (size_t i = 0; i < (n ? n : 1) && s->nips < 2; i++) {
            const char *t = n ? json_string_value(json_array_get(ips, i)) : cip;
            if (t == NULL || *t == '\0')
                continue;
            if (!ij_disc_ip_parse(t, &s->ips[s->nips])) {
                char *q = ij_kube_sanitize(t, strlen(t), 64);
                cm_fail(errmsg, CM_ERR_INVAL, "spec.clusterIPs[%zu]: \"%s\" is not an IP address",
                        i, q);
                free(q);
                goto fail;
            }
            s->nips++;
        }
    }
    if (decode_ports(json_object_get(spec, "ports"), true, &s->ports, &s->nports, errmsg) != 0) {
        char *m = cm_xasprintf("spec.%s", *errmsg);
        free(*errmsg);
        *errmsg = m;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    free(s->key);
    free(s);
    return rc;
}

static int decode_slice(json_t *obj, struct ij_disc_slice **out, char **errmsg)
{
    struct ij_disc_slice *s = cm_xcalloc(1, sizeof(*s));
    const char *atype = NULL, *svc = NULL;
    *out = NULL;
    uint16_t ns_len = 0;
    if (meta_key(obj, &s->key, &ns_len, errmsg) != 0)
        goto fail;
    json_t *labels = json_object_get(json_object_get(obj, "metadata"), "labels");
    if (labels != NULL && !json_is_null(labels) && !json_is_object(labels)) {
        cm_fail(errmsg, CM_ERR_INVAL, "metadata.labels: want an object");
        goto fail;
    }
    if (opt_str(labels, "kubernetes.io/service-name", IJ_DISC_MAX_NAME, &svc) < 0 ||
        opt_str(obj, "addressType", 16, &atype) < 0) {
        cm_fail(errmsg, CM_ERR_INVAL, "kubernetes.io/service-name / addressType: want strings");
        goto fail;
    }
    if (name_ok(svc))
        s->service = cm_xasprintf("%.*s/%s", (int)ns_len, s->key, svc);
    if (decode_ports(json_object_get(obj, "ports"), false, &s->ports, &s->nports, errmsg) != 0)
        goto fail;
    if (atype != NULL && strcmp(atype, "IPv4") != 0 && strcmp(atype, "IPv6") != 0) {
        *out = s; /* FQDN slices name no addresses a proxy dials by IP */
        return 0;
    }
    json_t *eps = json_object_get(obj, "endpoints");
    if (eps != NULL && !json_is_null(eps) && !json_is_array(eps)) {
        cm_fail(errmsg, CM_ERR_INVAL, "endpoints: want an array");
        goto fail;
    }
    size_t total = 0;
    for (size_t i = 0; i < json_array_size(eps); i++) {
        json_t *a = json_object_get(json_array_get(eps, i), "addresses");
        if (!json_is_array(a)) {
            cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].addresses: want an array", i);
            goto fail;
        }
        total += json_array_size(a);
    }
    if (total > IJ_DISC_MAX_ENDPOINTS) {
        cm_fail(errmsg, CM_ERR_INVAL, "endpoints: %zu addresses, more than %d", total,
                IJ_DISC_MAX_ENDPOINTS);
        goto fail;
    }
    s->eps = total ? cm_xcalloc(total, sizeof(*s->eps)) : NULL;
    for (size_t i = 0; i < json_array_size(eps); i++) {
        json_t *e = json_array_get(eps, i), *a = json_object_get(e, "addresses");
        json_t *cond = json_object_get(e, "conditions"), *ref = json_object_get(e, "targetRef");
        const char *zone = NULL, *node = NULL, *rkind = NULL, *rns = NULL, *rname = NULL;
        bool bad = false;
        if ((cond != NULL && !json_is_null(cond) && !json_is_object(cond)) ||
            (ref != NULL && !json_is_null(ref) && !json_is_object(ref)) ||
            opt_str(e, "zone", 253, &zone) < 0 || opt_str(e, "nodeName", 253, &node) < 0 ||
            opt_str(ref, "kind", 64, &rkind) < 0 ||
            opt_str(ref, "namespace", IJ_DISC_MAX_NAME, &rns) < 0 ||
            opt_str(ref, "name", IJ_DISC_MAX_NAME, &rname) < 0) {
            cm_fail(errmsg, CM_ERR_INVAL,
                    "endpoints[%zu]: conditions, zone, nodeName or targetRef malformed", i);
            goto fail;
        }
        /* nil ready is "unknown", which consumers treat as ready; nil serving
         * follows ready; nil terminating is false (discovery.k8s.io/v1). */
        bool ready = bool_or(cond, "ready", true, &bad);
        bool serving = bool_or(cond, "serving", ready, &bad);
        bool term = bool_or(cond, "terminating", false, &bad);
        if (bad) {
            cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].conditions: want booleans", i);
            goto fail;
        }
        char pod[2 * IJ_DISC_MAX_NAME + 2] = "";
        if (rkind != NULL && strcmp(rkind, "Pod") == 0 && name_ok(rname) &&
            (rns == NULL || *rns == '\0' || name_ok(rns)))
            snprintf(pod, sizeof(pod), "%.*s/%s", rns && *rns ? (int)strlen(rns) : (int)ns_len,
                     rns && *rns ? rns : s->key, rname);
        for (size_t j = 0; j < json_array_size(a); j++) {
            const char *t = json_string_value(json_array_get(a, j));
            struct ij_disc_ep *ep = &s->eps[s->neps];
            if (t == NULL || !ij_disc_ip_parse(t, &ep->ip)) {
                char *q = t ? ij_kube_sanitize(t, strlen(t), 64) : cm_xstrdup("(not a string)");
                cm_fail(errmsg, CM_ERR_INVAL,
                        "endpoints[%zu].addresses[%zu]: \"%s\" is not an IP address", i, j, q);
                free(q);
                goto fail;
            }
            size_t zl = zone ? strlen(zone) : 0, nl = node ? strlen(node) : 0, pl = strlen(pod);
            ep->zone = cm_xmalloc(zl + nl + pl + 3);
            memcpy(ep->zone, zone ? zone : "", zl + 1);
            ep->node = ep->zone + zl + 1;
            memcpy(ep->node, node ? node : "", nl + 1);
            ep->pod = ep->node + nl + 1;
            memcpy(ep->pod, pod, pl + 1);
            ep->ready = ready;
            ep->serving = serving;
            ep->terminating = term;
            s->neps++;
        }
    }
    *out = s;
    return 0;
fail:;
    struct ij_disc_obj o = {.kind = IJ_DISC_SLICE, .u.slice = s};
    ij_disc_obj_free(&o);
    return CM_ERR_INVAL;
}

/* 1: a pod we keep nothing of (done, or on the host's network). */
static int decode_pod(json_t *obj, struct ij_disc_pod **out, char **errmsg)
{
    struct ij_disc_pod *p = cm_xcalloc(1, sizeof(*p));
    json_t *md = json_object_get(obj, "metadata"), *spec = json_object_get(obj, "spec");
    json_t *st = json_object_get(obj, "status");
    const char *sa = NULL, *phase = NULL, *pip = NULL;
    char *key = NULL;
    *out = NULL;
    if (meta_key(obj, &key, &p->ns_len, errmsg) != 0)
        goto fail;
    if ((spec != NULL && !json_is_object(spec)) || (st != NULL && !json_is_object(st))) {
        cm_fail(errmsg, CM_ERR_INVAL, "spec / status: want objects");
        goto fail;
    }
    json_t *ann = json_object_get(md, "annotations");
    if (ann != NULL && !json_is_null(ann) && !json_is_object(ann)) {
        cm_fail(errmsg, CM_ERR_INVAL, "metadata.annotations: want an object");
        goto fail;
    }
    p->meshed = json_object_get(ann, "remora.io/status") != NULL;
    json_t *del = json_object_get(md, "deletionTimestamp");
    p->terminating = del != NULL && !json_is_null(del);
    if (opt_str(spec, "serviceAccountName", IJ_DISC_MAX_NAME, &sa) < 0 ||
        opt_str(st, "phase", 32, &phase) < 0 || opt_str(st, "podIP", 64, &pip) < 0 ||
        (sa != NULL && *sa != '\0' && !name_ok(sa))) {
        cm_fail(errmsg, CM_ERR_INVAL,
                "spec.serviceAccountName / status.phase / status.podIP: want strings");
        goto fail;
    }
    if (json_is_true(json_object_get(spec, "hostNetwork")) ||
        (phase != NULL && (strcmp(phase, "Succeeded") == 0 || strcmp(phase, "Failed") == 0))) {
        free(key);
        free(p);
        return 1; /* its address is the node's, or about to be someone else's */
    }
    json_t *ips = json_object_get(st, "podIPs");
    if (ips != NULL && !json_is_null(ips) && !json_is_array(ips)) {
        cm_fail(errmsg, CM_ERR_INVAL, "status.podIPs: want an array");
        goto fail;
    }
    size_t n = json_array_size(ips);
    for (size_t i = 0; i < (n ? n : 1) && p->nips < 2; i++) {
        const char *t = n ? json_string_value(json_object_get(json_array_get(ips, i), "ip")) : pip;
        if (t == NULL || *t == '\0')
            continue;
        if (!ij_disc_ip_parse(t, &p->ips[p->nips])) {
            char *q = ij_kube_sanitize(t, strlen(t), 64);
            cm_fail(errmsg, CM_ERR_INVAL, "status.podIPs[%zu]: \"%s\" is not an IP address", i, q);
            free(q);
            goto fail;
        }
        p->nips++;
    }
    json_t *conds = json_object_get(st, "conditions");
    for (size_t i = 0; i < json_array_size(conds); i++) {
        json_t *c = json_array_get(conds, i);
        const char *t = json_string_value(json_object_get(c, "type"));
        const char *v = json_string_value(json_object_get(c, "status"));
        if (t != NULL && v != NULL && strcmp(t, "Ready") == 0)
            p->ready = strcmp(v, "True") == 0;
    }
    if (sa == NULL || *sa == '\0')
        sa = "default";
    size_t kl = strlen(key), sl = strlen(sa);
    p->key = cm_xrealloc(key, kl + sl + 2);
    p->sa = p->key + kl + 1;
    memcpy(p->sa, sa, sl + 1);
    *out = p;
    return 0;
fail:
    free(key);
    free(p);
    return CM_ERR_INVAL;
}

int ij_disc_decode_object(enum ij_disc_kind kind, json_t *obj, struct ij_disc_obj *out,
                          char **key_out, char **errmsg)
{
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    if (key_out != NULL) {
        *key_out = NULL;
        const char *ns =
            json_string_value(json_object_get(json_object_get(obj, "metadata"), "namespace"));
        const char *name =
            json_string_value(json_object_get(json_object_get(obj, "metadata"), "name"));
        if (ns != NULL && name != NULL) {
            char *a = ij_kube_sanitize(ns, strlen(ns), IJ_DISC_MAX_NAME);
            char *b = ij_kube_sanitize(name, strlen(name), IJ_DISC_MAX_NAME);
            *key_out = cm_xasprintf("%s/%s", a, b);
            free(a);
            free(b);
        }
    }
    if (!json_is_object(obj))
        return cm_fail(errmsg, CM_ERR_INVAL, "not a JSON object");
    switch (kind) {
    case IJ_DISC_SERVICE:
        return decode_service(obj, &out->u.svc, errmsg);
    case IJ_DISC_SLICE:
        return decode_slice(obj, &out->u.slice, errmsg);
    case IJ_DISC_POD:
        return decode_pod(obj, &out->u.pod, errmsg);
    default:
        return cm_fail(errmsg, CM_ERR_INVAL, "unknown kind");
    }
}

void ij_disc_event_deinit(struct ij_disc_event *ev)
{
    ij_disc_obj_free(&ev->obj);
    free(ev->key);
    free(ev->message);
    memset(ev, 0, sizeof(*ev));
}

int ij_disc_decode_event(enum ij_disc_kind kind, const char *line, size_t len,
                         struct ij_disc_event *ev, char **errmsg)
{
    static const char *const types[] = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"};
    json_error_t je;
    memset(ev, 0, sizeof(*ev));
    ev->obj.kind = kind;
    json_t *doc = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL) {
        char *why = ij_kube_sanitize(je.text, strlen(je.text), sizeof(je.text));
        cm_fail(errmsg, CM_ERR_INVAL, "watch event: not JSON: %s (at byte %d)", why, je.position);
        free(why);
        return CM_ERR_PROTO;
    }
    int rc = 0;
    const char *t = json_string_value(json_object_get(doc, "type"));
    json_t *obj = json_object_get(doc, "object");
    size_t i = 0;
    while (t != NULL && i < sizeof(types) / sizeof(types[0]) && strcmp(t, types[i]) != 0)
        i++;
    if (!json_is_object(doc) || t == NULL || i == sizeof(types) / sizeof(types[0]) ||
        !json_is_object(obj)) {
        rc = CM_ERR_PROTO;
        cm_fail(errmsg, CM_ERR_INVAL,
                "watch event: want {\"type\": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "
                "\"object\": {...}}");
        goto out;
    }
    ev->type = (enum ij_disc_ev_type)i;
    const char *rv =
        json_string_value(json_object_get(json_object_get(obj, "metadata"), "resourceVersion"));
    if (rv != NULL && strlen(rv) <= IJ_DISC_MAX_RV) {
        bool clean = true;
        for (const char *c = rv; *c; c++)
            clean = clean && (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f;
        if (clean)
            snprintf(ev->rv, sizeof(ev->rv), "%s", rv);
    }
    if (ev->type == IJ_EV_ERROR) {
        json_t *code = json_object_get(obj, "code");
        const char *m = json_string_value(json_object_get(obj, "message"));
        ev->code =
            json_is_integer(code) && json_integer_value(code) > 0 && json_integer_value(code) < 1000
                ? (int)json_integer_value(code)
                : 0;
        if (m != NULL)
            ev->message = ij_kube_sanitize(m, strlen(m), IJ_KUBE_STATUS_MESSAGE_MAX);
        goto out;
    }
    if (ev->type == IJ_EV_BOOKMARK)
        goto out;
    int d = ij_disc_decode_object(kind, obj, &ev->obj, &ev->key, errmsg);
    if (d == 1)
        ev->skipped = true;
    else if (d != 0)
        rc = CM_ERR_INVAL;
out:
    json_decref(doc);
    return rc;
}

/* ---- lines ------------------------------------------------------------------------------ */

int ij_disc_lines_feed(struct ij_disc_lines *l, const char *p, size_t n, ij_disc_line_fn fn,
                       void *arg)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        if (l->len + take > IJ_DISC_MAX_LINE) {
            l->overflow = true;
            return CM_ERR_LIMIT;
        }
        if (l->len + take + 1 > l->cap) {
            size_t cap = l->cap ? l->cap : 4096;
            while (cap < l->len + take + 1)
                cap *= 2;
            if (cap > IJ_DISC_MAX_LINE + 1)
                cap = IJ_DISC_MAX_LINE + 1;
            l->buf = cm_xrealloc(l->buf, cap);
            l->cap = cap;
        }
        memcpy(l->buf + l->len, p, take);
        l->len += take;
        p += take;
        n -= take;
        if (nl == NULL)
            break;
        p++; /* the newline */
        n--;
        size_t len = l->len;
        while (len > 0 && (l->buf[len - 1] == '\r' || l->buf[len - 1] == ' '))
            len--;
        l->len = 0;
        if (len > 0) {
            l->buf[len] = '\0';
            int rc = fn(arg, l->buf, len);
            if (rc != 0)
                return rc;
        }
    }
    /* Do not sit on a large buffer between events. */
    if (l->len == 0 && l->cap > (256u << 10)) {
        free(l->buf);
        l->buf = NULL;
        l->cap = 0;
    }
    return 0;
}

void ij_disc_lines_reset(struct ij_disc_lines *l)
{
    free(l->buf);
    memset(l, 0, sizeof(*l));
}
