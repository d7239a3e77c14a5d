/* The bootstrap keys of service discovery: "discovery", "outbound_policy",
 * "egress_allow" and "egress_verify_names" (docs/config.md), and the
 * egress_allow matcher. */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/json.h"
#include "common/net.h"
#include "common/xalloc.h"
#include "proxy/discovery.h"

#define MAX_NAME 253

/* A DNS name as a Host carries it: labels of [a-z0-9-] (any case, '_'
 * tolerated as some internal names use it), 1..63 bytes, not starting or
 * ending with '-'; lower-cased into out (MAX_NAME + 1). A trailing dot is
 * dropped. */
static bool name_norm(const char *s, size_t n, char *out)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > MAX_NAME)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
        } else if (isalnum(ch) || ch == '_' || (ch == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
        out[i] = (char)tolower(ch);
    }
    if (s[n - 1] == '-')
        return false;
    out[n] = '\0';
    return true;
}

static bool parse_port(const char *s, uint16_t *port)
{
    uint16_t p;
    if (cm_port_parse(s, &p) != 0 || p == 0)
        return false;
    *port = p;
    return true;
}

static bool parse_prefix(const char *s, size_t n, unsigned max, uint8_t *out)
{
    if (n == 0 || n > 3)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > max)
        return false;
    *out = (uint8_t)v;
    return true;
}

/* One egress_allow entry; returns NULL or what is wrong with it. */
static const char *parse_rule(const char *s, struct px_egress_rule *r)
{
    char host[MAX_NAME + 80];
    size_t len = strlen(s);
    if (len == 0 || len >= sizeof(host))
        return "empty or too long";
    memcpy(host, s, len + 1);
    const char *after = host; /* the port's ':' is after an IPv6 address's ']' */
    if (host[0] == '[' && (after = strchr(host, ']')) == NULL)
        return "an IPv6 address is written [addr] or [addr]/N";
    char *colon = strrchr(after, ':');
    if (colon == NULL)
        return "no port (want host:port, *.domain:port or CIDR:port)";
    *colon = '\0';
    if (!parse_port(colon + 1, &r->port))
        return "the port is not a number 1-65535";
    char *slash = strchr(host, '/');
    if (host[0] == '[') { /* [v6] or [v6]/N */
        char *close = strchr(host, ']');
        if (close == NULL || (close[1] != '\0' && close[1] != '/'))
            return "an IPv6 address is written [addr] or [addr]/N";
        *close = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, host + 1, &a6) != 1)
            return "not an IPv6 address";
        r->prefix = 128;
        if (close[1] == '/' && !parse_prefix(close + 2, strlen(close + 2), 128, &r->prefix))
            return "the prefix length is not 0-128";
        r->kind = PX_EGRESS_CIDR;
        r->family = AF_INET6;
        memcpy(r->net, &a6, 16);
        return NULL;
    }
    struct in_addr a4;
    if (slash != NULL)
        *slash = '\0';
    if (inet_pton(AF_INET, host, &a4) == 1) {
        r->prefix = 32;
        if (slash != NULL && !parse_prefix(slash + 1, strlen(slash + 1), 32, &r->prefix))
            return "the prefix length is not 0-32";
        r->kind = PX_EGRESS_CIDR;
        r->family = AF_INET;
        memcpy(r->net, &a4, 4);
        return NULL;
    }
    if (slash != NULL)
        return "not an IPv4 network (IPv6 is written [addr]/N)";
    char norm[MAX_NAME + 1];
    if (host[0] == '*') {
        if (host[1] != '.' || !name_norm(host + 2, strlen(host + 2), norm))
            return "a wildcard is written *.domain";
        r->kind = PX_EGRESS_SUFFIX;
        size_t n = strlen(norm);
        r->name = cm_xmalloc(n + 2);
        r->name[0] = '.';
        memcpy(r->name + 1, norm, n + 1);
        return NULL;
    }
    if (!name_norm(host, strlen(host), norm))
        return "not a host name, *.domain or address";
    r->kind = PX_EGRESS_HOST;
    r->name = cm_xstrdup(norm);
    return NULL;
}

