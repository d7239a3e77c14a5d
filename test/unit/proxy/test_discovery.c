/* Unit tests of service discovery on the proxy side (proxy/discovery.h):
 *  - the bootstrap keys (discovery, outbound_policy, egress_allow) through
 *    px_config_parse: defaults, errors naming the key, the egress matcher;
 *  - the answer decoder: a good answer, and each way an answer is refused;
 *  - the cache against a fake discovery service: a plaintext HTTP/1.1 server
 *    in threads on 127.0.0.1 (one thread per connection) answering
 *    /v1/destination as the injector does and holding POST /v1/watch until
 *    a listed version differs. It records every request target and watch
 *    body, so the tests assert what the cache asked, byte for byte:
 *    concurrent lookups share one request, a hit asks nothing, a 404 is
 *    believed, the watch carries the versions and swaps the answers, an
 *    unreachable service leaves the held answer in use (stale) and new
 *    destinations UNAVAILABLE, a slow one bounds the first lookup by
 *    lookup_timeout_ms, unused entries are dropped, the entry count is
 *    bounded, first lookups reuse kept-alive connections, the warm lookup
 *    connection. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/net.h"
#include "proxy/config.h"
#include "proxy/discovery.h"
#include "proxy/io.h"

/* ---- config -------------------------------------------------------------------- */

#define LISTENERS                                                                                  \
    "\"listeners\": [{\"name\": \"o\", \"address\": \"127.0.0.1:0\", "                             \
    "\"direction\": \"outbound\"}]"
#define IDENTITY                                                                                   \
    "\"identity\": {\"trust_domain\": \"t.local\", \"namespace\": \"a\", "                         \
    "\"service_account\": \"b\", \"cert_file\": \"c\", \"key_file\": \"k\", "                      \
    "\"bundle_file\": \"b\"}"

static struct px_config *parse_ok(const char *doc)
{
    struct px_config *cfg = NULL;
    char *err = NULL;
    int rc = px_config_parse("p.json", doc, strlen(doc), &cfg, &err);
    if (rc != 0)
        fprintf(stderr, "unexpected: %s\n", err);
    assert_int_equal(rc, 0);
    return cfg;
}

static void parse_fails(const char *doc, const char *want)
{
    struct px_config *cfg = NULL;
    char *err = NULL;
    assert_int_not_equal(px_config_parse("p.json", doc, strlen(doc), &cfg, &err), 0);
    assert_non_null(err);
    if (strstr(err, want) == NULL)
        fprintf(stderr, "got: %s\nwant: %s\n", err, want);
    assert_non_null(strstr(err, want));
    free(err);
}

static void config_defaults(void **state)
{
    (void)state;
    struct px_config *cfg = parse_ok("{" LISTENERS "}");
    assert_false(cfg->discovery->enabled);
    assert_int_equal(cfg->discovery->policy, PX_OUTBOUND_ALLOW_ANY);
    assert_int_equal(cfg->discovery->negress, 0);
    px_config_free(cfg);

    cfg = parse_ok("{" LISTENERS ", " IDENTITY
                   ", \"discovery\": {\"address\": \"10.96.0.20:15011\"}, "
                   "\"outbound_policy\": \"registry_only\"}");
    const struct px_disc_cfg *c = cfg->discovery;
    assert_true(c->enabled);
    assert_string_equal(c->server_name, PX_DISC_DEFAULT_SERVER_NAME);
    assert_int_equal(c->lookup_timeout_ms, 1000);
    assert_int_equal(c->policy, PX_OUTBOUND_REGISTRY_ONLY);
    char a[CM_ADDR_STRLEN];
    assert_string_equal(cm_addr_format(&c->addr, a, sizeof(a)), "10.96.0.20:15011");
    px_config_free(cfg);

    cfg =
        parse_ok("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": \"[fd00::1]:15011\", "
                 "\"server_name\": \"Disc.Example.\", \"lookup_timeout_ms\": 250}}");
    assert_string_equal(cfg->discovery->server_name, "disc.example");
    assert_int_equal(cfg->discovery->lookup_timeout_ms, 250);
    px_config_free(cfg);
}

static void config_errors(void **state)
{
    (void)state;
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"adress\": \"1.2.3.4:1\"}}",
                "p.json: discovery.adress: unknown key");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {}}", "discovery.address");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": "
                "\"remora injector:15011\"}}",
                "discovery.address: \"remora injector:15011\" is not an address (want");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": "
                "\"remora-injector.remora-system.svc:0\"}}",
                "discovery.address: \"remora-injector.remora-system.svc:0\" is not an address");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": "
                "\"remora-injector.remora-system.svc\"}}",
                "is not an address");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": \"0.0.0.0:1\"}}",
                "discovery.address: \"0.0.0.0:1\": an unspecified address");
    /* a DNS name (the injected template's default) is kept to be resolved */
    struct px_config *cfg = parse_ok("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": "
                                     "\"Remora-Injector.remora-system.svc:15011\"}}");
    assert_string_equal(cfg->discovery->address_name, "remora-injector.remora-system.svc");
    assert_string_equal(cfg->discovery->address_port, "15011");
    px_config_free(cfg);
    parse_fails("{" LISTENERS ", \"discovery\": {\"address\": \"1.2.3.4:1\"}}",
                "discovery: needs an \"identity\" block");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": \"1.2.3.4:1\", "
                "\"lookup_timeout_ms\": 0}}",
                "discovery.lookup_timeout_ms");
    parse_fails("{" LISTENERS ", " IDENTITY ", \"discovery\": {\"address\": \"1.2.3.4:1\", "
                "\"server_name\": \"a b\"}}",
                "discovery.server_name: \"a b\" is not a DNS name");
    parse_fails("{" LISTENERS ", \"outbound_policy\": \"deny\"}", "outbound_policy");
    parse_fails("{" LISTENERS ", \"egress_allow\": \"x:1\"}", "egress_allow");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"ok.example:443\", 5]}",
                "egress_allow[1]: expected a string");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"api.example\"]}",
                "egress_allow[0]: \"api.example\": no port");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"api.example:0\"]}",
                "the port is not a number 1-65535");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"api.example:http\"]}",
                "the port is not a number 1-65535");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"10.0.0.0/33:80\"]}",
                "the prefix length is not 0-32");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"[fd00::/8:80\"]}", "IPv6");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"**.example:80\"]}", "*.domain");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"a..b:80\"]}", "not a host name");
    parse_fails("{" LISTENERS ", \"egress_allow\": [\"a/b:80\"]}", "not an IPv4 network");
}

static void egress_matching(void **state)
{
    (void)state;
    struct px_config *cfg =
        parse_ok("{" LISTENERS ", \"outbound_policy\": \"registry_only\", \"egress_allow\": "
                 "[\"API.example.com:443\", \"*.googleapis.com:443\", \"203.0.113.0/24:80\", "
                 "\"198.51.100.7:5432\", \"[2001:db8::]/32:443\"]}");
    const struct px_disc_cfg *c = cfg->discovery;
    assert_int_equal(c->negress, 5);
    struct cm_addr in, in2, out6, in6;
    assert_int_equal(cm_addr_parse("203.0.113.77:80", &in), 0);
    assert_int_equal(cm_addr_parse("198.51.100.7:5432", &in2), 0);
    assert_int_equal(cm_addr_parse("[2001:db8:1::5]:443", &in6), 0);
    assert_int_equal(cm_addr_parse("[2001:db9::5]:443", &out6), 0);

    assert_true(px_egress_allowed(c, "api.example.com", NULL, 443));
    assert_true(px_egress_allowed(c, "Api.Example.Com.", NULL, 443)); /* case, trailing dot */
    assert_false(px_egress_allowed(c, "api.example.com", NULL, 80));  /* port */
    assert_false(px_egress_allowed(c, "x.api.example.com", NULL, 443));
    assert_true(px_egress_allowed(c, "storage.googleapis.com", NULL, 443));
    assert_true(px_egress_allowed(c, "a.b.googleapis.com", NULL, 443));
    assert_false(px_egress_allowed(c, "googleapis.com", NULL, 443)); /* *. is below */
    assert_false(px_egress_allowed(c, "evilgoogleapis.com", NULL, 443));
    assert_true(px_egress_allowed(c, NULL, &in, 80));
    assert_false(px_egress_allowed(c, NULL, &in, 443));
    assert_true(px_egress_allowed(c, NULL, &in2, 5432));
    assert_true(px_egress_allowed(c, NULL, &in6, 443));
    assert_false(px_egress_allowed(c, NULL, &out6, 443));
    assert_false(px_egress_allowed(c, "bad host", NULL, 443));
    assert_false(px_egress_allowed(c, NULL, NULL, 443));
    px_config_free(cfg);
}

