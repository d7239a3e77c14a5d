/* The answer of GET /v1/destination (docs/discovery.md) decoded with jansson
 * into a bounded px_dest_answer. Everything the proxy will act on is
 * checked here, so the data path never meets a malformed answer: addresses
 * parse, a meshed endpoint has a SPIFFE ID of our form (and an unmeshed one
 * none: secure naming must never be silently skipped), counts and lengths
 * are bounded, the version is safe to put back in the watch's body. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/err.h"
#include "common/xalloc.h"
#include "proxy/discovery.h"

#define MAX_STR 512 /* service, pod, zone */

/* A printable string without spaces, quotes or backslashes (it reaches logs
 * and labels), 0..max bytes, no NUL inside. */
static bool plain(json_t *v, size_t max)
{
    if (!json_is_string(v))
        return false;
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n > max || strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\')
            return false;
    return true;
}

/* "ns/name": exactly one '/', both sides non-empty. */
static bool ns_name(json_t *v)
{
    if (!plain(v, MAX_STR))
        return false;
    const char *s = json_string_value(v);
    const char *sl = strchr(s, '/');
    return sl != NULL && sl != s && sl[1] != '\0' && strchr(sl + 1, '/') == NULL;
}

static int get_bool(json_t *o, const char *key, size_t i, bool *out, char **errmsg)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_boolean(v))
        return cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].%s: expected true or false", i, key);
    *out = json_is_true(v);
    return 0;
}

static int decode_ep(json_t *o, size_t i, struct px_dest_ep *ep, char **errmsg)
{
    if (!json_is_object(o))
        return cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu]: expected an object", i);
    json_t *addr = json_object_get(o, "address");
    if (!plain(addr, CM_ADDR_STRLEN) || cm_addr_parse(json_string_value(addr), &ep->addr) != 0 ||
        cm_addr_is_any(&ep->addr) || cm_addr_port(&ep->addr) == 0)
        return cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].address: expected \"ip:port\"", i);
    if (get_bool(o, "meshed", i, &ep->meshed, errmsg) != 0 ||
        get_bool(o, "ready", i, &ep->ready, errmsg) != 0 ||
        get_bool(o, "serving", i, &ep->serving, errmsg) != 0 ||
        get_bool(o, "terminating", i, &ep->terminating, errmsg) != 0)
        return CM_ERR_INVAL;
    json_t *id = json_object_get(o, "identity");
    if (ep->meshed) {
        char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
        char *e = NULL;
        if (!plain(id, PKI_SPIFFE_MAX - 1))
            return cm_fail(errmsg, CM_ERR_INVAL,
                           "endpoints[%zu].identity: a meshed endpoint needs its SPIFFE ID", i);
        if (pki_spiffe_parse(json_string_value(id), td, ns, sa, &e) != 0) {
            int rc = cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].identity: %s", i,
                             e ? e : "not a SPIFFE ID");
            free(e);
            return rc;
        }
        ep->identity = cm_xstrdup(json_string_value(id));
    } else if (id != NULL && !json_is_null(id)) {
        return cm_fail(errmsg, CM_ERR_INVAL,
                       "endpoints[%zu].identity: set for an endpoint that is not meshed", i);
    }
    json_t *zone = json_object_get(o, "zone"), *pod = json_object_get(o, "pod");
    if (zone != NULL && !json_is_null(zone) &&
        !(json_string_length(zone) == 0 && json_is_string(zone)) && !plain(zone, MAX_STR))
        return cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].zone: expected a zone name", i);
    ep->zone = cm_xstrdup(json_is_string(zone) ? json_string_value(zone) : "");
    if (pod != NULL && !json_is_null(pod)) {
        if (!ns_name(pod))
            return cm_fail(errmsg, CM_ERR_INVAL, "endpoints[%zu].pod: expected \"ns/name\" or null",
                           i);
        ep->pod = cm_xstrdup(json_string_value(pod));
    }
    return 0;
}

