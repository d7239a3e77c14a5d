/* libFuzzer target for the policy loader (proxy/policy_*.c): the bytes are a
 * policy file. Either it compiles, and then it is consistent and decides a few
 * requests the same way through the index as through a plain scan in file
 * order, or it fails with a message naming the file, touching nothing - never
 * a crash, a leak, or an abort (cm_xmalloc is only reached for bounded sizes).
 * The plain scan (decide_linear) is test/unit/proxy/policy_oracle.h. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "test/unit/proxy/policy_oracle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char name[] = "fuzz.json";

/* A few requests touching every kind of condition. */
static const struct {
    const char *principal, *method, *path, *hname, *hvalue;
    uint16_t port;
} reqs[] = {
    {"spiffe://cluster.local/ns/shop/sa/frontend", "GET", "/api/items?x=1", "x-tenant", "acme",
     8080},
    {"spiffe://cluster.local/ns/ops/sa/admin", "DELETE", "//admin/../admin/", "x-debug", "", 9090},
    {NULL, "POST", "/%61dmin", "host", "web", 80},
    {"spiffe://other.example/ns/a/sa/b", "PROPFIND", "*", "user-agent", "curl/8", 1},
    {NULL, "GET", "/a%2fb", "x", "y", 65535},
};

static void same_decisions(const struct px_policy *p)
{
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        struct px_arena a;
        struct px_msg m;
        px_arena_init(&a);
        px_msg_init(&m);
        m.method = reqs[i].method;
        m.path = reqs[i].path;
        m.authority = "web.shop:8080";
        px_msg_add(&a, &m, reqs[i].hname, strlen(reqs[i].hname), reqs[i].hvalue,
                   strlen(reqs[i].hvalue), 1u << 16, 100);
        struct px_policy_request r = {
            .principal = reqs[i].principal, .port = reqs[i].port, .req = &m};
        char s1[64], s2[64];
        struct px_policy_decision d, dl;
        px_policy_decide(p, &r, s1, sizeof(s1), &d);
        decide_linear(p, &r, s2, sizeof(s2), &dl);
        if (d.verdict != dl.verdict || d.enforce != dl.enforce)
            __builtin_trap();
        if ((d.rule == NULL) != (dl.rule == NULL) || (d.rule && strcmp(d.rule, dl.rule) != 0))
            __builtin_trap();
        if (d.verdict != PX_POLICY_BAD_PATH && d.verdict != PX_POLICY_BAD_HEADER && d.rule == NULL)
            __builtin_trap();
        px_arena_deinit(&a);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_policy *const untouched = (struct px_policy *)(uintptr_t)1;
    struct px_policy *p = untouched;
    char *err = NULL;
    int rc = px_policy_parse(name, (const char *)data, size, &p, &err);
    if (rc != 0) {
        if (rc != CM_ERR_INVAL || p != untouched || err == NULL)
            __builtin_trap();
        if (strncmp(err, "fuzz.json: ", 11) != 0)
            __builtin_trap();
        free(err);
        /* the same bytes without a message buffer must fail the same way */
        if (px_policy_parse(name, (const char *)data, size, &p, NULL) != CM_ERR_INVAL ||
            p != untouched)
            __builtin_trap();
        return 0;
    }
    if (p == NULL || p == untouched || err != NULL)
        __builtin_trap();
    if (px_policy_nrules(p) != px_policy_nallow(p) + px_policy_ndeny(p) ||
        px_policy_nrules(p) > PX_POLICY_MAX_RULES || !json_is_object(px_policy_source(p)))
        __builtin_trap();
    for (uint32_t i = 0; i < p->nrules; i++) {
        size_t n = strlen(p->rules[i].name);
        if (n == 0 || n > PX_POLICY_MAX_NAME || strcmp(p->rules[i].name, "default") == 0)
            __builtin_trap();
    }
    same_decisions(p);
    px_policy_free(p);
    return 0;
}
