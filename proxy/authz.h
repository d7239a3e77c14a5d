/* Per-pod authorization (docs/contract.md "Per-pod policy file"): the first step of
 * the request chain on inbound listeners, before routing and before the app
 * sees anything. The policy is an immutable compiled snapshot swapped on
 * reload; a request is decided once, at its head, under the snapshot in
 * force then, so requests in flight finish under the policy they started
 * with. */
#ifndef PX_AUTHZ_H
#define PX_AUTHZ_H

#include <stdbool.h>

#include "proxy/config.h"
#include "proxy/stream.h"

/* Load cfg->policy_file if set. A bad file at startup is an error (the
 * proxy does not start with an unknown policy); later reloads keep the last
 * good one. Starts the file watch. */
int px_authz_start(const struct px_config *cfg, char **errmsg);
/* Re-read the policy file (SIGHUP, the file watch, POST /policy/reload). */
int px_authz_reload(char **errmsg);
/* Register GET /policy and POST /policy/reload on the admin API. */
void px_authz_admin_routes(void);
void px_authz_shutdown(void);

/* Decide the request whose head is in s->req. Returns true to go on; false
 * when the request was denied and answered (403 naming the rule). */
bool px_authz_check(struct px_stream *s);

/* Decide an opaque TCP connection on an inbound listener (docs/policy.md "TCP
 * connections") before anything is forwarded: its verified principal, source
 * address and original destination port. Returns true to forward; false when
 * denied (logged and counted; the caller closes it). Audit mode logs and lets
 * it through. */
struct px_conn;
bool px_authz_check_tcp(const struct px_conn *c);

#endif