/* ---- answers ------------------------------------------------------------------- */

#define EP_MESHED                                                                                  \
    "{\"address\": \"10.64.0.5:8080\", \"identity\": \"spiffe://cluster.local/ns/shop/sa/web\", "  \
    "\"meshed\": true, \"zone\": \"z1\", \"ready\": true, \"serving\": true, \"terminating\": "    \
    "false, \"pod\": \"shop/web-1\"}"
#define EP_PLAIN                                                                                   \
    "{\"address\": \"[fd00::7]:8080\", \"identity\": null, \"meshed\": false, \"zone\": \"\", "    \
    "\"ready\": false, \"serving\": true, \"terminating\": true, \"pod\": null, \"new\": 1}"

static void answer_decodes(void **state)
{
    (void)state;
    const char *doc = "{\"kind\": \"service\", \"service\": \"shop/web\", \"port\": 80, "
                      "\"protocol\": \"http\", \"endpoints\": [" EP_MESHED ", " EP_PLAIN "], "
                      "\"version\": \"3f1c0a4e1b7d4c55\", \"future\": {\"x\": 1}}";
    struct px_dest_answer *a = NULL;
    char *err = NULL;
    assert_int_equal(px_dest_decode(doc, strlen(doc), &a, &err), 0);
    assert_int_equal(a->kind, PX_DEST_SERVICE);
    assert_string_equal(a->service, "shop/web");
    assert_int_equal(a->port, 80);
    assert_string_equal(a->protocol, "http");
    assert_string_equal(a->version, "3f1c0a4e1b7d4c55");
    assert_int_equal(a->neps, 2);
    char buf[CM_ADDR_STRLEN];
    assert_string_equal(cm_addr_format(&a->eps[0].addr, buf, sizeof(buf)), "10.64.0.5:8080");
    assert_string_equal(a->eps[0].identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_true(a->eps[0].meshed && a->eps[0].ready && a->eps[0].serving);
    assert_false(a->eps[0].terminating);
    assert_string_equal(a->eps[0].zone, "z1");
    assert_string_equal(a->eps[0].pod, "shop/web-1");
    assert_string_equal(cm_addr_format(&a->eps[1].addr, buf, sizeof(buf)), "[fd00::7]:8080");
    assert_null(a->eps[1].identity);
    assert_null(a->eps[1].pod);
    assert_true(a->eps[1].terminating);
    json_t *j = px_dest_answer_json(a);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "version")), "3f1c0a4e1b7d4c55");
    assert_int_equal(json_array_size(json_object_get(j, "endpoints")), 2);
    json_decref(j);
    assert_ptr_equal(px_dest_answer_ref(a), a);
    px_dest_answer_unref(a);
    px_dest_answer_unref(a);

    const char *pod = "{\"kind\": \"pod\", \"service\": null, \"port\": 9000, \"protocol\": \"\", "
                      "\"endpoints\": [" EP_PLAIN "], \"version\": \"v1\"}";
    assert_int_equal(px_dest_decode(pod, strlen(pod), &a, &err), 0);
    assert_int_equal(a->kind, PX_DEST_POD);
    assert_null(a->service);
    assert_string_equal(a->protocol, "");
    px_dest_answer_unref(a);
}

static void refused(const char *doc, const char *want)
{
    struct px_dest_answer *a = (void *)1;
    char *err = NULL;
    assert_int_not_equal(px_dest_decode(doc, strlen(doc), &a, &err), 0);
    assert_null(a);
    assert_non_null(err);
    if (strstr(err, want) == NULL)
        fprintf(stderr, "got: %s\nwant: %s\n", err, want);
    assert_non_null(strstr(err, want));
    free(err);
}

#define ANS(kind, eps, ver)                                                                        \
    "{\"kind\": \"" kind "\", \"service\": \"shop/web\", \"port\": 80, \"protocol\": \"http\", "   \
    "\"endpoints\": [" eps "], \"version\": \"" ver "\"}"

static void answer_refused(void **state)
{
    (void)state;
    refused("", "not JSON");
    refused("[1]", "not a JSON object");
    refused("{\"kind\": \"x\"}", "kind");
    refused(ANS("service", EP_MESHED, ""), "version");
    refused(ANS("service", EP_MESHED, "a&b=c"), "version");
    refused(ANS("service", EP_MESHED,
                "0123456789012345678901234567890123456789012345678901234567890123456789"),
            "version");
    refused(ANS("pod", EP_MESHED ", " EP_MESHED, "v"), "exactly one");
    refused("{\"kind\": \"service\", \"service\": null, \"port\": 80, \"endpoints\": [], "
            "\"version\": \"v\"}",
            "service: a kind \"service\" answer names its Service");
    refused("{\"kind\": \"service\", \"service\": \"noslash\", \"port\": 80, \"endpoints\": [], "
            "\"version\": \"v\"}",
            "service: expected \"ns/name\"");
    refused("{\"kind\": \"service\", \"service\": \"a/b\", \"port\": 0, \"endpoints\": [], "
            "\"version\": \"v\"}",
            "port");
    refused("{\"kind\": \"service\", \"service\": \"a/b\", \"port\": 80, \"endpoints\": {}, "
            "\"version\": \"v\"}",
            "endpoints: expected an array");
    refused(ANS("service",
                "{\"address\": \"10.0.0.1\", \"meshed\": false, \"ready\": true, "
                "\"serving\": true, \"terminating\": false}",
                "v"),
            "endpoints[0].address");
    refused(ANS("service",
                "{\"address\": \"0.0.0.0:80\", \"meshed\": false, \"ready\": true, "
                "\"serving\": true, \"terminating\": false}",
                "v"),
            "endpoints[0].address");
    refused(ANS("service",
                EP_MESHED ", {\"address\": \"10.0.0.1:80\", \"meshed\": true, "
                          "\"identity\": null, \"ready\": true, \"serving\": true, "
                          "\"terminating\": false}",
                "v"),
            "endpoints[1].identity: a meshed endpoint needs its SPIFFE ID");
    refused(ANS("service",
                "{\"address\": \"10.0.0.1:80\", \"meshed\": true, "
                "\"identity\": \"https://x/ns/a/sa/b\", \"ready\": true, "
                "\"serving\": true, \"terminating\": false}",
                "v"),
            "endpoints[0].identity");
    refused(ANS("service",
                "{\"address\": \"10.0.0.1:80\", \"meshed\": false, "
                "\"identity\": \"spiffe://t/ns/a/sa/b\", \"ready\": true, "
                "\"serving\": true, \"terminating\": false}",
                "v"),
            "endpoints[0].identity: set for an endpoint that is not meshed");
    refused(ANS("service",
                "{\"address\": \"10.0.0.1:80\", \"meshed\": false, \"ready\": 1, "
                "\"serving\": true, \"terminating\": false}",
                "v"),
            "endpoints[0].ready: expected true or false");
    refused(ANS("service",
                "{\"address\": \"10.0.0.1:80\", \"meshed\": false, \"ready\": true, "
                "\"serving\": true, \"terminating\": false, \"zone\": \"a\\\"b\"}",
                "v"),
            "endpoints[0].zone");
    /* too many endpoints, and too many bytes */
    size_t n = PX_DEST_MAX_ENDPOINTS + 1, cap = n * 120 + 256, o = 0;
    char *big = malloc(cap);
    o += (size_t)snprintf(big + o, cap - o,
                          "{\"kind\": \"service\", \"service\": \"a/b\", "
                          "\"port\": 80, \"version\": \"v\", \"endpoints\": [");
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(big + o, cap - o,
                              "%s{\"address\": \"10.0.%zu.%zu:80\", \"meshed\": false, \"ready\": "
                              "true, \"serving\": true, \"terminating\": false}",
                              i ? "," : "", i / 250, i % 250 + 1);
    snprintf(big + o, cap - o, "]}");
    refused(big, "endpoints: 1001 (at most 1000)");
    free(big);
    char *huge = calloc(1, PX_DEST_MAX_ANSWER + 2);
    memset(huge, ' ', PX_DEST_MAX_ANSWER + 1);
    refused(huge, "bytes (at most");
    free(huge);
}

