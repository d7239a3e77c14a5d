/* The policy decision (docs/policy.md "Semantics"): a request or TCP connection,
 * seen once as a px_policy_view, against the compiled rules; deny rules first,
 * through the index (policy_index.c), then allow rules, then `default`.
 *
 * Missing attributes. A request without a verified peer has no principal and no
 * namespace; a header may be absent or repeated. The rule is that none of this
 * may help a request in: in allow rules a condition on a missing principal or
 * namespace fails (not_ forms included) and a repeated header must match in
 * every copy; in deny rules a not_ condition on a missing principal holds (the
 * request is indeed "not" that principal: Istio's notPrincipals ["*"] idiom) and
 * one matching copy of a repeated header is enough. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "common/net.h"
#include "proxy/policy_int.h"

/* ---- deciding --------------------------------------------------------------------- */
/* The namespace of "spiffe://<td>/ns/<ns>/sa/<sa>", or NULL. */
static const char *principal_ns(const char *id, size_t n, size_t *nslen)
{
    if (n < SPIFFE_PREFIX_LEN || memcmp(id, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN) != 0)
        return NULL;
    const char *end = id + n;
    const char *slash = memchr(id + SPIFFE_PREFIX_LEN, '/', n - SPIFFE_PREFIX_LEN);
    if (slash == NULL || end - slash < 4 || memcmp(slash, "/ns/", 4) != 0)
        return NULL;
    const char *ns = slash + 4;
    const char *e = memchr(ns, '/', (size_t)(end - ns));
    if (e == NULL || e == ns)
        return NULL;
    *nslen = (size_t)(e - ns);
    return ns;
}

static bool header_match(const struct hcond *h, const struct px_msg *m, bool deny)
{
    if (m == NULL)
        return false;
    if (h->authority)
        return m->authority != NULL && plist_match(&h->values, m->authority, strlen(m->authority));
    /* A repeated header never helps: a deny rule needs one matching copy, an
     * allow rule needs every copy to match. */
    bool seen = false;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *x = &m->hdrs[i];
        if (x->namelen != h->namelen || memcmp(x->name, h->name, h->namelen) != 0)
            continue;
        bool ok = plist_match(&h->values, x->value ? x->value : "", x->valuelen);
        if (deny && ok)
            return true;
        if (!deny && !ok)
            return false;
        seen = true;
    }
    return !deny && seen;
}

static bool ip_blocks_hold(const struct rule *r, uint32_t c, const struct px_policy_view *v)
{
    if ((c & C_IP_BLOCKS) &&
        (!v->has_ip || !px_policy_cidr_match(&r->ip_blocks, v->ip, v->ipfamily)))
        return false;
    if (c & C_NOT_IP_BLOCKS) {
        if (!v->has_ip ? !r->deny : px_policy_cidr_match(&r->not_ip_blocks, v->ip, v->ipfamily))
            return false;
    }
    return true;
}

static bool rule_match(const struct rule *r, const struct px_policy_view *v)
{
    uint32_t c = r->conds;
    if (__builtin_expect(v->tcp, 0) && (c & C_HTTP_ONLY)) {
        if (!r->deny)
            return false;            /* an HTTP-only allow never admits a TCP connection */
        c &= ~(uint32_t)C_HTTP_ONLY; /* a deny matches with them ignored */
    }
    if ((c & (C_IP_BLOCKS | C_NOT_IP_BLOCKS)) && !ip_blocks_hold(r, c, v))
        return false;
    if ((c & C_PORTS) && !port_in(&r->ports, v->port))
        return false;
    if ((c & C_NOT_PORTS) && port_in(&r->not_ports, v->port))
        return false;
    if ((c & C_METHODS) && !(r->methods & v->mbit))
        return false;
    if ((c & C_NOT_METHODS) && (r->not_methods & v->mbit))
        return false;
    if ((c & C_PRINCIPALS) &&
        (v->principal == NULL || !plist_match(&r->principals, v->principal, v->plen)))
        return false;
    if (c & C_NOT_PRINCIPALS) {
        if (v->principal == NULL ? !r->deny
                                 : plist_match(&r->not_principals, v->principal, v->plen))
            return false;
    }
    if ((c & C_NAMESPACES) && (v->ns == NULL || !plist_match(&r->namespaces, v->ns, v->nslen)))
        return false;
    if (c & C_NOT_NAMESPACES) {
        if (v->ns == NULL ? !r->deny : plist_match(&r->not_namespaces, v->ns, v->nslen))
            return false;
    }
    if ((c & C_PATHS) && !plist_match(&r->paths, v->path, v->pathlen))
        return false;
    if ((c & C_NOT_PATHS) && plist_match(&r->not_paths, v->path, v->pathlen))
        return false;
    for (uint32_t i = 0; (c & C_HEADERS) && i < r->nheaders; i++)
        if (!header_match(&r->headers[i], v->msg, r->deny))
            return false;
    return true;
}

