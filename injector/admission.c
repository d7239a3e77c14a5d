#include "injector/admission.h"

#include <mbedtls/base64.h>
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

static char *base64(const char *s, size_t len)
{
    size_t need = 0;
    mbedtls_base64_encode(NULL, 0, &need, (const unsigned char *)s, len);
    char *out = cm_xmalloc(need + 1);
    size_t olen = 0;
    if (mbedtls_base64_encode((unsigned char *)out, need + 1, &olen, (const unsigned char *)s,
                              len) != 0)
        abort(); /* the size came from mbedTLS itself */
    out[olen] = '\0';
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
        patch = ij_inject_patch(p, request, pod, warnings);
    }

    json_t *resp = json_pack("{s:s, s:b}", "uid", uid, "allowed", 1);
    if (patch != NULL) {
        char *ps = json_dumps(patch, JSON_COMPACT);
        json_object_set_new(resp, "patchType", json_string("JSONPatch"));
        char *b64 = base64(ps, strlen(ps));
        json_object_set_new(resp, "patch", json_string(b64));
        free(b64);
        free(ps);
        json_decref(patch);
    }
    if (json_array_size(warnings) > 0)
        json_object_set(resp, "warnings", warnings);
    json_decref(warnings);
    json_t *review = json_pack("{s:s, s:s, s:o}", "apiVersion", REVIEW_API, "kind",
                               "AdmissionReview", "response", resp);
    out->http_status = 200;
    out->decision = d;
    out->uid = cm_xstrdup(uid);
    out->body = json_dumps(review, JSON_COMPACT);
    out->body_len = strlen(out->body);
    json_decref(review);
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