int px_dest_decode(const char *buf, size_t len, struct px_dest_answer **out, char **errmsg)
{
    *out = NULL;
    if (errmsg != NULL)
        *errmsg = NULL; /* cm_fail replaces it */
    if (len > PX_DEST_MAX_ANSWER)
        return cm_fail(errmsg, CM_ERR_INVAL, "answer of %zu bytes (at most %u)", len,
                       PX_DEST_MAX_ANSWER);
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return cm_fail(errmsg, CM_ERR_INVAL, "not JSON: %s (line %d)", jerr.text, jerr.line);
    struct px_dest_answer *a = cm_xcalloc(1, sizeof(*a));
    a->refs = 1;
    int rc = CM_ERR_INVAL;
    if (!json_is_object(root)) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "not a JSON object");
        goto done;
    }
    const char *kind = json_string_value(json_object_get(root, "kind"));
    if (kind != NULL && strcmp(kind, "service") == 0)
        a->kind = PX_DEST_SERVICE;
    else if (kind != NULL && strcmp(kind, "pod") == 0)
        a->kind = PX_DEST_POD;
    else {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "kind: expected \"service\" or \"pod\"");
        goto done;
    }
    json_t *svc = json_object_get(root, "service");
    if (svc != NULL && !json_is_null(svc)) {
        if (!ns_name(svc)) {
            rc = cm_fail(errmsg, CM_ERR_INVAL, "service: expected \"ns/name\" or null");
            goto done;
        }
        a->service = cm_xstrdup(json_string_value(svc));
    } else if (a->kind == PX_DEST_SERVICE) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "service: a kind \"service\" answer names its Service");
        goto done;
    }
    json_t *port = json_object_get(root, "port");
    if (!json_is_integer(port) || json_integer_value(port) < 1 ||
        json_integer_value(port) > 65535) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "port: expected a port number 1-65535");
        goto done;
    }
    a->port = (uint16_t)json_integer_value(port);
    json_t *proto = json_object_get(root, "protocol");
    if (proto != NULL && !json_is_null(proto) &&
        !(json_is_string(proto) && json_string_length(proto) == 0) && !plain(proto, 32)) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "protocol: expected a protocol name");
        goto done;
    }
    a->protocol = cm_xstrdup(json_is_string(proto) ? json_string_value(proto) : "");
    json_t *ver = json_object_get(root, "version");
    const char *vs = json_string_value(ver);
    size_t vn = vs ? json_string_length(ver) : 0;
    bool vok = vn >= 1 && vn <= PX_DEST_MAX_VERSION && strlen(vs) == vn;
    for (size_t i = 0; vok && i < vn; i++) /* back in the watch's body: unreserved only */
        vok = (vs[i] >= '0' && vs[i] <= '9') || (vs[i] >= 'a' && vs[i] <= 'z') ||
              (vs[i] >= 'A' && vs[i] <= 'Z') || vs[i] == '-' || vs[i] == '.' || vs[i] == '_' ||
              vs[i] == '~';
    if (!vok) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "version: expected 1-%d letters, digits or -._~",
                     PX_DEST_MAX_VERSION);
        goto done;
    }
    memcpy(a->version, vs, vn + 1);
    json_t *eps = json_object_get(root, "endpoints");
    if (!json_is_array(eps)) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "endpoints: expected an array");
        goto done;
    }
    size_t n = json_array_size(eps);
    if (n > PX_DEST_MAX_ENDPOINTS) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "endpoints: %zu (at most %d)", n, PX_DEST_MAX_ENDPOINTS);
        goto done;
    }
    if (a->kind == PX_DEST_POD && n != 1) {
        rc = cm_fail(errmsg, CM_ERR_INVAL, "endpoints: a kind \"pod\" answer has exactly one");
        goto done;
    }
    a->eps = cm_xcalloc(n ? n : 1, sizeof(*a->eps));
    for (size_t i = 0; i < n; i++) {
        a->neps = i + 1;
        if (decode_ep(json_array_get(eps, i), i, &a->eps[i], errmsg) != 0)
            goto done;
    }
    rc = 0;
done:
    json_decref(root);
    if (rc != 0)
        px_dest_answer_unref(a);
    else
        *out = a;
    return rc;
}

struct px_dest_answer *px_dest_answer_ref(struct px_dest_answer *a)
{
    if (a != NULL)
        a->refs++;
    return a;
}

void px_dest_answer_unref(struct px_dest_answer *a)
{
    if (a == NULL || --a->refs > 0)
        return;
    for (size_t i = 0; i < a->neps; i++) {
        free(a->eps[i].identity);
        free(a->eps[i].zone);
        free(a->eps[i].pod);
    }
    free(a->eps);
    free(a->service);
    free(a->protocol);
    free(a);
}

json_t *px_dest_answer_json(const struct px_dest_answer *a)
{
    json_t *eps = json_array();
    for (size_t i = 0; i < a->neps; i++) {
        const struct px_dest_ep *e = &a->eps[i];
        char buf[CM_ADDR_STRLEN];
        json_array_append_new(eps,
                              json_pack("{s:s, s:o, s:b, s:s, s:b, s:b, s:b, s:o}", "address",
                                        cm_addr_format(&e->addr, buf, sizeof(buf)), "identity",
                                        e->identity ? json_string(e->identity) : json_null(),
                                        "meshed", e->meshed, "zone", e->zone, "ready", e->ready,
                                        "serving", e->serving, "terminating", e->terminating, "pod",
                                        e->pod ? json_string(e->pod) : json_null()));
    }
    return json_pack("{s:s, s:o, s:i, s:s, s:s, s:o}", "kind",
                     a->kind == PX_DEST_SERVICE ? "service" : "pod", "service",
                     a->service ? json_string(a->service) : json_null(), "port", (int)a->port,
                     "protocol", a->protocol, "version", a->version, "endpoints", eps);
}