/* ---- a fake discovery service ----------------------------------------------------- */

enum fake_mode {
    FAKE_OK = 0, /* answer */
    FAKE_DOWN    /* close every connection without an answer */
};

static struct fake {
    int fd;
    uint16_t port;
    pthread_t thr;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    enum fake_mode mode;
    unsigned version; /* "v<N>" */
    unsigned neps;
    char targets[64][272]; /* every request target ("POST " before a POST's), in order */
    unsigned ntargets;
    unsigned active;       /* connection threads running */
    bool keepalive;        /* answer without "Connection: close" and read the next request */
    unsigned lookup_conns; /* connections whose first request was a first lookup (a GET) */
    unsigned watch_conns;  /* connections whose first request was a POST /v1/watch */
    unsigned watch_seq;    /* POST /v1/watch seen; a held one goes (304) when a newer comes */
    bool drop_second;      /* close a kept-alive connection at its 2nd request, unanswered
                            * (as a server whose idle timeout crossed the request) */
    char last_watch[8192]; /* the body of the last POST /v1/watch */
    unsigned accepts;      /* connections accepted */
    unsigned pings;        /* GET /v1/ping seen (not in targets) */
    bool close_after;      /* close each connection after its first answer (sent keep-alive) */
    bool refuse;           /* close each connection at accept (a server at its connection
                            * limit) */
} fk;

/* The fake's answer for a destination at version ver. */
static size_t fake_body(char *body, size_t cap, unsigned ver, unsigned neps)
{
    size_t blen = (size_t)snprintf(body, cap,
                                   "{\"kind\": \"service\", \"service\": \"shop/web\", "
                                   "\"port\": 80, \"protocol\": \"http\", \"version\": "
                                   "\"v%u\", \"endpoints\": [",
                                   ver);
    for (unsigned i = 0; i < neps; i++)
        blen += (size_t)snprintf(body + blen, cap - blen,
                                 "%s{\"address\": \"10.64.0.%u:8080\", \"identity\": "
                                 "\"spiffe://cluster.local/ns/shop/sa/web\", \"meshed\": "
                                 "true, \"zone\": \"z1\", \"ready\": true, \"serving\": true, "
                                 "\"terminating\": false, \"pod\": \"shop/web-%u\"}",
                                 i ? ", " : "", i + 1, i);
    blen += (size_t)snprintf(body + blen, cap - blen, "]}");
    return blen;
}

static void fake_write(int c, int status, const char *body, size_t blen, bool keepalive)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                     "%zu\r\n%s\r\n",
                     status, status == 304 ? (size_t)0 : blen,
                     keepalive ? "" : "Connection: close\r\n");
    ssize_t w = write(c, head, (size_t)n);
    if (status != 304 && blen > 0)
        w = write(c, body, blen);
    (void)w;
}

/* POST /v1/watch: every listed destination whose version is not the fake's
 * (or that is 10.0.0.9:80, 404) is answered at once; else held until the
 * version or mode moves, a newer watch comes, or 2 s (304). */
static void fake_watch(int c, const char *reqbody, bool keepalive)
{
    json_t *root = json_loads(reqbody, 0, NULL);
    json_t *arr = json_object_get(root, "watch");
    pthread_mutex_lock(&fk.mu);
    unsigned seq = ++fk.watch_seq;
    pthread_cond_broadcast(&fk.cv);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    char *out = NULL;
    int status = 304;
    for (;;) {
        if (fk.mode != FAKE_OK || fk.stop)
            break;
        size_t cap = 65536, len = 0;
        out = malloc(cap);
        len += (size_t)snprintf(out, cap, "{\"changed\": [");
        unsigned nch = 0;
        size_t i;
        json_t *it;
        json_array_foreach(arr, i, it)
        {
            const char *addr = json_string_value(json_object_get(it, "addr"));
            const char *host = json_string_value(json_object_get(it, "host"));
            const char *ver = json_string_value(json_object_get(it, "version"));
            char want[16];
            snprintf(want, sizeof(want), "v%u", fk.version);
            bool gone = addr != NULL && strcmp(addr, "10.0.0.9:80") == 0;
            if (!gone && ver != NULL && strcmp(ver, want) == 0)
                continue;
            len += (size_t)snprintf(out + len, cap - len, "%s{\"%s\": \"%s\", \"status\": %d",
                                    nch ? ", " : "", addr ? "addr" : "host", addr ? addr : host,
                                    gone ? 404 : 200);
            if (!gone) {
                len += (size_t)snprintf(out + len, cap - len, ", \"answer\": ");
                len += fake_body(out + len, cap - len, fk.version, fk.neps);
            }
            len += (size_t)snprintf(out + len, cap - len, "}");
            nch++;
        }
        snprintf(out + len, cap - len, "]}");
        if (nch > 0) {
            status = 200;
            break;
        }
        free(out);
        out = NULL;
        if (fk.watch_seq != seq) /* superseded */
            break;
        if (pthread_cond_timedwait(&fk.cv, &fk.mu, &until) == ETIMEDOUT)
            break;
    }
    enum fake_mode mode = fk.mode;
    pthread_mutex_unlock(&fk.mu);
    json_decref(root);
    if (mode == FAKE_DOWN) {
        free(out);
        return;
    }
    fake_write(c, status, out, out ? strlen(out) : 0, keepalive);
    free(out);
}

static void fake_answer(int c, const char *target, bool keepalive)
{
    char body[4096];
    int status = 200;
    size_t blen = 0;
    pthread_mutex_lock(&fk.mu);
    enum fake_mode mode = fk.mode;
    unsigned ver = fk.version, neps = fk.neps;
    pthread_mutex_unlock(&fk.mu);
    if (mode == FAKE_DOWN)
        return;
    if (strstr(target, "addr=10.0.0.9%3A80") != NULL || strstr(target, "host=gone") != NULL) {
        status = 404;
        blen = (size_t)snprintf(body, sizeof(body), "{\"error\": \"nothing has 10.0.0.9:80\"}");
    } else if (strstr(target, "addr=10.0.0.8%3A80") != NULL) {
        usleep(1500 * 1000); /* slower than any lookup_timeout_ms of these tests */
    }
    if (status == 200)
        blen = fake_body(body, sizeof(body), ver, neps);
    fake_write(c, status, body, blen, keepalive);
}

