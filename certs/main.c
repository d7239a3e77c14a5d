/* remora-certs: make the mesh's root and intermediate CAs, the webhook's
 * serving certificate and static workload identities, and inspect them.
 * Errors are one line naming the flag or file; exit 2 on usage errors,
 * 1 on failures. See docs/certs.md. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/internal.h"
#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/xalloc.h"

#ifndef REMORA_VERSION
#define REMORA_VERSION "0.1.0"
#endif

#define EXIT_USAGE 2
#define PROG       "remora-certs"

static const char usage_text[] =
    "usage: " PROG " root --out-cert FILE --out-key FILE [--cn NAME] [--days N]\n"
    "       " PROG " intermediate --ca-cert FILE --ca-key FILE --out-cert FILE --out-key FILE\n"
    "                    [--cn NAME] [--days N]\n"
    "       " PROG " server --ca-cert FILE --ca-key FILE --dns NAME[,NAME...] --out-cert FILE\n"
    "                    --out-key FILE [--cn NAME] [--days N]\n"
    "       " PROG " workload --ca-cert FILE --ca-key FILE --spiffe-id ID --out-cert FILE\n"
    "                    --out-key FILE [--ttl-seconds N] [--root FILE]\n"
    "       " PROG " inspect [--json] FILE\n"
    "       " PROG " --version\n";

/* Every flag any subcommand takes; each subcommand says which it allows. */
enum opt {
    OPT_OUT_CERT = 1,
    OPT_OUT_KEY,
    OPT_CA_CERT,
    OPT_CA_KEY,
    OPT_CN,
    OPT_DAYS,
    OPT_DNS,
    OPT_SPIFFE_ID,
    OPT_TTL,
    OPT_ROOT,
    OPT_KEY,
    OPT_OUT,
    OPT_JSON,
    OPT_HELP,
    OPT_MAX
};

