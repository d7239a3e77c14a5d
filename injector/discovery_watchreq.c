/* POST /v1/watch bodies (injector/discovery.h): the list of destinations a
 * proxy holds answers for, with their versions. Untrusted input from any
 * mesh workload: bounded (IJ_DISC_WATCH_MAX_BODY bytes, checked by the
 * server before this, IJ_DISC_WATCH_MAX_ITEMS entries, names, versions),
 * every field checked, errors naming the field. Fuzzed by
 * test/fuzz/fuzz_watch_request.c. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"
#include "injector/discovery.h"

/* A version or a session: 1..max of [A-Za-z0-9._~-] (the store's versions are hex). */
static bool token_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '~' || c == '-'))
            return false;
    }
    return true;
}

static int parse_item(json_t *it, size_t i, const char *cluster_domain, struct ij_disc_witem *w,
                      char **errmsg)
{
    if (!json_is_object(it))
        return cm_fail_printable(
            errmsg, CM_ERR_INVAL,
            "watch[%zu]: want an object {\"addr\"|\"host\": ..., \"version\": ...}", i);
    const char *k;
    json_t *v;
    json_object_foreach(it, k, v)
    {
        if (strcmp(k, "addr") != 0 && strcmp(k, "host") != 0 && strcmp(k, "version") != 0)
            return cm_fail_printable(errmsg, CM_ERR_INVAL,
                                     "watch[%zu]: unknown field (want addr or host, and version)",
                                     i);
    }
    json_t *addr = json_object_get(it, "addr"), *host = json_object_get(it, "host");
    if ((addr == NULL) == (host == NULL))
        return cm_fail_printable(errmsg, CM_ERR_INVAL,
                                 "watch[%zu]: give exactly one of addr and host", i);
    json_t *nv = addr ? addr : host;
    const char *field = addr ? "addr" : "host";
    if (!json_is_string(nv))
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "watch[%zu].%s: want a string", i, field);
    const char *name = json_string_value(nv);
    size_t nl = json_string_length(nv);
    if (nl != strlen(name) || nl >= sizeof(w->name))
        return cm_fail_printable(errmsg, CM_ERR_INVAL,
                                 "watch[%zu].%s: want %s of at most 300 bytes", i, field,
                                 addr ? "IP:PORT" : "NAME:PORT");
    char *qerr = NULL;
    if (ij_disc_query_parse(addr ? name : NULL, host ? name : NULL, cluster_domain, &w->q, &qerr) !=
        0) {
        int rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "watch[%zu].%s", i, qerr);
        free(qerr);
        return rc;
    }
    memcpy(w->name, name, nl + 1);
    json_t *ver = json_object_get(it, "version");
    if (ver != NULL && !json_is_null(ver)) {
        if (!json_is_string(ver) || !token_ok(json_string_value(ver), IJ_DISC_MAX_VERSION))
            return cm_fail_printable(
                errmsg, CM_ERR_INVAL,
                "watch[%zu].version: want a string of 1..%d characters [A-Za-z0-9._~-] "
                "(or null: none held)",
                i, IJ_DISC_MAX_VERSION);
        snprintf(w->version, sizeof(w->version), "%s", json_string_value(ver));
    }
    return 0;
}

int ij_disc_watchreq_parse(const char *body, size_t len, const char *cluster_domain,
                           struct ij_disc_watchreq *out, char **errmsg)
{
    memset(out, 0, sizeof(*out));
    *errmsg = NULL;
    if (len > IJ_DISC_WATCH_MAX_BODY)
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "body: over %d bytes",
                                 IJ_DISC_WATCH_MAX_BODY);
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "body: not JSON: %s (line %d, column %d)",
                                 je.text, je.line, je.column);
    int rc = CM_ERR_INVAL;
    if (!json_is_object(root)) {
        rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "body: want an object {\"watch\": [...]}");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (strcmp(k, "watch") != 0 && strcmp(k, "session") != 0) {
            rc = cm_fail_printable(errmsg, CM_ERR_INVAL,
                                   "body: unknown field (want watch, and session)");
            goto out;
        }
    }
    json_t *sess = json_object_get(root, "session");
    if (sess != NULL) {
        if (!json_is_string(sess) || !token_ok(json_string_value(sess), IJ_DISC_MAX_SESSION)) {
            rc = cm_fail_printable(errmsg, CM_ERR_INVAL,
                                   "session: want a string of 1..%d characters [A-Za-z0-9._~-]",
                                   IJ_DISC_MAX_SESSION);
            goto out;
        }
        snprintf(out->session, sizeof(out->session), "%s", json_string_value(sess));
    }
    json_t *arr = json_object_get(root, "watch");
    if (!json_is_array(arr)) {
        rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "watch: want an array of destinations");
        goto out;
    }
    size_t n = json_array_size(arr);
    if (n == 0) {
        rc =
            cm_fail_printable(errmsg, CM_ERR_INVAL, "watch: empty (list at least one destination)");
        goto out;
    }
    if (n > IJ_DISC_WATCH_MAX_ITEMS) {
        rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "watch: %zu destinations, at most %d", n,
                               IJ_DISC_WATCH_MAX_ITEMS);
        goto out;
    }
    out->items = cm_xcalloc(n, sizeof(*out->items));
    for (size_t i = 0; i < n; i++) {
        rc = parse_item(json_array_get(arr, i), i, cluster_domain, &out->items[i], errmsg);
        if (rc != 0) {
            ij_disc_watchreq_deinit(out);
            goto out;
        }
    }
    out->n = n;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void ij_disc_watchreq_deinit(struct ij_disc_watchreq *w)
{
    free(w->items);
    memset(w, 0, sizeof(*w));
}