static void *conn_main(void *arg)
{
    int c = (int)(intptr_t)arg;
    bool first = true;
    for (;;) { /* one request after another while keep-alive */
        char req[4096];
        size_t len = 0;
        while (len < sizeof(req) - 1) {
            ssize_t r = read(c, req + len, sizeof(req) - 1 - len);
            if (r <= 0)
                break;
            len += (size_t)r;
            req[len] = '\0';
            if (strstr(req, "\r\n\r\n") != NULL)
                break;
        }
        req[len] = '\0';
        char target[256] = "";
        bool post = strncmp(req, "POST ", 5) == 0;
        if (strncmp(req, "GET ", 4) == 0 || post) {
            const char *t = req + (post ? 5 : 4);
            const char *sp = strchr(t, ' ');
            size_t n = sp ? (size_t)(sp - t) : 0;
            if (n < sizeof(target)) {
                memcpy(target, t, n);
                target[n] = '\0';
            }
        }
        if (len == 0)
            break;
        char *body = NULL;
        if (post) { /* the body: what came after the head, then Content-Length's rest */
            const char *h = strstr(req, "\r\n\r\n");
            const char *cl = strcasestr(req, "content-length:");
            size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
            char *b = malloc(want + 1);
            size_t have = h ? len - (size_t)(h + 4 - req) : 0;
            if (have > want)
                have = want;
            memcpy(b, h + 4, have);
            while (have < want) {
                ssize_t r = read(c, b + have, want - have);
                if (r <= 0)
                    break;
                have += (size_t)r;
            }
            b[have] = '\0';
            pthread_mutex_lock(&fk.mu);
            snprintf(fk.last_watch, sizeof(fk.last_watch), "%s", b);
            pthread_mutex_unlock(&fk.mu);
            body = b;
        }
        bool ping = !post && strcmp(target, "/v1/ping") == 0; /* the warm connection's */
        pthread_mutex_lock(&fk.mu);
        if (ping)
            fk.pings++;
        else if (fk.ntargets < 64)
            snprintf(fk.targets[fk.ntargets++], sizeof(fk.targets[0]), "%s%s", post ? "POST " : "",
                     target);
        if (first && !post)
            fk.lookup_conns++;
        if (first && post)
            fk.watch_conns++;
        bool keepalive = fk.keepalive;
        pthread_mutex_unlock(&fk.mu);
        bool first_req_of_conn = first;
        first = false;
        if (target[0] == '\0') {
            free(body);
            break;
        }
        pthread_mutex_lock(&fk.mu);
        bool drop = fk.drop_second && !first_req_of_conn && !post;
        pthread_mutex_unlock(&fk.mu);
        if (drop) {
            free(body);
            break;
        }
        if (post)
            fake_watch(c, body, keepalive);
        else if (ping)
            fake_write(c, 204, "", 0, keepalive);
        else
            fake_answer(c, target, keepalive);
        free(body);
        pthread_mutex_lock(&fk.mu);
        bool close_after = fk.close_after;
        pthread_mutex_unlock(&fk.mu);
        if (!keepalive || close_after)
            break;
    }
    close(c);
    pthread_mutex_lock(&fk.mu);
    fk.active--;
    pthread_cond_broadcast(&fk.cv);
    pthread_mutex_unlock(&fk.mu);
    return NULL;
}

static void *accept_main(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(fk.fd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return NULL; /* the socket was shut down */
        }
        pthread_mutex_lock(&fk.mu);
        bool stop = fk.stop, refuse = fk.refuse;
        fk.accepts++;
        if (!stop && !refuse)
            fk.active++;
        pthread_mutex_unlock(&fk.mu);
        if (stop) {
            close(c);
            return NULL;
        }
        if (refuse) {
            close(c);
            continue;
        }
        pthread_t t;
        pthread_create(&t, NULL, conn_main, (void *)(intptr_t)c);
        pthread_detach(t);
    }
}

static struct event_base *base;
static struct px_disc_cfg dcfg;