static const struct option long_opts[] = {
    {"out-cert", required_argument, NULL, OPT_OUT_CERT},
    {"out-key", required_argument, NULL, OPT_OUT_KEY},
    {"ca-cert", required_argument, NULL, OPT_CA_CERT},
    {"ca-key", required_argument, NULL, OPT_CA_KEY},
    {"cn", required_argument, NULL, OPT_CN},
    {"days", required_argument, NULL, OPT_DAYS},
    {"dns", required_argument, NULL, OPT_DNS},
    {"spiffe-id", required_argument, NULL, OPT_SPIFFE_ID},
    {"ttl-seconds", required_argument, NULL, OPT_TTL},
    {"root", required_argument, NULL, OPT_ROOT},
    {"key", required_argument, NULL, OPT_KEY},
    {"out", required_argument, NULL, OPT_OUT},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

struct args {
    const char *cmd;
    const char *val[OPT_MAX];
    bool json, help;
    const char *file; /* inspect's operand */
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (" PROG " --help)\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static int failure(char *errmsg)
{
    fprintf(stderr, PROG ": %s\n", errmsg ? errmsg : "failed");
    free(errmsg);
    return EXIT_FAILURE;
}

static const char *flag_name(int opt)
{
    for (const struct option *o = long_opts; o->name != NULL; o++)
        if (o->val == opt)
            return o->name;
    return "?";
}

/* Parse the flags after the subcommand; `allowed` lists the accepted
 * options, 0-terminated. Returns 0 or EXIT_USAGE (message printed). */
static int parse_flags(int argc, char **argv, const int *allowed, struct args *a)
{
    opterr = 0;
    optind = 1; /* argv[0] is the subcommand */
    int c;
    while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
        if (c == '?')
            return usage_error("%s: unknown flag %s", a->cmd, argv[optind - 1]);
        if (c == ':')
            return usage_error("%s: %s needs a value", a->cmd, argv[optind - 1]);
        bool ok = false;
        for (const int *p = allowed; *p != 0; p++)
            ok |= *p == c;
        if (!ok)
            return usage_error("%s: --%s does not apply", a->cmd, flag_name(c));
        if (c == OPT_JSON)
            a->json = true;
        else if (c == OPT_HELP)
            a->help = true;
        else if (a->val[c] != NULL)
            return usage_error("%s: --%s given twice", a->cmd, flag_name(c));
        else if (optarg[0] == '\0')
            return usage_error("%s: --%s: empty value", a->cmd, flag_name(c));
        else
            a->val[c] = optarg;
    }
    if (a->help)
        return 0;
    if (optind < argc && strcmp(a->cmd, "inspect") != 0)
        return usage_error("%s: unexpected argument %s", a->cmd, argv[optind]);
    if (strcmp(a->cmd, "inspect") == 0) {
        if (optind >= argc)
            return usage_error("inspect: FILE is required");
        if (optind + 1 < argc)
            return usage_error("inspect: one FILE only (got %s too)", argv[optind + 1]);
        a->file = argv[optind];
    }
    return 0;
}

static int require(const struct args *a, const int *needed)
{
    for (const int *p = needed; *p != 0; p++)
        if (a->val[*p] == NULL)
            return usage_error("%s: --%s is required", a->cmd, flag_name(*p));
    return 0;
}

/* Whole decimal number in [min, max] from flag `opt` (default when unset). */
static int number(const struct args *a, int opt, unsigned long min, unsigned long max,
                  unsigned long dflt, unsigned long *out)
{
    const char *s = a->val[opt];
    if (s == NULL) {
        *out = dflt;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v < min || v > max)
        return usage_error("%s: --%s: expected a whole number %lu..%lu, got \"%s\"", a->cmd,
                           flag_name(opt), min, max, s);
    *out = v;
    return 0;
}

static int read_text(const char *path, char **out, size_t max, char **errmsg)
{
    unsigned char *buf;
    size_t len;
    int rc = pki_read_file(path, max, &buf, &len, errmsg);
    if (rc == 0)
        *out = (char *)buf;
    return rc;
}

/* Write the key (0600) first, then the certificate (0644). */
static int write_pair(const struct args *a, const char *cert, char *key)
{
    char *err = NULL;
    int rc = pki_write_file(a->val[OPT_OUT_KEY], key, strlen(key), 0600, &err);
    mbedtls_platform_zeroize(key, strlen(key));
    if (rc == 0)
        rc = pki_write_file(a->val[OPT_OUT_CERT], cert, strlen(cert), 0644, &err);
    if (rc != 0)
        return failure(err);
    return 0;
}

/* Name the flag or files a pki_make_* error is about. */
static int make_failure(const struct args *a, char *err)
{
    char *m;
    if (strncmp(err, "common name", 11) == 0)
        m = cm_xasprintf("--cn: %s", err);
    else if (strncmp(err, "DNS name", 8) == 0 || strncmp(err, "server certificate", 18) == 0)
        m = cm_xasprintf("--dns: %s", err);
    else if (strncmp(err, "issuer", 6) == 0)
        m = cm_xasprintf("%s, %s: %s", a->val[OPT_CA_CERT], a->val[OPT_CA_KEY], err);
    else
        m = cm_xstrdup(err);
    free(err);
    return failure(m);
}

static int load_issuer_files(const struct args *a, char **cert, char **key)
{
    char *err = NULL;
    *cert = *key = NULL;
    if (read_text(a->val[OPT_CA_CERT], cert, PKI_MAX_PEM, &err) != 0 ||
        read_text(a->val[OPT_CA_KEY], key, PKI_MAX_KEY, &err) != 0) {
        free(*cert);
        *cert = NULL;
        return failure(err);
    }
    return 0;
}

static int cmd_root(struct args *a)
{
    static const int needed[] = {OPT_OUT_CERT, OPT_OUT_KEY, 0};
    unsigned long days;
    char *cert, *key, *err = NULL;
    int rc;
    if ((rc = require(a, needed)) != 0 || (rc = number(a, OPT_DAYS, 1, 36500, 3650, &days)) != 0)
        return rc;
    if (pki_make_root(a->val[OPT_CN], (uint32_t)days, &cert, &key, &err) != 0)
        return make_failure(a, err);
    rc = write_pair(a, cert, key);
    free(cert);
    free(key);
    return rc;
}

static int cmd_intermediate(struct args *a)
{
    static const int needed[] = {OPT_CA_CERT, OPT_CA_KEY, OPT_OUT_CERT, OPT_OUT_KEY, 0};
    unsigned long days;
    char *icert, *ikey, *cert, *key, *err = NULL;
    int rc;
    if ((rc = require(a, needed)) != 0 || (rc = number(a, OPT_DAYS, 1, 36500, 1825, &days)) != 0)
        return rc;
    if ((rc = load_issuer_files(a, &icert, &ikey)) != 0)
        return rc;
    rc = pki_make_intermediate(a->val[OPT_CN], (uint32_t)days, icert, ikey, &cert, &key, &err);
    free(icert);
    mbedtls_platform_zeroize(ikey, strlen(ikey));
    free(ikey);
    if (rc != 0)
        return make_failure(a, err);
    rc = write_pair(a, cert, key);
    free(cert);
    free(key);
    return rc;
}

static int cmd_server(struct args *a)
{
    static const int needed[] = {OPT_CA_CERT, OPT_CA_KEY, OPT_DNS, OPT_OUT_CERT, OPT_OUT_KEY, 0};
    unsigned long days;
    char *icert, *ikey, *cert, *key, *err = NULL;
    int rc;
    if ((rc = require(a, needed)) != 0 || (rc = number(a, OPT_DAYS, 1, 36500, 365, &days)) != 0)
        return rc;
    /* split --dns a,b,c (no empty names) */
    char *list = cm_xstrdup(a->val[OPT_DNS]);
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    const char **names = cm_xcalloc(n + 1, sizeof(*names));
    size_t i = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save))
        names[i++] = tok;
    if (i != n) {
        free(names);
        free(list);
        return usage_error("server: --dns: empty name in \"%s\"", a->val[OPT_DNS]);
    }
    if ((rc = load_issuer_files(a, &icert, &ikey)) != 0)
        goto out;
    rc = pki_make_server(a->val[OPT_CN], names, (uint32_t)days, icert, ikey, &cert, &key, &err);
    free(icert);
    mbedtls_platform_zeroize(ikey, strlen(ikey));
    free(ikey);
    if (rc != 0) {
        rc = make_failure(a, err);
        goto out;
    }
    rc = write_pair(a, cert, key);
    free(cert);
    free(key);
