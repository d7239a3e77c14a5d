#include "injector/admission.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/json.h"
#include "common/xalloc.h"

#define REVIEW_API "admission.k8s.io/v1"

static void fail_400(struct ij_review *out, char *msg)
{
    /* The message may quote the body (jansson's "near '...'"): keep it
     * printable ASCII so it is valid JSON text and one log line. */
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            *c = '?';
    json_t *e = json_pack("{s:s, s:i}", "error", msg, "code", 400);
    out->http_status = 400;
    out->errmsg = msg;
    out->body = json_dumps(e, JSON_COMPACT);
    out->body_len = strlen(out->body);
    json_decref(e);
}

/* The parts of a Pod the patch builder relies on. Anything else is read
 * defensively there, so this only refuses what would make the patch wrong. */
static int check_pod(json_t *pod, const struct cm_jpath *at, char **errmsg)
{
    struct cm_jpath p, q, r;
    json_t *spec, *v;
    size_t i;
    if (!json_is_object(pod))
        return cm_json_fail(at, errmsg, "expected the Pod object");
    v = json_object_get(pod, "metadata");
    cm_jpath_key(&p, at, "metadata");
    if (v != NULL && !json_is_object(v) && !json_is_null(v))
        return cm_json_fail(&p, errmsg, "expected an object");
    v = json_object_get(v, "annotations");
    cm_jpath_key(&q, &p, "annotations");
    if (v != NULL && !json_is_object(v) && !json_is_null(v))
        return cm_json_fail(&q, errmsg, "expected an object");
    spec = json_object_get(pod, "spec");
    cm_jpath_key(&p, at, "spec");
    if (!json_is_object(spec))
        return cm_json_fail(&p, errmsg, "expected an object");
    static const char *const lists[] = {"initContainers", "volumes", NULL};
    for (int l = 0; lists[l] != NULL; l++) {
        v = json_object_get(spec, lists[l]);
        cm_jpath_key(&q, &p, lists[l]);
        if (v != NULL && !json_is_array(v) && !json_is_null(v))
            return cm_json_fail(&q, errmsg, "expected an array");
    }
    v = json_object_get(spec, "containers");
    cm_jpath_key(&q, &p, "containers");
    if (!json_is_array(v) || json_array_size(v) == 0)
        return cm_json_fail(&q, errmsg, "expected a non-empty array");
    json_t *c;
    json_array_foreach(v, i, c)
    {
        cm_jpath_index(&r, &q, i);
        if (!json_is_object(c) || !json_is_string(json_object_get(c, "name")))
            return cm_json_fail(&r, errmsg, "expected a container with a name");
    }
    return 0;
}

/* Standard base64 (RFC 4648, padded) into a fresh string. Not mbedTLS's
 * encoder: that one is constant-time, made for key material, and was a
 * tenth of a review's CPU time; a patch is no secret. */
char *ij_admission_base64(const char *s, size_t len, size_t *olen)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = (const unsigned char *)s;
    char *out = cm_xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    *olen = (size_t)(o - out);
    return out;
}

/* The response AdmissionReview, written directly: the patch is already
 * JSON-safe base64, and going through a json_t would copy and scan it
 * twice more. uid and warnings go through jansson for escaping. */
static char *response(const char *uid, const char *b64, size_t b64_len, json_t *warnings,
                      size_t *len)
{
    json_t *u = json_string(uid);
    char *uid_json = json_dumps(u, JSON_ENCODE_ANY);
    json_decref(u);
    char *warn_json = json_array_size(warnings) > 0 ? json_dumps(warnings, JSON_COMPACT) : NULL;
    static const char head[] = "{\"apiVersion\":\"" REVIEW_API "\",\"kind\":\"AdmissionReview\","
                               "\"response\":{\"uid\":";
    size_t cap = sizeof(head) + strlen(uid_json) + b64_len + 128 +
                 (warn_json != NULL ? strlen(warn_json) : 0);
    char *out = cm_xmalloc(cap);
    int n;
    if (b64 != NULL)
        n = snprintf(
            out, cap, "%s%s,\"allowed\":true,\"patchType\":\"JSONPatch\",\"patch\":\"%s\"%s%s}}",
            head, uid_json, b64, warn_json ? ",\"warnings\":" : "", warn_json ? warn_json : "");
    else
        n = snprintf(out, cap, "%s%s,\"allowed\":true%s%s}}", head, uid_json,
                     warn_json ? ",\"warnings\":" : "", warn_json ? warn_json : "");
    if (n < 0 || (size_t)n >= cap)
        abort(); /* cap counts every piece */
    *len = (size_t)n;
    free(uid_json);
    free(warn_json);
    return out;
}

