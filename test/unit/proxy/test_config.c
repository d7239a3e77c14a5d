/* Unit tests of proxy/config.c.
 *
 * Data-driven (test/data/config/, found under $REMORA_ROOT or the current
 * directory): every ok-*.json must load; every bad-*.json must fail, and its
 * message must start with the file name and contain the text of the sibling
 * bad-*.err (first line). A new case is a new file. Loading from memory must
 * give the same result and message as loading the file. Each file is loaded
 * in a child process: a crash or a leak fails that case alone.
 *
 * Then a few cases check the parsed values themselves: the docs/contract.md example,
 * every key set, the defaults, and the bounds of "limits". */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "proxy/config.h"
#include "proxy/inbound_tls.h"
#include "proxy/listener.h"

static char data_dir[4096];

static void find_data_dir(void)
{
    const char *root = getenv("REMORA_ROOT");
    snprintf(data_dir, sizeof(data_dir), "%s/test/data/config", root && *root ? root : ".");
}

/* First line of a small file into buf (no heap: a failing case longjmps
 * out, and a leak would then show in every later child process). */
static void first_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Invariants of every config that loads; NULL when they hold. */
static const char *loaded_problem(const struct px_config *cfg, const char *path)
{
    if (cfg == NULL)
        return "no config returned";
    if (cfg->file == NULL || strcmp(cfg->file, path) != 0)
        return "cfg->file is not the name given";
    if (!json_is_object(cfg->raw))
        return "cfg->raw is not the document";
    if (cfg->nlisteners < 1 || cfg->nlisteners > 64)
        return "listener count out of [1, 64]";
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct px_listener_cfg *l = &cfg->listeners[i];
        if (l->name == NULL || l->name[0] == '\0')
            return "a listener has no name";
        for (size_t j = 0; j < i; j++)
            if (strcmp(l->name, cfg->listeners[j].name) == 0)
                return "two listeners share a name";
        if (l->direction == PX_DIR_INBOUND ? l->tls == PX_TLS_MESH
                                           : l->tls != PX_TLS_DISABLED && l->tls != PX_TLS_MESH)
            return "tls mode does not suit the direction";
    }
    return NULL;
}

/* What loading one file did, measured in a child process so that a crash
 * or a leak fails only its own case and the other cases still run. */
struct outcome {
    int rc_load, rc_parse, rc_parse_nomsg;
    bool out_touched; /* *out written although loading failed */
    bool has_err_load, has_err_parse;
    char err_load[1024], err_parse[1024];
    char problem[256]; /* a loaded config breaking an invariant */
};

static void copy_msg(char *dst, size_t cap, bool *has, char *msg)
{
    *has = msg != NULL;
    snprintf(dst, cap, "%s", msg ? msg : "");
    free(msg);
}

static void measure(const char *path, struct outcome *o)
{
    struct px_config *const untouched = (struct px_config *)(uintptr_t)1;
    struct px_config *cfg = untouched;
    char *err = NULL;
    const char *problem = NULL;

    o->rc_load = px_config_load(path, &cfg, &err);
    if (o->rc_load == 0) {
        problem = loaded_problem(cfg, path);
        px_config_free(cfg);
    } else if (cfg != untouched) {
        o->out_touched = true;
    }
    copy_msg(o->err_load, sizeof(o->err_load), &o->has_err_load, err);

    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    while (f != NULL) {
        if (len + 4096 > cap)
            buf = realloc(buf, cap = cap ? cap * 2 : 8192);
        size_t r = fread(buf + len, 1, 4096, f);
        if (r == 0)
            break;
        len += r;
    }
    if (f != NULL)
        fclose(f);
    cfg = untouched;
    err = NULL;
    o->rc_parse = px_config_parse(path, buf, len, &cfg, &err);
    if (o->rc_parse == 0) {
        if (problem == NULL)
            problem = loaded_problem(cfg, path);
        px_config_free(cfg);
    } else if (cfg != untouched) {
        o->out_touched = true;
    }
    copy_msg(o->err_parse, sizeof(o->err_parse), &o->has_err_parse, err);
    cfg = untouched;
    o->rc_parse_nomsg = px_config_parse(path, buf, len, &cfg, NULL);
    if (o->rc_parse_nomsg == 0)
        px_config_free(cfg);
    free(buf);
    if (problem != NULL)
        snprintf(o->problem, sizeof(o->problem), "%s", problem);
}