static int setup(void **state)
{
    (void)state;
    memset(&fk, 0, sizeof(fk));
    pthread_mutex_init(&fk.mu, NULL);
    pthread_cond_init(&fk.cv, NULL);
    fk.version = 1;
    fk.neps = 2;
    fk.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    if (bind(fk.fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fk.fd, 64) != 0 ||
        getsockname(fk.fd, (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    fk.port = ntohs(sa.sin_port);
    pthread_create(&fk.thr, NULL, accept_main, NULL);
    base = event_base_new();
    px_io_init(base);
    memset(&dcfg, 0, sizeof(dcfg));
    dcfg.enabled = true;
    char a[32];
    snprintf(a, sizeof(a), "127.0.0.1:%u", fk.port);
    cm_addr_parse(a, &dcfg.addr);
    dcfg.server_name = strdup("disc.test");
    dcfg.lookup_timeout_ms = 2000;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pthread_mutex_lock(&fk.mu);
    fk.stop = true;
    pthread_cond_broadcast(&fk.cv);
    pthread_mutex_unlock(&fk.mu);
    shutdown(fk.fd, SHUT_RDWR);
    pthread_join(fk.thr, NULL);
    close(fk.fd);
    pthread_mutex_lock(&fk.mu);
    while (fk.active > 0)
        pthread_cond_wait(&fk.cv, &fk.mu);
    pthread_mutex_unlock(&fk.mu);
    px_io_deinit(); /* its flush event is on this base: the next test makes a new one */
    event_base_free(base);
    free(dcfg.server_name);
    return 0;
}

static void set_fake(enum fake_mode m, unsigned version, unsigned neps)
{
    pthread_mutex_lock(&fk.mu);
    fk.mode = m;
    fk.version = version;
    fk.neps = neps;
    pthread_cond_broadcast(&fk.cv);
    pthread_mutex_unlock(&fk.mu);
}

/* Set one of the fake's switches (its threads read them under fk.mu). */
static void fake_set(bool *flag, bool v)
{
    pthread_mutex_lock(&fk.mu);
    *flag = v;
    pthread_mutex_unlock(&fk.mu);
}

static unsigned ntargets(void)
{
    pthread_mutex_lock(&fk.mu);
    unsigned n = fk.ntargets;
    pthread_mutex_unlock(&fk.mu);
    return n;
}

static const char *target(unsigned i)
{
    return fk.targets[i]; /* written before ntargets moved past it */
}

static struct px_disc_opts test_opts(void)
{
    struct px_disc_opts o;
    px_disc_opts_default(&o);
    o.plaintext = true;
    o.tls_conf = NULL;
    o.watch_s = 2;
    o.retry_max_ms = 500;
    return o;
}

static struct px_tls_conf *no_tls(void *arg)
{
    (void)arg;
    return NULL;
}

/* Run the loop until cond() or max_ms (generous: the machine is shared). */
static bool run_until(bool (*cond)(void *), void *arg, unsigned max_ms)
{
    uint64_t end = cm_mono_ms() + max_ms;
    while (!cond(arg)) {
        if (cm_mono_ms() > end)
            return false;
        struct timeval tv = {0, 20000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    return true;
}

struct result {
    int calls;
    enum px_disc_result res;
    char version[80];
    size_t neps;
};

static void on_result(enum px_disc_result res, struct px_dest_answer *ans, void *arg)
{
    struct result *r = arg;
    r->calls++;
    r->res = res;
    if (ans != NULL) {
        snprintf(r->version, sizeof(r->version), "%s", ans->version);
        r->neps = ans->neps;
    }
}

static bool called(void *arg)
{
    return ((struct result *)arg)->calls > 0;
}

/* A first lookup of addr ("ip:port") or, addr NULL, of host: not cached, so
 * UNAVAILABLE with a wait, then its callback with want. Returns what the
 * callback saw. */
static struct result miss(struct px_disc *d, const char *addr, const char *host,
                          enum px_disc_result want)
{
    struct cm_addr dst;
    if (addr != NULL)
        cm_addr_parse(addr, &dst);
    struct result r = {0};
    struct px_dest_answer *ans = NULL;
    struct px_disc_wait *w = NULL;
    assert_int_equal(px_disc_lookup(d, addr ? &dst : NULL, host, &ans, on_result, &r, &w),
                     PX_DISC_UNAVAILABLE);
    assert_non_null(w);
    assert_true(run_until(called, &r, 10000));
    assert_int_equal(r.res, want);
    return r;
}

static struct result miss_found(struct px_disc *d, const char *addr)
{
    return miss(d, addr, NULL, PX_DISC_FOUND);
}

static bool two_called(void *arg)
{
    struct result *r = arg;
    return r[0].calls > 0 && r[1].calls > 0;
}

struct want_targets {
    unsigned n;
};
static bool have_targets(void *arg)
{
    return ntargets() >= ((struct want_targets *)arg)->n;
}

static struct px_disc *new_disc(struct px_disc_opts *o)
{
    o->tls_conf = no_tls;
    return px_disc_new(base, &dcfg, o);
}

static void lookups_share_one_request(void **state)
{
    (void)state;
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst;
    cm_addr_parse("10.96.0.10:80", &dst);
    struct result r[2] = {{0}};
    struct px_dest_answer *a = NULL;
    struct px_disc_wait *w1 = NULL, *w2 = NULL;
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &a, on_result, &r[0], &w1), PX_DISC_UNAVAILABLE);
    assert_non_null(w1);
    assert_null(a);
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &a, on_result, &r[1], &w2), PX_DISC_UNAVAILABLE);
    assert_non_null(w2);
    assert_true(run_until(two_called, r, 10000));
    assert_int_equal(r[0].res, PX_DISC_FOUND);
    assert_int_equal(r[1].res, PX_DISC_FOUND);
    assert_string_equal(r[0].version, "v1");
    assert_int_equal(r[0].neps, 2);
    assert_int_equal(r[0].calls, 1);
    assert_string_equal(target(0), "/v1/destination?addr=10.96.0.10%3A80");

    /* a hit: at once, no callback, a reference of the held answer */
    struct px_disc_wait *w3 = (void *)1;
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &a, on_result, NULL, &w3), PX_DISC_FOUND);
    assert_null(w3);
    assert_non_null(a);
    assert_string_equal(a->version, "v1");

    /* the watch lists it with its version; a change swaps the answer */
    struct want_targets wt = {2};
    assert_true(run_until(have_targets, &wt, 10000));
    assert_string_equal(target(1), "POST /v1/watch?timeout_s=2");
    pthread_mutex_lock(&fk.mu);
    assert_non_null(strstr(fk.last_watch, "\"watch\": [{\"addr\": \"10.96.0.10:80\", "
                                          "\"version\": \"v1\"}]"));
    assert_non_null(strstr(fk.last_watch, "{\"session\": \""));
    pthread_mutex_unlock(&fk.mu);
    set_fake(FAKE_OK, 2, 3);
    struct px_disc_stats st;
    for (uint64_t end = cm_mono_ms() + 10000; cm_mono_ms() < end;) {
        px_disc_get_stats(d, &st);
        if (st.updates == 1)
            break;
        run_until(called, &(struct result){0}, 50);
    }
    px_disc_get_stats(d, &st);
    assert_int_equal(st.updates, 1);
    struct px_dest_answer *b = NULL;
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &b, on_result, NULL, &w3), PX_DISC_FOUND);
    assert_string_equal(b->version, "v2");
    assert_int_equal(b->neps, 3);
    assert_string_equal(a->version, "v1"); /* still whole in its holder's hands */
    assert_int_equal(a->neps, 2);
    px_dest_answer_unref(a);
    px_dest_answer_unref(b);

    px_disc_get_stats(d, &st);
    assert_int_equal(st.lookups_miss, 1);
    assert_int_equal(st.lookups_coalesced, 1);
    assert_int_equal(st.lookups_hit, 2);
    assert_int_equal(st.entries, 1);
    /* the first request was the only GET: the rest are the watch */
    unsigned n = ntargets();
    for (unsigned i = 1; i < n; i++)
        assert_string_equal(target(i), "POST /v1/watch?timeout_s=2");

    json_t *j = px_disc_json(d);
    json_t *e0 = json_array_get(json_object_get(j, "destinations"), 0);
    assert_string_equal(json_string_value(json_object_get(e0, "destination")), "10.96.0.10:80");
    assert_string_equal(json_string_value(json_object_get(e0, "state")), "current");
    assert_string_equal(json_string_value(json_object_get(e0, "version")), "v2");
    json_decref(j);
    px_disc_free(d);
}

/* Keep-alive: first lookups of many destinations, one after another, go over
 * one kept-alive connection (N misses -> 1 connection, N-1 reuses), and a
 * burst of them uses at most LOOKUP_CONNS (2) connections. A server that
 * closes its idle connection costs nothing but a new connect. */
static void lookups_reuse_one_connection(void **state)
{
    (void)state;
    fake_set(&fk.keepalive, true);
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    for (unsigned i = 0; i < 6; i++) {
        char a[32];
        snprintf(a, sizeof(a), "10.96.1.%u:80", i + 1);
        miss_found(d, a);
    }
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    assert_int_equal(st.lookup_connects, 1);
    assert_int_equal(st.lookup_reused, 5);
    pthread_mutex_lock(&fk.mu);
    unsigned lc = fk.lookup_conns;
    pthread_mutex_unlock(&fk.mu);
    assert_int_equal(lc, 1);

    /* a burst of 20 at once: every one answered, over at most 2 connections */
    struct result rs[20];
    memset(rs, 0, sizeof(rs));
    struct px_disc_wait *ws[20];
    for (unsigned i = 0; i < 20; i++) {
        char a[32];
        snprintf(a, sizeof(a), "10.96.2.%u:80", i + 1);
        struct cm_addr dst;
        cm_addr_parse(a, &dst);
        struct px_dest_answer *ans = NULL;
        assert_int_equal(px_disc_lookup(d, &dst, NULL, &ans, on_result, &rs[i], &ws[i]),
                         PX_DISC_UNAVAILABLE);
    }
    for (unsigned i = 0; i < 20; i++) {
        assert_true(run_until(called, &rs[i], 10000));
        assert_int_equal(rs[i].res, PX_DISC_FOUND);
        assert_int_equal(rs[i].calls, 1);
    }
    px_disc_get_stats(d, &st);
    assert_true(st.lookup_connects <= 2);
    assert_int_equal(st.lookup_connects + st.lookup_reused, 26);

    /* the server closes between requests (Connection: close): still answered */
    fake_set(&fk.keepalive, false);
    for (unsigned i = 0; i < 2; i++) {
        char a[32];
        snprintf(a, sizeof(a), "10.96.3.%u:80", i + 1);
        miss_found(d, a);
    }
    px_disc_free(d);
}

static unsigned fake_get(const unsigned *field)
{
    pthread_mutex_lock(&fk.mu);
    unsigned v = *field;
    pthread_mutex_unlock(&fk.mu);
    return v;
}

static bool one_open_lookup(void *arg)
{
    struct px_disc_stats st;
    px_disc_get_stats(arg, &st);
    return st.lookup_open == 1 && fake_get(&fk.active) >= 1;
}

struct ping_wait {
    struct px_disc *d;
    unsigned pings;    /* GET /v1/ping seen at the fake */
    unsigned connects; /* lookup connections opened, at least */
    unsigned answered; /* pings answered, at least */
};
static bool pings_seen(void *arg)
{
    struct ping_wait *pw = arg;
    struct px_disc_stats st;
    px_disc_get_stats(pw->d, &st);
    return fake_get(&fk.pings) >= pw->pings && st.lookup_keepalives_answered >= pw->answered &&
           st.lookup_connects >= pw->connects && st.lookup_open == 1;
}

