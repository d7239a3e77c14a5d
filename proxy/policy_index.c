/* The policy index (docs/policy.md "Performance").
 *
 * Index. Deny rules and allow rules each get an index, so a policy with a
 * thousand rules does not cost a thousand rule checks per request. A rule is
 * filed under one condition that must hold for it to match and that can be
 * looked up, the first of:
 *   - its `principals`, when all are exact SPIFFE IDs;
 *   - its `paths`, when none is "*": exact paths in one hash table, prefixes
 *     and suffixes in two more, looked up once per distinct prefix (suffix)
 *     length with a hash extended along the path (backwards for suffixes);
 *   - its `namespaces`, when all are exact;
 *   - the name of its first `when.headers` entry (the header must be there);
 *   - its `ports`;
 *   - else it is "generic" and looked at for every request.
 * A request looks at the generic rules and at the buckets of its principal,
 * namespace, path, path prefixes and suffixes, header names and port. Each list is
 * in file order; the answer is the smallest rule index that matches in any
 * list, and a list stops at its first match or at the best index found so far.
 * That is exactly the rule a plain scan in file order finds (and so the name in
 * the 403); px_policy_find_linear() (policy_decide.c) is that plain scan, and
 * the unit tests and the decision fuzzers hold the two to the same answer
 * (test/unit/proxy/policy_oracle.h). What stays linear: rules with nothing but
 * not_ forms, methods, or a "*" path (docs/policy.md). This file builds the
 * index; find() in policy_decide.c walks it. */
#include <stdlib.h>
#include <string.h>

#include "proxy/policy_int.h"

enum rule_class {
    CLASS_GENERIC = 0,
    CLASS_PRINCIPAL, /* filed under each of its exact principals */
    CLASS_PATH,      /* filed under each of its exact paths, prefixes and suffixes */
    CLASS_NS,        /* filed under each of its exact namespaces */
    CLASS_HEADER,    /* filed under the name of its first header condition */
    CLASS_PORT       /* filed under each of its ports */
};

static bool paths_indexable(const struct plist *l)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->v[i].kind == PAT_ANY)
            return false;
    return true;
}

static enum rule_class rule_class(const struct rule *r)
{
    if ((r->conds & C_PRINCIPALS) && plist_all_exact(&r->principals))
        return CLASS_PRINCIPAL;
    if ((r->conds & C_PATHS) && paths_indexable(&r->paths))
        return CLASS_PATH;
    if ((r->conds & C_NAMESPACES) && plist_all_exact(&r->namespaces))
        return CLASS_NS;
    if ((r->conds & C_HEADERS) && r->nheaders > 0)
        return CLASS_HEADER;
    if (r->conds & C_PORTS)
        return CLASS_PORT;
    return CLASS_GENERIC;
}

static void table_init(struct px_policy *p, struct table *t, size_t maxkeys)
{
    if (maxkeys == 0)
        return;
    size_t cap = 8;
    while (cap < maxkeys * 2)
        cap *= 2;
    t->b = px_arena_alloc(&p->arena, cap * sizeof(*t->b));
    memset(t->b, 0, cap * sizeof(*t->b));
    t->mask = (uint32_t)(cap - 1);
}

/* File rule i under key k (hash h): pass 0 counts, pass 1 stores. */
static void table_file_key(struct table *t, const char *k, size_t n, uint64_t h, uint32_t i,
                           int pass)
{
    struct bucket *b = NULL;
    for (uint32_t s = (uint32_t)h & t->mask;; s = (s + 1) & t->mask) {
        b = &t->b[s];
        if (b->key == NULL) {
            b->key = k;
            b->len = (uint32_t)n;
            b->hash = h;
            t->nkeys++;
            break;
        }
        if (b->hash == h && b->len == n && memcmp(b->key, k, n) == 0)
            break;
    }
    if (b->last == i + 1)
        return; /* the same key twice in one rule */
    b->last = i + 1;
    if (pass == 1)
        b->rules[b->n] = i;
    b->n++;
}

/* File rule i under every pattern of l of the given kind. */
static void table_file(struct table *t, const struct plist *l, uint8_t kind, uint32_t i, int pass)
{
    for (uint32_t k = 0; k < l->n; k++) {
        const struct pat *pt = &l->v[k];
        if (pt->kind != kind)
            continue;
        uint64_t h = kind == PAT_PREFIX   ? fnv_extend(FNV_INIT, pt->s, pt->len)
                     : kind == PAT_SUFFIX ? fnv_extend_rev(FNV_INIT, pt->s, pt->len)
                                          : hash_bytes(pt->s, pt->len);
        table_file_key(t, pt->s, pt->len, h, i, pass);
    }
}

