/* libFuzzer target for the path an inbound connection takes before any byte
 * is forwarded: protocol detection of its first bytes
 * (proxy/detect.c), then, whatever detection says (a TCP fallback can follow
 * any prefix: silence, EOF), the TCP decision of the policy (proxy/policy_decide.c)
 * on its L4 attributes.
 *
 * Input: 20 bytes of L4 attributes, then the connection's first bytes:
 *   [0]      bits 0-2: principal (one of six, or none); bit 3: source known;
 *            bit 4: IPv6 source; bit 5: IPv4-mapped IPv6; bits 6-7: policy (3 = the
 *            policy text after a "\n\n" in the bytes, when it compiles)
 *   [1..2]   destination port (big-endian)
 *   [3..18]  source address (IPv4 in the first 4)
 *   [19]     unused
 * Invariants (a violation traps):
 *   - detection: UNKNOWN only below PX_DETECT_MAX bytes, and once decided the
 *     answer never changes as more bytes arrive; leading empty lines before an
 *     HTTP/1 request line (within the skip bound) still detect HTTP/1;
 *   - the decision is deterministic (twice the same) and the plain scan agrees;
 *   - an allow rule with any HTTP-only condition never admits TCP;
 *   - a deny rule whose conditions are all HTTP-only denies every TCP
 *     connection (fail closed), so the verdict is DENY;
 *   - from.ip_blocks matching equals a bit-by-bit reference. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/detect.h"
#include "proxy/policy_int.h" /* px_policy_source_bytes, px_policy_cidr_match */
#include "test/unit/proxy/policy_oracle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const fixed[] = {
    /* an HTTP-only allow: TCP is denied by default */
    "{\"rules\": [{\"name\": \"public\", \"action\": \"allow\", \"to\": {\"paths\": "
    "[\"/public*\"]}},"
    " {\"name\": \"gets\", \"action\": \"allow\", \"to\": {\"methods\": [\"GET\"]},"
    " \"from\": {\"principals\": [\"cluster.local/ns/shop/sa/frontend\"]}}]}",
    /* an HTTP-only deny: TCP is always denied by it */
    "{\"rules\": [{\"name\": \"ops\", \"action\": \"deny\", \"from\": {\"namespaces\": [\"ops\"]}},"
    " {\"name\": \"admin\", \"action\": \"deny\", \"to\": {\"paths\": [\"/admin*\"]}},"
    " {\"name\": \"fe\", \"action\": \"allow\", \"from\": {\"principals\": [\"*\"]}}]}",
    /* L4 rules: principals, namespaces, ports, ip_blocks and their not_ forms */
    "{\"default\": \"deny\", \"mode\": \"audit\", \"rules\": ["
    " {\"name\": \"lan-deny\", \"action\": \"deny\", \"from\": {\"ip_blocks\": [\"10.0.0.0/8\","
    " \"fd00::/8\"]}, \"to\": {\"not_ports\": [9090]}},"
    " {\"name\": \"outsiders\", \"action\": \"deny\", \"from\": {\"not_ip_blocks\": "
    "[\"127.0.0.0/8\","
    " \"::1\", \"192.168.0.0/16\", \"10.1.2.0/23\"]}},"
    " {\"name\": \"x-debug\", \"action\": \"deny\", \"when\": {\"headers\": {\"x-debug\": \"*\"}},"
    " \"from\": {\"namespaces\": [\"dev\"]}},"
    " {\"name\": \"db\", \"action\": \"allow\", \"from\": {\"principals\": "
    "[\"cluster.local/ns/shop/sa/frontend\"], \"ip_blocks\": [\"127.0.0.1\", \"192.168.1.0/24\"]},"
    " \"to\": {\"ports\": [3306, 5432]}},"
    " {\"name\": \"ns\", \"action\": \"allow\", \"from\": {\"namespaces\": [\"shop\"]},"
    " \"to\": {\"methods\": [\"GET\"]}},"
    " {\"name\": \"any-9090\", \"action\": \"allow\", \"to\": {\"ports\": [9090]}}]}",
};
#define NFIXED (sizeof(fixed) / sizeof(fixed[0]))

static const char *const principals[] = {
    "spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/sa/admin",
    "spiffe://cluster.local/ns/dev/sa/x",         "spiffe://cluster.local/ns/shop/sa/db",
    "spiffe://other.domain/ns/shop/sa/frontend",  "spiffe://cluster.local",
};

static struct px_policy *policies[NFIXED];

static void init(void)
{
    for (size_t i = 0; i < NFIXED; i++) {
        char *err = NULL;
        if (policies[i] == NULL &&
            px_policy_parse("fixed.json", fixed[i], strlen(fixed[i]), &policies[i], &err) != 0)
            __builtin_trap(); /* a seed policy must compile */
    }
}