/* The warm lookup connection: open before any lookup, the first miss goes
 * over it (no new connection), an idle one sends GET /v1/ping, and one the
 * server closed comes back. */
static void warm_connection(void **state)
{
    (void)state;
    fake_set(&fk.keepalive, true);
    struct px_disc_opts o = test_opts();
    o.keepalive_ms = 400;
    struct px_disc *d = new_disc(&o);
    assert_true(run_until(one_open_lookup, d, 10000));
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    assert_int_equal(st.lookup_connects, 1);
    assert_int_equal(st.lookup_warm_opens, 1);
    assert_int_equal(fake_get(&fk.accepts), 1); /* open before anything was asked */
    struct ping_wait pw = {.d = d, .pings = 1, .connects = 1, .answered = 1};
    assert_true(run_until(pings_seen, &pw, 10000)); /* its warm-up request */
    assert_int_equal(ntargets(), 0);

    miss_found(d, "10.96.5.1:80");
    px_disc_get_stats(d, &st);
    assert_int_equal(st.lookup_connects, 1); /* the first miss: on the warm connection */
    assert_int_equal(fake_get(&fk.lookup_conns), 1);
    assert_string_equal(target(0), "/v1/destination?addr=10.96.5.1%3A80");

    /* idle 400 ms: a GET /v1/ping on the same connection */
    pw.pings = 2;
    pw.answered = 2;
    assert_true(run_until(pings_seen, &pw, 10000));
    px_disc_get_stats(d, &st);
    assert_int_equal(st.lookup_connects, 1);
    assert_true(st.lookup_keepalives >= 2);
    assert_int_equal(st.lookup_reused, 1); /* the lookup, after the warm-up; pings not counted */

    /* the server closes the connection under the next ping: it comes back */
    fake_set(&fk.drop_second, true);
    pw.connects = 2;
    pw.pings = fake_get(&fk.pings) + 2;
    assert_true(run_until(pings_seen, &pw, 10000));
    px_disc_get_stats(d, &st);
    assert_true(st.lookup_connects >= 2);
    assert_int_equal(st.lookup_open, 1);
    px_disc_free(d);
}

static bool accepts_at_least(void *arg)
{
    return fake_get(&fk.accepts) >= *(unsigned *)arg;
}

/* A discovery service that refuses every connection (at its connection
 * limit): the warm connection is retried with backoff, not in a loop; a
 * lookup meanwhile is UNAVAILABLE within its bound; once the server takes
 * connections again the warm one is back. */
static void warm_connection_backs_off(void **state)
{
    (void)state;
    fake_set(&fk.keepalive, true);
    fake_set(&fk.refuse, true);
    struct px_disc_opts o = test_opts();
    o.retry_max_ms = 1000;
    struct px_disc *d = new_disc(&o);
    unsigned want = 2;
    assert_true(run_until(accepts_at_least, &want, 10000));
    uint64_t t0 = cm_mono_ms();
    unsigned a0 = fake_get(&fk.accepts);
    miss(d, "10.96.6.1:80", NULL, PX_DISC_UNAVAILABLE);
    struct want_targets never = {1}; /* run 2.5 s more: nothing reaches the app's side */
    assert_false(run_until(have_targets, &never, 2500));
    uint64_t ms = cm_mono_ms() - t0;
    unsigned tries = fake_get(&fk.accepts) - a0;
    /* 250 ms doubling to 1 s: about one a second; a loop would be thousands */
    assert_true(tries <= 6 + (unsigned)(ms / 250));
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    assert_true(st.lookup_warm_opens >= 2);

    fake_set(&fk.refuse, false);
    struct ping_wait pw = {.d = d, .pings = 1, .connects = 1, .answered = 1};
    assert_true(run_until(pings_seen, &pw, 10000)); /* back, and warmed up */
    miss_found(d, "10.96.6.2:80");
    px_disc_free(d);
}

/* A server that answers the warm-up request and then closes: the warm
 * connection is re-opened with backoff, not once per round trip. */
static void warm_connection_closed_after_warmup(void **state)
{
    (void)state;
    fake_set(&fk.keepalive, true);
    fake_set(&fk.close_after, true);
    struct px_disc_opts o = test_opts();
    o.retry_max_ms = 1000;
    struct px_disc *d = new_disc(&o);
    unsigned want = 1;
    assert_true(run_until(accepts_at_least, &want, 10000));
    uint64_t t0 = cm_mono_ms();
    want = 1000000;
    assert_false(run_until(accepts_at_least, &want, 2500));
    uint64_t ms = cm_mono_ms() - t0;
    unsigned n = fake_get(&fk.accepts);
    assert_true(n >= 2);                        /* re-opened */
    assert_true(n <= 4 + (unsigned)(ms / 500)); /* 250 ms doubling to 1 s, not a loop */
    px_disc_free(d);
}

/* No workload certificate yet: no connection is made (the warm one waits for
 * it), and a lookup is UNAVAILABLE, not stuck. */
static void warm_connection_waits_for_certificate(void **state)
{
    (void)state;
    struct px_disc_opts o = test_opts();
    o.plaintext = false;
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst;
    cm_addr_parse("10.96.7.1:80", &dst);
    struct result r = {0};
    struct px_dest_answer *ans = NULL;
    struct px_disc_wait *w = NULL;
    /* without a certificate nothing is asked: UNAVAILABLE at once */
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &ans, on_result, &r, &w), PX_DISC_UNAVAILABLE);
    assert_null(w);
    unsigned want = 1;
    assert_false(run_until(accepts_at_least, &want, 1500));
    px_disc_free(d);
}

static bool watch_lists(void *arg)
{
    unsigned want = *(unsigned *)arg;
    pthread_mutex_lock(&fk.mu);
    unsigned n = 0;
    for (const char *p = fk.last_watch; (p = strstr(p, "\"addr\": ")) != NULL; p++)
        n++;
    pthread_mutex_unlock(&fk.mu);
    return n == want;
}

struct want_updates {
    struct px_disc *d;
    uint64_t n;
};
static bool have_updates(void *arg)
{
    struct want_updates *w = arg;
    struct px_disc_stats st;
    px_disc_get_stats(w->d, &st);
    return st.updates >= w->n;
}

/* One watch for every held answer: 20 destinations looked up one after
 * another (each added while the watch is held) end up in one POST /v1/watch
 * with their versions, over at most 2 connections (the held watch and the
 * one superseding it: no connection per destination, no handshake per
 * change); a change reaches all 20 through it. */
static void one_watch_for_many(void **state)
{
    (void)state;
    fake_set(&fk.keepalive, true);
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst[20];
    for (unsigned i = 0; i < 20; i++) {
        char a[32];
        snprintf(a, sizeof(a), "10.96.4.%u:80", i + 1);
        cm_addr_parse(a, &dst[i]);
        miss_found(d, a);
        run_until(called, &(struct result){0}, 30); /* let the watch go out now and then */
    }
    unsigned want = 20;
    assert_true(run_until(watch_lists, &want, 10000));
    pthread_mutex_lock(&fk.mu);
    unsigned wc = fk.watch_conns, lc = fk.lookup_conns;
    assert_non_null(strstr(fk.last_watch, "{\"addr\": \"10.96.4.20:80\", \"version\": \"v1\"}"));
    pthread_mutex_unlock(&fk.mu);
    assert_true(wc >= 1 && wc <= 2);
    assert_int_equal(lc, 1);

    set_fake(FAKE_OK, 2, 3); /* every destination changes: all 20 through the watch */
    struct want_updates wu = {d, 20};
    assert_true(run_until(have_updates, &wu, 10000));
    for (unsigned i = 0; i < 20; i++) {
        struct px_dest_answer *ans = NULL;
        struct px_disc_wait *w = NULL;
        assert_int_equal(px_disc_lookup(d, &dst[i], NULL, &ans, on_result, NULL, &w),
                         PX_DISC_FOUND);
        assert_string_equal(ans->version, "v2");
        assert_int_equal(ans->neps, 3);
        px_dest_answer_unref(ans);
    }
    pthread_mutex_lock(&fk.mu);
    wc = fk.watch_conns;
    pthread_mutex_unlock(&fk.mu);
    assert_true(wc <= 2);
    px_disc_free(d);
}