static void table_alloc_buckets(struct px_policy *p, struct table *t)
{
    for (uint32_t i = 0; t->b && i <= t->mask; i++) {
        struct bucket *b = &t->b[i];
        if (b->key == NULL)
            continue;
        b->rules = px_arena_alloc(&p->arena, b->n * sizeof(*b->rules));
        b->n = 0;
        b->last = 0;
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The distinct key lengths of a table, ascending. */
static uint32_t key_lengths(struct px_policy *p, const struct table *t, uint32_t **out)
{
    *out = NULL;
    if (t->nkeys == 0)
        return 0;
    uint32_t *v = px_arena_alloc(&p->arena, t->nkeys * sizeof(*v));
    uint32_t n = 0;
    for (uint32_t i = 0; i <= t->mask; i++)
        if (t->b[i].key != NULL)
            v[n++] = t->b[i].len;
    qsort(v, n, sizeof(*v), cmp_u32);
    uint32_t u = 0;
    for (uint32_t i = 0; i < n; i++)
        if (u == 0 || v[u - 1] != v[i])
            v[u++] = v[i];
    *out = v;
    return u;
}

static void file_rule(struct px_policy *p, struct index *ix, const struct rule *r, uint32_t i,
                      int pass)
{
    switch (rule_class(r)) {
    case CLASS_PRINCIPAL:
        table_file(&ix->by_principal, &r->principals, PAT_EXACT, i, pass);
        break;
    case CLASS_PATH:
        table_file(&ix->by_path, &r->paths, PAT_EXACT, i, pass);
        table_file(&ix->by_prefix, &r->paths, PAT_PREFIX, i, pass);
        table_file(&ix->by_suffix, &r->paths, PAT_SUFFIX, i, pass);
        break;
    case CLASS_NS:
        table_file(&ix->by_ns, &r->namespaces, PAT_EXACT, i, pass);
        break;
    case CLASS_HEADER: {
        const struct hcond *h = &r->headers[0];
        const char *k = h->authority ? AUTHORITY_KEY : h->name;
        size_t n = h->authority ? strlen(AUTHORITY_KEY) : h->namelen;
        table_file_key(&ix->by_header, k, n, hash_bytes(k, n), i, pass);
        break;
    }
    case CLASS_PORT:
        for (uint32_t k = 0; k < r->ports.n; k++) {
            char *key = px_arena_alloc(&p->arena, 2);
            port_key(r->ports.v[k], key);
            table_file_key(&ix->by_port, key, 2, hash_bytes(key, 2), i, pass);
        }
        break;
    default:
        if (pass == 1)
            ix->generic[ix->ngeneric++] = i;
    }
}

static void index_build(struct px_policy *p, struct index *ix, bool deny)
{
    size_t ngen = 0, npk = 0, nnk = 0, npath = 0, nhdr = 0, nport = 0;
    for (uint32_t i = 0; i < p->nrules; i++) {
        const struct rule *r = &p->rules[i];
        if (r->deny != deny)
            continue;
        switch (rule_class(r)) {
        case CLASS_PRINCIPAL:
            npk += r->principals.n;
            break;
        case CLASS_PATH:
            npath += r->paths.n;
            break;
        case CLASS_NS:
            nnk += r->namespaces.n;
            break;
        case CLASS_HEADER:
            nhdr++;
            break;
        case CLASS_PORT:
            nport += r->ports.n;
            break;
        default:
            ngen++;
        }
    }
    ix->generic = px_arena_alloc(&p->arena, (ngen ? ngen : 1) * sizeof(*ix->generic));
    table_init(p, &ix->by_principal, npk);
    table_init(p, &ix->by_ns, nnk);
    table_init(p, &ix->by_path, npath);
    table_init(p, &ix->by_prefix, npath);
    table_init(p, &ix->by_suffix, npath);
    table_init(p, &ix->by_header, nhdr);
    table_init(p, &ix->by_port, nport);
    struct table *all[] = {&ix->by_principal, &ix->by_ns,     &ix->by_path, &ix->by_prefix,
                           &ix->by_suffix,    &ix->by_header, &ix->by_port};
    for (int pass = 0; pass < 2; pass++) {
        for (size_t t = 0; pass == 1 && t < sizeof(all) / sizeof(all[0]); t++)
            table_alloc_buckets(p, all[t]);
        for (uint32_t i = 0; i < p->nrules; i++)
            if (p->rules[i].deny == deny)
                file_rule(p, ix, &p->rules[i], i, pass);
    }
    ix->nprefix_lens = key_lengths(p, &ix->by_prefix, &ix->prefix_lens);
    ix->nsuffix_lens = key_lengths(p, &ix->by_suffix, &ix->suffix_lens);
}

/* The header names of every when.headers (Host/:authority aside), for
 * underscore_clash(). Both tables are keyed by name_hash(). */
static void header_names_build(struct px_policy *p)
{
    size_t n = 0;
    for (uint32_t i = 0; i < p->nrules; i++)
        n += p->rules[i].nheaders;
    table_init(p, &p->hdr_exact, n);
    table_init(p, &p->hdr_mapped, n);
    for (uint32_t i = 0; i < p->nrules; i++) {
        const struct rule *r = &p->rules[i];
        for (uint32_t k = 0; k < r->nheaders; k++) {
            const struct hcond *h = &r->headers[k];
            if (h->authority)
                continue;
            uint64_t hash = name_hash(h->name, h->namelen);
            if (table_get(&p->hdr_exact, h->name, h->namelen, hash, false) == NULL)
                table_file_key(&p->hdr_exact, h->name, h->namelen, hash, 0, 0);
            if (table_get(&p->hdr_mapped, h->name, h->namelen, hash, true) == NULL)
                table_file_key(&p->hdr_mapped, h->name, h->namelen, hash, 0, 0);
            if (memchr(h->name, '_', h->namelen) != NULL)
                p->hdr_underscore = true;
        }
    }
}

void px_policy_index_build(struct px_policy *p)
{
    index_build(p, &p->deny, true);
    index_build(p, &p->allow, false);
    header_names_build(p);
    p->index_principal = p->deny.by_principal.nkeys + p->allow.by_principal.nkeys > 0;
    p->index_ns = p->deny.by_ns.nkeys + p->allow.by_ns.nkeys > 0;
    p->index_path = p->deny.by_path.nkeys + p->allow.by_path.nkeys > 0;
}
