/* The policy compiler and loader (docs/policy.md): a JSON document, checked key
 * by key (errors name the file and the key), becomes an immutable px_policy
 * (proxy/policy_int.h) whose rules policy_index.c then files for lookup. Also
 * the facts the admin API and the log report about a compiled policy. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/err.h"
#include "common/json.h"
#include "common/xalloc.h"
#include "proxy/policy.h"
#include "proxy/policy_int.h"

/* ---- CIDRs ----------------------------------------------------------------------- */

int px_policy_parse_cidr(const char *s, uint8_t addr[16], uint8_t *family, uint8_t *bits,
                         const char **why)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    memset(addr, 0, 16);
    if (hl == 0 || hl >= sizeof(host)) {
        *why = "not an IPv4 or IPv6 address";
        return -1;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    unsigned max;
    if (inet_pton(AF_INET, host, addr) == 1) {
        *family = 4;
        max = 32;
    } else if (inet_pton(AF_INET6, host, addr) == 1) {
        *family = 6;
        max = 128;
    } else {
        *why = "not an IPv4 or IPv6 address";
        return -1;
    }
    unsigned b = max;
    if (slash != NULL) {
        const char *d = slash + 1;
        size_t dl = strlen(d);
        if (dl == 0 || dl > 3 || strspn(d, "0123456789") != dl || (dl > 1 && d[0] == '0')) {
            *why = "the prefix length is not a number";
            return -1;
        }
        b = (unsigned)strtoul(d, NULL, 10);
        if (b > max) {
            *why = *family == 4 ? "the prefix length of an IPv4 block is at most 32"
                                : "the prefix length of an IPv6 block is at most 128";
            return -1;
        }
    }
    for (unsigned i = b; i < max; i++) {
        if (addr[i / 8] & (0x80u >> (i % 8))) {
            *why = "bits set past the prefix length (write the network address)";
            return -1;
        }
    }
    *bits = (uint8_t)b;
    return 0;
}

/* ---- compiling ------------------------------------------------------------------- */

enum pat_use {
    USE_PRINCIPAL = 0, /* SPIFFE IDs */
    USE_NAMESPACE,     /* Kubernetes namespaces */
    USE_PATH,          /* request paths, after normalization */
    USE_HEADER         /* header values */
};

static char *arena_strndup(struct px_policy *p, const char *s, size_t n)
{
    return px_arena_strndup(&p->arena, s, n);
}

/* Is `lit` (with `pre` before it and `post` after it) unchanged by path
 * normalization? When not, *fixed gets the normalized text (heap) or the reason. */
static bool path_is_normal(const char *pre, const char *lit, size_t n, const char *post,
                           char **fixed, const char **why)
{
    size_t a = strlen(pre), b = strlen(post), len = a + n + b;
    char *in = cm_xmalloc(len + 1), *out = cm_xmalloc(len + 2);
    memcpy(in, pre, a);
    memcpy(in + a, lit, n);
    memcpy(in + a + n, post, b);
    in[len] = '\0';
    *why = NULL;
    *fixed = NULL;
    int m = px_policy_normalize_path(in, out, len + 2, why);
    bool ok = m >= 0 && (size_t)m == len && memcmp(in, out, len) == 0;
    if (!ok && m >= 0 && (size_t)m >= a + b) /* show the normal form of the literal */
        *fixed = cm_xstrndup(out + a, (size_t)m - a - b);
    free(in);
    free(out);
    return ok;
}

/* A namespace pattern's literal: DNS-1123 label characters. */
static bool ns_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool printable_no_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* Compile one pattern string for `use`. */
static int compile_pattern(struct px_policy *p, const struct cm_jpath *jp, json_t *v,
                           enum pat_use use, struct pat *out, char **errmsg)
{
    if (!json_is_string(v))
        return cm_json_fail(jp, errmsg, "expected a string");
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (strlen(s) != n)
        return cm_json_fail(jp, errmsg, "contains a NUL character");
    if (n == 0)
        return cm_json_fail(jp, errmsg, "empty pattern (\"*\" matches any value)");
    if (n > PX_POLICY_MAX_PATTERN)
        return cm_json_fail(jp, errmsg, "pattern longer than %d bytes", PX_POLICY_MAX_PATTERN);

