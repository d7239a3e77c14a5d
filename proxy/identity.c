#include "proxy/identity.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/json.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/admin.h"
#include "proxy/caclient.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/watch.h"

#define MAX_PEM       (256 * 1024)
#define RETRY_MIN_MS  500   /* CA retries: first backoff */
#define RETRY_MAX_MS  30000 /* ... and the cap */
#define MIN_ROTATE_MS 1000  /* never hammer the CA faster than this */

enum id_mode {
    ID_NONE = 0, /* no identity configured */
    ID_STATIC,   /* cert_file + key_file + bundle_file */
    ID_CA        /* CSR to the CA with the projected token */
};

static const char *const server_alpn[] = {"h2", "http/1.1", NULL};
static const char *const client_alpn[] = {"h2", NULL};

struct px_identity {
    enum id_mode mode;
    char spiffe_id[PKI_SPIFFE_MAX];
    char trust_domain[PKI_SPIFFE_MAX];
    /* static */
    char *cert_file, *key_file, *bundle_file;
    /* CA */
    struct cm_addr ca_addr;
    char *ca_host;        /* ca_address as configured (Host header) */
    char *ca_name;        /* DNS name to resolve before each request, or NULL (an IP) */
    char *ca_server_name; /* the DNS name the CA's certificate must carry (SNI too) */
    char ca_port[8];
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *resolving;
    char *ca_root_file, *token_file;
    struct px_tls_conf *ca_conf; /* verifies the CA's serving cert */
    struct px_caclient *inflight;
    mbedtls_pk_context pending_key; /* the key the in-flight CSR was made for */
    bool has_pending_key;
    uint32_t backoff_ms;
    /* what is held */
    struct px_tls_conf *server, *client;
    struct px_tls_conf *tcp_client; /* no ALPN: the peer detects what follows (opaque TCP) */
    struct px_tls_conf *dns_client; /* our certificate to a server named by DNS (discovery) */
    char serial[72];
    int64_t not_before, not_after;
    uint64_t rotations;
    /* static: cert, key and bundle files, on a timer; CA: ca_root, looked
     * at before each CSR. Either way it holds last_error. */
    struct px_watch watch;
    struct event *timer; /* CA: the next request */
};

bool px_identity_is_configured(const struct px_identity *id)
{
    return id != NULL && id->mode != ID_NONE;
}

bool px_identity_is_ready(const struct px_identity *id)
{
    return id == NULL || id->mode == ID_NONE || (id->server != NULL && id->not_after > cm_wall_s());
}

const char *px_identity_id(const struct px_identity *id)
{
    return id != NULL ? id->spiffe_id : "";
}

struct px_tls_conf *px_identity_server_tls(const struct px_identity *id)
{
    return id != NULL ? id->server : NULL;
}

struct px_tls_conf *px_identity_client_tls(const struct px_identity *id)
{
    return id != NULL ? id->client : NULL;
}

struct px_tls_conf *px_identity_dns_client_tls(const struct px_identity *id)
{
    return id != NULL ? id->dns_client : NULL;
}

struct px_tls_conf *px_identity_tcp_client_tls(const struct px_identity *id)
{
    return id != NULL ? id->tcp_client : NULL;
}

static void arm(struct px_identity *id, uint64_t ms)
{
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(id->timer, &tv);
}

static void set_error(struct px_identity *id, const char *fmt, const char *detail)
{
    cm_watch_set_error(&id->watch.files, fmt, detail);
    cm_warn("identity %s: %s", id->spiffe_id, cm_watch_last_error(&id->watch.files));
}

/* Build both TLS snapshots from PEM and swap them in. The leaf must carry
 * our SPIFFE ID and match the key. */