/* allowed: false, with the reason in status.message (kubectl prints it:
 * 'admission webhook "..." denied the request: <message>'). */
static char *refusal(const char *uid, const char *msg, json_t *warnings, size_t *len)
{
    json_t *r = json_pack("{s:s, s:b, s:{s:i, s:s}}", "uid", uid, "allowed", 0, "status", "code",
                          400, "message", msg);
    if (json_array_size(warnings) > 0)
        json_object_set(r, "warnings", warnings);
    json_t *doc = json_pack("{s:s, s:s, s:o}", "apiVersion", REVIEW_API, "kind", "AdmissionReview",
                            "response", r);
    char *out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    *len = strlen(out);
    return out;
}

void ij_admission_review(const struct ij_inject_params *p, const char *body, size_t len,
                         struct ij_review *out)
{
    struct cm_jpath root, req, obj;
    json_t *doc = NULL, *request = NULL, *pod;
    const char *api = NULL, *kind = NULL, *uid = NULL;
    char *errmsg = NULL;

    memset(out, 0, sizeof(*out));
    if (cm_json_load_buf("AdmissionReview", body, len, true, &doc, &errmsg) != 0) {
        fail_400(out, errmsg);
        return;
    }
    cm_jpath_root(&root, "AdmissionReview");
    if (cm_json_get_string(&root, doc, "apiVersion", true, &api, &errmsg) != 0 ||
        cm_json_get_string(&root, doc, "kind", true, &kind, &errmsg) != 0)
        goto bad;
    if (strcmp(kind, "AdmissionReview") != 0) {
        cm_jpath_key(&req, &root, "kind");
        cm_json_fail(&req, &errmsg, "expected \"AdmissionReview\"");
        goto bad;
    }
    if (strcmp(api, REVIEW_API) != 0) {
        cm_jpath_key(&req, &root, "apiVersion");
        cm_json_fail(&req, &errmsg, "expected \"" REVIEW_API "\"");
        goto bad;
    }
    if (cm_json_get_child(&root, doc, "request", true, JSON_OBJECT, &request, &errmsg) != 0)
        goto bad;
    cm_jpath_key(&req, &root, "request");
    if (cm_json_get_string(&req, request, "uid", true, &uid, &errmsg) != 0)
        goto bad;
    if (*uid == '\0' || strlen(uid) > 128) {
        cm_jpath_key(&obj, &req, "uid");
        cm_json_fail(&obj, &errmsg, "expected a uid of 1 to 128 characters");
        goto bad;
    }

    json_t *warnings = json_array();
    pod = json_object_get(request, "object");
    enum ij_decision d = ij_inject_decide(request, pod, warnings);
    json_t *patch = NULL;
    if (d == IJ_DECIDE_INJECT) {
        cm_jpath_key(&obj, &req, "object");
        if (check_pod(pod, &obj, &errmsg) != 0) {
            json_decref(warnings);
            goto bad;
        }
        char *why = ij_inject_check(p, pod);
        if (why != NULL) {
            out->http_status = 200;
            out->decision = IJ_DECIDE_REFUSED;
            out->uid = cm_xstrdup(uid);
            out->body = refusal(uid, why, warnings, &out->body_len);
            free(why);
            json_decref(warnings);
            json_decref(doc);
            return;
        }
        patch = ij_inject_patch(p, request, pod, warnings);
    }

    char *b64 = NULL;
    size_t b64_len = 0;
    if (patch != NULL) {
        char *ps = json_dumps(patch, JSON_COMPACT);
        b64 = ij_admission_base64(ps, strlen(ps), &b64_len);
        free(ps);
        json_decref(patch);
    }
    out->http_status = 200;
    out->decision = d;
    out->uid = cm_xstrdup(uid);
    out->body = response(uid, b64, b64_len, warnings, &out->body_len);
    free(b64);
    json_decref(warnings);
    json_decref(doc);
    return;

bad:
    json_decref(doc);
    fail_400(out, errmsg);
}

void ij_review_deinit(struct ij_review *r)
{
    free(r->body);
    free(r->uid);
    free(r->errmsg);
    memset(r, 0, sizeof(*r));
}