    const char *lit = s;
    size_t len = n;
    uint8_t kind = PAT_EXACT;
    bool in_arena = false; /* lit already copied into the policy's arena */
    if (n == 1 && s[0] == '*') {
        kind = PAT_ANY;
        len = 0;
    } else if (s[0] == '*') {
        kind = PAT_SUFFIX;
        lit = s + 1;
        len = n - 1;
    } else if (s[n - 1] == '*') {
        kind = PAT_PREFIX;
        len = n - 1;
    }
    if (memchr(lit, '*', len) != NULL)
        return cm_json_fail(jp, errmsg,
                            "\"%s\": '*' may only stand alone, at the start or at the end", s);

    switch (use) {
    case USE_PRINCIPAL: {
        if (!printable_no_space(lit, len))
            return cm_json_fail(jp, errmsg, "\"%s\": spaces or control characters in a principal",
                                s);
        /* Istio writes principals without the scheme: accept both forms and
         * compare against the full "spiffe://..." ID. */
        bool add = kind != PAT_SUFFIX && kind != PAT_ANY &&
                   (len < SPIFFE_PREFIX_LEN || memcmp(lit, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN) != 0);
        if (add) {
            char *full = px_arena_alloc(&p->arena, SPIFFE_PREFIX_LEN + len + 1);
            memcpy(full, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN);
            memcpy(full + SPIFFE_PREFIX_LEN, lit, len);
            full[SPIFFE_PREFIX_LEN + len] = '\0';
            lit = full;
            len += SPIFFE_PREFIX_LEN;
            in_arena = true;
        }
        if (kind == PAT_EXACT) {
            char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
            char *e = NULL;
            if (len >= PKI_SPIFFE_MAX || pki_spiffe_parse(lit, td, ns, sa, &e) != 0) {
                int rc = cm_json_fail(jp, errmsg, "\"%s\" is not a SPIFFE ID: %s", s,
                                      e ? e : "longer than 255 characters");
                free(e);
                return rc;
            }
        }
        break;
    }
    case USE_NAMESPACE:
        if (!ns_chars(lit, len) || (kind == PAT_EXACT && len > 63))
            return cm_json_fail(jp, errmsg,
                                "\"%s\" is not a namespace (DNS-1123 label: a-z, 0-9, '-', "
                                "at most 63)",
                                s);
        break;
    case USE_PATH: {
        if (kind == PAT_ANY)
            break;
        if (memchr(lit, '?', len) != NULL)
            return cm_json_fail(
                jp, errmsg, "\"%s\": a path pattern cannot hold '?' (the query is not matched)", s);
        if (kind != PAT_SUFFIX && (len == 0 || lit[0] != '/'))
            return cm_json_fail(jp, errmsg, "\"%s\": a path must start with '/'", s);
        /* Requests are matched after normalization, so a pattern that is not
         * in normal form could never match: refuse it, and say what to write.
         * A sentinel 'x' makes a trailing "." of a prefix, or a leading one of
         * a suffix, part of a longer segment, as it is in the paths it matches. */
        char *fixed = NULL;
        const char *why = NULL;
        bool ok = kind == PAT_EXACT    ? path_is_normal("", lit, len, "", &fixed, &why)
                  : kind == PAT_PREFIX ? path_is_normal("", lit, len, "x", &fixed, &why)
                                       : path_is_normal("/x", lit, len, "", &fixed, &why);
        if (!ok) {
            int rc;
            if (fixed != NULL)
                rc = cm_json_fail(jp, errmsg,
                                  "\"%s\" is not a normalized path (requests are matched after "
                                  "normalization; write \"%s%s%s\")",
                                  s, kind == PAT_SUFFIX ? "*" : "", fixed,
                                  kind == PAT_PREFIX ? "*" : "");
            else
                rc = cm_json_fail(jp, errmsg, "\"%s\": %s", s, why ? why : "not a path");
            free(fixed);
            return rc;
        }
        break;
    }
    case USE_HEADER:
        if (!px_http_valid_value(lit, len))
            return cm_json_fail(jp, errmsg, "\"%s\": not a valid header value", s);
        break;
    }
    if (!in_arena)
        lit = arena_strndup(p, lit, len);
    out->s = lit;
    out->len = (uint32_t)len;
    out->kind = kind;
    return 0;
}