static int install(struct px_identity *id, const char *chain_pem, const char *key_pem,
                   const char *bundle_pem, char **errmsg)
{
    char *anchors = NULL;
    mbedtls_x509_crt leaf;
    mbedtls_x509_crt_init(&leaf);
    char got[PKI_SPIFFE_MAX];
    int rc = CM_ERR_INVAL;
    if (pki_bundle_parse(&leaf, (const unsigned char *)chain_pem, strlen(chain_pem), errmsg) != 0)
        goto out;
    if (pki_crt_spiffe_id(&leaf, got, sizeof(got), errmsg) != 0)
        goto out;
    if (strcmp(got, id->spiffe_id) != 0) {
        *errmsg = cm_xasprintf("certificate is for %s, not %s", got, id->spiffe_id);
        goto out;
    }
    int64_t nb = pki_crt_not_before(&leaf), na = pki_crt_not_after(&leaf);
    if (na <= cm_wall_s()) {
        *errmsg = cm_xstrdup("certificate has expired");
        goto out;
    }
    /* Our own issuing chain (the cluster's intermediate) joins the trust
     * anchors: it chains to the bundle anyway, and a peer from the same
     * cluster is then verified with one signature check instead of two
     * (a full handshake costs about 2 ms less with mbedTLS 2.28). */
    const char *inter = strstr(chain_pem + 1, "-----BEGIN CERTIFICATE-----");
    anchors = inter ? cm_xasprintf("%s\n%s", bundle_pem, inter) : cm_xstrdup(bundle_pem);
    bundle_pem = anchors;
    struct px_tls_conf *srv = NULL, *cli = NULL, *tcp = NULL, *dns = NULL;
    if (px_tls_conf_new(PX_TLS_SERVER, chain_pem, key_pem, bundle_pem, id->trust_domain,
                        server_alpn, &srv, errmsg) != 0)
        goto out;
    if (px_tls_conf_new(PX_TLS_CLIENT, chain_pem, key_pem, bundle_pem, id->trust_domain,
                        client_alpn, &cli, errmsg) != 0 ||
        px_tls_conf_new(PX_TLS_CLIENT, chain_pem, key_pem, bundle_pem, id->trust_domain, NULL, &tcp,
                        errmsg) != 0 ||
        px_tls_conf_new(PX_TLS_CLIENT, chain_pem, key_pem, bundle_pem, NULL, NULL, &dns, errmsg) !=
            0) {
        px_tls_conf_unref(srv);
        px_tls_conf_unref(cli);
        px_tls_conf_unref(tcp);
        goto out;
    }
    /* swap: connections established under the old snapshots keep them */
    bool first = id->server == NULL;
    px_tls_conf_unref(id->server);
    px_tls_conf_unref(id->client);
    px_tls_conf_unref(id->tcp_client);
    px_tls_conf_unref(id->dns_client);
    id->dns_client = dns;
    id->server = srv;
    id->client = cli;
    id->tcp_client = tcp;
    pki_crt_serial_hex(&leaf, id->serial, sizeof(id->serial));
    id->not_before = nb;
    id->not_after = na;
    if (!first)
        id->rotations++;
    px_metrics.cert_expiry_timestamp = na;
    cm_watch_set_error(&id->watch.files, NULL);
    char a[32], b[32];
    cm_info("identity %s: %s certificate serial %s valid %s .. %s", id->spiffe_id,
            first ? "holding" : "rotated to", id->serial, cm_fmt_rfc3339(nb, a, sizeof(a)),
            cm_fmt_rfc3339(na, b, sizeof(b)));
    rc = 0;
out:
    mbedtls_x509_crt_free(&leaf);
    free(anchors);
    return rc;
}

static char *read_text(const char *path, char **errmsg)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    if (pki_read_file(path, MAX_PEM, &buf, &len, errmsg) != 0)
        return NULL;
    char *s = cm_xmalloc(len + 1);
    memcpy(s, buf, len);
    s[len] = '\0';
    free(buf);
    return s;
}

/* ca_root can change under a running proxy: a root rotation publishes a
 * bundle with the old and the new root (the remora-ca-root ConfigMap, whose
 * ..data swap gives the file a new inode). Before each request to the CA,
 * re-read it if it changed (px_watch_check); a bad one is logged and the one
 * in force kept, and that version is not tried again. */
static void on_ca_root_change(void *arg, bool gone)
{
    struct px_identity *id = arg;
    if (gone)
        return;
    char *err = NULL;
    struct px_tls_conf *conf = NULL;
    char *root = read_text(id->ca_root_file, &err);
    if (root == NULL || px_tls_conf_new_anon_client(root, &conf, &err) != 0) {
        cm_warn("identity: ca_root %s changed but cannot be used, keeping the current one: %s",
                id->ca_root_file, err ? err : "?");
        free(err);
        free(root);
        return;
    }
    free(root);
    px_tls_conf_unref(id->ca_conf); /* a request in flight holds its own reference */
    id->ca_conf = conf;
    cm_info("identity: ca_root %s reloaded", id->ca_root_file);
}