/* The first rule of `list` that matches, if it comes before *best. */
static void scan(const struct px_policy *p, const uint32_t *list, uint32_t n,
                 const struct px_policy_view *v, uint32_t *best)
{
    for (uint32_t i = 0; i < n && list[i] < *best; i++) {
        if (rule_match(&p->rules[list[i]], v)) {
            *best = list[i];
            return;
        }
    }
}

static void scan_bucket(const struct px_policy *p, const struct table *t, const char *k, size_t n,
                        uint64_t h, const struct px_policy_view *v, uint32_t *best)
{
    const struct bucket *b = table_get(t, k, n, h, false);
    if (b != NULL)
        scan(p, b->rules, b->n, v, best);
}

/* The first rule of this index (in file order) that matches, or -1. */
static int64_t find(const struct px_policy *p, const struct index *ix,
                    const struct px_policy_view *v)
{
    uint32_t best = UINT32_MAX;
    scan(p, ix->generic, ix->ngeneric, v, &best);
    if (v->principal != NULL && ix->by_principal.nkeys > 0)
        scan_bucket(p, &ix->by_principal, v->principal, v->plen, v->phash, v, &best);
    if (v->ns != NULL && ix->by_ns.nkeys > 0)
        scan_bucket(p, &ix->by_ns, v->ns, v->nslen, v->nshash, v, &best);
    if (v->path != NULL && ix->by_path.nkeys > 0)
        scan_bucket(p, &ix->by_path, v->path, v->pathlen, v->pathhash, v, &best);
    if (v->path != NULL && ix->nprefix_lens > 0) {
        /* every prefix of the path whose length some pattern has */
        uint64_t h = FNV_INIT;
        size_t done = 0;
        for (uint32_t i = 0; i < ix->nprefix_lens && ix->prefix_lens[i] <= v->pathlen; i++) {
            size_t len = ix->prefix_lens[i];
            h = fnv_extend(h, v->path + done, len - done);
            done = len;
            scan_bucket(p, &ix->by_prefix, v->path, len, h, v, &best);
        }
    }
    if (v->path != NULL && ix->nsuffix_lens > 0) {
        /* every suffix likewise, hashed from the end of the path */
        uint64_t h = FNV_INIT;
        size_t done = 0;
        for (uint32_t i = 0; i < ix->nsuffix_lens && ix->suffix_lens[i] <= v->pathlen; i++) {
            size_t len = ix->suffix_lens[i];
            h = fnv_extend_rev(h, v->path + v->pathlen - len, len - done);
            done = len;
            scan_bucket(p, &ix->by_suffix, v->path + v->pathlen - len, len, h, v, &best);
        }
    }
    if (ix->by_header.nkeys > 0 && v->msg != NULL) {
        const struct px_msg *m = v->msg;
        if (m->authority != NULL)
            scan_bucket(p, &ix->by_header, AUTHORITY_KEY, strlen(AUTHORITY_KEY),
                        hash_bytes(AUTHORITY_KEY, strlen(AUTHORITY_KEY)), v, &best);
        for (uint32_t i = 0; i < m->nhdrs; i++) {
            const struct px_hdr *x = &m->hdrs[i];
            if (i > 0 && x->namelen == m->hdrs[i - 1].namelen &&
                memcmp(x->name, m->hdrs[i - 1].name, x->namelen) == 0)
                continue; /* the same name again: already looked at */
            scan_bucket(p, &ix->by_header, x->name, x->namelen, hash_bytes(x->name, x->namelen), v,
                        &best);
        }
    }
    if (ix->by_port.nkeys > 0) {
        char key[2];
        port_key(v->port, key);
        scan_bucket(p, &ix->by_port, key, 2, hash_bytes(key, 2), v, &best);
    }
    return best == UINT32_MAX ? -1 : (int64_t)best;
}

/* The same answer without the index: every rule of the action, in file order. */
static int64_t find_linear(const struct px_policy *p, bool deny, const struct px_policy_view *v)
{
    for (uint32_t i = 0; i < p->nrules; i++)
        if (p->rules[i].deny == deny && rule_match(&p->rules[i], v))
            return i;
    return -1;
}

/* Does a request header name differ from a name the policy matches only by '_'
 * for '-'? An exact match with some policy name is not a clash. */