/* A rule's optional condition list: absent leaves *out NULL; present must be a
 * non-empty array of at most PX_POLICY_MAX_LIST entries, and gives the rule the
 * condition `bit`. */
static int get_list(const struct cm_jpath *parent, json_t *obj, const char *key, struct rule *r,
                    uint32_t bit, struct cm_jpath *lp, json_t **out, char **errmsg)
{
    *out = NULL;
    int rc = cm_json_get_child(parent, obj, key, false, JSON_ARRAY, out, errmsg);
    if (rc != 0 || *out == NULL)
        return rc;
    cm_jpath_key(lp, parent, key);
    size_t n = json_array_size(*out);
    if (n == 0)
        return cm_json_fail(lp, errmsg, "empty list (omit the key, or give at least one entry)");
    if (n > PX_POLICY_MAX_LIST)
        return cm_json_fail(lp, errmsg, "more than %d entries", PX_POLICY_MAX_LIST);
    r->conds |= bit;
    return 0;
}

/* Compiles one entry of a list (v, at ep) into *slot; `use` is an enum pat_use
 * for patterns. */
typedef int (*entry_fn)(struct px_policy *p, const struct cm_jpath *ep, json_t *v, enum pat_use use,
                        void *slot, char **errmsg);

/* Each entry of arr (at lp) compiled by `entry` into an array of `size`-byte
 * slots in p's arena: *v, and *n entries. */
static int each_entry(struct px_policy *p, const struct cm_jpath *lp, json_t *arr, size_t size,
                      entry_fn entry, enum pat_use use, void **v, uint32_t *n, char **errmsg)
{
    size_t len = json_array_size(arr);
    char *mem = px_arena_alloc(&p->arena, len * size);
    *v = mem;
    *n = 0;
    for (size_t i = 0; i < len; i++) {
        struct cm_jpath ep;
        cm_jpath_index(&ep, lp, i);
        if (entry(p, &ep, json_array_get(arr, i), use, mem + i * size, errmsg) != 0)
            return CM_ERR_INVAL;
        (*n)++;
    }
    return 0;
}

/* A rule's optional condition list under `key` of obj (get_list), compiled by
 * each_entry; *v NULL and *n 0 when absent. */
static int opt_entries(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                       const char *key, struct rule *r, uint32_t bit, size_t size, entry_fn entry,
                       enum pat_use use, void **v, uint32_t *n, char **errmsg)
{
    struct cm_jpath lp;
    json_t *arr;
    *v = NULL;
    *n = 0;
    int rc = get_list(parent, obj, key, r, bit, &lp, &arr, errmsg);
    if (rc != 0 || arr == NULL)
        return rc;
    return each_entry(p, &lp, arr, size, entry, use, v, n, errmsg);
}

static int pattern_entry(struct px_policy *p, const struct cm_jpath *ep, json_t *v,
                         enum pat_use use, void *slot, char **errmsg)
{
    return compile_pattern(p, ep, v, use, slot, errmsg);
}

static int compile_plist(struct px_policy *p, const struct cm_jpath *lp, json_t *arr,
                         enum pat_use use, struct plist *out, char **errmsg)
{
    void *v;
    int rc = each_entry(p, lp, arr, sizeof(*out->v), pattern_entry, use, &v, &out->n, errmsg);
    out->v = v;
    return rc;
}

/* A list of patterns under `key` of obj, if present: sets `bit` in r->conds. */
static int opt_plist(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                     const char *key, enum pat_use use, struct plist *out, struct rule *r,
                     uint32_t bit, char **errmsg)
{
    void *v;
    int rc = opt_entries(p, parent, obj, key, r, bit, sizeof(*out->v), pattern_entry, use, &v,
                         &out->n, errmsg);
    out->v = v;
    return rc;
}