/* ---- static files --------------------------------------------------------------------- */

static int load_static(struct px_identity *id, char **errmsg)
{
    char *chain = read_text(id->cert_file, errmsg), *key = NULL, *bundle = NULL;
    int rc = CM_ERR_INVAL;
    if (chain == NULL || (key = read_text(id->key_file, errmsg)) == NULL ||
        (bundle = read_text(id->bundle_file, errmsg)) == NULL)
        goto out;
    rc = install(id, chain, key, bundle, errmsg);
out:
    if (key != NULL) {
        memset(key, 0, strlen(key));
        free(key);
    }
    free(chain);
    free(bundle);
    return rc;
}

static void on_static_change(void *arg, bool gone)
{
    struct px_identity *id = arg;
    if (gone) /* the watch said so; the identity in force stays */
        return;
    char *err = NULL;
    if (load_static(id, &err) != 0) {
        set_error(id, "reload of static identity failed, keeping the current one: %s", err);
        free(err);
    }
}

/* ---- CA-issued ---------------------------------------------------------------------------- */

static void request_cert(struct px_identity *id);

static void retry_later(struct px_identity *id)
{
    id->backoff_ms = id->backoff_ms ? id->backoff_ms * 2 : RETRY_MIN_MS;
    if (id->backoff_ms > RETRY_MAX_MS)
        id->backoff_ms = RETRY_MAX_MS;
    /* jitter: 50%..100% of the backoff */
    uint32_t j = 0;
    pki_rng_fn(NULL, (unsigned char *)&j, sizeof(j));
    uint64_t ms = id->backoff_ms / 2 + j % (id->backoff_ms / 2 + 1);
    cm_info("identity %s: next CA attempt in %llu ms", id->spiffe_id, (unsigned long long)ms);
    arm(id, ms);
}

/* Rotate at a random point between 50% and 80% of the lifetime left when
 * the certificate arrived (not_before is backdated for clock skew, so it
 * would make short-lived certificates look half-spent on arrival). */
static void schedule_rotation(struct px_identity *id)
{
    int64_t now_ms = cm_wall_ms();
    int64_t life_ms = id->not_after * 1000 - now_ms;
    uint32_t j = 0;
    pki_rng_fn(NULL, (unsigned char *)&j, sizeof(j));
    double frac = 0.5 + 0.3 * ((double)j / 4294967295.0);
    int64_t ms = (int64_t)((double)life_ms * frac);
    if (ms < MIN_ROTATE_MS)
        ms = MIN_ROTATE_MS;
    arm(id, (uint64_t)ms);
}

static void on_ca_answer(int status, const char *body, size_t len, const char *err, void *arg)
{
    struct px_identity *id = arg;
    id->inflight = NULL;
    char *e = NULL;
    if (status == 0) {
        set_error(id, "CA unreachable: %s", err);
        goto retry;
    }
    if (status != 200) {
        char msg[300];
        snprintf(msg, sizeof(msg), "%d %.*s", status, (int)(len > 200 ? 200 : len), body);
        set_error(id, "CA refused the CSR: %s", msg);
        goto retry;
    }
    json_t *doc;
    if (cm_json_load_buf("CA answer", body, len, true, &doc, &e) != 0) {
        set_error(id, "%s", e);
        goto retry;
    }
    const char *chain = json_string_value(json_object_get(doc, "cert_chain"));
    const char *bundle = json_string_value(json_object_get(doc, "trust_bundle"));
    if (chain == NULL || bundle == NULL) {
        json_decref(doc);
        set_error(id, "%s", "CA answer lacks cert_chain or trust_bundle");
        goto retry;
    }
    char *key_pem = NULL;
    if (pki_key_write_pem(&id->pending_key, &key_pem, &e) != 0 ||
        install(id, chain, key_pem, bundle, &e) != 0) {
        set_error(id, "CA certificate not usable: %s", e);
        if (key_pem != NULL) {
            memset(key_pem, 0, strlen(key_pem));
            free(key_pem);
        }
        json_decref(doc);
        goto retry;
    }
    memset(key_pem, 0, strlen(key_pem));
    free(key_pem);
    json_decref(doc);
    mbedtls_pk_free(&id->pending_key);
    id->has_pending_key = false;
    id->backoff_ms = 0;
    schedule_rotation(id);
    return;
retry:
    free(e);
    retry_later(id);
}