static void measure_isolated(const char *path, struct outcome *o)
{
    int fds[2];
    memset(o, 0, sizeof(*o));
    assert_int_equal(pipe(fds), 0);
    fflush(stdout); /* or the child flushes our TAP lines a second time */
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct outcome mine;
        memset(&mine, 0, sizeof(mine));
        measure(path, &mine);
        ssize_t w = write(fds[1], &mine, sizeof(mine));
        close(fds[1]);
        exit(w == (ssize_t)sizeof(mine) ? 0 : 3); /* exit, not _exit: LSan runs */
    }
    close(fds[1]);
    size_t got = 0;
    while (got < sizeof(*o)) {
        ssize_t r = read(fds[0], (char *)o + got, sizeof(*o) - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        fail_msg("%s: loading it killed the process with signal %d", path, WTERMSIG(status));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got != sizeof(*o))
        fail_msg("%s: loading it crashed or leaked (exit status %d; sanitizer report above)", path,
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void run_ok_case(void **state)
{
    const char *path = *state;
    struct outcome o;
    measure_isolated(path, &o);
    if (o.rc_load != 0)
        fail_msg("%s: want success, got %d: %s", path, o.rc_load, o.err_load);
    assert_false(o.has_err_load);
    if (o.rc_parse != 0)
        fail_msg("%s from memory: %s", path, o.err_parse);
    assert_int_equal(o.rc_parse_nomsg, 0);
    if (o.problem[0] != '\0')
        fail_msg("%s: %s", path, o.problem);
}

static void run_bad_case(void **state)
{
    const char *path = *state;
    char errpath[4200];
    size_t n = strlen(path) - strlen(".json");
    snprintf(errpath, sizeof(errpath), "%.*s.err", (int)n, path);
    char want[1024];
    first_line(errpath, want, sizeof(want));
    if (want[0] == '\0')
        fail_msg("%s is empty: it must hold a part of the expected message", errpath);

    struct outcome o;
    measure_isolated(path, &o);
    if (o.rc_load != CM_ERR_INVAL)
        fail_msg("%s: want CM_ERR_INVAL, got %d", path, o.rc_load);
    assert_false(o.out_touched);
    assert_true(o.has_err_load);
    const char *err = o.err_load;
    if (strncmp(err, path, strlen(path)) != 0 || strncmp(err + strlen(path), ": ", 2) != 0)
        fail_msg("message does not start with the file name: %s", err);
    if (strstr(err, want) == NULL)
        fail_msg("message \"%s\"\n  does not contain \"%s\"", err, want);
    /* the same bytes from memory: same failure, same words */
    assert_int_equal(o.rc_parse, CM_ERR_INVAL);
    assert_true(o.has_err_parse);
    assert_string_equal(o.err_parse, err);
    assert_int_equal(o.rc_parse_nomsg, CM_ERR_INVAL);
}

/* ---- cases on the values themselves ---------------------------------------- */

static struct px_config *load_case(const char *name)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", data_dir, name);
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(path, &cfg, &err) != 0)
        fail_msg("%s: %s", path, err);
    return cfg;
}

static const char *addr(const struct cm_addr *a)
{
    static char buf[CM_ADDR_STRLEN];
    return cm_addr_format(a, buf, sizeof(buf));
}