static int opt_methods(const struct cm_jpath *parent, json_t *obj, const char *key, uint32_t *mask,
                       struct rule *r, uint32_t bit, char **errmsg)
{
    struct cm_jpath lp;
    json_t *arr;
    int rc = get_list(parent, obj, key, r, bit, &lp, &arr, errmsg);
    if (rc != 0 || arr == NULL)
        return rc;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        struct cm_jpath ep;
        cm_jpath_index(&ep, &lp, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v))
            return cm_json_fail(&ep, errmsg, "expected a string");
        uint32_t b = method_bit(json_string_value(v));
        if (b == METHOD_OTHER || strlen(json_string_value(v)) != json_string_length(v))
            return cm_json_fail(&ep, errmsg,
                                "\"%s\" is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, "
                                "OPTIONS, TRACE, PATCH (upper case)",
                                json_string_value(v));
        *mask |= b;
    }
    return 0;
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static int port_entry(struct px_policy *p, const struct cm_jpath *ep, json_t *v, enum pat_use use,
                      void *slot, char **errmsg)
{
    (void)p;
    (void)use;
    long long port = -1;
    if (json_is_integer(v)) {
        port = json_integer_value(v);
    } else if (json_is_string(v)) { /* Istio writes ports as strings */
        const char *s = json_string_value(v);
        size_t sl = json_string_length(v);
        if (sl > 0 && sl <= 5 && strspn(s, "0123456789") == sl)
            port = strtoll(s, NULL, 10);
    }
    if (port < 1 || port > 65535)
        return cm_json_fail(ep, errmsg, "expected a port number 1-65535");
    *(uint16_t *)slot = (uint16_t)port;
    return 0;
}

static int opt_ports(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                     const char *key, struct portset *out, struct rule *r, uint32_t bit,
                     char **errmsg)
{
    void *v;
    int rc = opt_entries(p, parent, obj, key, r, bit, sizeof(*out->v), port_entry, USE_PATH, &v,
                         &out->n, errmsg);
    out->v = v;
    if (rc != 0 || out->n == 0)
        return rc;
    qsort(out->v, out->n, sizeof(*out->v), cmp_u16);
    uint32_t u = 0;
    for (uint32_t i = 0; i < out->n; i++)
        if (u == 0 || out->v[u - 1] != out->v[i])
            out->v[u++] = out->v[i];
    out->n = u;
    return 0;
}

static int cidr_entry(struct px_policy *p, const struct cm_jpath *ep, json_t *v, enum pat_use use,
                      void *slot, char **errmsg)
{
    (void)p;
    (void)use;
    if (!json_is_string(v))
        return cm_json_fail(ep, errmsg, "expected a string (a CIDR such as \"10.0.0.0/8\")");
    const char *s = json_string_value(v), *why = NULL;
    struct cidr *c = slot;
    if (strlen(s) != json_string_length(v) ||
        px_policy_parse_cidr(s, c->addr, &c->family, &c->bits, &why) != 0)
        return cm_json_fail(ep, errmsg, "\"%s\" is not a CIDR: %s", s,
                            why ? why : "contains a NUL character");
    return 0;
}

static int opt_cidrs(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                     const char *key, struct cidrset *out, struct rule *r, uint32_t bit,
                     char **errmsg)
{
    void *v;
    int rc = opt_entries(p, parent, obj, key, r, bit, sizeof(*out->v), cidr_entry, USE_PATH, &v,
                         &out->n, errmsg);
    out->v = v;
    return rc;
}

