/* libFuzzer target for decisions and path normalization (proxy/policy_*.c),
 * against one fixed policy that uses every kind of condition. The input is a
 * request, one field per line:
 *     METHOD\nTARGET\nPRINCIPAL (empty: no peer)\nPORT\nname: value\n...
 * Invariants (a violation traps):
 *   - the indexed decision equals a plain scan of the rules in file order;
 *   - a normalized path is "*" or starts with '/', holds no "//", no "." or
 *     ".." segment, no '?', '#', '\', %2F or %5C, no lower-case escape, is no
 *     longer than the target, and normalizes to itself;
 *   - deciding on the normalized path gives the same answer as on the target;
 *   - deny rules win: the same request with x-debug added is denied. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pathnorm.h"
#include "proxy/pathnorm_int.h"
#include "test/unit/proxy/policy_oracle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char policy_text[] =
    "{\"default\": \"deny\", \"rules\": ["
    "{\"name\": \"debug\", \"action\": \"deny\", \"when\": {\"headers\": {\"x-debug\": \"*\"}}},"
    "{\"name\": \"admin\", \"action\": \"deny\", \"to\": {\"paths\": [\"/admin\", \"/admin/*\"]},"
    " \"from\": {\"not_namespaces\": [\"ops\"]}},"
    "{\"name\": \"mallory\", \"action\": \"deny\", \"from\": {\"principals\": "
    "[\"spiffe://cluster.local/ns/shop/sa/mallory\"]}},"
    "{\"name\": \"fe\", \"action\": \"allow\", \"from\": {\"principals\": "
    "[\"spiffe://cluster.local/ns/shop/sa/frontend\", \"cluster.local/ns/shop/sa/web\"]},"
    " \"to\": {\"methods\": [\"GET\", \"HEAD\"], \"paths\": [\"/api/*\", \"*.css\"], \"ports\": "
    "[8080, 8443]}},"
    "{\"name\": \"writes\", \"action\": \"allow\", \"from\": {\"namespaces\": [\"shop\"]},"
    " \"to\": {\"not_methods\": [\"GET\"], \"not_paths\": [\"/api/internal/*\"]},"
    " \"when\": {\"headers\": {\"x-tenant\": [\"acme\", \"corp-*\"], \"content-type\": "
    "\"*json\"}}},"
    "{\"name\": \"ops\", \"action\": \"allow\", \"from\": {\"namespaces\": [\"ops\", \"team-*\"]}},"
    "{\"name\": \"health\", \"action\": \"allow\", \"to\": {\"paths\": [\"/healthz\"], "
    "\"not_ports\": [15000]}},"
    "{\"name\": \"host\", \"action\": \"allow\", \"when\": {\"headers\": {\"host\": \"public.*\"}},"
    " \"from\": {\"not_principals\": [\"*/sa/bot\"]}}]}";

static struct px_policy *policy;

/* Next line of the input (without the newline), or NULL at the end. */
static char *next_line(char **cur)
{
    if (*cur == NULL)
        return NULL;
    char *s = *cur, *nl = strchr(s, '\n');
    if (nl != NULL) {
        *nl = '\0';
        *cur = nl + 1;
    } else {
        *cur = NULL;
    }
    return s;
}

static void decide_both(const struct px_policy_request *r, char *s1, char *s2, size_t n,
                        struct px_policy_decision *d)
{
    struct px_policy_decision dl;
    px_policy_decide(policy, r, s1, n, d);
    decide_linear(policy, r, s2, n, &dl);
    if (d->verdict != dl.verdict || (d->rule == NULL) != (dl.rule == NULL) ||
        (d->rule && strcmp(d->rule, dl.rule) != 0))
        __builtin_trap();
}