static void design_example(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-design-example.json");
    assert_true(cfg->has_admin);
    assert_string_equal(addr(&cfg->admin_addr), "127.0.0.1:15000");
    assert_int_equal(cfg->nlisteners, 2);

    const struct px_listener_cfg *in = &cfg->listeners[0], *out = &cfg->listeners[1];
    assert_string_equal(in->name, "inbound");
    assert_string_equal(addr(&in->addr), "0.0.0.0:15006");
    assert_int_equal(in->direction, PX_DIR_INBOUND);
    assert_true(in->has_upstream);
    assert_string_equal(addr(&in->upstream), "127.0.0.1:8080");
    assert_int_equal(in->tls, PX_TLS_STRICT);
    assert_int_equal(in->upstream_protocol, PX_UP_HTTP1);

    assert_string_equal(out->name, "outbound");
    assert_string_equal(addr(&out->addr), "127.0.0.1:15001");
    assert_int_equal(out->direction, PX_DIR_OUTBOUND);
    assert_true(out->has_upstream);
    assert_string_equal(addr(&out->upstream), "127.0.0.1:15006");
    assert_int_equal(out->tls, PX_TLS_MESH);

    assert_non_null(cfg->identity);
    assert_string_equal(json_string_value(json_object_get(cfg->identity, "trust_domain")),
                        "cluster.local");
    assert_string_equal(json_string_value(json_object_get(cfg->identity, "bundle_file")),
                        "bundle.pem");
    assert_string_equal(cfg->policy_file, "policy.json");
    assert_string_equal(cfg->routes_file, "routes.json");
    assert_null(cfg->cluster);
    assert_null(cfg->access_log);
    px_config_free(cfg);
}

static void defaults(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-minimal.json");
    struct px_limits d;
    memset(&d, 0, sizeof(d)); /* padding too: compared bytewise */
    px_limits_default(&d);
    assert_memory_equal(&cfg->limits, &d, sizeof(d));
    assert_int_equal(d.max_header_bytes, 65536);
    assert_int_equal(d.max_headers, 100);
    assert_int_equal(d.buffer_bytes, 65536);
    assert_false(cfg->has_admin);
    assert_false(cfg->has_health);
    assert_int_equal(cfg->log_level, CM_LOG_INFO);
    assert_int_equal(cfg->log_format, CM_LOG_FORMAT_TEXT);
    assert_null(cfg->access_log);
    assert_null(cfg->cluster);
    assert_null(cfg->identity);
    assert_null(cfg->policy_file);
    assert_null(cfg->routes_file);
    assert_int_equal(cfg->nlisteners, 1);
    assert_false(cfg->listeners[0].has_upstream);
    assert_int_equal(cfg->listeners[0].tls, PX_TLS_DISABLED);
    assert_int_equal(cfg->listeners[0].upstream_protocol, PX_UP_HTTP1);
    px_config_free(cfg);
}

/* HTTP/2 hostile-peer keys (docs/h2.md): defaults, both ends, and the
 * listener's downstream_protocol. */
static void h2_hostile_keys(void **state)
{
    (void)state;
    struct px_limits d;
    px_limits_default(&d);
    assert_int_equal(d.h2_max_resets_per_window, 200);
    assert_int_equal(d.h2_reset_window_ms, 10000);
    struct px_config *cfg = load_case("ok-minimal.json");
    assert_false(cfg->listeners[0].downstream_h2);
    px_config_free(cfg);
    cfg = load_case("ok-h2-reset-budget-min.json");
    assert_int_equal(cfg->limits.h2_max_resets_per_window, 1);
    assert_int_equal(cfg->limits.h2_reset_window_ms, 1);
    px_config_free(cfg);
    cfg = load_case("ok-h2-reset-budget-max.json");
    assert_int_equal(cfg->limits.h2_max_resets_per_window, 1000000);
    assert_int_equal(cfg->limits.h2_reset_window_ms, 3600000);
    px_config_free(cfg);
    cfg = load_case("ok-downstream-protocol-h2.json");
    assert_true(cfg->listeners[0].downstream_h2);
    assert_false(cfg->listeners[1].downstream_h2);
    px_config_free(cfg);
}