static bool underscore_clash(const struct px_policy *p, const struct px_msg *m)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *x = &m->hdrs[i];
        bool us = memchr(x->name, '_', x->namelen) != NULL;
        if (!us && !(p->hdr_underscore && memchr(x->name, '-', x->namelen) != NULL))
            continue;
        uint64_t h = name_hash(x->name, x->namelen);
        if (table_get(&p->hdr_mapped, x->name, x->namelen, h, true) != NULL &&
            table_get(&p->hdr_exact, x->name, x->namelen, h, false) == NULL)
            return true;
    }
    return false;
}

/* Inlined into px_policy_decide, as before the oracle moved out: a call costs
 * about 10% of a small decision (callgrind, make policy-bench). */
static inline __attribute__((always_inline)) int
prepare(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
        size_t scratch_len, struct px_policy_view *v, struct px_policy_decision *d)
{
    const struct px_msg *m = r->tcp ? NULL : r->req;
    memset(v, 0, sizeof(*v));
    d->enforce = p->mode == PX_POLICY_ENFORCE;
    d->rule = NULL;
    d->why = NULL;
    d->path = NULL;
    d->pathlen = 0;
    v->msg = m;
    v->tcp = r->tcp;
    if (p->needs_ip)
        v->has_ip = px_policy_source_bytes(r->source, v->ip, &v->ipfamily);
    v->port = r->port;
    v->mbit = method_bit(m ? m->method : NULL);
    if (r->principal != NULL && r->principal[0] != '\0') {
        v->principal = r->principal;
        v->plen = strlen(r->principal);
        v->ns = principal_ns(v->principal, v->plen, &v->nslen);
        if (p->index_principal)
            v->phash = hash_bytes(v->principal, v->plen);
        if (p->index_ns && v->ns != NULL)
            v->nshash = hash_bytes(v->ns, v->nslen);
    }
    if (m != NULL && p->hdr_mapped.nkeys > 0 && underscore_clash(p, m)) {
        d->verdict = PX_POLICY_BAD_HEADER;
        d->why = "a header name differs from one the policy matches only by '_' for '-'";
        return -1;
    }
    if (p->needs_path && !r->tcp) {
        const char *why = "path too long";
        const char *path = m && m->path ? m->path : "";
        int n = scratch != NULL ? px_policy_normalize_path(path, scratch, scratch_len, &why) : -1;
        if (n < 0) {
            d->verdict = PX_POLICY_BAD_PATH;
            d->why = why;
            return -1;
        }
        v->path = scratch;
        v->pathlen = (size_t)n;
        d->path = scratch;
        d->pathlen = (size_t)n;
        if (p->index_path)
            v->pathhash = hash_bytes(v->path, v->pathlen);
    }
    return 0;
}

static void conclude(const struct px_policy *p, int64_t deny, int64_t allow,
                     struct px_policy_decision *d)
{
    if (deny >= 0) {
        d->verdict = PX_POLICY_DENY;
        d->rule = p->rules[deny].name;
    } else if (p->nallow > 0) {
        d->verdict = allow >= 0 ? PX_POLICY_ALLOW : PX_POLICY_DENY;
        d->rule = allow >= 0 ? p->rules[allow].name : "default";
    } else {
        d->verdict = p->default_deny ? PX_POLICY_DENY : PX_POLICY_ALLOW;
        d->rule = "default";
    }
}

void px_policy_decide(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
                      size_t scratch_len, struct px_policy_decision *d)
{
    struct px_policy_view v;
    if (prepare(p, r, scratch, scratch_len, &v, d) != 0)
        return;
    if (v.tcp) {
        /* A connection is decided once, and the index files rules under HTTP
         * conditions a connection does not have: scan in file order. */
        int64_t tdeny = find_linear(p, true, &v);
        conclude(p, tdeny, tdeny < 0 ? find_linear(p, false, &v) : -1, d);
        return;
    }
    int64_t deny = p->ndeny ? find(p, &p->deny, &v) : -1;
    int64_t allow = deny < 0 && p->nallow ? find(p, &p->allow, &v) : -1;
    conclude(p, deny, allow, d);
}

/* The steps above for the test oracle (policy_int.h); px_policy_decide uses the
 * static ones, which the compiler inlines there as before the split. */
int px_policy_prepare(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
                      size_t scratch_len, struct px_policy_view *v, struct px_policy_decision *d)
{
    return prepare(p, r, scratch, scratch_len, v, d);
}

int64_t px_policy_find_linear(const struct px_policy *p, bool deny, const struct px_policy_view *v)
{
    return find_linear(p, deny, v);
}

void px_policy_conclude(const struct px_policy *p, int64_t deny, int64_t allow,
                        struct px_policy_decision *d)
{
    conclude(p, deny, allow, d);
}