static void send_csr(struct px_identity *id);

/* In a cluster ca_address is the CA Service's DNS name: resolve it (without
 * blocking the loop) before every request, as Services may move. */
static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct px_identity *id = arg;
    id->resolving = NULL;
    if (result == EVUTIL_EAI_CANCEL)
        return; /* shutting down */
    if (result != 0 || res == NULL) {
        set_error(id, "CA address: cannot resolve %s", id->ca_name);
        if (res != NULL)
            evutil_freeaddrinfo(res);
        retry_later(id);
        return;
    }
    cm_addr_from_sockaddr(&id->ca_addr, res->ai_addr, (socklen_t)res->ai_addrlen);
    evutil_freeaddrinfo(res);
    send_csr(id);
}

static void request_cert(struct px_identity *id)
{
    if (id->inflight != NULL || id->resolving != NULL)
        return;
    if (id->ca_name == NULL) {
        send_csr(id);
        return;
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    struct evdns_getaddrinfo_request *r =
        evdns_getaddrinfo(id->dns, id->ca_name, id->ca_port, &hints, on_resolved, id);
    if (r != NULL)
        id->resolving = r; /* else on_resolved already ran */
}

static void send_csr(struct px_identity *id)
{
    char *err = NULL, *csr = NULL, *token = NULL;
    if (id->inflight != NULL)
        return;
    /* a fresh key for every certificate: a leaked key dies with its cert */
    if (id->has_pending_key)
        mbedtls_pk_free(&id->pending_key);
    mbedtls_pk_init(&id->pending_key);
    id->has_pending_key = true;
    if (pki_key_generate(&id->pending_key, &err) != 0 ||
        pki_csr_new(&id->pending_key, id->spiffe_id, &csr, &err) != 0) {
        set_error(id, "cannot make a CSR: %s", err);
        goto fail;
    }
    px_watch_check(&id->watch); /* ca_root */
    /* re-read each time: kubelet rotates the projected token */
    token = read_text(id->token_file, &err);
    if (token == NULL) {
        set_error(id, "token: %s", err);
        goto fail;
    }
    size_t tl = strlen(token);
    while (tl > 0 && (token[tl - 1] == '\n' || token[tl - 1] == '\r' || token[tl - 1] == ' '))
        token[--tl] = '\0';
    json_t *req = json_pack("{s:s}", "csr", csr);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    /* the CA's certificate must carry ca_server_name, whatever ca_address
     * is: an IP address alone would let any certificate under the mesh root
     * pose as the CA */
    /* the CA mode's timer is on the server's loop: the request goes there too */
    id->inflight =
        px_caclient_post(event_get_base(id->timer), &id->ca_addr, id->ca_conf, id->ca_server_name,
                         id->ca_host, "/v1/sign", token, body, on_ca_answer, id);
    free(body);
    if (id->inflight == NULL) {
        set_error(id, "CA: %s", strerror(errno));
        goto fail;
    }
    cm_debug("identity %s: CSR sent to the CA", id->spiffe_id);
    free(csr);
    memset(token, 0, tl);
    free(token);
    return;
fail:
    free(err);
    free(csr);
    free(token);
    retry_later(id);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_identity *id = arg;
    request_cert(id);
}

/* ---- configuration --------------------------------------------------------------------- */

static int get_str(const struct cm_jpath *p, json_t *o, const char *key, const char *env,
                   const char *def, char *out, size_t outlen, char **errmsg)
{
    const char *v = NULL;
    if (cm_json_get_string(p, o, key, false, &v, errmsg) != 0)
        return CM_ERR_INVAL;
    if (v == NULL && env != NULL)
        v = getenv(env);
    if (v == NULL)
        v = def;
    if (v == NULL || v[0] == '\0') {
        struct cm_jpath c;
        cm_jpath_key(&c, p, key);
        return cm_json_fail(&c, errmsg, "required (or set $%s)", env ? env : "?");
    }
    snprintf(out, outlen, "%s", v);
    return 0;
}

/* A DNS name mbedTLS can match against a certificate: 1-253 characters,
 * labels of letters, digits and '-', none empty or over 63. No IP address:
 * the CA's certificate carries a DNS name only. */
static bool valid_dns_name(const char *s)
{
    size_t n = strlen(s), label = 0;
    bool alpha = false;
    if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (; *s; s++) {
        char c = *s;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-') ||
            ++label > 63)
            return false;
        alpha = alpha || (c < '0' || c > '9');
    }
    return alpha;
}