static void all_keys(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-all-keys.json");
    assert_int_equal(cfg->listeners[0].tls, PX_TLS_PERMISSIVE);
    assert_int_equal(cfg->listeners[0].upstream_protocol, PX_UP_H2);
    assert_int_equal(cfg->listeners[1].tls, PX_TLS_DISABLED);
    assert_int_equal(cfg->listeners[1].upstream_protocol, PX_UP_HTTP1);
    assert_false(cfg->listeners[1].has_upstream);
    assert_string_equal(cfg->cluster, "east");
    assert_string_equal(cfg->access_log, "-");
    assert_string_equal(cfg->policy_file, "/etc/remora/policy.json");
    assert_int_equal(cfg->log_level, CM_LOG_DEBUG);
    assert_int_equal(cfg->log_format, CM_LOG_FORMAT_JSON);
    const struct px_limits *l = &cfg->limits;
    assert_int_equal(l->max_header_bytes, 32768);
    assert_int_equal(l->max_headers, 50);
    assert_int_equal(l->max_request_body, 1048576);
    assert_int_equal(l->buffer_bytes, 131072);
    assert_int_equal(l->header_timeout_ms, 5000);
    assert_int_equal(l->idle_timeout_ms, 30000);
    assert_int_equal(l->connect_timeout_ms, 1000);
    assert_int_equal(l->request_timeout_ms, 15000);
    assert_int_equal(l->detect_timeout_ms, 250);
    assert_int_equal(l->drain_timeout_ms, 2000);
    assert_int_equal(l->max_connections, 500);
    assert_int_equal(l->pool_max_idle, 8);
    assert_int_equal(l->pool_idle_timeout_ms, 10000);
    assert_int_equal(l->h2_max_concurrent_streams, 64);
    assert_int_equal(l->retry_buffer_bytes, 32768);
    assert_true(cfg->has_health);
    assert_string_equal(addr(&cfg->health_addr), "0.0.0.0:15020");
    assert_true(cfg->has_health6);
    assert_string_equal(addr(&cfg->health_addr6), "[::]:15020");
    px_config_free(cfg);
    cfg = load_case("ok-health.json"); /* address6 is optional */
    assert_true(cfg->has_health);
    assert_false(cfg->has_health6);
    px_config_free(cfg);
}

static void limits_bounds(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-limits-min.json");
    assert_int_equal(cfg->limits.max_header_bytes, 1024);
    assert_int_equal(cfg->limits.max_headers, 8);
    assert_int_equal(cfg->limits.max_request_body, 0);
    assert_int_equal(cfg->limits.pool_max_idle, 0);
    assert_int_equal(cfg->limits.drain_timeout_ms, 0);
    px_config_free(cfg);
    cfg = load_case("ok-limits-max.json");
    assert_int_equal(cfg->limits.max_header_bytes, 1048576);
    assert_true(cfg->limits.max_request_body == (uint64_t)INT64_MAX);
    assert_int_equal(cfg->limits.buffer_bytes, 67108864);
    assert_int_equal(cfg->limits.max_connections, 10000000);
    assert_int_equal(cfg->limits.idle_timeout_ms, 86400000);
    px_config_free(cfg);
    /* log level alias */
    cfg = load_case("ok-log-level-warning.json");
    assert_int_equal(cfg->log_level, CM_LOG_WARN);
    px_config_free(cfg);
}

/* opaque_ports (what the injector writes from remora.io/opaque-ports)
 * and limits.tcp_idle_timeout_ms (default 1 h, 0: never). */
static void opaque_ports_and_tcp_idle(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-opaque-ports.json");
    assert_int_equal(cfg->nopaque_ports, 4);
    assert_true(px_config_opaque_port(cfg, 3306));
    assert_true(px_config_opaque_port(cfg, 5432));
    assert_true(px_config_opaque_port(cfg, 1));
    assert_true(px_config_opaque_port(cfg, 65535));
    assert_false(px_config_opaque_port(cfg, 8080));
    assert_int_equal(cfg->limits.tcp_idle_timeout_ms, 0);
    px_config_free(cfg);
    cfg = load_case("ok-minimal.json");
    assert_int_equal(cfg->nopaque_ports, 0);
    assert_false(px_config_opaque_port(cfg, 3306));
    assert_int_equal(cfg->limits.tcp_idle_timeout_ms, 3600000);
    px_config_free(cfg);
}