/* Keep only the network part of a CIDR rule so matching is a compare. */
static void mask_net(uint8_t *net, size_t bytes, uint8_t prefix)
{
    for (size_t i = 0; i < bytes; i++) {
        unsigned bits = prefix > i * 8 ? prefix - (unsigned)i * 8 : 0;
        if (bits < 8)
            net[i] &= (uint8_t)(0xff00u >> bits);
    }
}

static int parse_discovery(const struct cm_jpath *p, json_t *o, struct px_disc_cfg *c,
                           char **errmsg)
{
    static const char *const keys[] = {"address", "server_name", "lookup_timeout_ms", NULL};
    if (cm_json_check_keys(p, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *addr = NULL, *name = NULL;
    int64_t to = c->lookup_timeout_ms;
    if (cm_json_get_string(p, o, "address", true, &addr, errmsg) != 0 ||
        cm_json_get_string(p, o, "server_name", false, &name, errmsg) != 0 ||
        cm_json_get_int(p, o, "lookup_timeout_ms", false, 1, 60000, &to, errmsg) != 0)
        return CM_ERR_INVAL;
    struct cm_jpath k;
    if (cm_addr_parse(addr, &c->addr) != 0) {
        /* a DNS name (the Service's): "remora-injector.remora-system.svc:15011" */
        const char *colon = strrchr(addr, ':');
        char host[MAX_NAME + 2];
        uint16_t port = 0;
        size_t hl = colon ? (size_t)(colon - addr) : 0;
        if (colon == NULL || hl == 0 || hl > MAX_NAME || cm_port_parse(colon + 1, &port) != 0 ||
            port == 0 || !name_norm(addr, hl, host) || addr[0] == '[') {
            cm_jpath_key(&k, p, "address");
            return cm_json_fail(&k, errmsg,
                                "\"%s\" is not an address (want \"ip:port\", \"[ipv6]:port\" "
                                "or \"name:port\", port 1..65535)",
                                addr);
        }
        memset(&c->addr, 0, sizeof(c->addr));
        free(c->address_name);
        c->address_name = cm_xstrdup(host);
        snprintf(c->address_port, sizeof(c->address_port), "%u", port);
    } else if (cm_addr_is_any(&c->addr)) {
        cm_jpath_key(&k, p, "address");
        return cm_json_fail(&k, errmsg, "\"%s\": an unspecified address cannot be connected to",
                            addr);
    }
    char norm[MAX_NAME + 1];
    if (name != NULL && !name_norm(name, strlen(name), norm)) {
        cm_jpath_key(&k, p, "server_name");
        return cm_json_fail(&k, errmsg, "\"%s\" is not a DNS name", name);
    }
    free(c->server_name);
    c->server_name = cm_xstrdup(name != NULL ? norm : PX_DISC_DEFAULT_SERVER_NAME);
    c->lookup_timeout_ms = (uint32_t)to;
    c->enabled = true;
    return 0;
}

int px_disc_cfg_parse(const struct cm_jpath *p, json_t *root, bool has_identity,
                      struct px_disc_cfg *c, char **errmsg)
{
    static const char *const policies[] = {"allow_any", "registry_only", NULL};
    memset(c, 0, sizeof(*c));
    c->lookup_timeout_ms = 1000;
    struct cm_jpath k;
    json_t *disc = NULL, *egress = NULL;
    int pol = 0;
    if (cm_json_get_child(p, root, "discovery", false, JSON_OBJECT, &disc, errmsg) != 0 ||
        cm_json_get_enum(p, root, "outbound_policy", false, policies, &pol, errmsg) != 0 ||
        cm_json_get_child(p, root, "egress_allow", false, JSON_ARRAY, &egress, errmsg) != 0)
        return CM_ERR_INVAL;
    c->policy = (enum px_outbound_policy)pol;
    c->verify_names = true; /* egress_verify_names: proxy/resolve.h */
    if (cm_json_get_bool(p, root, "egress_verify_names", false, &c->verify_names, errmsg) != 0)
        return CM_ERR_INVAL;
    if (disc != NULL) {
        cm_jpath_key(&k, p, "discovery");
        if (parse_discovery(&k, disc, c, errmsg) != 0)
            return CM_ERR_INVAL;
        if (!has_identity)
            return cm_json_fail(&k, errmsg,
                                "needs an \"identity\" block: the discovery service takes "
                                "mTLS only");
    }
    if (egress == NULL)
        return 0;
    cm_jpath_key(&k, p, "egress_allow");
    size_t n = json_array_size(egress);
    if (n > PX_EGRESS_MAX_RULES)
        return cm_json_fail(&k, errmsg, "at most %d entries", PX_EGRESS_MAX_RULES);
    c->egress = cm_xcalloc(n ? n : 1, sizeof(*c->egress));
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath e;
        cm_jpath_index(&e, &k, i);
        json_t *v = json_array_get(egress, i);
        if (!json_is_string(v))
            return cm_json_fail(&e, errmsg,
                                "expected a string (host:port, *.domain:port or "
                                "CIDR:port)");
        const char *why = parse_rule(json_string_value(v), &c->egress[i]);
        c->negress = i + 1; /* freeable from here */
        if (why != NULL)
            return cm_json_fail(&e, errmsg, "\"%s\": %s", json_string_value(v), why);
        struct px_egress_rule *r = &c->egress[i];
        if (r->kind == PX_EGRESS_CIDR)
            mask_net(r->net, r->family == AF_INET ? 4 : 16, r->prefix);
    }
    return 0;
}

void px_disc_cfg_deinit(struct px_disc_cfg *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->negress; i++)
        free(c->egress[i].name);
    free(c->egress);
    free(c->server_name);
    free(c->address_name);
    memset(c, 0, sizeof(*c));
}

