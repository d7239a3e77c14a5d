/* The injection decision and the patch: what remora-injector adds to a Pod.
 * Pure functions of (template, settings, AdmissionReview request); no I/O, so
 * unit tests and the fuzzer call them directly. */
#ifndef IJ_INJECT_H
#define IJ_INJECT_H

#include <jansson.h>
#include <stdbool.h>

#include "injector/template.h"

/* Annotations of the injection contract (docs/contract.md). */
#define IJ_ANN_INJECT         "remora.io/inject"
#define IJ_ANN_STATUS         "remora.io/status"
#define IJ_ANN_NATIVE         "remora.io/native-sidecar"
#define IJ_ANN_POLICY         "remora.io/policy"
#define IJ_ANN_ROUTES         "remora.io/routes"
#define IJ_ANN_EXCLUDE_IN     "remora.io/exclude-inbound-ports"
#define IJ_ANN_EXCLUDE_OUT    "remora.io/exclude-outbound-ports"
#define IJ_ANN_EXCLUDE_RANGES "remora.io/exclude-outbound-ip-ranges"
/* Issue 14: ports whose traffic the proxy passes as opaque TCP (bootstrap
 * key opaque_ports), and how long a classic sidecar's preStop waits for the
 * app's requests to finish (docs/injector.md "Stop"). */
#define IJ_ANN_OPAQUE_PORTS "remora.io/opaque-ports"
/* opaque_ports when the annotation is absent: SMTP, MySQL, Galera, PostgreSQL,
 * Redis, Elasticsearch transport, memcached (Linkerd's default list). */
#define IJ_DEFAULT_OPAQUE_PORTS "25,587,3306,4444,5432,6379,9300,11211"
#define IJ_ANN_DRAIN_DURATION   "remora.io/termination-drain-duration"
#define IJ_DRAIN_DEFAULT_MS     5000
#define IJ_DRAIN_MAX_MS         3600000
/* Issue 19: the pod's inbound mTLS mode ("strict" | "permissive", default
 * the template's inbound_tls) and, under strict, the original destination
 * ports where plaintext is accepted too (bootstrap key permissive_ports). A
 * bad value refuses the pod (ij_inject_check). */
#define IJ_ANN_INBOUND_TLS      "remora.io/inbound-tls"
#define IJ_ANN_PERMISSIVE_PORTS "remora.io/permissive-ports"
/* Issue 18: "off" (or false/disabled/0) leaves the template's "discovery"
 * block out of this pod's bootstrap; "on" (true/enabled/1) is the default. */
#define IJ_ANN_DISCOVERY "remora.io/discovery"
/* Ours beyond the contract: the proxy's bootstrap config, read by the proxy
 * through a downward-API volume (docs/injector.md). */
#define IJ_ANN_BOOTSTRAP "remora.io/bootstrap"

#define IJ_INIT_NAME     "remora-init"
#define IJ_PROXY_NAME    "remora-proxy"
#define IJ_PROXY_UID     1337
#define IJ_PORT_INBOUND  15006
#define IJ_PORT_OUTBOUND 15001
#define IJ_PORT_ADMIN    15000
#define IJ_PORT_HEALTH   15020

/* Where the injected volumes are mounted in remora-proxy. */
#define IJ_DIR_TOKEN     "/var/run/remora/token"
#define IJ_DIR_CA        "/var/run/remora/ca"
#define IJ_DIR_KEYS      "/var/run/remora/keys"
#define IJ_DIR_BOOTSTRAP "/etc/remora/bootstrap"
#define IJ_DIR_POLICY    "/etc/remora/policy"
#define IJ_DIR_ROUTES    "/etc/remora/routes"

enum ij_decision {
    IJ_DECIDE_INJECT = 0,   /* add the sidecar */
    IJ_DECIDE_NOT_POD,      /* the object is not a Pod, or a subresource of one */
    IJ_DECIDE_NOT_CREATE,   /* UPDATE, DELETE, CONNECT */
    IJ_DECIDE_SYSTEM_NS,    /* kube-system or remora-system, whatever the labels say */
    IJ_DECIDE_HOST_NETWORK, /* hostNetwork: iptables would capture the node's traffic */
    IJ_DECIDE_INJECTED,     /* remora.io/status is already there (reinvocation) */
    IJ_DECIDE_OPTED_OUT,    /* remora.io/inject: "false" */
    IJ_DECIDE_CONFLICT,     /* a container or volume already uses one of our names */
    IJ_DECIDE_REFUSED,      /* injectable, but an annotation is bad: admission refused */
    IJ_DECIDE__COUNT
};

/* Short stable name ("host-network"...) for logs and metric labels. */
const char *ij_decision_name(enum ij_decision d);

/* What a review needs besides the request; all borrowed. */
struct ij_inject_params {
    const struct ij_template *tpl;
    const char *trust_domain;
    const char *ca_audience;
    bool native_default; /* config native_sidecars */
    /* The namespace's pod-security.kubernetes.io/enforce level as the
     * webhook entry that called us says it ("baseline", "restricted"), or
     * NULL when it allows remora-init (privileged, or no label). */
    const char *psa_enforce;
    /* Called by a pod-label entry (the namespace has no remora-injection
     * label): the CA-root publisher does not serve that namespace. */
    bool pod_scope;
};

/* The webhook's paths (manifests/injector/webhook.yaml), one per entry:
 * /inject[/pod][/psa/baseline|/psa/restricted]. Path segments, not a query:
 * the API server builds the webhook's URL from service.path as a path, so a
 * '?' would arrive escaped. True for one of the six, with *psa ("baseline",
 * "restricted" or NULL) and *pod_scope set (either may be NULL). */
bool ij_inject_path(const char *path, const char **psa, bool *pod_scope);

/* Decide for one AdmissionReview `request` (an object) whose `object` is
 * `pod` (NULL when the request has none). Appends human-readable strings
 * to `warnings` (an array) when something is worth telling the user. */
enum ij_decision ij_inject_decide(json_t *request, json_t *pod, json_t *warnings);

/* For a pod that would be injected: NULL, or why the admission must be
 * refused instead (heap, caller frees; the message names the annotation):
 * a bad remora.io/inbound-tls or remora.io/permissive-ports. */
char *ij_inject_check(const struct ij_inject_params *p, json_t *pod);

/* Build the JSON Patch that injects the sidecar into `pod`, which the caller
 * has checked is a Pod with spec.containers an array of named objects.
 * Returns a new array (caller decrefs); appends warnings. */
json_t *ij_inject_patch(const struct ij_inject_params *p, json_t *request, json_t *pod,
                        json_t *warnings);

#endif