/* permissive_ports (what the injector writes from remora.io/permissive-ports):
 * the listed ports get permissive, every other port stays strict; the
 * plaintext counters have one series per listed port plus "other". */
static void permissive_ports(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-permissive-ports.json");
    const struct px_listener_cfg *in = &cfg->listeners[0], *out = &cfg->listeners[1];
    assert_int_equal(in->tls, PX_TLS_STRICT);
    assert_int_equal(in->npermissive_ports, 4);
    assert_int_equal(px_inbound_tls_mode(in, 9090), PX_TLS_PERMISSIVE);
    assert_int_equal(px_inbound_tls_mode(in, 8080), PX_TLS_PERMISSIVE);
    assert_int_equal(px_inbound_tls_mode(in, 1), PX_TLS_PERMISSIVE);
    assert_int_equal(px_inbound_tls_mode(in, 65535), PX_TLS_PERMISSIVE);
    assert_int_equal(px_inbound_tls_mode(in, 9091), PX_TLS_STRICT);
    assert_int_equal(px_inbound_tls_mode(in, 80), PX_TLS_STRICT);
    assert_int_equal(px_inbound_tls_mode(out, 9090), PX_TLS_DISABLED);

    json_t *lj = json_object();
    px_inbound_tls_dump(in, lj);
    json_t *by = json_object_get(lj, "tls_by_port");
    assert_string_equal(json_string_value(json_object_get(by, "9090")), "permissive");
    assert_string_equal(json_string_value(json_object_get(by, "65535")), "permissive");
    assert_string_equal(json_string_value(json_object_get(by, "other")), "strict");
    assert_int_equal(json_object_size(by), 5);
    json_decref(lj);
    lj = json_object();
    px_inbound_tls_dump(out, lj); /* outbound: nothing to say */
    assert_int_equal(json_object_size(lj), 0);
    json_decref(lj);

    /* the counters are the listener's; without a server nothing is registered */
    struct px_listener l = {.cfg = in};
    px_inbound_tls_listener_started(&l);
    px_inbound_plaintext_count(&l, 9090);
    px_inbound_plaintext_count(&l, 9090);
    px_inbound_plaintext_count(&l, 8080);
    px_inbound_plaintext_count(&l, 4444); /* not listed: "other" */
    assert_int_equal(px_inbound_plaintext_of(&l, 9090), 2);
    assert_int_equal(px_inbound_plaintext_of(&l, 8080), 1);
    assert_int_equal(px_inbound_plaintext_of(&l, 1), 0);
    assert_int_equal(px_inbound_plaintext_of(&l, 4444), 0);
    assert_int_equal(px_inbound_plaintext_of(&l, 0), 1);
    px_config_free(cfg);

    cfg = load_case("ok-minimal.json");
    for (size_t i = 0; i < cfg->nlisteners; i++)
        assert_int_equal(cfg->listeners[i].npermissive_ports, 0);
    px_config_free(cfg);
}

/* The circuit-breaker defaults (Envoy's, docs/config.md) and the four keys. */
static void upstream_breakers(void **state)
{
    (void)state;
    struct px_limits d;
    px_limits_default(&d);
    assert_int_equal(d.upstream.max_connections, 1024);
    assert_int_equal(d.upstream.max_pending_requests, 1024);
    assert_int_equal(d.upstream.pending_timeout_ms, 5000);
    assert_int_equal(d.upstream.max_requests_per_connection, 128);
    struct px_config *cfg = load_case("ok-limits-upstream.json");
    assert_int_equal(cfg->limits.upstream.max_connections, 16);
    assert_int_equal(cfg->limits.upstream.max_pending_requests, 0);
    assert_int_equal(cfg->limits.upstream.pending_timeout_ms, 3600000);
    assert_int_equal(cfg->limits.upstream.max_requests_per_connection, 1);
    assert_int_equal(cfg->limits.pool_max_idle, d.pool_max_idle); /* the rest: defaults */
    px_config_free(cfg);
}