out:
    free(names);
    free(list);
    return rc;
}

static int cmd_workload(struct args *a)
{
    static const int needed[] = {OPT_CA_CERT,  OPT_CA_KEY,  OPT_SPIFFE_ID,
                                 OPT_OUT_CERT, OPT_OUT_KEY, 0};
    unsigned long ttl;
    char *chain = NULL, *keypem = NULL, *err = NULL;
    struct pki_ca ca;
    mbedtls_pk_context key;
    int rc;
    if ((rc = require(a, needed)) != 0 ||
        (rc = number(a, OPT_TTL, 1, 10ul * 366 * 86400, 86400, &ttl)) != 0)
        return rc;
    if (pki_spiffe_parse(a->val[OPT_SPIFFE_ID], NULL, NULL, NULL, &err) != 0) {
        char *m = cm_xasprintf("--spiffe-id: %s", err);
        free(err);
        return failure(m);
    }
    if (pki_ca_load(&ca, a->val[OPT_CA_CERT], a->val[OPT_CA_KEY], a->val[OPT_ROOT], &err) != 0)
        return failure(err);
    mbedtls_pk_init(&key);
    if (pki_key_generate(&key, &err) != 0 ||
        pki_sign_workload(&ca, &key, a->val[OPT_SPIFFE_ID], (uint32_t)ttl, &chain, &err) != 0 ||
        pki_key_write_pem(&key, &keypem, &err) != 0) {
        rc = failure(err);
        goto out;
    }
    rc = write_pair(a, chain, keypem);
out:
    free(chain);
    free(keypem);
    mbedtls_pk_free(&key);
    pki_ca_free(&ca);
    return rc;
}

/* Hidden: a CSR for an existing key, for tests (openssl req -verify). */
static int cmd_csr(struct args *a)
{
    static const int needed[] = {OPT_KEY, OPT_SPIFFE_ID, 0};
    char *pem = NULL, *err = NULL;
    mbedtls_pk_context key;
    int rc;
    if ((rc = require(a, needed)) != 0)
        return rc;
    mbedtls_pk_init(&key);
    if (pki_key_load_file(&key, a->val[OPT_KEY], &err) != 0) {
        rc = failure(err);
        goto out;
    }
    if (pki_csr_new(&key, a->val[OPT_SPIFFE_ID], &pem, &err) != 0) {
        char *m = cm_xasprintf("--spiffe-id: %s", err);
        free(err);
        rc = failure(m);
        goto out;
    }
    if (a->val[OPT_OUT] != NULL) {
        if (pki_write_file(a->val[OPT_OUT], pem, strlen(pem), 0644, &err) != 0)
            rc = failure(err);
    } else if (fputs(pem, stdout) == EOF || fflush(stdout) != 0) {
        rc = failure(cm_xstrdup("stdout: write error"));
    }
out:
    free(pem);
    mbedtls_pk_free(&key);
    return rc;
}

