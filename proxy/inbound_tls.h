/* The inbound mTLS mode of one connection (docs/config.md "permissive_ports"):
 * a strict listener accepts plaintext on the original destination ports it
 * lists in permissive_ports, as a permissive listener does on all of them.
 * Plaintext accepted on an mTLS listener is counted on the listener, by port,
 * and shown as remora_inbound_plaintext_total{port} on /metrics: one series
 * per listed port (summed over the listeners listing it) plus "other". */
#ifndef PX_INBOUND_TLS_H
#define PX_INBOUND_TLS_H

#include <jansson.h>
#include <stdint.h>

#include "proxy/config.h"

struct px_listener;

/* The mode in force for a connection to original destination `port` on
 * listener l: l->tls, except PX_TLS_PERMISSIVE for a strict listener's
 * permissive_ports. */
enum px_tls_mode px_inbound_tls_mode(const struct px_listener_cfg *l, uint16_t port);

/* An inbound listener with mTLS (strict or permissive) started: the /metrics
 * writer is registered on its server's metrics (once per server). */
void px_inbound_tls_listener_started(struct px_listener *l);

/* One plaintext connection accepted by mTLS listener l, to `port`. */
void px_inbound_plaintext_count(struct px_listener *l, uint16_t port);

/* l's count for a listed `port`, or for "other" with port 0 (tests). */
uint64_t px_inbound_plaintext_of(const struct px_listener *l, uint16_t port);

/* Add "tls_by_port" to /config_dump's object lj of inbound listener l: each
 * listed port's mode, then "other"'s ({"9090": "permissive", "other": "strict"}). */
void px_inbound_tls_dump(const struct px_listener_cfg *l, json_t *lj);

#endif