static void ipv6_and_any(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-ipv6.json");
    assert_string_equal(addr(&cfg->admin_addr), "[::1]:15000");
    assert_string_equal(addr(&cfg->listeners[0].addr), "[::]:15006");
    assert_true(cm_addr_is_any(&cfg->listeners[0].addr));
    assert_string_equal(addr(&cfg->listeners[1].upstream), "[fd00::7]:9080");
    px_config_free(cfg);
    cfg = load_case("ok-any-address.json");
    assert_string_equal(addr(&cfg->listeners[0].addr), "0.0.0.0:15006");
    assert_string_equal(addr(&cfg->listeners[1].addr), "0.0.0.0:15007");
    assert_int_equal(cm_addr_port(&cfg->listeners[2].addr), 0);
    px_config_free(cfg);
    cfg = load_case("ok-64-listeners.json");
    assert_int_equal(cfg->nlisteners, 64);
    assert_string_equal(cfg->listeners[63].name, "l63");
    assert_false(cfg->listeners[0].optional); /* the default */
    px_config_free(cfg);
    /* the injector's IPv6 twins: only they are optional */
    cfg = load_case("ok-optional-ipv6-twins.json");
    assert_int_equal(cfg->nlisteners, 4);
    assert_false(cfg->listeners[0].optional);
    assert_false(cfg->listeners[1].optional);
    assert_true(cfg->listeners[2].optional);
    assert_true(cfg->listeners[3].optional);
    assert_string_equal(addr(&cfg->listeners[3].addr), "[::1]:15001");
    assert_int_equal(cfg->listeners[2].tls, PX_TLS_PERMISSIVE);
    px_config_free(cfg);
}

static void missing_file(void **state)
{
    (void)state;
    struct px_config *cfg = NULL;
    char *err = NULL;
    const char *path = "/nonexistent/remora/proxy.json";
    assert_int_equal(px_config_load(path, &cfg, &err), CM_ERR_INVAL);
    assert_null(cfg);
    assert_non_null(err);
    assert_true(strncmp(err, path, strlen(path)) == 0);
    free(err);
    px_config_free(NULL);
}

static void names_in_messages(void **state)
{
    (void)state;
    /* the name given to px_config_parse is the one in messages */
    const char *text = "{\"listeners\": [{\"name\": \"a\", \"address\": \"1.2.3.4:1\","
                       " \"direction\": \"outbound\", \"tls\": \"strict\"}]}";
    struct px_config *cfg = NULL;
    char *err = NULL;
    assert_int_equal(px_config_parse("proxy.json", text, strlen(text), &cfg, &err), CM_ERR_INVAL);
    assert_string_equal(err, "proxy.json: listeners[0].tls: \"strict\" is not one of "
                             "\"disabled\", \"mesh\"");
    free(err);
    /* only len bytes are parsed */
    const char *ok = "{\"listeners\": [{\"name\": \"a\", \"address\": \"1.2.3.4:1\","
                     " \"direction\": \"outbound\"}]}{{{";
    assert_int_equal(px_config_parse("proxy.json", ok, strlen(ok) - 3, &cfg, &err), 0);
    assert_string_equal(cfg->file, "proxy.json");
    px_config_free(cfg);
}

/* ---- the data directory ------------------------------------------------------- */

struct cases {
    struct CMUnitTest *tests;
    size_t n;
    size_t nok, nbad;
};