/* ---- inspect ---------------------------------------------------------------- */

struct names {
    json_t *dns, *uri;
};

static void collect_name(void *arg, int tag, const unsigned char *p, size_t n)
{
    struct names *nm = arg;
    json_t *to = tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)   ? nm->dns
                 : tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 6) ? nm->uri
                                                              : NULL;
    if (to == NULL)
        return;
    /* printable copy: names come from the file, not from us */
    char *s = cm_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    s[n] = '\0';
    json_array_append_new(to, json_string(s));
    free(s);
}

static json_t *key_usage_json(const mbedtls_x509_crt *crt)
{
    static const struct {
        unsigned bit;
        const char *name;
    } ku[] = {
        {MBEDTLS_X509_KU_DIGITAL_SIGNATURE, "digitalSignature"},
        {MBEDTLS_X509_KU_NON_REPUDIATION, "nonRepudiation"},
        {MBEDTLS_X509_KU_KEY_ENCIPHERMENT, "keyEncipherment"},
        {MBEDTLS_X509_KU_DATA_ENCIPHERMENT, "dataEncipherment"},
        {MBEDTLS_X509_KU_KEY_AGREEMENT, "keyAgreement"},
        {MBEDTLS_X509_KU_KEY_CERT_SIGN, "keyCertSign"},
        {MBEDTLS_X509_KU_CRL_SIGN, "cRLSign"},
    };
    json_t *arr = json_array();
    if (!(crt->ext_types & MBEDTLS_X509_EXT_KEY_USAGE))
        return arr;
    for (size_t i = 0; i < sizeof(ku) / sizeof(ku[0]); i++)
        if (crt->key_usage & ku[i].bit)
            json_array_append_new(arr, json_string(ku[i].name));
    return arr;
}

static json_t *ext_key_usage_json(const mbedtls_x509_crt *crt)
{
    json_t *arr = json_array();
    if (!(crt->ext_types & MBEDTLS_X509_EXT_EXTENDED_KEY_USAGE))
        return arr;
    for (const mbedtls_x509_sequence *s = &crt->ext_key_usage; s != NULL; s = s->next) {
        if (s->buf.p == NULL)
            continue;
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_SERVER_AUTH, &s->buf) == 0) {
            json_array_append_new(arr, json_string("serverAuth"));
        } else if (MBEDTLS_OID_CMP(MBEDTLS_OID_CLIENT_AUTH, &s->buf) == 0) {
            json_array_append_new(arr, json_string("clientAuth"));
        } else {
            char oid[64];
            if (mbedtls_oid_get_numeric_string(oid, sizeof(oid), &s->buf) < 0)
                snprintf(oid, sizeof(oid), "(bad OID)");
            json_array_append_new(arr, json_string(oid));
        }
    }
    return arr;
}

/* "EC secp256r1", "RSA 2048" */
static json_t *key_json(const mbedtls_pk_context *pk)
{
    char buf[64];
    if (mbedtls_pk_can_do(pk, MBEDTLS_PK_ECKEY)) {
        const mbedtls_ecp_curve_info *ci =
            mbedtls_ecp_curve_info_from_grp_id(mbedtls_pk_ec(*pk)->grp.id);
        snprintf(buf, sizeof(buf), "EC %s", ci ? ci->name : "(unknown curve)");
    } else {
        snprintf(buf, sizeof(buf), "%s %zu", mbedtls_pk_get_name(pk), mbedtls_pk_get_bitlen(pk));
    }
    return json_string(buf);
}