const char *px_disc_cfg_address(const struct px_disc_cfg *c, char *buf, size_t n)
{
    if (c->address_name != NULL)
        snprintf(buf, n, "%s:%s", c->address_name, c->address_port);
    else
        cm_addr_format(&c->addr, buf, n);
    return buf;
}

static bool cidr_match(const struct px_egress_rule *r, const struct cm_addr *a)
{
    uint8_t b[16];
    size_t n;
    if (a->ss.ss_family == AF_INET && r->family == AF_INET) {
        memcpy(b, &((const struct sockaddr_in *)(const void *)&a->ss)->sin_addr, 4);
        n = 4;
    } else if (a->ss.ss_family == AF_INET6 && r->family == AF_INET6) {
        memcpy(b, &((const struct sockaddr_in6 *)(const void *)&a->ss)->sin6_addr, 16);
        n = 16;
    } else {
        return false;
    }
    mask_net(b, n, r->prefix);
    return memcmp(b, r->net, n) == 0;
}

bool px_egress_allowed(const struct px_disc_cfg *c, const char *host, const struct cm_addr *dst,
                       uint16_t port)
{
    char norm[MAX_NAME + 1];
    bool have_name = host != NULL && name_norm(host, strlen(host), norm);
    size_t nlen = have_name ? strlen(norm) : 0;
    for (size_t i = 0; c != NULL && i < c->negress; i++) {
        const struct px_egress_rule *r = &c->egress[i];
        if (r->port != port)
            continue;
        switch (r->kind) {
        case PX_EGRESS_HOST:
            if (have_name && strcmp(norm, r->name) == 0)
                return true;
            break;
        case PX_EGRESS_SUFFIX: {
            size_t sl = strlen(r->name);
            if (have_name && nlen > sl && strcmp(norm + nlen - sl, r->name) == 0)
                return true;
            break;
        }
        case PX_EGRESS_CIDR:
            if (dst != NULL && cidr_match(r, dst))
                return true;
            break;
        }
    }
    return false;
}
