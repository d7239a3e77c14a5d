/* Per-pod authorization (docs/contract.md "Per-pod policy file"): the first step of
 * the request chain on inbound listeners, before routing and before the app
 * sees anything. The policy is an immutable compiled snapshot swapped on
 * reload; a request is decided once, at its head, under the snapshot in
 * force then, so requests in flight finish under the policy they started
 * with. */
#ifndef PX_AUTHZ_H
#define PX_AUTHZ_H

#include <stdbool.h>

#include "proxy/stream.h"

struct px_admin;
struct px_server;

/* The authorization state of a server (srv->authz): the policy file, the
 * compiled policy in force, its watch and reload counters. */
struct px_authz;

/* Load srv->cfg->policy_file if set, into a new srv->authz (left NULL
 * without a policy file: no authorization step). A bad file at startup is an
 * error (the proxy does not start with an unknown policy); later reloads keep
 * the last good one. Starts the file watch on srv's loop. */
int px_authz_start(struct px_server *srv, char **errmsg);
/* Re-read the policy file (SIGHUP, the file watch, POST /policy/reload);
 * az NULL (no policy file): nothing to do. */
int px_authz_reload(struct px_authz *az, char **errmsg);
/* Register GET /policy and POST /policy/reload on the admin API (admin may be
 * NULL: no admin address). */
void px_authz_admin_routes(struct px_authz *az, struct px_admin *admin);
/* Unregister the admin routes, stop the watch, free az (NULL is fine) and
 * reset the denial series (proxy/policy_metrics.c). */
void px_authz_free(struct px_authz *az);

/* Does the policy in force ask for the source_principal label on inbound
 * request metrics ("metrics": {"source_principal": true})? az may be NULL. */
bool px_authz_metrics_source_principal(const struct px_authz *az);

/* Decide the request whose head is in s->req under the policy of its
 * connection's server (s->conn->srv->authz). Returns true to go on; false
 * when the request was denied and answered (403 naming the rule). */
bool px_authz_check(struct px_stream *s);

/* Decide an opaque TCP connection on an inbound listener (docs/policy.md "TCP
 * connections") before anything is forwarded: its verified principal, source
 * address and original destination port. Returns true to forward; false when
 * denied (logged and counted; the caller closes it). Audit mode logs and lets
 * it through. The deciding rule's name goes to rule[rulelen] (for the access
 * log) when rule is not NULL and a policy ran. */
struct px_conn;
bool px_authz_check_tcp(const struct px_conn *c, char *rule, size_t rulelen);

#endif