/* The watch's answer decoder: what it accepts, and each refusal names the field. */
static void changes_decode(void **state)
{
    (void)state;
    char ok[4096];
    size_t n = (size_t)snprintf(ok, sizeof(ok),
                                "{\"changed\": [{\"addr\": \"10.0.0.1:80\", "
                                "\"status\": 200, \"answer\": ");
    n += fake_body(ok + n, sizeof(ok) - n, 7, 1);
    n += (size_t)snprintf(ok + n, sizeof(ok) - n,
                          "}, {\"host\": \"web.shop:80\", \"status\": 404}]}");
    struct px_disc_change *c = NULL;
    size_t k = 0;
    char *err = NULL;
    assert_int_equal(px_disc_changes_decode(ok, n, &c, &k, &err), 0);
    assert_int_equal(k, 2);
    assert_string_equal(c[0].key, "10.0.0.1:80");
    assert_false(c[0].by_host);
    assert_int_equal(c[0].status, 200);
    assert_string_equal(c[0].ans->version, "v7");
    assert_true(c[1].by_host);
    assert_int_equal(c[1].status, 404);
    assert_null(c[1].ans);
    px_disc_changes_free(c, k);
    static const char *const bad[][2] = {
        {"nope", "not JSON"},
        {"{\"changed\": {}}", "changed: want an array"},
        {"{\"changed\": []}", "changed: want 1..4096 entries"},
        {"{\"changed\": [{\"addr\": \"a:1\", \"host\": \"b:1\", \"status\": 404}]}",
         "changed[0]: want exactly one of addr and host"},
        {"{\"changed\": [{\"addr\": \"a:1\", \"status\": 500}]}",
         "changed[0].status: want 200 or 404"},
        {"{\"changed\": [{\"addr\": \"a:1\", \"status\": 200}]}", "changed[0].answer: want"},
        {"{\"changed\": [{\"addr\": \"a:1\", \"status\": 404}, {\"addr\": \"a:1\", "
         "\"status\": 200, \"answer\": {\"kind\": \"x\"}}]}",
         "changed[1].answer: "},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        assert_int_equal(px_disc_changes_decode(bad[i][0], strlen(bad[i][0]), &c, &k, &err),
                         CM_ERR_INVAL);
        assert_null(c);
        assert_non_null(err);
        if (strstr(err, bad[i][1]) == NULL)
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i][0], err, bad[i][1]);
        free(err);
    }
}

/* discovery.address as a name: resolved without blocking the loop (the hosts
 * file's localhost here: no query leaves the machine), then used; /destinations
 * shows the name and what it resolved to. */
static void address_by_name(void **state)
{
    (void)state;
    struct px_disc_cfg named = dcfg;
    memset(&named.addr, 0, sizeof(named.addr));
    named.address_name = (char *)"localhost";
    snprintf(named.address_port, sizeof(named.address_port), "%u", fk.port);
    struct px_disc_opts o = test_opts();
    o.tls_conf = no_tls;
    struct px_disc *d = px_disc_new(base, &named, &o);
    miss_found(d, "10.96.5.1:80");
    json_t *j = px_disc_json(d);
    char want[64];
    snprintf(want, sizeof(want), "localhost:%u", fk.port);
    assert_string_equal(json_string_value(json_object_get(j, "discovery")), want);
    snprintf(want, sizeof(want), "127.0.0.1:%u", fk.port);
    assert_string_equal(json_string_value(json_object_get(j, "resolved")), want);
    json_decref(j);
    px_disc_free(d);
}

/* A kept-alive lookup connection the server closes as the next request
 * arrives (no byte of an answer): the request is sent once more on a new
 * connection and answered; the waiter sees FOUND. */
static void reused_connection_closed_resends(void **state)
{
    (void)state;
    fake_set(&fk.keepalive, true);
    fake_set(&fk.drop_second, true);
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    for (unsigned i = 0; i < 2; i++) {
        char a[32];
        snprintf(a, sizeof(a), "10.96.6.%u:80", i + 1);
        struct result r = miss_found(d, a);
        assert_int_equal(r.calls, 1);
    }
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    assert_int_equal(st.lookup_connects, 2); /* the first, and the one the resend opened */
    assert_int_equal(st.failures, 0);
    /* the second destination was asked twice: on the closed connection, then again */
    unsigned n = ntargets(), asked = 0;
    for (unsigned i = 0; i < n; i++)
        asked += strcmp(target(i), "/v1/destination?addr=10.96.6.2%3A80") == 0;
    assert_int_equal(asked, 2);
    px_disc_free(d);
}

static void not_found_is_believed(void **state)
{
    (void)state;
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst;
    cm_addr_parse("10.0.0.9:80", &dst);
    struct result r = miss(d, "10.0.0.9:80", NULL, PX_DISC_NOT_FOUND);
    struct px_dest_answer *a = NULL;
    struct px_disc_wait *w = NULL;
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &a, on_result, &r, &w), PX_DISC_NOT_FOUND);
    assert_null(w);
    assert_int_equal(ntargets(), 1); /* no long-poll on a 404, no second ask */

    /* hosts: lower-cased, percent-encoded; a bad one is NOT_FOUND without asking */
    struct result h = miss(d, NULL, "Web.Shop:80", PX_DISC_FOUND);
    assert_string_equal(target(1), "/v1/destination?host=web.shop%3A80");
    assert_int_equal(px_disc_lookup(d, NULL, "web shop:80", &a, on_result, &h, &w),
                     PX_DISC_NOT_FOUND);
    assert_int_equal(px_disc_lookup(d, NULL, "web.shop", &a, on_result, &h, &w), PX_DISC_NOT_FOUND);
    assert_int_equal(px_disc_lookup(d, NULL, "web.shop:80&x=1", &a, on_result, &h, &w),
                     PX_DISC_NOT_FOUND);
    assert_int_equal(px_disc_lookup(d, NULL, "a:1:2", &a, on_result, &h, &w), PX_DISC_NOT_FOUND);
    px_disc_free(d);
}

static bool stale_now(void *arg)
{
    struct px_disc *d = arg;
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    return st.stale == 1;
}

static bool fresh_now(void *arg)
{
    return !stale_now(arg);
}

static void unreachable_keeps_held_answers(void **state)
{
    (void)state;
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst;
    cm_addr_parse("10.96.0.10:80", &dst);
    struct result r = miss_found(d, "10.96.0.10:80");
    struct px_dest_answer *a = NULL;
    struct px_disc_wait *w = NULL;

    set_fake(FAKE_DOWN, 1, 2); /* the held long-poll is closed unanswered */
    assert_true(run_until(stale_now, d, 10000));
    assert_true(px_disc_stale(d, &dst, NULL));
    assert_int_equal(px_disc_lookup(d, &dst, NULL, &a, on_result, &r, &w), PX_DISC_FOUND);
    assert_string_equal(a->version, "v1");
    px_dest_answer_unref(a);
    /* a new destination: UNAVAILABLE (outside the mesh), then believed for the backoff */
    miss(d, "10.96.0.11:80", NULL, PX_DISC_UNAVAILABLE);
    json_t *j = px_disc_json(d);
    char *text = json_dumps(j, 0);
    assert_non_null(strstr(text, "\"state\": \"stale\""));
    assert_non_null(strstr(text, "\"last_error\""));
    free(text);
    json_decref(j);

    set_fake(FAKE_OK, 1, 2); /* back: the retry (same version) makes it current again */
    assert_true(run_until(fresh_now, d, 10000));
    assert_false(px_disc_stale(d, &dst, NULL));
    px_disc_free(d);
}

