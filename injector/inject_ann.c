/* Reading a Pod's remora.io annotations (docs/injector.md "Annotations"):
 * small readers of untrusted JSON, the port / CIDR lists, the drain
 * duration and ConfigMap names. Each bad value is told in a warning. */
#include "injector/inject.h"
#include "injector/inject_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

/* ---- small readers of untrusted JSON: wrong types read as absent ---------- */

json_t *ij_get_obj(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_object(v) ? v : NULL;
}

json_t *ij_get_arr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_array(v) ? v : NULL;
}

const char *ij_get_str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

const char *ij_annotation(json_t *pod, const char *key)
{
    return ij_get_str(ij_get_obj(ij_get_obj(pod, "metadata"), "annotations"), key);
}

void ij_warn(json_t *warnings, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* Quoted values may be cut inside a UTF-8 sequence: keep ASCII. */
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            *c = '?';
    json_array_append_new(warnings, json_string(buf));
}

/* Is `name` used by an element of spec[list]? */
bool ij_name_in(json_t *spec, const char *list, const char *name)
{
    size_t i;
    json_t *c;
    json_array_foreach(ij_get_arr(spec, list), i, c)
    {
        const char *n = ij_get_str(c, "name");
        if (n != NULL && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

/* A boolean annotation: 1 true, 0 false, -1 absent or unreadable. */
int ij_ann_bool(json_t *pod, const char *key)
{
    const char *v = ij_annotation(pod, key);
    if (v == NULL)
        return -1;
    if (strcasecmp(v, "true") == 0 || strcasecmp(v, "enabled") == 0 || strcmp(v, "1") == 0)
        return 1;
    if (strcasecmp(v, "false") == 0 || strcasecmp(v, "disabled") == 0 || strcmp(v, "0") == 0)
        return 0;
    return -1;
}
bool ij_discovery_wanted(json_t *pod, const struct ij_template *t, json_t *warnings)
{
    const char *v = ij_annotation(pod, IJ_ANN_DISCOVERY);
    int on = ij_ann_bool(pod, IJ_ANN_DISCOVERY);
    if (v != NULL && on < 0) {
        if (strcasecmp(v, "off") == 0)
            on = 0;
        else if (strcasecmp(v, "on") == 0)
            on = 1;
        else
            ij_warn(warnings,
                    "remora: annotation %s: \"%.40s\" is neither \"on\" nor \"off\"; "
                    "using the default (on)",
                    IJ_ANN_DISCOVERY, v);
    }
    if (on == 0)
        return false;
    if (on == 1 && t->discovery_address == NULL)
        ij_warn(warnings,
                "remora: annotation %s: the sidecar template has no discovery block "
                "(\"discovery\": false); the pod runs without service discovery",
                IJ_ANN_DISCOVERY);
    return t->discovery_address != NULL;
}

/* ---- exclusion annotations ------------------------------------------------ */

/* Copy `s` without blanks into a fresh string. */
static char *strip_blanks(const char *s)
{
    char *out = cm_xmalloc(strlen(s) + 1), *o = out;
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            *o++ = *s;
    *o = '\0';
    return out;
}

bool ij_port_ok(const char *tok, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)tok[i]))
            return false;
        v = v * 10 + (unsigned)(tok[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

bool ij_cidr_ok(const char *tok, size_t len)
{
    char buf[64], *slash;
    unsigned char addr[16];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, tok, len);
    buf[len] = '\0';
    slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    int family = strchr(buf, ':') != NULL ? AF_INET6 : AF_INET;
    if (inet_pton(family, buf, addr) != 1)
        return false;
    if (slash == NULL)
        return true;
    const char *bits = slash + 1;
    size_t bl = strlen(bits);
    if (bl == 0 || bl > 3)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < bl; i++) {
        if (!isdigit((unsigned char)bits[i]))
            return false;
        v = v * 10 + (unsigned)(bits[i] - '0');
    }
    return v <= (family == AF_INET ? 32u : 128u);
}

/* Read a comma-separated list ij_annotation (ports or IP ranges). Returns the
 * valid items, normalised (blanks removed, comma-joined; heap, caller frees),
 * or NULL when absent or without a valid item. Each malformed item is left
 * out with a warning naming it, the others are kept: a bad value must never
 * reach remora-proxy's argv as a flag, and must not cost the good ones. */
char *ij_list_items(json_t *pod, const char *key, bool (*ok)(const char *, size_t),
                    size_t max_valid, json_t *warnings)
{
    const char *raw = ij_annotation(pod, key);
    if (raw == NULL)
        return NULL;
    char *s = strip_blanks(raw);
    char *out = cm_xmalloc(strlen(s) + 1);
    size_t olen = 0, n = 0, bad = 0, nvalid = 0;
    out[0] = '\0';
    for (const char *t = s; *t != '\0';) {
        const char *comma = strchr(t, ',');
        size_t len = comma != NULL ? (size_t)(comma - t) : strlen(t);
        if (++n > LIST_MAX_ITEMS) {
            ij_warn(warnings, "remora: annotation %s: more than %d items; the rest is ignored", key,
                    LIST_MAX_ITEMS);
            break;
        }
        if (ok(t, len) && nvalid == max_valid) {
            ij_warn(warnings,
                    "remora: annotation %s: more than %zu valid items; \"%.*s\" and the rest are "
                    "ignored",
                    key, max_valid, len > 40 ? 40 : (int)len, t);
            break;
        }
        if (ok(t, len)) {
            nvalid++;
            if (olen > 0)
                out[olen++] = ',';
            memcpy(out + olen, t, len);
            olen += len;
            out[olen] = '\0';
        } else if (bad++ < 4) { /* a few named; the response's warnings stay short */
            char item[48];
            size_t il = len < sizeof(item) - 1 ? len : sizeof(item) - 1;
            memcpy(item, t, il);
            item[il] = '\0';
            ij_warn(warnings,
                    "remora: annotation %s: item \"%s\"%s is not %s; ignored, the other items "
                    "are kept",
                    key, item, len > il ? "..." : "",
                    ok == ij_port_ok ? "a port (1-65535)" : "an IP address or CIDR range");
        }
        if (comma == NULL)
            break;
        t = comma + 1;
    }
    free(s);
    if (olen == 0) {
        free(out);
        return NULL;
    }
    return out;
}

char *ij_exclusion(json_t *pod, const char *key, bool (*ok)(const char *, size_t), json_t *warnings)
{
    return ij_list_items(pod, key, ok, LIST_MAX_ITEMS, warnings);
}

/* Is port listed in a normalised port list? */
bool ij_port_listed(const char *list, long port)
{
    for (const char *t = list; t != NULL && *t;) {
        if (strtol(t, NULL, 10) == port)
            return true;
        t = strchr(t, ',');
        if (t != NULL)
            t++;
    }
    return false;
}

/* A Go-style duration ("5s", "1m30s", "500ms", "0"): milliseconds, or -1. */
long ij_inject_duration_ms(const char *s)
{
    static const struct {
        const char *unit;
        long ms;
    } units[] = {{"ms", 1}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    if (strcmp(s, "0") == 0)
        return 0;
    if (*s == '\0' || strlen(s) > 32)
        return -1;
    long total = 0;
    while (*s) {
        if (!isdigit((unsigned char)*s))
            return -1;
        long v = 0;
        for (; isdigit((unsigned char)*s); s++) {
            v = v * 10 + (*s - '0');
            if (v > IJ_DRAIN_MAX_MS)
                return -1;
        }
        size_t u = 0;
        for (; u < sizeof(units) / sizeof(units[0]); u++)
            if (strncmp(s, units[u].unit, strlen(units[u].unit)) == 0)
                break;
        if (u == sizeof(units) / sizeof(units[0]))
            return -1;
        s += strlen(units[u].unit);
        total += v * units[u].ms;
        if (total > IJ_DRAIN_MAX_MS)
            return -1;
    }
    return total;
}

/* How long the classic proxy's preStop waits: the ij_annotation (default 5 s),
 * kept under the pod's terminationGracePeriodSeconds (default 30) so that
 * kubelet's SIGTERM, and the proxy's own drain after it, still fit. 0: no
 * preStop. */
long ij_drain_budget(json_t *pod, json_t *warnings)
{
    const char *v = ij_annotation(pod, IJ_ANN_DRAIN_DURATION);
    long ms = IJ_DRAIN_DEFAULT_MS;
    if (v != NULL) {
        ms = ij_inject_duration_ms(v);
        if (ms < 0) {
            ij_warn(warnings,
                    "remora: annotation %s: \"%.40s\" is not a duration such as \"5s\" or "
                    "\"1m30s\" (at most 1h); using %d s",
                    IJ_ANN_DRAIN_DURATION, v, IJ_DRAIN_DEFAULT_MS / 1000);
            ms = IJ_DRAIN_DEFAULT_MS;
            v = NULL;
        }
    }
    json_t *g = json_object_get(ij_get_obj(pod, "spec"), "terminationGracePeriodSeconds");
    json_int_t grace = json_is_integer(g) ? json_integer_value(g) : 30;
    long cap = grace > 1 ? (long)(grace - 1) * 1000 : 0;
    if (grace > 3600)
        cap = IJ_DRAIN_MAX_MS;
    if (ms > cap) {
        if (v != NULL)
            ij_warn(warnings,
                    "remora: annotation %s: %.40s does not fit in terminationGracePeriodSeconds "
                    "%lld: the proxy waits at most %ld ms before its own SIGTERM",
                    IJ_ANN_DRAIN_DURATION, v, (long long)grace, cap);
        ms = cap;
    }
    return ms;
}

/* DNS-1123 subdomain: a ConfigMap name. */
bool ij_dns_subdomain(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
        return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-' || *s == '.'))
            return false;
    return true;
}

int ij_inbound_tls_read(json_t *pod, const char *tpl_mode, struct ij_inbound_tls *out,
                        char **errmsg, json_t *warnings)
{
    memset(out, 0, sizeof(*out));
    out->mode = "strict";
    const char *mode = ij_annotation(pod, IJ_ANN_INBOUND_TLS);
    const char *ports = ij_annotation(pod, IJ_ANN_PERMISSIVE_PORTS);
    json_t *meta_ann = ij_get_obj(ij_get_obj(pod, "metadata"), "annotations");
    /* a number or a list where a string belongs is as wrong as a typo */
    if (mode == NULL && json_object_get(meta_ann, IJ_ANN_INBOUND_TLS) != NULL) {
        *errmsg = cm_xasprintf("remora: annotation %s: expected the string \"strict\" or "
                               "\"permissive\"",
                               IJ_ANN_INBOUND_TLS);
        return -1;
    }
    if (ports == NULL && json_object_get(meta_ann, IJ_ANN_PERMISSIVE_PORTS) != NULL) {
        *errmsg = cm_xasprintf("remora: annotation %s: expected a string such as \"9090,8080\"",
                               IJ_ANN_PERMISSIVE_PORTS);
        return -1;
    }
    if (mode != NULL && strcmp(mode, "strict") != 0 && strcmp(mode, "permissive") != 0) {
        *errmsg = cm_xasprintf("remora: annotation %s: \"%.40s\" is neither \"strict\" nor "
                               "\"permissive\"",
                               IJ_ANN_INBOUND_TLS, mode);
        return -1;
    }
    const char *want = mode != NULL ? mode : tpl_mode;
    size_t n = 0;
    uint16_t list[IJ_MAX_PERMISSIVE_PORTS];
    for (const char *t = ports; t != NULL && *t != '\0';) {
        while (isspace((unsigned char)*t))
            t++;
        const char *comma = strchr(t, ',');
        size_t len = comma != NULL ? (size_t)(comma - t) : strlen(t);
        size_t tl = len;
        while (tl > 0 && isspace((unsigned char)t[tl - 1]))
            tl--;
        if (tl == 0 && comma == NULL)
            break; /* "", blanks, or a trailing comma */
        if (!ij_port_ok(t, tl)) {
            *errmsg = cm_xasprintf("remora: annotation %s: item \"%.*s\"%s is not a port "
                                   "(1-65535)",
                                   IJ_ANN_PERMISSIVE_PORTS, tl > 40 ? 40 : (int)tl, t,
                                   tl > 40 ? "..." : "");
            return -1;
        }
        uint16_t port = (uint16_t)strtol(t, NULL, 10);
        for (size_t j = 0; j < n; j++)
            if (list[j] == port) {
                *errmsg = cm_xasprintf("remora: annotation %s: port %u is listed twice",
                                       IJ_ANN_PERMISSIVE_PORTS, (unsigned)port);
                return -1;
            }
        if (n == IJ_MAX_PERMISSIVE_PORTS) {
            *errmsg = cm_xasprintf("remora: annotation %s: more than %d ports",
                                   IJ_ANN_PERMISSIVE_PORTS, IJ_MAX_PERMISSIVE_PORTS);
            return -1;
        }
        list[n++] = port;
        t = comma != NULL ? comma + 1 : NULL;
    }
    out->mode = want;
    if (n > 0 && strcmp(want, "strict") != 0) {
        ij_warn(warnings,
                "remora: annotation %s: the inbound mTLS mode is \"%s\" on every port, so the "
                "list is not used",
                IJ_ANN_PERMISSIVE_PORTS, want);
        return 0;
    }
    memcpy(out->ports, list, n * sizeof(list[0]));
    out->nports = n;
    return 0;
}
