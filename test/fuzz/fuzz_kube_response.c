/* libFuzzer target for injector/kube.c's decoders of what the API server
 * sends back: the first byte picks what the rest is fed to.
 *   0  ij_kube_parse_response (a whole connection's bytes, up to EOF), then
 *      on success every decoder over its body: describe, Status details,
 *      NamespaceList, ConfigMap
 *   1  the same bytes fed to the incremental parser in two pieces split at
 *      the second byte: the result must equal the one-shot parse
 *   2  ij_kube_ns_list_parse on a body
 *   3  ij_kube_configmap_value on a body (key root.pem)
 * Invariants (a violation traps): a parsed response has a final status
 * (200..999), a NUL-terminated body within the bound and no message; a
 * refusal has a message and leaves no body; a NamespaceList holds non-empty
 * names and at most IJ_KUBE_MAX_ITEMS; a ConfigMap value is NUL-terminated at
 * its length, and absent means length 0. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "injector/kube_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A small bound so that mutations cross it. */
#define FUZZ_MAX_BODY 4096

static void check_ns_list(const char *p, size_t n)
{
    struct ij_kube_ns_list l;
    char *err = NULL;
    if (ij_kube_ns_list_parse(p, n, &l, &err) == 0) {
        if (err != NULL || l.n > IJ_KUBE_MAX_ITEMS || (l.cont != NULL && l.cont[0] == '\0'))
            __builtin_trap();
        for (size_t i = 0; i < l.n; i++)
            if (l.items[i].name == NULL || l.items[i].name[0] == '\0')
                __builtin_trap();
        ij_kube_ns_list_deinit(&l);
    } else if (err == NULL || l.n != 0 || l.items != NULL || l.cont != NULL) {
        __builtin_trap();
    }
    free(err);
}

static void check_configmap(const char *p, size_t n)
{
    char *v = NULL, *err = NULL;
    size_t vlen = 1;
    if (ij_kube_configmap_value(p, n, "root.pem", &v, &vlen, &err) == 0) {
        if (err != NULL || (v == NULL && vlen != 0) || (v != NULL && v[vlen] != '\0'))
            __builtin_trap();
    } else if (err == NULL || v != NULL) {
        __builtin_trap();
    }
    free(v);
    free(err);
}

static void check_resp(int rc, const struct ij_kube_resp *r, const char *err)
{
    if (rc == 0) {
        if (err != NULL || r->status < 200 || r->status > 999 || r->body == NULL ||
            r->body_len > FUZZ_MAX_BODY || r->body[r->body_len] != '\0' ||
            memchr(r->reason, '\0', sizeof(r->reason)) == NULL)
            __builtin_trap();
    } else if (err == NULL || r->body != NULL || r->status != 0) {
        __builtin_trap();
    }
}

static void fuzz_response(const char *p, size_t n)
{
    struct ij_kube_resp r;
    char *err = NULL;
    int rc = ij_kube_parse_response(p, n, FUZZ_MAX_BODY, &r, &err);
    check_resp(rc, &r, err);
    if (rc == 0) {
        char *d = ij_kube_resp_describe(&r);
        char *k = ij_kube_status_details_kind(&r);
        if (d == NULL || strlen(d) > 64 + sizeof(r.reason) + IJ_KUBE_STATUS_MESSAGE_MAX + 8)
            __builtin_trap();
        free(d);
        free(k);
        check_ns_list(r.body, r.body_len);
        check_configmap(r.body, r.body_len);
        ij_kube_resp_deinit(&r);
    }
    free(err);
}

/* Two feeds then EOF, as a connection delivers them. */
static void fuzz_split(const char *p, size_t n, size_t cut)
{
    if (cut > n)
        cut = n;
    struct ij_kube_resp whole, parts;
    char *e1 = NULL, *e2 = NULL;
    int rc1 = ij_kube_parse_response(p, n, FUZZ_MAX_BODY, &whole, &e1);

    struct ij_kube_rparser rp;
    ij_kube_rparser_init(&rp, &parts, FUZZ_MAX_BODY);
    int rc2 = ij_kube_rparser_feed(&rp, p, cut, &e2);
    if (rc2 == 0)
        rc2 = ij_kube_rparser_feed(&rp, p + cut, n - cut, &e2);
    if (rc2 == 0)
        rc2 = ij_kube_rparser_eof(&rp, &e2);
    if (rc2 != 0)
        ij_kube_resp_deinit(&parts);
    check_resp(rc2, &parts, e2);
    if (rc1 != rc2)
        __builtin_trap();
    if (rc1 == 0 && (whole.status != parts.status || whole.body_len != parts.body_len ||
                     memcmp(whole.body, parts.body, whole.body_len) != 0 ||
                     strcmp(whole.reason, parts.reason) != 0))
        __builtin_trap();
    ij_kube_resp_deinit(&whole);
    ij_kube_resp_deinit(&parts);
    free(e1);
    free(e2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0:
        fuzz_response(p, n);
        break;
    case 1:
        if (n > 0)
            fuzz_split(p + 1, n - 1, (unsigned char)p[0]);
        break;
    case 2:
        check_ns_list(p, n);
        break;
    default:
        check_configmap(p, n);
        break;
    }
    return 0;
}