static int compile_from(struct px_policy *p, const struct cm_jpath *fp, json_t *from,
                        struct rule *r, char **errmsg)
{
    static const char *const keys[] = {
        "principals",    "namespaces", "not_principals", "not_namespaces", "ip_blocks",
        "not_ip_blocks", NULL};
    if (cm_json_check_keys(fp, from, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    if (json_object_size(from) == 0)
        return cm_json_fail(fp, errmsg,
                            "empty object (give principals, namespaces, ip_blocks or their "
                            "not_ forms, or omit it)");
    if (opt_cidrs(p, fp, from, "ip_blocks", &r->ip_blocks, r, C_IP_BLOCKS, errmsg) != 0 ||
        opt_cidrs(p, fp, from, "not_ip_blocks", &r->not_ip_blocks, r, C_NOT_IP_BLOCKS, errmsg) != 0)
        return CM_ERR_INVAL;
    if (opt_plist(p, fp, from, "principals", USE_PRINCIPAL, &r->principals, r, C_PRINCIPALS,
                  errmsg) != 0 ||
        opt_plist(p, fp, from, "namespaces", USE_NAMESPACE, &r->namespaces, r, C_NAMESPACES,
                  errmsg) != 0 ||
        opt_plist(p, fp, from, "not_principals", USE_PRINCIPAL, &r->not_principals, r,
                  C_NOT_PRINCIPALS, errmsg) != 0 ||
        opt_plist(p, fp, from, "not_namespaces", USE_NAMESPACE, &r->not_namespaces, r,
                  C_NOT_NAMESPACES, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

static int compile_to(struct px_policy *p, const struct cm_jpath *tp, json_t *to, struct rule *r,
                      char **errmsg)
{
    static const char *const keys[] = {"methods",   "paths",     "ports", "not_methods",
                                       "not_paths", "not_ports", NULL};
    if (cm_json_check_keys(tp, to, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    if (json_object_size(to) == 0)
        return cm_json_fail(tp, errmsg,
                            "empty object (give methods, paths, ports or their not_ forms, or "
                            "omit it)");
    if (opt_methods(tp, to, "methods", &r->methods, r, C_METHODS, errmsg) != 0 ||
        opt_plist(p, tp, to, "paths", USE_PATH, &r->paths, r, C_PATHS, errmsg) != 0 ||
        opt_ports(p, tp, to, "ports", &r->ports, r, C_PORTS, errmsg) != 0 ||
        opt_methods(tp, to, "not_methods", &r->not_methods, r, C_NOT_METHODS, errmsg) != 0 ||
        opt_plist(p, tp, to, "not_paths", USE_PATH, &r->not_paths, r, C_NOT_PATHS, errmsg) != 0 ||
        opt_ports(p, tp, to, "not_ports", &r->not_ports, r, C_NOT_PORTS, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

static int compile_when(struct px_policy *p, const struct cm_jpath *wp, json_t *when,
                        struct rule *r, char **errmsg)
{
    static const char *const keys[] = {"headers", NULL};
    if (cm_json_check_keys(wp, when, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    json_t *hdrs = NULL;
    if (cm_json_get_child(wp, when, "headers", true, JSON_OBJECT, &hdrs, errmsg) != 0)
        return CM_ERR_INVAL;
    struct cm_jpath hp;
    cm_jpath_key(&hp, wp, "headers");
    size_t n = json_object_size(hdrs);
    if (n == 0)
        return cm_json_fail(&hp, errmsg, "empty object (give header names, or omit when)");
    if (n > PX_POLICY_MAX_LIST)
        return cm_json_fail(&hp, errmsg, "more than %d headers", PX_POLICY_MAX_LIST);
    r->headers = px_arena_alloc(&p->arena, n * sizeof(*r->headers));
    r->nheaders = 0;
    r->conds |= C_HEADERS;
    const char *key;
    json_t *v;
    json_object_foreach(hdrs, key, v)
    {
        struct cm_jpath kp;
        cm_jpath_key(&kp, &hp, key);
        struct hcond *h = &r->headers[r->nheaders];
        size_t kl = strlen(key);
        char *name = arena_strndup(p, key, kl);
        for (size_t i = 0; i < kl; i++)
            if (name[i] >= 'A' && name[i] <= 'Z')
                name[i] = (char)(name[i] - 'A' + 'a');
        h->authority = strcmp(name, "host") == 0 || strcmp(name, ":authority") == 0;
        if (!h->authority && (kl == 0 || !px_http_valid_name(name, kl)))
            return cm_json_fail(&kp, errmsg,
                                "not a header name (pseudo-headers other than :authority are "
                                "matched by to.methods and to.paths)");
        if (strcmp(name, "x-forwarded-client-cert") == 0)
            return cm_json_fail(&kp, errmsg,
                                "the policy sees this header as the client sent it (the proxy "
                                "sets it after deciding): match the caller with from.principals");
        for (uint32_t i = 0; i < r->nheaders; i++)
            if (strcmp(r->headers[i].name, name) == 0 || (h->authority && r->headers[i].authority))
                return cm_json_fail(&kp, errmsg,
                                    "the same header twice (names are case-insensitive)");
        h->name = name;
        h->namelen = (uint32_t)kl;
        if (json_is_string(v)) {
            h->values.v = px_arena_alloc(&p->arena, sizeof(*h->values.v));
            h->values.n = 1;
            if (compile_pattern(p, &kp, v, USE_HEADER, &h->values.v[0], errmsg) != 0)
                return CM_ERR_INVAL;
        } else if (json_is_array(v)) {
            size_t m = json_array_size(v);
            if (m == 0)
                return cm_json_fail(&kp, errmsg, "empty list (\"*\" matches any value)");
            if (m > PX_POLICY_MAX_LIST)
                return cm_json_fail(&kp, errmsg, "more than %d entries", PX_POLICY_MAX_LIST);
            if (compile_plist(p, &kp, v, USE_HEADER, &h->values, errmsg) != 0)
                return CM_ERR_INVAL;
        } else {
            return cm_json_fail(&kp, errmsg, "expected a string or a list of strings");
        }
        r->nheaders++;
    }
    return 0;
}

static bool name_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':' || c == '/'))
            return false;
    }
    return true;
}

static int compile_rule(struct px_policy *p, const struct cm_jpath *rp, json_t *o, struct rule *r,
                        json_t *names, char **errmsg)
{
    static const char *const keys[] = {"name", "action", "from", "to", "when", NULL};
    static const char *const actions[] = {"allow", "deny", NULL};
    if (!json_is_object(o))
        return cm_json_fail(rp, errmsg, "expected an object");
    if (cm_json_check_keys(rp, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *name = NULL;
    int action = 0;
    if (cm_json_get_string(rp, o, "name", true, &name, errmsg) != 0)
        return CM_ERR_INVAL;
    struct cm_jpath np;
    cm_jpath_key(&np, rp, "name");
    size_t nl = json_string_length(json_object_get(o, "name"));
    if (nl == 0 || nl > PX_POLICY_MAX_NAME || strlen(name) != nl || !name_chars(name, nl))
        return cm_json_fail(&np, errmsg,
                            "a rule name is 1 to %d characters from A-Z a-z 0-9 - _ . : /",
                            PX_POLICY_MAX_NAME);
    if (strcmp(name, "default") == 0)
        return cm_json_fail(&np, errmsg,
                            "\"default\" is reserved (it names denials by the default)");
    json_t *seen = json_object_get(names, name);
    if (seen != NULL)
        return cm_json_fail(&np, errmsg, "\"%s\" is also the name of rules[%lld]", name,
                            (long long)json_integer_value(seen));
    json_object_set_new(names, name, json_integer((json_int_t)(r - p->rules)));
    r->name = arena_strndup(p, name, nl);
    if (cm_json_get_enum(rp, o, "action", true, actions, &action, errmsg) != 0)
        return CM_ERR_INVAL;
    r->deny = action == 1;

    json_t *from = NULL, *to = NULL, *when = NULL;
    struct cm_jpath fp, tp, wp;
    cm_jpath_key(&fp, rp, "from");
    cm_jpath_key(&tp, rp, "to");
    cm_jpath_key(&wp, rp, "when");
    if (cm_json_get_child(rp, o, "from", false, JSON_OBJECT, &from, errmsg) != 0 ||
        (from != NULL && compile_from(p, &fp, from, r, errmsg) != 0) ||
        cm_json_get_child(rp, o, "to", false, JSON_OBJECT, &to, errmsg) != 0 ||
        (to != NULL && compile_to(p, &tp, to, r, errmsg) != 0) ||
        cm_json_get_child(rp, o, "when", false, JSON_OBJECT, &when, errmsg) != 0 ||
        (when != NULL && compile_when(p, &wp, when, r, errmsg) != 0))
        return CM_ERR_INVAL;
    return 0;
}

/* ---- load ------------------------------------------------------------------------- */

void px_policy_free(struct px_policy *p)
{
    if (p == NULL)
        return;
    px_arena_deinit(&p->arena);
    json_decref(p->doc);
    free(p->name);
    free(p);
}

int px_policy_compile(const char *name, json_t *doc, struct px_policy **out, char **errmsg)
{
    static const char *const keys[] = {"default", "mode", "rules", "metrics", NULL};
    static const char *const mkeys[] = {"source_principal", NULL};
    static const char *const defaults[] = {"allow", "deny", NULL};
    static const char *const modes[] = {"enforce", "audit", NULL};
    struct px_policy *p = cm_xcalloc(1, sizeof(*p));
    px_arena_init(&p->arena);
    p->name = cm_xstrdup(name ? name : "policy");
    json_t *names = json_object();
    struct cm_jpath root;
    cm_jpath_root(&root, p->name);
    if (!json_is_object(doc)) {
        cm_json_fail(&root, errmsg, "expected a JSON object at the top level");
        goto fail;
    }
    p->doc = json_incref(doc);
    int def = 0, mode = 0;
    json_t *rules = NULL;
    if (cm_json_check_keys(&root, doc, keys, errmsg) != 0 ||
        cm_json_get_enum(&root, doc, "default", false, defaults, &def, errmsg) != 0 ||
        cm_json_get_enum(&root, doc, "mode", false, modes, &mode, errmsg) != 0 ||
        cm_json_get_child(&root, doc, "rules", false, JSON_ARRAY, &rules, errmsg) != 0)
        goto fail;
    /* "metrics": what the inbound request series carry (issue 18) */
    json_t *metrics = NULL;
    if (cm_json_get_child(&root, doc, "metrics", false, JSON_OBJECT, &metrics, errmsg) != 0)
        goto fail;
    if (metrics != NULL) {
        struct cm_jpath mp;
        cm_jpath_key(&mp, &root, "metrics");
        if (cm_json_check_keys(&mp, metrics, mkeys, errmsg) != 0 ||
            cm_json_get_bool(&mp, metrics, "source_principal", false, &p->metrics_source_principal,
                             errmsg) != 0)
            goto fail;
    }
    p->default_deny = def == 1;
    p->mode = mode == 1 ? PX_POLICY_AUDIT : PX_POLICY_ENFORCE;
    size_t n = rules ? json_array_size(rules) : 0;
    if (n > PX_POLICY_MAX_RULES) {
        struct cm_jpath rp;
        cm_jpath_key(&rp, &root, "rules");
        cm_json_fail(&rp, errmsg, "more than %d rules", PX_POLICY_MAX_RULES);
        goto fail;
    }
    p->rules = px_arena_alloc(&p->arena, (n ? n : 1) * sizeof(*p->rules));
    memset(p->rules, 0, (n ? n : 1) * sizeof(*p->rules));
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath rs, rp;
        cm_jpath_key(&rs, &root, "rules");
        cm_jpath_index(&rp, &rs, i);
        struct rule *r = &p->rules[i];
        if (compile_rule(p, &rp, json_array_get(rules, i), r, names, errmsg) != 0)
            goto fail;
        p->nrules++;
        if (r->deny)
            p->ndeny++;
        else
            p->nallow++;
        if (r->conds & (C_PATHS | C_NOT_PATHS))
            p->needs_path = true;
        if (r->conds & (C_IP_BLOCKS | C_NOT_IP_BLOCKS))
            p->needs_ip = true;
    }
    px_policy_index_build(p);
    json_decref(names);
    *out = p;
    return 0;

fail:
    json_decref(names);
    px_policy_free(p);
    return CM_ERR_INVAL;
}

int px_policy_parse(const char *name, const char *buf, size_t len, struct px_policy **out,
                    char **errmsg)
{
    json_t *doc;
    if (cm_json_load_buf(name, buf, len, true, &doc, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = px_policy_compile(name, doc, out, errmsg);
    json_decref(doc);
    return rc;
}

int px_policy_load_file(const char *file, struct px_policy **out, char **errmsg)
{
    json_t *doc;
    if (cm_json_load_file(file, true, &doc, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = px_policy_compile(file, doc, out, errmsg);
    json_decref(doc);
    return rc;
}

/* ---- facts ------------------------------------------------------------------------- */

enum px_policy_mode px_policy_mode(const struct px_policy *p)
{
    return p->mode;
}

bool px_policy_default_deny(const struct px_policy *p)
{
    return p->default_deny;
}

bool px_policy_metrics_source_principal(const struct px_policy *p)
{
    return p != NULL && p->metrics_source_principal;
}

size_t px_policy_nrules(const struct px_policy *p)
{
    return p->nrules;
}

size_t px_policy_nallow(const struct px_policy *p)
{
    return p->nallow;
}

size_t px_policy_ndeny(const struct px_policy *p)
{
    return p->ndeny;
}

const char *px_policy_name(const struct px_policy *p)
{
    return p->name;
}

json_t *px_policy_source(const struct px_policy *p)
{
    return p->doc;
}
