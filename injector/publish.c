/* The CA-root publisher (publish.h): flags, the root file, and the run that
 * brings each labelled namespace's ConfigMap to the root, on kube.c. */
#include "injector/publish.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "injector/kube.h"

#define CERT_HEADER   "-----BEGIN CERTIFICATE-----"
#define SYNC_ATTEMPTS 3 /* GET then write, again when the object changed in between */

static const char merge_patch[] = "application/merge-patch+json";

/* ---- names -------------------------------------------------------------------------- */

static bool alnum_lower(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool label_n(const char *s, size_t n)
{
    if (n == 0 || n > 63 || !alnum_lower(s[0]) || !alnum_lower(s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!alnum_lower(s[i]) && s[i] != '-')
            return false;
    return true;
}

bool ij_publish_valid_label(const char *s)
{
    return label_n(s, strlen(s));
}

bool ij_publish_valid_subdomain(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (const char *p = s;;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (!label_n(p, l))
            return false;
        if (dot == NULL)
            return true;
        p = dot + 1;
    }
}

bool ij_publish_valid_key(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

/* ---- flags ---------------------------------------------------------------------------- */

void ij_publish_usage(FILE *f)
{
    fprintf(f,
            "usage: remora-injector publish-ca-root --root FILE [flags]\n"
            "  keeps ConfigMap NAME (data KEY = the root) in every namespace matching SELECTOR\n"
            "  --root FILE        the mesh root(s), PEM (required; e.g. /etc/remora/ca/root.pem)\n"
            "  --api URL          API server (default $KUBERNETES_SERVICE_HOST:PORT, else %s)\n"
            "  --token-file FILE  bearer token, re-read each run (default %s)\n"
            "  --ca-file FILE     CA of the API server's certificate (default %s)\n"
            "  --selector S       namespace label selector (default remora-injection!=disabled)\n"
            "  --name NAME        ConfigMap name (default remora-ca-root)\n"
            "  --key KEY          data key (default root.pem)\n"
            "  --interval SECONDS 0: run once and exit (default); N: run every N seconds\n"
            "  --timeout-ms MS    per API request (default 10000)\n"
            "exit status: 0 every namespace done, 1 something failed, 2 usage\n",
            IJ_KUBE_DEFAULT_API, IJ_KUBE_DEFAULT_TOKEN_FILE, IJ_KUBE_DEFAULT_CA_FILE);
}

static int parse_long(const char *flag, const char *s, long min, long max, long *out, char **errmsg)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s %s: want a whole number from %ld to %ld", flag, s,
                       min, max);
    *out = v;
    return 0;
}

void ij_job_opts_init(struct ij_job_opts *j, const char *name, const char *key)
{
    memset(j, 0, sizeof(*j));
    j->token_file = IJ_KUBE_DEFAULT_TOKEN_FILE;
    j->ca_file = IJ_KUBE_DEFAULT_CA_FILE;
    j->name = name;
    j->key = key;
    j->timeout_ms = 10000;
    optind = 1;
    opterr = 0;
}

/* One getopt_long result c with its optarg: 1 when it was a shared flag
 * (taken), 0 when it is the job's own, or CM_ERR_INVAL with *errmsg. */
static int job_opt(struct ij_job_opts *j, int c, const char *arg, char **argv, char **errmsg)
{
    long v;
    switch (c) {
    case IJ_JOB_API:
        j->api_arg = arg;
        return 1;
    case IJ_JOB_TOKEN:
        j->token_file = arg;
        return 1;
    case IJ_JOB_CA:
        j->ca_file = arg;
        return 1;
    case IJ_JOB_NAME:
        j->name = arg;
        return 1;
    case IJ_JOB_KEY:
        j->key = arg;
        return 1;
    case IJ_JOB_TIMEOUT:
        if (parse_long("--timeout-ms", arg, 10, 600000, &v, errmsg) != 0)
            return CM_ERR_INVAL;
        j->timeout_ms = (int)v;
        return 1;
    case ':':
        return cm_fail(errmsg, CM_ERR_INVAL, "%s needs a value", argv[optind - 1]);
    case '?':
        return cm_fail(errmsg, CM_ERR_INVAL, "unknown flag %s", argv[optind - 1]);
    default:
        return 0;
    }
}

int ij_job_getopt(struct ij_job_opts *j, int argc, char **argv, const struct option *opts, int *c,
                  char **errmsg)
{
    int rc;
    while ((*c = getopt_long(argc, argv, ":h", opts, NULL)) != -1)
        if ((rc = job_opt(j, *c, optarg, argv, errmsg)) <= 0)
            return rc < 0 ? rc : 1;
    return 0;
}

int ij_job_opts_finish(struct ij_job_opts *j, int argc, char **argv, char **errmsg)
{
    if (optind != argc)
        return cm_fail(errmsg, CM_ERR_INVAL, "unexpected argument %s", argv[optind]);
    if (!ij_publish_valid_subdomain(j->name))
        return cm_fail(errmsg, CM_ERR_INVAL,
                       "--name %s: not a valid ConfigMap name (DNS-1123 subdomain)", j->name);
    if (!ij_publish_valid_key(j->key))
        return cm_fail(errmsg, CM_ERR_INVAL,
                       "--key %s: not a valid ConfigMap key ([-._a-zA-Z0-9]+)", j->key);
    j->api = j->api_arg ? cm_xstrdup(j->api_arg) : ij_kube_default_api();
    struct ij_kube_url u;
    int rc = ij_kube_url_parse(j->api, &u, errmsg);
    if (rc != 0)
        ij_job_opts_deinit(j);
    return rc;
}

void ij_job_opts_deinit(struct ij_job_opts *j)
{
    free(j->api);
    j->api = NULL;
}

int ij_job_kube_new(const struct ij_job_opts *j, struct ij_kube **out, char **errmsg)
{
    struct ij_kube_opts ko = {.api = j->api,
                              .token_file = j->token_file,
                              .ca_file = j->ca_file,
                              .timeout_ms = j->timeout_ms};
    return ij_kube_new(&ko, out, errmsg);
}

int ij_job_args_exit(const char *cmd, int rc, char *err, void (*usage)(FILE *))
{
    if (rc == 1)
        return 0;
    fprintf(stderr, "remora-injector %s: %s\n", cmd, err);
    usage(stderr);
    free(err);
    return 2;
}

void ij_publish_opts_deinit(struct ij_publish_opts *o)
{
    ij_job_opts_deinit(&o->job);
}

int ij_publish_parse_args(int argc, char **argv, struct ij_publish_opts *o, char **errmsg)
{
    enum { O_ROOT = 1, O_SEL, O_INTERVAL };
    static const struct option opts[] = {
        {"root", required_argument, NULL, O_ROOT},
        {"selector", required_argument, NULL, O_SEL},
        {"interval", required_argument, NULL, O_INTERVAL},
        IJ_JOB_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    long v;
    int c, rc;
    memset(o, 0, sizeof(*o));
    ij_job_opts_init(&o->job, "remora-ca-root", "root.pem");
    o->selector = "remora-injection!=disabled";
    while ((rc = ij_job_getopt(&o->job, argc, argv, opts, &c, errmsg)) > 0) {
        switch (c) {
        case O_ROOT:
            o->root_file = optarg;
            break;
        case O_SEL:
            o->selector = optarg;
            break;
        case O_INTERVAL:
            if (parse_long("--interval", optarg, 0, IJ_PUBLISH_MAX_INTERVAL, &v, errmsg) != 0)
                return CM_ERR_INVAL;
            o->interval_s = v;
            break;
        default: /* 'h', IJ_JOB_HELP */
            ij_publish_usage(stdout);
            return 1;
        }
    }
    if (rc < 0)
        return rc;
    if (optind == argc && (o->root_file == NULL || *o->root_file == '\0'))
        return cm_fail(errmsg, CM_ERR_INVAL, "--root FILE is required (the mesh root, PEM)");
    size_t sl = strlen(o->selector);
    if (sl == 0 || sl > 1024)
        return cm_fail(errmsg, CM_ERR_INVAL, "--selector: want 1 to 1024 characters");
    for (size_t i = 0; i < sl; i++)
        if ((unsigned char)o->selector[i] < 0x20 || (unsigned char)o->selector[i] >= 0x7f)
            return cm_fail(errmsg, CM_ERR_INVAL, "--selector: control or non-ASCII character");
    return ij_job_opts_finish(&o->job, argc, argv, errmsg);
}

/* ---- the root ------------------------------------------------------------------------- */

int ij_publish_load_root(const char *file, char **pem, size_t *len, unsigned *ncerts, char **errmsg)
{
    unsigned char *buf = NULL;
    size_t n = 0;
    char *inner = NULL;
    int rc = pki_read_file(file, IJ_PUBLISH_MAX_ROOT, &buf, &n, &inner);
    if (rc != 0) {
        cm_fail(errmsg, rc, "--root: %s", inner);
        free(inner);
        return rc;
    }
    /* The file goes into a ConfigMap's data as text, so it must be text. */
    for (size_t i = 0; i < n; i++) {
        if ((buf[i] < 0x20 && buf[i] != '\n' && buf[i] != '\r' && buf[i] != '\t') ||
            buf[i] >= 0x7f) {
            rc = cm_fail(errmsg, CM_ERR_INVAL,
                         "--root %s: byte %zu (0x%02x) is not PEM text (a DER file? want PEM)",
                         file, i, buf[i]);
            goto out;
        }
    }
    if (strstr((char *)buf, CERT_HEADER) == NULL) {
        rc = cm_fail(errmsg, CM_ERR_INVAL,
                     "--root %s: no PEM certificate (want \"" CERT_HEADER "\")", file);
        goto out;
    }
    /* Publishing to every namespace a file that holds a key would leak it. */
    if (strstr((char *)buf, "PRIVATE KEY-----") != NULL) {
        rc = cm_fail(errmsg, CM_ERR_INVAL,
                     "--root %s: holds a private key; refusing to publish it (want the root "
                     "certificate alone)",
                     file);
        goto out;
    }
    mbedtls_x509_crt chain;
    mbedtls_x509_crt_init(&chain);
    rc = pki_bundle_parse(&chain, buf, n, &inner);
    if (rc != 0) {
        cm_fail(errmsg, rc, "--root %s: %s", file, inner);
    } else {
        unsigned i = 0;
        for (const mbedtls_x509_crt *c = &chain; c != NULL && c->raw.p != NULL; c = c->next) {
            i++;
            if (!c->ca_istrue) {
                rc = cm_fail(errmsg, CM_ERR_INVAL,
                             "--root %s: certificate %u is not a CA (basicConstraints CA:false): "
                             "want the mesh root",
                             file, i);
                break;
            }
        }
        *ncerts = i;
    }
    mbedtls_x509_crt_free(&chain);
out:
    free(inner);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *pem = (char *)buf;
    *len = n;
    return 0;
}

/* ---- a run -------------------------------------------------------------------------------- */

/* "METHOD path: 403 Forbidden: <Status.message>" for an unexpected status. */
static int status_fail(const char *method, const char *path, const struct ij_kube_resp *r,
                       char **errmsg)
{
    char *d = ij_kube_resp_describe(r);
    cm_fail(errmsg, CM_ERR_PROTO, "%s %s: %s", method, path, d);
    free(d);
    return CM_ERR_PROTO;
}

static char *body_json(json_t *doc)
{
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (s == NULL)
        abort(); /* only out of memory: the values are checked UTF-8 */
    return s;
}

static char *create_body(const char *name, const char *key, const char *ns, const char *root,
                         size_t rlen)
{
    json_t *labels = json_object();
    json_object_set_new(labels, "app.kubernetes.io/part-of", json_string("remora"));
    json_object_set_new(labels, "app.kubernetes.io/managed-by", json_string("remora-injector"));
    json_t *md = json_object();
    json_object_set_new(md, "name", json_string(name));
    json_object_set_new(md, "namespace", json_string(ns));
    json_object_set_new(md, "labels", labels);
    json_t *data = json_object();
    json_object_set_new(data, key, json_stringn(root, rlen));
    json_t *doc = json_object();
    json_object_set_new(doc, "apiVersion", json_string("v1"));
    json_object_set_new(doc, "kind", json_string("ConfigMap"));
    json_object_set_new(doc, "metadata", md);
    json_object_set_new(doc, "data", data);
    return body_json(doc);
}

static char *patch_body(const char *key, const char *root, size_t rlen)
{
    json_t *data = json_object();
    json_object_set_new(data, key, json_stringn(root, rlen));
    json_t *doc = json_object();
    json_object_set_new(doc, "data", data);
    return body_json(doc);
}

enum ij_publish_outcome ij_publish_sync(struct ij_kube *k, const char *ns, const char *name,
                                        const char *key, const char *root, size_t rlen,
                                        char **errmsg)
{
    char *coll = cm_xasprintf("/api/v1/namespaces/%s/configmaps", ns);
    char *path = cm_xasprintf("%s/%s", coll, name);
    enum ij_publish_outcome res = IJ_PUBLISH_FAILED;
    struct ij_kube_resp r;
    bool done = false;
    for (int attempt = 0; attempt < SYNC_ATTEMPTS && !done; attempt++) {
        if (ij_kube_request(k, "GET", path, NULL, NULL, 0, &r, errmsg) != 0)
            break;
        if (r.status == 200) {
            char *cur = NULL;
            size_t clen = 0;
            char *inner = NULL;
            if (ij_kube_configmap_value(r.body, r.body_len, key, &cur, &clen, &inner) != 0) {
                cm_fail(errmsg, CM_ERR_PROTO, "GET %s: %s", path, inner);
                free(inner);
                done = true;
            } else if (cur != NULL && clen == rlen && memcmp(cur, root, rlen) == 0) {
                res = IJ_PUBLISH_UNCHANGED;
                done = true;
            }
            free(cur);
            ij_kube_resp_deinit(&r);
            if (done)
                break;
            char *body = patch_body(key, root, rlen);
            int rc = ij_kube_request(k, "PATCH", path, merge_patch, body, strlen(body), &r, errmsg);
            free(body);
            if (rc != 0)
                break;
            if (r.status == 200) {
                res = IJ_PUBLISH_UPDATED;
                done = true;
            } else if (r.status != 404) { /* 404: deleted since the GET; again */
                status_fail("PATCH", path, &r, errmsg);
                done = true;
            }
            ij_kube_resp_deinit(&r);
        } else if (r.status == 404) {
            ij_kube_resp_deinit(&r);
            char *body = create_body(name, key, ns, root, rlen);
            int rc = ij_kube_request(k, "POST", coll, "application/json", body, strlen(body), &r,
                                     errmsg);
            free(body);
            if (rc != 0)
                break;
            char *kind = r.status == 404 ? ij_kube_status_details_kind(&r) : NULL;
            if (r.status == 201 || r.status == 200) {
                res = IJ_PUBLISH_CREATED;
                done = true;
            } else if (kind != NULL && strcmp(kind, "namespaces") == 0) {
                res = IJ_PUBLISH_GONE;
                done = true;
            } else if (r.status != 409) { /* 409: created since the GET; again */
                status_fail("POST", coll, &r, errmsg);
                done = true;
            }
            free(kind);
            ij_kube_resp_deinit(&r);
        } else {
            status_fail("GET", path, &r, errmsg);
            ij_kube_resp_deinit(&r);
            done = true;
        }
        if (!done && attempt + 1 == SYNC_ATTEMPTS)
            cm_fail(errmsg, CM_ERR_AGAIN,
                    "%s: gave up after %d attempts: the ConfigMap kept changing between read and "
                    "write",
                    path, SYNC_ATTEMPTS);
    }
    free(path);
    free(coll);
    return res;
}

static bool stop_pending(const sigset_t *stop)
{
    sigset_t p;
    if (stop == NULL || sigpending(&p) != 0)
        return false;
    return sigismember(&p, SIGTERM) == 1 || sigismember(&p, SIGINT) == 1;
}

/* One namespace of the list: skip, or sync and log. */
static void handle_ns(struct ij_kube *k, const struct ij_publish_opts *o,
                      const struct ij_kube_ns *ns, const char *root, size_t rlen,
                      struct ij_publish_stats *st)
{
    const char *n = ns->name;
    if (strcmp(n, "kube-system") == 0 || strcmp(n, "remora-system") == 0) {
        cm_info("publish-ca-root: %s: skipped (never meshed, like the webhook)", n);
        st->skipped++;
        return;
    }
    if (ns->terminating) {
        cm_info("publish-ca-root: %s: skipped (Terminating)", n);
        st->skipped++;
        return;
    }
    if (!ij_publish_valid_label(n)) {
        char *s = cm_xstrndup(n, 80);
        for (char *p = s; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                *p = '?';
        cm_error("publish-ca-root: namespace \"%s\": error: not a valid namespace name", s);
        free(s);
        st->failed++;
        return;
    }
    char *err = NULL;
    uint64_t t0 = cm_mono_ms();
    enum ij_publish_outcome res = ij_publish_sync(k, n, o->job.name, o->job.key, root, rlen, &err);
    unsigned ms = (unsigned)(cm_mono_ms() - t0);
    switch (res) {
    case IJ_PUBLISH_CREATED:
        cm_info("publish-ca-root: %s: created ConfigMap %s (%s) in %u ms", n, o->job.name,
                o->job.key, ms);
        st->created++;
        break;
    case IJ_PUBLISH_UPDATED:
        cm_info("publish-ca-root: %s: updated ConfigMap %s (%s changed; other keys kept) in %u ms",
                n, o->job.name, o->job.key, ms);
        st->updated++;
        break;
    case IJ_PUBLISH_UNCHANGED:
        cm_info("publish-ca-root: %s: unchanged", n);
        st->unchanged++;
        break;
    case IJ_PUBLISH_GONE:
        cm_info("publish-ca-root: %s: skipped (the namespace was deleted)", n);
        st->skipped++;
        break;
    case IJ_PUBLISH_FAILED:
        cm_error("publish-ca-root: %s: error: %s", n, err ? err : "unknown");
        st->failed++;
        break;
    }
    free(err);
}

int ij_publish_run(const struct ij_publish_opts *o, const sigset_t *stop,
                   struct ij_publish_stats *st)
{
    char *root = NULL, *err = NULL, *sel = NULL, *cont = NULL;
    size_t rlen = 0;
    unsigned ncerts = 0;
    struct ij_kube *k = NULL;
    uint64_t t0 = cm_mono_ms();
    bool stopped = false;
    memset(st, 0, sizeof(*st));

    if (ij_publish_load_root(o->root_file, &root, &rlen, &ncerts, &err) != 0) {
        cm_error("publish-ca-root: %s", err);
        st->failed++;
        goto out;
    }
    if (ij_job_kube_new(&o->job, &k, &err) != 0) {
        cm_error("publish-ca-root: %s", err);
        st->failed++;
        goto out;
    }
    sel = ij_kube_query_escape(o->selector);
    for (unsigned page = 0;; page++) {
        if (page == IJ_PUBLISH_MAX_PAGES) {
            cm_error("publish-ca-root: list namespaces: more than %u pages; stopping",
                     IJ_PUBLISH_MAX_PAGES);
            st->failed++;
            break;
        }
        char *ec = cont ? ij_kube_query_escape(cont) : NULL;
        char *path = cm_xasprintf("/api/v1/namespaces?labelSelector=%s&limit=%d%s%s", sel,
                                  IJ_PUBLISH_PAGE, ec ? "&continue=" : "", ec ? ec : "");
        free(ec);
        struct ij_kube_resp r;
        struct ij_kube_ns_list l = {0};
        char *inner = NULL;
        int rc = ij_kube_request(k, "GET", path, NULL, NULL, 0, &r, &err);
        if (rc == 0 && r.status != 200)
            rc = status_fail("GET", path, &r, &err);
        if (rc == 0 && (rc = ij_kube_ns_list_parse(r.body, r.body_len, &l, &inner)) != 0) {
            cm_fail(&err, rc, "GET %s: %s", path, inner);
            free(inner);
        }
        ij_kube_resp_deinit(&r);
        free(path);
        if (rc != 0) {
            cm_error("publish-ca-root: list namespaces (selector %s): %s", o->selector, err);
            st->failed++;
            break;
        }
        st->matched += (unsigned)l.n;
        for (size_t i = 0; i < l.n && !stopped; i++) {
            if (stop_pending(stop)) {
                stopped = true;
                break;
            }
            handle_ns(k, o, &l.items[i], root, rlen, st);
        }
        free(cont);
        cont = l.cont;
        l.cont = NULL;
        ij_kube_ns_list_deinit(&l);
        if (cont == NULL || stopped)
            break;
    }
    cm_info("publish-ca-root: %u namespaces match %s%s: %u created, %u updated, %u unchanged, %u "
            "skipped, %u failed (%s: %u certificate%s, %zu bytes; %s; %u ms)",
            st->matched, o->selector, stopped ? " (stopped early by a signal)" : "", st->created,
            st->updated, st->unchanged, st->skipped, st->failed, o->root_file, ncerts,
            ncerts == 1 ? "" : "s", rlen, k ? ij_kube_endpoint(k) : o->job.api,
            (unsigned)(cm_mono_ms() - t0));
out:
    free(cont);
    free(sel);
    free(err);
    free(root);
    ij_kube_free(k);
    return st->failed ? 1 : 0;
}

int ij_publish_main(int argc, char **argv)
{
    struct ij_publish_opts o;
    struct ij_publish_stats st;
    char *err = NULL;
    int rc = ij_publish_parse_args(argc, argv, &o, &err);
    if (rc != 0)
        return ij_job_args_exit("publish-ca-root", rc, err, ij_publish_usage);
    cm_log_set_component("injector");
    if (o.interval_s == 0) {
        rc = ij_publish_run(&o, NULL, &st);
        ij_publish_opts_deinit(&o);
        pki_rng_free();
        return rc;
    }

    /* Loop: SIGTERM/SIGINT end it (between namespaces, or while waiting),
     * SIGHUP runs again now. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    cm_info("publish-ca-root: every %ld s, selector %s, ConfigMap %s key %s, API %s", o.interval_s,
            o.selector, o.job.name, o.job.key, o.job.api);
    for (;;) {
        ij_publish_run(&o, &set, &st);
        struct timespec ts = {(time_t)o.interval_s, 0};
        int sig;
        do {
            sig = sigtimedwait(&set, NULL, &ts);
        } while (sig < 0 && errno == EINTR);
        if (sig == SIGTERM || sig == SIGINT) {
            cm_info("publish-ca-root: signal %d: stopping", sig);
            break;
        }
    }
    ij_publish_opts_deinit(&o);
    pki_rng_free();
    return 0;
}