static void check_normal(const char *target, const char *out, int n)
{
    size_t len = (size_t)n;
    if (len != strlen(out) || len > strlen(target) + 1)
        __builtin_trap();
    if (strcmp(out, "*") == 0)
        return;
    if (out[0] != '/' || strstr(out, "//") || strstr(out, "/./") || strstr(out, "/../") ||
        strpbrk(out, "?#\\") != NULL)
        __builtin_trap();
    if ((len >= 2 && strcmp(out + len - 2, "/.") == 0) ||
        (len >= 3 && strcmp(out + len - 3, "/..") == 0))
        __builtin_trap();
    for (const char *p = strchr(out, '%'); p != NULL; p = strchr(p + 1, '%')) {
        int hi = px_pathnorm_hexval((unsigned char)p[1]),
            lo = hi >= 0 ? px_pathnorm_hexval((unsigned char)p[2]) : -1;
        if (hi < 0 || lo < 0 || (p[1] >= 'a' && p[1] <= 'f') || (p[2] >= 'a' && p[2] <= 'f'))
            __builtin_trap();
        int v = hi * 16 + lo;
        if (v == '/' || v == '\\' || v == 0 || px_pathnorm_unreserved((unsigned char)v))
            __builtin_trap();
    }
    char *again = malloc(len + 2);
    const char *why = NULL;
    int n2 = px_policy_normalize_path(out, again, len + 2, &why);
    if (n2 != n || strcmp(again, out) != 0)
        __builtin_trap();
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (policy == NULL) {
        char *err = NULL;
        if (px_policy_parse("fixed", policy_text, strlen(policy_text), &policy, &err) != 0)
            __builtin_trap();
    }
    if (size > 65536)
        return 0;
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *cur = buf;
    const char *method = next_line(&cur), *target = next_line(&cur);
    const char *principal = next_line(&cur), *port_s = next_line(&cur);
    struct px_arena a;
    struct px_msg m;
    px_arena_init(&a);
    px_msg_init(&m);
    m.method = method ? method : "GET";
    m.path = target ? target : "/";
    char *line;
    while ((line = next_line(&cur)) != NULL) {
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line)
            continue;
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        if (colon - line == 4 && strncmp(line, "host", 4) == 0)
            m.authority = v;
        else
            px_msg_add(&a, &m, line, (size_t)(colon - line), v, strlen(v), 1u << 20, 64);
    }
    struct px_policy_request r = {
        .principal = principal && principal[0] ? principal : NULL,
        .port = (uint16_t)(port_s ? strtoul(port_s, NULL, 10) : 8080),
        .req = &m,
    };
    size_t need = px_policy_scratch_size(m.path) + 8;
    char *s1 = malloc(need), *s2 = malloc(need), *norm = malloc(need);
    struct px_policy_decision d, d2;
    decide_both(&r, s1, s2, need, &d);

    const char *why = NULL;
    int n = px_policy_normalize_path(m.path, norm, need, &why);
    bool underscore = false; /* a header named like x_debug: refused before the path */
    for (uint32_t i = 0; i < m.nhdrs; i++)
        underscore = underscore || memchr(m.hdrs[i].name, '_', m.hdrs[i].namelen) != NULL;
    if (d.verdict == PX_POLICY_BAD_HEADER && !underscore)
        __builtin_trap();
    if (d.verdict != PX_POLICY_BAD_HEADER && (n < 0) != (d.verdict == PX_POLICY_BAD_PATH))
        __builtin_trap();
    if (d.verdict == PX_POLICY_BAD_HEADER) {
        /* refused before the path is looked at: nothing else to compare */
    } else if (n >= 0) {
        check_normal(m.path, norm, n);
        const char *orig = m.path;
        m.path = norm;
        decide_both(&r, s1, s2, need, &d2);
        if (d2.verdict != d.verdict || strcmp(d2.rule, d.rule) != 0)
            __builtin_trap();
        m.path = orig;
        /* deny rules come first: any x-debug makes it a denial by "debug" */
        px_msg_add(&a, &m, "x-debug", 7, "1", 1, 1u << 20, 1000);
        decide_both(&r, s1, s2, need, &d2);
        if (d2.verdict != PX_POLICY_DENY || strcmp(d2.rule, "debug") != 0)
            __builtin_trap();
    } else if (why == NULL) {
        __builtin_trap();
    }
    free(s1);
    free(s2);
    free(norm);
    px_arena_deinit(&a);
    free(buf);
    return 0;
}