static void slow_first_lookup_is_bounded(void **state)
{
    (void)state;
    dcfg.lookup_timeout_ms = 200;
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst;
    cm_addr_parse("10.0.0.8:80", &dst);
    struct px_dest_answer *a = NULL;
    struct px_disc_wait *w = NULL;
    uint64_t t0 = cm_mono_ms();
    miss(d, "10.0.0.8:80", NULL, PX_DISC_UNAVAILABLE);
    assert_true(cm_mono_ms() - t0 < 1400); /* before the server's 1.5 s answer */
    /* the request went on and filled the cache */
    struct result r2 = {0};
    px_disc_lookup(d, &dst, NULL, &a, on_result, &r2, &w);
    if (w != NULL)
        px_disc_cancel(w); /* cancelled: never called */
    for (uint64_t end = cm_mono_ms() + 10000; cm_mono_ms() < end;) {
        if (px_disc_lookup(d, &dst, NULL, &a, on_result, &r2, &w) == PX_DISC_FOUND)
            break;
        if (w != NULL)
            px_disc_cancel(w);
        run_until(called, &(struct result){0}, 100);
    }
    assert_non_null(a);
    assert_int_equal(r2.calls, 0);
    px_dest_answer_unref(a);
    px_disc_free(d);
}

static void entries_expire_and_are_bounded(void **state)
{
    (void)state;
    struct px_disc_opts o = test_opts();
    o.max_entries = 2;
    o.idle_ms = 300;
    struct px_disc *d = new_disc(&o);
    const char *dests[] = {"10.96.0.1:80", "10.96.0.2:80", "10.96.0.3:80"};
    for (int i = 0; i < 3; i++)
        miss_found(d, dests[i]);
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.evicted, 1);
    json_t *j = px_disc_json(d);
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, "10.96.0.1:80")); /* the least recently used went */
    assert_non_null(strstr(text, "10.96.0.3:80"));
    free(text);
    json_decref(j);
    for (uint64_t end = cm_mono_ms() + 10000; cm_mono_ms() < end;) {
        px_disc_get_stats(d, &st);
        if (st.entries == 0)
            break;
        run_until(called, &(struct result){0}, 50);
    }
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.expired, 2);
    px_disc_free(d);
}

static void route_decisions(void **state)
{
    (void)state;
    struct px_disc_opts o = test_opts();
    struct px_disc *d = new_disc(&o);
    struct cm_addr dst, listed;
    cm_addr_parse("203.0.113.9:443", &dst);
    cm_addr_parse("198.51.100.7:443", &listed);
    const char *one = "{\"kind\": \"service\", \"service\": \"a/b\", \"port\": 80, \"version\": "
                      "\"v\", \"endpoints\": [" EP_MESHED ", " EP_PLAIN ", " EP_MESHED "]}";
    const char *two =
        "{\"kind\": \"service\", \"service\": \"a/b\", \"port\": 80, \"version\": "
        "\"v\", \"endpoints\": [" EP_MESHED ", {\"address\": \"10.0.0.2:80\", "
        "\"identity\": \"spiffe://cluster.local/ns/shop/sa/other\", \"meshed\": true, "
        "\"ready\": true, \"serving\": true, \"terminating\": false}]}";
    const char *plain = "{\"kind\": \"pod\", \"service\": null, \"port\": 80, \"version\": "
                        "\"v\", \"endpoints\": [" EP_PLAIN "]}";
    struct px_dest_answer *a1 = NULL, *a2 = NULL, *a3 = NULL;
    char *err = NULL;
    assert_int_equal(px_dest_decode(one, strlen(one), &a1, &err), 0);
    assert_int_equal(px_dest_decode(two, strlen(two), &a2, &err), 0);
    assert_int_equal(px_dest_decode(plain, strlen(plain), &a3, &err), 0);
    const char *id = "x";
    /* one workload behind every meshed endpoint: its identity is required */
    assert_int_equal(px_disc_route(d, PX_DISC_FOUND, a1, &dst, NULL, &id), PX_ROUTE_MESH);
    assert_string_equal(id, "spiffe://cluster.local/ns/shop/sa/web");
    /* two workloads: any mesh workload (no single expected identity) */
    assert_int_equal(px_disc_route(d, PX_DISC_FOUND, a2, &dst, NULL, &id), PX_ROUTE_MESH);
    assert_null(id);
    assert_int_equal(px_disc_route(d, PX_DISC_FOUND, a3, &dst, NULL, &id), PX_ROUTE_PLAIN);
    assert_null(id);
    /* outside the mesh: allow_any passes, registry_only refuses unless listed */
    assert_int_equal(px_disc_route(d, PX_DISC_NOT_FOUND, NULL, &dst, NULL, &id), PX_ROUTE_EGRESS);
    dcfg.policy = PX_OUTBOUND_REGISTRY_ONLY;
    dcfg.egress = calloc(1, sizeof(*dcfg.egress));
    dcfg.negress = 1;
    dcfg.egress[0] = (struct px_egress_rule){.kind = PX_EGRESS_CIDR,
                                             .family = AF_INET,
                                             .net = {198, 51, 100, 0},
                                             .prefix = 24,
                                             .port = 443};
    assert_int_equal(px_disc_route(d, PX_DISC_NOT_FOUND, NULL, &dst, NULL, &id), PX_ROUTE_REFUSED);
    assert_int_equal(px_disc_route(d, PX_DISC_UNAVAILABLE, NULL, &dst, NULL, &id),
                     PX_ROUTE_REFUSED);
    assert_int_equal(px_disc_route(d, PX_DISC_UNAVAILABLE, NULL, &listed, NULL, &id),
                     PX_ROUTE_EGRESS);
    struct px_disc_stats st;
    px_disc_get_stats(d, &st);
    assert_int_equal(st.egress_passthrough, 1);
    assert_int_equal(st.egress_refused, 2);
    assert_int_equal(st.egress_allowed, 1);
    free(dcfg.egress);
    dcfg.egress = NULL;
    dcfg.negress = 0;
    dcfg.policy = PX_OUTBOUND_ALLOW_ANY;
    px_dest_answer_unref(a1);
    px_dest_answer_unref(a2);
    px_dest_answer_unref(a3);
    px_disc_free(d);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_defaults),
        cmocka_unit_test(config_errors),
        cmocka_unit_test(egress_matching),
        cmocka_unit_test(answer_decodes),
        cmocka_unit_test(answer_refused),
        cmocka_unit_test_setup_teardown(lookups_share_one_request, setup, teardown),
        cmocka_unit_test_setup_teardown(lookups_reuse_one_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(one_watch_for_many, setup, teardown),
        cmocka_unit_test(changes_decode),
        cmocka_unit_test_setup_teardown(address_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(reused_connection_closed_resends, setup, teardown),
        cmocka_unit_test_setup_teardown(not_found_is_believed, setup, teardown),
        cmocka_unit_test_setup_teardown(unreachable_keeps_held_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_first_lookup_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(entries_expire_and_are_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(route_decisions, setup, teardown),
        cmocka_unit_test_setup_teardown(warm_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(warm_connection_backs_off, setup, teardown),
        cmocka_unit_test_setup_teardown(warm_connection_waits_for_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(warm_connection_closed_after_warmup, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