static char *opt_path(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? cm_xstrdup(v) : NULL;
}

int px_identity_start(struct px_server *srv, char **errmsg)
{
    const struct px_config *cfg = srv->cfg;
    struct px_identity *id = cm_xcalloc(1, sizeof(*id));
    srv->identity = id; /* freed by px_identity_free, also after a failed start */
    json_t *o = cfg->identity;
    if (o == NULL)
        return 0;
    struct cm_jpath p;
    cm_jpath_root(&p, cfg->file);
    cm_jpath_key(&p, &p, "identity");
    char ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
    if (get_str(&p, o, "trust_domain", NULL, "cluster.local", id->trust_domain,
                sizeof(id->trust_domain), errmsg) != 0 ||
        get_str(&p, o, "namespace", "POD_NAMESPACE", NULL, ns, sizeof(ns), errmsg) != 0 ||
        get_str(&p, o, "service_account", "SERVICE_ACCOUNT", NULL, sa, sizeof(sa), errmsg) != 0)
        return CM_ERR_INVAL;
    char *e = NULL;
    if (pki_spiffe_build(id->trust_domain, ns, sa, id->spiffe_id, sizeof(id->spiffe_id), &e) != 0) {
        cm_json_fail(&p, errmsg, "%s", e);
        free(e);
        return CM_ERR_INVAL;
    }
    bool has_static = json_object_get(o, "cert_file") != NULL;
    bool has_ca = json_object_get(o, "ca_address") != NULL;
    if (has_static == has_ca)
        return cm_json_fail(&p, errmsg,
                            "set either cert_file + key_file + bundle_file (static identity) or "
                            "ca_address + ca_root + token_file (CA-issued), not %s",
                            has_static ? "both" : "neither");
    static const char *const static_keys[] = {"cert_file", "key_file", "bundle_file", NULL};
    static const char *const ca_keys[] = {"ca_address", "ca_root", "token_file", NULL};
    if (has_static && json_object_get(o, "ca_server_name") != NULL) {
        struct cm_jpath c;
        cm_jpath_key(&c, &p, "ca_server_name");
        return cm_json_fail(&c, errmsg, "only with ca_address (a CA-issued identity)");
    }
    const char *const *need = has_static ? static_keys : ca_keys;
    for (int i = 0; need[i] != NULL; i++) {
        const char *v = NULL;
        if (cm_json_get_string(&p, o, need[i], true, &v, errmsg) != 0)
            return CM_ERR_INVAL;
    }
    if (has_static) {
        id->mode = ID_STATIC;
        id->cert_file = opt_path(o, "cert_file");
        id->key_file = opt_path(o, "key_file");
        id->bundle_file = opt_path(o, "bundle_file");
        const char *files[3] = {id->cert_file, id->key_file, id->bundle_file};
        px_watch_start(&id->watch, "identity", srv->base, files, 3, on_static_change, id);
        return load_static(id, errmsg) != 0 ? CM_ERR_INVAL : 0;
    }
    id->timer = evtimer_new(srv->base, on_timer, id);
    id->mode = ID_CA;
    const char *ca = json_string_value(json_object_get(o, "ca_address"));
    if (cm_addr_parse(ca, &id->ca_addr) != 0) {
        /* host:port with a DNS name (the CA's Service) */
        const char *colon = strrchr(ca, ':');
        size_t hl = colon ? (size_t)(colon - ca) : 0;
        bool ok = colon != NULL && hl > 0 && hl <= 253 && strlen(colon + 1) >= 1 &&
                  strlen(colon + 1) <= 5;
        for (const char *q = colon ? colon + 1 : ""; ok && *q; q++)
            ok = *q >= '0' && *q <= '9';
        for (size_t i = 0; ok && i < hl; i++)
            ok = (ca[i] >= 'a' && ca[i] <= 'z') || (ca[i] >= 'A' && ca[i] <= 'Z') ||
                 (ca[i] >= '0' && ca[i] <= '9') || ca[i] == '-' || ca[i] == '.';
        if (!ok || strtol(colon + 1, NULL, 10) < 1 || strtol(colon + 1, NULL, 10) > 65535) {
            struct cm_jpath c;
            cm_jpath_key(&c, &p, "ca_address");
            return cm_json_fail(&c, errmsg, "\"%s\" is not host:port or ip:port", ca);
        }
        id->ca_name = cm_xstrndup(ca, hl);
        snprintf(id->ca_port, sizeof(id->ca_port), "%s", colon + 1);
        id->dns = evdns_base_new(srv->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
        if (id->dns == NULL) {
            /* no resolv.conf: still try (hosts file, then it fails and retries) */
            id->dns = evdns_base_new(srv->base, 0);
        }
    }
    id->ca_host = cm_xstrdup(ca);
    const char *sn = json_string_value(json_object_get(o, "ca_server_name"));
    if (sn == NULL)
        sn = PX_IDENTITY_CA_SERVER_NAME;
    if (!valid_dns_name(sn)) {
        struct cm_jpath c;
        cm_jpath_key(&c, &p, "ca_server_name");
        return cm_json_fail(&c, errmsg, "\"%s\" is not a DNS name (letters, digits, '-', '.')", sn);
    }
    id->ca_server_name = cm_xstrdup(sn);
    id->ca_root_file = opt_path(o, "ca_root");
    id->token_file = opt_path(o, "token_file");
    const char *root_path = id->ca_root_file;
    px_watch_start(&id->watch, "identity", NULL, &root_path, 1, on_ca_root_change, id);
    char *root = read_text(id->ca_root_file, errmsg);
    if (root == NULL)
        return CM_ERR_INVAL;
    int rc = px_tls_conf_new_anon_client(root, &id->ca_conf, errmsg);
    free(root);
    if (rc != 0)
        return CM_ERR_INVAL;
    arm(id, 0); /* first request from the event loop */
    return 0;
}

/* ---- admin ------------------------------------------------------------------------------ */

static int on_certs(struct evhttp_request *req, const struct evkeyvalq *query, struct evbuffer *out,
                    void *arg)
{
    (void)req;
    (void)query;
    struct px_identity *id = arg;
    char a[32], b[32];
    json_t *o = json_object();
    json_object_set_new(o, "spiffe_id", json_string(id->spiffe_id));
    json_object_set_new(o, "source", json_string(id->mode == ID_CA ? "ca" : "static"));
    json_object_set_new(o, "ready", json_boolean(px_identity_is_ready(id)));
    if (id->server != NULL) {
        json_object_set_new(o, "serial", json_string(id->serial));
        json_object_set_new(o, "not_before",
                            json_string(cm_fmt_rfc3339(id->not_before, a, sizeof(a))));
        json_object_set_new(o, "not_after",
                            json_string(cm_fmt_rfc3339(id->not_after, b, sizeof(b))));
    } else {
        json_object_set_new(o, "serial", json_null());
        json_object_set_new(o, "not_before", json_null());
        json_object_set_new(o, "not_after", json_null());
    }
    json_object_set_new(o, "rotations", json_integer((json_int_t)id->rotations));
    const char *last_error = cm_watch_last_error(&id->watch.files);
    json_object_set_new(o, "last_error", last_error ? json_string(last_error) : json_null());
    px_admin_reply_json(out, o);
    return 200;
}

void px_identity_admin_routes(struct px_identity *id, struct px_admin *admin)
{
    if (id != NULL && id->mode != ID_NONE)
        px_admin_route(admin, PX_ADMIN_GET, "/certs", on_certs, id);
}

void px_identity_free(struct px_identity *id)
{
    if (id == NULL)
        return;
    px_caclient_cancel(id->inflight);
    id->inflight = NULL;
    if (id->resolving != NULL)
        evdns_getaddrinfo_cancel(id->resolving);
    if (id->dns != NULL)
        evdns_base_free(id->dns, 0);
    free(id->ca_name);
    free(id->ca_server_name);
    if (id->timer != NULL)
        event_free(id->timer);
    px_watch_stop(&id->watch);
    px_tls_conf_unref(id->server);
    px_tls_conf_unref(id->client);
    px_tls_conf_unref(id->dns_client);
    px_tls_conf_unref(id->tcp_client);
    px_tls_conf_unref(id->ca_conf);
    if (id->has_pending_key)
        mbedtls_pk_free(&id->pending_key);
    free(id->cert_file);
    free(id->key_file);
    free(id->bundle_file);
    free(id->ca_host);
    free(id->ca_root_file);
    free(id->token_file);
    free(id);
}