static void collect(struct cases *c)
{
    struct dirent **ents;
    int n = scandir(data_dir, &ents, NULL, alphasort);
    if (n < 0) {
        fprintf(stderr, "cannot read %s (set REMORA_ROOT or run from the repository root)\n",
                data_dir);
        return;
    }
    c->tests = calloc((size_t)n, sizeof(*c->tests));
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        bool ok = strncmp(name, "ok-", 3) == 0 && ends_with(name, ".json");
        bool bad = strncmp(name, "bad-", 4) == 0 && ends_with(name, ".json");
        if (ok || bad) {
            size_t plen = strlen(data_dir) + strlen(name) + 2;
            char *path = malloc(plen);
            snprintf(path, plen, "%s/%s", data_dir, name);
            struct CMUnitTest *t = &c->tests[c->n++];
            t->name = path + strlen(data_dir) + 1;
            t->test_func = ok ? run_ok_case : run_bad_case;
            t->initial_state = path;
            ok ? c->nok++ : c->nbad++;
        }
        free(ents[i]);
    }
    free(ents);
}

/* Every file in the directory is a case or a case's .err, and there are
 * cases of both kinds: a mistyped name must not silently skip a case. */
static void data_dir_is_consistent(void **state)
{
    const struct cases *c = *state;
    assert_true(c->nok >= 5);
    assert_true(c->nbad >= 20);
    struct dirent **ents;
    int n = scandir(data_dir, &ents, NULL, alphasort);
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        char sib[8192];
        size_t len = strlen(name);
        if (name[0] == '.') {
            /* "." and ".." */
        } else if (strncmp(name, "ok-", 3) == 0 && ends_with(name, ".json")) {
        } else if (strncmp(name, "bad-", 4) == 0 && ends_with(name, ".json")) {
            snprintf(sib, sizeof(sib), "%s/%.*s.err", data_dir, (int)(len - 5), name);
            FILE *f = fopen(sib, "r");
            if (f == NULL)
                fail_msg("%s has no .err file", name);
            fclose(f);
        } else if (strncmp(name, "bad-", 4) == 0 && ends_with(name, ".err")) {
            snprintf(sib, sizeof(sib), "%s/%.*s.json", data_dir, (int)(len - 4), name);
            FILE *f = fopen(sib, "r");
            if (f == NULL)
                fail_msg("%s has no .json file", name);
            fclose(f);
        } else {
            fail_msg("%s: not ok-*.json, bad-*.json or bad-*.err", name);
        }
        free(ents[i]);
    }
    free(ents);
}

/* "tracing.sample_percent": 0 by default, the value when set. */
static void tracing_sample_percent(void **state)
{
    (void)state;
    struct px_config *cfg = load_case("ok-minimal.json");
    assert_int_equal(cfg->tracing.sample_percent, 0);
    px_config_free(cfg);
    cfg = load_case("ok-tracing-sample-percent.json");
    assert_int_equal(cfg->tracing.sample_percent, 100);
    px_config_free(cfg);
}

int main(void)
{
    find_data_dir();
    struct cases c = {0};
    collect(&c);

    const struct CMUnitTest fixed[] = {
        cmocka_unit_test(design_example),
        cmocka_unit_test(defaults),
        cmocka_unit_test(all_keys),
        cmocka_unit_test(limits_bounds),
        cmocka_unit_test(opaque_ports_and_tcp_idle),
        cmocka_unit_test(ipv6_and_any),
        cmocka_unit_test(missing_file),
        cmocka_unit_test(names_in_messages),
        cmocka_unit_test_prestate(data_dir_is_consistent, &c),
        cmocka_unit_test(h2_hostile_keys),
        cmocka_unit_test(upstream_breakers),
        cmocka_unit_test(permissive_ports),
        cmocka_unit_test(tracing_sample_percent),
    };
    int failed = cmocka_run_group_tests_name("proxy/config", fixed, NULL, NULL);
    if (c.n > 0)
        failed += _cmocka_run_group_tests("proxy/config data", c.tests, c.n, NULL, NULL);
    for (size_t i = 0; i < c.n; i++)
        free(c.tests[i].initial_state);
    free(c.tests);
    return failed;
}