/* The reference: bit by bit. */
static bool ref_in_block(const struct cidr *c, const uint8_t ip[16], uint8_t family)
{
    if (c->family != family)
        return false;
    for (unsigned i = 0; i < c->bits; i++) {
        unsigned m = 0x80u >> (i % 8);
        if ((c->addr[i / 8] & m) != (ip[i / 8] & m))
            return false;
    }
    return true;
}

static void check_detect(const uint8_t *b, size_t n)
{
    enum px_conn_proto decided = PX_PROTO_UNKNOWN;
    if (n > 256)
        n = 256;
    for (size_t k = 0; k <= n; k++) {
        enum px_conn_proto p = px_detect(b, k);
        if (p == PX_PROTO_UNKNOWN && k >= PX_DETECT_MAX)
            __builtin_trap();
        if (decided != PX_PROTO_UNKNOWN && p != decided)
            __builtin_trap();
        decided = p;
    }
    /* empty lines before a request line do not turn it into TCP */
    if (n > 0 && n < 200 && px_detect(b, n) == PX_PROTO_HTTP1 && b[0] != '\r' && b[0] != '\n') {
        uint8_t buf[256];
        memcpy(buf, "\r\n\n", 3);
        memcpy(buf + 3, b, n);
        if (px_detect(buf, n + 3) != PX_PROTO_HTTP1)
            __builtin_trap();
    }
}

static void check_decision(const struct px_policy *p, const struct px_policy_request *r)
{
    struct px_policy_decision d, d2, dl;
    px_policy_decide(p, r, NULL, 0, &d);
    px_policy_decide(p, r, NULL, 0, &d2);
    decide_linear(p, r, NULL, 0, &dl);
    if (d.verdict != PX_POLICY_ALLOW && d.verdict != PX_POLICY_DENY)
        __builtin_trap(); /* TCP has no path or header to refuse */
    if (d.rule == NULL || d2.verdict != d.verdict || strcmp(d.rule, d2.rule) != 0 ||
        dl.verdict != d.verdict || strcmp(d.rule, dl.rule) != 0)
        __builtin_trap();
    if (d.enforce != (p->mode == PX_POLICY_ENFORCE))
        __builtin_trap();
    bool http_only_deny = false;
    for (uint32_t i = 0; i < p->nrules; i++) {
        const struct rule *x = &p->rules[i];
        if (x->deny && x->conds != 0 && (x->conds & ~(uint32_t)C_HTTP_ONLY) == 0)
            http_only_deny = true;
        if (!x->deny && d.verdict == PX_POLICY_ALLOW && strcmp(d.rule, x->name) == 0 &&
            (x->conds & C_HTTP_ONLY))
            __builtin_trap(); /* an HTTP-only allow admitted TCP */
    }
    if (http_only_deny && d.verdict != PX_POLICY_DENY)
        __builtin_trap();
}

static void check_cidrs(const struct px_policy *p, const struct cm_addr *a)
{
    uint8_t ip[16], fam = 0;
    if (!px_policy_source_bytes(a, ip, &fam))
        return;
    for (uint32_t i = 0; i < p->nrules; i++) {
        const struct cidrset *sets[2] = {&p->rules[i].ip_blocks, &p->rules[i].not_ip_blocks};
        for (int s = 0; s < 2; s++) {
            bool ref = false;
            for (uint32_t k = 0; k < sets[s]->n; k++)
                ref = ref || ref_in_block(&sets[s]->v[k], ip, fam);
            if (ref != px_policy_cidr_match(sets[s], ip, fam))
                __builtin_trap();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (size < 20)
        return 0;
    uint8_t flags = data[0];
    struct cm_addr src;
    memset(&src, 0, sizeof(src));
    if (flags & 0x10) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src.ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, data + 3, 16);
        if (flags & 0x20) {
            memset(&s6->sin6_addr, 0, 10);
            s6->sin6_addr.s6_addr[10] = 0xff;
            s6->sin6_addr.s6_addr[11] = 0xff;
        }
        src.len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&src.ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, data + 3, 4);
        src.len = sizeof(*s4);
    }
    unsigned pi = flags & 7;
    struct px_policy_request r = {
        .principal = pi < 6 ? principals[pi] : NULL,
        .port = (uint16_t)(data[1] << 8 | data[2]),
        .source = (flags & 0x08) ? &src : NULL,
        .tcp = true,
    };
    const uint8_t *bytes = data + 20;
    size_t n = size - 20;
    check_detect(bytes, n);

    struct px_policy *own = NULL;
    const struct px_policy *p;
    unsigned which = flags >> 6;
    if (which < NFIXED) {
        p = policies[which];
    } else {
        /* the policy is the text before a blank line */
        const uint8_t *sep = memmem(bytes, n, "\n\n", 2);
        char *err = NULL;
        if (sep == NULL)
            return 0;
        if (px_policy_parse("fuzz.json", (const char *)bytes, (size_t)(sep - bytes), &own, &err) !=
            0) {
            free(err);
            return 0;
        }
        p = own;
    }
    check_decision(p, &r);
    if (r.source != NULL)
        check_cidrs(p, r.source);
    px_policy_free(own);
    return 0;
}
