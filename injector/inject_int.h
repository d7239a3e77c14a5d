/* Internals of the injection (injector/inject*.c), shared by its files and
 * its unit test; not an interface for the rest of the injector. */
#ifndef IJ_INJECT_INT_H
#define IJ_INJECT_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "injector/inject.h"

#define LIST_MAX_ITEMS   256 /* items looked at; more are dropped with one warning */
#define OPAQUE_MAX_PORTS 64  /* what remora-proxy takes in opaque_ports (PX_MAX_OPAQUE_PORTS) */

/* ---- inject_ann.c: readers of untrusted JSON (wrong types read as absent)
 * and of the pod's annotations ---------------------------------------------- */
json_t *ij_get_obj(json_t *o, const char *k);
json_t *ij_get_arr(json_t *o, const char *k);
const char *ij_get_str(json_t *o, const char *k);
/* metadata.annotations[key] when it is a string, else NULL */
const char *ij_annotation(json_t *pod, const char *key);
/* Append a printf-formatted warning (cut at 255 bytes, printable ASCII). */
void ij_warn(json_t *warnings, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Is `name` used by an element of spec[list]? */
bool ij_name_in(json_t *spec, const char *list, const char *name);
/* A boolean annotation: 1 true, 0 false, -1 absent or unreadable. */
int ij_ann_bool(json_t *pod, const char *key);
/* Is tok[0..len) a port 1-65535 / an IP address or CIDR range? */
bool ij_port_ok(const char *tok, size_t len);
bool ij_cidr_ok(const char *tok, size_t len);
/* The valid items of a comma-separated list annotation, normalised (heap,
 * caller frees), or NULL; at most max_valid kept; bad items warned about. */
char *ij_list_items(json_t *pod, const char *key, bool (*ok)(const char *, size_t),
                    size_t max_valid, json_t *warnings);
/* ij_list_items with up to LIST_MAX_ITEMS valid items. */
char *ij_exclusion(json_t *pod, const char *key, bool (*ok)(const char *, size_t),
                   json_t *warnings);
/* Is port listed in a normalised port list (NULL: none)? */
bool ij_port_listed(const char *list, long port);
/* The classic proxy's preStop wait in ms (remora.io/termination-drain-duration,
 * kept under terminationGracePeriodSeconds). */
long ij_drain_budget(json_t *pod, json_t *warnings);
/* DNS-1123 subdomain: a ConfigMap name. */
bool ij_dns_subdomain(const char *s);

/* remora.io/inbound-tls and remora.io/permissive-ports, read together: the
 * inbound listeners' "tls" and "permissive_ports" in the bootstrap. */
#define IJ_MAX_PERMISSIVE_PORTS 64 /* what remora-proxy takes (PX_MAX_PERMISSIVE_PORTS) */
struct ij_inbound_tls {
    const char *mode; /* "strict", "permissive", or the template's inbound_tls (static) */
    uint16_t ports[IJ_MAX_PERMISSIVE_PORTS]; /* only with mode "strict" */
    size_t nports;
};
/* Fill *out from the pod's annotations, tpl_mode when inbound-tls is absent.
 * A bad value in either (a typo must neither weaken nor silently keep a mode
 * the owner did not ask for) returns -1 with *errmsg (heap) naming the
 * annotation and the item; *out is then strict without ports. */
int ij_inbound_tls_read(json_t *pod, const char *tpl_mode, struct ij_inbound_tls *out,
                        char **errmsg, json_t *warnings);

/* remora.io/discovery (IJ_ANN_DISCOVERY): does this pod's bootstrap get the
 * template's discovery block? A value that is neither on nor off is warned
 * about and reads as the default (on). */
bool ij_discovery_wanted(json_t *pod, const struct ij_template *t, json_t *warnings);

/* ---- inject_probes.c ------------------------------------------------------ */
/* Rewrite the HTTP and gRPC probes of spec.containers[idx] to go through the
 * proxy's health port; record each original target in `probers` (path ->
 * {"httpGet": ...} or {"grpc": ...}); tcpSocket probes are warned about. */
void ij_rewrite_probes(json_t *patch, json_t *container, size_t idx, const char *excl_in,
                       json_t *probers, json_t *warnings);

/* ---- inject_build.c: what is added (new references, caller owns) ---------- */
json_t *ij_init_container(const struct ij_template *t, const char *excl_in, const char *excl_out,
                          const char *excl_ranges);
json_t *ij_proxy_container(const struct ij_template *t, bool native, bool policy, bool routes,
                           json_t *probers, long drain_ms);
json_t *ij_volumes(const struct ij_inject_params *p, const char *policy, const char *routes);
/* The proxy's bootstrap config as JSON text (heap, caller frees). */
char *ij_bootstrap(const struct ij_inject_params *p, bool policy, bool routes, const char *opaque,
                   const struct ij_inbound_tls *tls, bool discovery);

/* Helpers the unit tests reach (test/unit/injector/test_inject.c). */
bool ij_inject_dns_label(const char *s); /* a DNS-1123 label (container names) */
long ij_inject_resolve_port(json_t *container, json_t *port); /* a probe port: number or name */
long ij_inject_duration_ms(const char *s); /* "30s", "2m", "500ms" -> ms, -1 bad */

#endif