static json_t *crt_json(const mbedtls_x509_crt *crt)
{
    char buf[1024], t[32];
    json_t *o = json_object();
    if (mbedtls_x509_dn_gets(buf, sizeof(buf), &crt->subject) < 0)
        snprintf(buf, sizeof(buf), "(unprintable)");
    json_object_set_new(o, "subject", json_string(buf));
    if (mbedtls_x509_dn_gets(buf, sizeof(buf), &crt->issuer) < 0)
        snprintf(buf, sizeof(buf), "(unprintable)");
    json_object_set_new(o, "issuer", json_string(buf));
    pki_crt_serial_hex(crt, buf, sizeof(buf));
    json_object_set_new(o, "serial", json_string(buf));
    json_object_set_new(o, "not_before",
                        json_string(cm_fmt_rfc3339(pki_crt_not_before(crt), t, sizeof(t))));
    json_object_set_new(o, "not_after",
                        json_string(cm_fmt_rfc3339(pki_crt_not_after(crt), t, sizeof(t))));
    json_object_set_new(o, "ca", json_boolean(crt->ca_istrue));
    if (crt->ca_istrue && crt->max_pathlen > 0)
        json_object_set_new(o, "pathlen", json_integer(crt->max_pathlen - 1));
    json_object_set_new(o, "self_issued", json_boolean(pki_crt_self_issued(crt)));
    json_object_set_new(o, "key", key_json(&crt->pk));
    json_object_set_new(o, "key_usage", key_usage_json(crt));
    json_object_set_new(o, "ext_key_usage", ext_key_usage_json(crt));

    struct names nm = {json_array(), json_array()};
    const unsigned char *exts, *san;
    size_t elen, sanlen;
    if (pki_crt_exts(crt, &exts, &elen) == 0 &&
        pki_der_find_ext(exts, elen, MBEDTLS_OID_SUBJECT_ALT_NAME,
                         MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), &san, &sanlen, NULL) == 0)
        pki_san_foreach(san, sanlen, collect_name, &nm);
    json_object_set_new(o, "dns", nm.dns);
    json_object_set_new(o, "uri", nm.uri);
    char id[PKI_SPIFFE_MAX];
    if (pki_crt_spiffe_id(crt, id, sizeof(id), NULL) == 0)
        json_object_set_new(o, "spiffe_id", json_string(id));
    return o;
}

static void print_list(const char *label, json_t *arr)
{
    size_t i;
    json_t *v;
    if (json_array_size(arr) == 0)
        return;
    printf("  %-15s", label);
    json_array_foreach(arr, i, v) printf("%s%s", i ? ", " : "", json_string_value(v));
    printf("\n");
}

static void print_text(json_t *certs)
{
    size_t i, n = json_array_size(certs);
    json_t *c;
    json_array_foreach(certs, i, c)
    {
        if (json_object_get(c, "csr") != NULL) {
            printf("certificate request\n");
            printf("  %-15s%s\n", "subject:", json_string_value(json_object_get(c, "subject")));
            printf("  %-15s%s\n", "key:", json_string_value(json_object_get(c, "key")));
            printf("  %-15s%s\n", "signature:", "valid");
            printf("  %-15s%s\n", "spiffe_id:", json_string_value(json_object_get(c, "spiffe_id")));
            continue;
        }
        printf("certificate %zu of %zu\n", i + 1, n);
        static const char *const keys[] = {"subject",    "issuer",    "serial",
                                           "not_before", "not_after", "key"};
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            char label[32];
            snprintf(label, sizeof(label), "%s:", keys[k]);
            printf("  %-15s%s\n", label, json_string_value(json_object_get(c, keys[k])));
        }
        json_t *pl = json_object_get(c, "pathlen");
        if (json_is_true(json_object_get(c, "ca")) && pl != NULL)
            printf("  %-15strue (pathlen %lld)\n", "ca:", (long long)json_integer_value(pl));
        else
            printf("  %-15s%s\n", "ca:", json_is_true(json_object_get(c, "ca")) ? "true" : "false");
        print_list("key_usage:", json_object_get(c, "key_usage"));
        print_list("ext_key_usage:", json_object_get(c, "ext_key_usage"));
        json_t *id = json_object_get(c, "spiffe_id");
        if (id != NULL)
            printf("  %-15s%s\n", "spiffe_id:", json_string_value(id));
        else
            print_list("uri:", json_object_get(c, "uri"));
        print_list("dns:", json_object_get(c, "dns"));
    }
}

