/* libFuzzer target: bytes -> the sidecar template loader (ij_template_from_json,
 * injector/template.c), then, for a template it accepts, one injection of a
 * fixed pod (with and without remora.io/discovery: "off"). Beyond "no crash,
 * no leak, no UB" it checks:
 *   - a refusal has a message naming the template ("t: ...") and no template;
 *   - an accepted template has an image and a pull policy, and its discovery
 *     block (issue 18) is in the bootstrap exactly when the template has one
 *     and the pod did not say "off", with the template's address.
 * Seeds: test/fuzz/corpus/fuzz_template/. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "injector/inject.h"
#include "injector/template.h"
#include "test/fuzz/fuzz_util.h"

static const char pod_on[] = "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\","
                             "\"namespace\":\"shop\"},\"spec\":{\"containers\":[{\"name\":\"app\","
                             "\"image\":\"a\"}]}}";
static const char pod_off[] =
    "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\",\"namespace\":\"shop\","
    "\"annotations\":{\"remora.io/discovery\":\"off\"}},\"spec\":{\"containers\":[{\"name\":"
    "\"app\",\"image\":\"a\"}]}}";

/* The bootstrap of one injection of pod_json under t. */
static json_t *bootstrap_of(const struct ij_template *t, const char *pod_json)
{
    json_t *pod = json_loads(pod_json, 0, NULL);
    json_t *req = json_pack("{s:s, s:s, s:s, s:O}", "uid", "u", "namespace", "shop", "operation",
                            "CREATE", "object", pod);
    json_t *w = json_array();
    struct ij_inject_params p = {t, "cluster.local", "remora-ca", false, NULL, false};
    json_t *patch = ij_inject_patch(&p, req, pod, w);
    json_t *boot = NULL;
    size_t i;
    json_t *op;
    json_array_foreach(patch, i, op)
    {
        /* the annotations whole, or one annotation added to the pod's own */
        json_t *v = json_object_get(op, "value");
        const char *path = json_string_value(json_object_get(op, "path"));
        const char *b = json_is_string(v) && path != NULL &&
                                strcmp(path, "/metadata/annotations/remora.io~1bootstrap") == 0
                            ? json_string_value(v)
                            : json_string_value(json_object_get(v, IJ_ANN_BOOTSTRAP));
        if (b != NULL)
            boot = json_loads(b, 0, NULL);
    }
    CHECK(boot != NULL);
    json_decref(patch);
    json_decref(w);
    json_decref(req);
    json_decref(pod);
    return boot;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (root == NULL)
        return 0;
    struct ij_template *t = NULL;
    char *err = NULL;
    int rc = ij_template_from_json("t", root, &t, &err);
    json_decref(root);
    if (rc != 0) {
        CHECK(t == NULL && err != NULL && strncmp(err, "t", 1) == 0);
        free(err);
        return 0;
    }
    CHECK(err == NULL && t->image != NULL && *t->image != '\0' && t->image_pull_policy != NULL);
    json_t *on = bootstrap_of(t, pod_on), *off = bootstrap_of(t, pod_off);
    json_t *d = json_object_get(on, "discovery");
    if (t->discovery_address == NULL) {
        CHECK(d == NULL);
    } else {
        CHECK(d != NULL);
        CHECK(strcmp(json_string_value(json_object_get(d, "address")), t->discovery_address) == 0);
    }
    CHECK(json_object_get(off, "discovery") == NULL);
    json_decref(on);
    json_decref(off);
    ij_template_unref(t);
    return 0;
}
