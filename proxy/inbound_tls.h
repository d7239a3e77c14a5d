/* The inbound mTLS mode of one connection (docs/config.md "permissive_ports"):
 * a strict listener accepts plaintext on the original destination ports it
 * lists in permissive_ports, as a permissive listener does on all of them.
 * Plaintext accepted on an mTLS listener is counted by port:
 * remora_inbound_plaintext_total{port} on /metrics, inbound_plaintext on
 * /stats; the label set is the listed ports and "other". */
#ifndef PX_INBOUND_TLS_H
#define PX_INBOUND_TLS_H

#include <jansson.h>
#include <stdint.h>

#include "proxy/config.h"

/* The mode in force for a connection to original destination `port` on
 * listener l: l->tls, except PX_TLS_PERMISSIVE for a strict listener's
 * permissive_ports. */
enum px_tls_mode px_inbound_tls_mode(const struct px_listener_cfg *l, uint16_t port);

/* A listener with mTLS (strict or permissive) starts: its listed ports get
 * their series (at 0) and the metric writers are registered. */
void px_inbound_tls_listener_started(const struct px_listener_cfg *l);

/* One plaintext connection accepted on an mTLS listener, to `port`. */
void px_inbound_plaintext_count(const struct px_listener_cfg *l, uint16_t port);

/* The count of a listed `port` (0: "other"), for tests. */
uint64_t px_inbound_plaintext(uint16_t port);

/* Add "tls_by_port" to /config_dump's object lj of inbound listener l: each
 * listed port's mode, then "other"'s ({"9090": "permissive", "other": "strict"}). */
void px_inbound_tls_dump(const struct px_listener_cfg *l, json_t *lj);

/* Forget the series (tests). */
void px_inbound_tls_reset(void);

#endif