static int inspect_csr(const unsigned char *buf, size_t len, json_t *out, char **errmsg)
{
    mbedtls_x509_csr csr;
    char id[PKI_SPIFFE_MAX], subj[1024];
    mbedtls_x509_csr_init(&csr);
    int rc = pki_csr_parse_verify(&csr, buf, len, id, sizeof(id), errmsg);
    if (rc == 0) {
        json_t *o = json_object();
        json_object_set_new(o, "csr", json_true());
        if (mbedtls_x509_dn_gets(subj, sizeof(subj), &csr.subject) < 0)
            snprintf(subj, sizeof(subj), "(unprintable)");
        json_object_set_new(o, "subject", json_string(subj));
        json_object_set_new(o, "key", key_json(&csr.pk));
        json_object_set_new(o, "spiffe_id", json_string(id));
        json_array_append_new(out, o);
    }
    mbedtls_x509_csr_free(&csr);
    return rc;
}

static int cmd_inspect(struct args *a)
{
    unsigned char *buf;
    size_t len;
    char *err = NULL, *inner = NULL;
    mbedtls_x509_crt chain;
    int rc;
    if (pki_read_file(a->file, PKI_MAX_PEM, &buf, &len, &err) != 0)
        return failure(err);
    json_t *out = json_array();
    mbedtls_x509_crt_init(&chain);
    static const char req[] = "CERTIFICATE REQUEST-----";
    if (memmem(buf, len, req, sizeof(req) - 1) != NULL) {
        rc = inspect_csr(buf, len, out, &inner);
    } else {
        rc = pki_bundle_parse(&chain, buf, len, &inner);
        for (const mbedtls_x509_crt *c = &chain; rc == 0 && c != NULL && c->raw.p != NULL;
             c = c->next)
            json_array_append_new(out, crt_json(c));
    }
    if (rc != 0) {
        rc = failure(cm_xasprintf("%s: %s", a->file, inner));
        free(inner);
    } else if (a->json) {
        char *s = json_dumps(out, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
    } else {
        print_text(out);
    }
    json_decref(out);
    mbedtls_x509_crt_free(&chain);
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    static const int f_root[] = {OPT_OUT_CERT, OPT_OUT_KEY, OPT_CN, OPT_DAYS, OPT_HELP, 0};
    static const int f_int[] = {OPT_CA_CERT, OPT_CA_KEY, OPT_OUT_CERT, OPT_OUT_KEY,
                                OPT_CN,      OPT_DAYS,   OPT_HELP,     0};
    static const int f_server[] = {
        OPT_CA_CERT, OPT_CA_KEY, OPT_DNS, OPT_OUT_CERT, OPT_OUT_KEY, OPT_CN, OPT_DAYS, OPT_HELP, 0};
    static const int f_workload[] = {OPT_CA_CERT,  OPT_CA_KEY,  OPT_SPIFFE_ID,
                                     OPT_OUT_CERT, OPT_OUT_KEY, OPT_TTL,
                                     OPT_ROOT,     OPT_HELP,    0};
    static const int f_inspect[] = {OPT_JSON, OPT_HELP, 0};
    static const int f_csr[] = {OPT_KEY, OPT_SPIFFE_ID, OPT_OUT, OPT_HELP, 0};
    static const struct {
        const char *name;
        const int *flags;
        int (*run)(struct args *);
    } cmds[] = {
        {"root", f_root, cmd_root},          {"intermediate", f_int, cmd_intermediate},
        {"server", f_server, cmd_server},    {"workload", f_workload, cmd_workload},
        {"inspect", f_inspect, cmd_inspect}, {"csr", f_csr, cmd_csr},
    };

    if (argc < 2)
        return usage_error("a subcommand is required: root, intermediate, server, workload, "
                           "inspect");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf(PROG " %s\n", REMORA_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(argv[1], cmds[i].name) != 0)
            continue;
        struct args a = {.cmd = cmds[i].name};
        int rc = parse_flags(argc - 1, argv + 1, cmds[i].flags, &a);
        if (rc == 0 && a.help)
            fputs(usage_text, stdout);
        else if (rc == 0)
            rc = cmds[i].run(&a);
        pki_rng_free();
        return rc;
    }
    return usage_error("unknown subcommand \"%s\"", argv[1]);
}
