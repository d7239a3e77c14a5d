/* Protocol detection from a connection's first bytes (Envoy's "protocol
 * sniffing"): HTTP/2 preface, an HTTP/1.x request line (after up to
 * PX_DETECT_MAX_SKIP bytes of empty lines), a TLS ClientHello, else opaque TCP.
 * Whatever it says, an inbound connection is decided by the policy: opaque TCP
 * by its L4 rules (proxy/authz.h). Pure function, so it is fuzzed on its own. */
#ifndef PX_DETECT_H
#define PX_DETECT_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/conn.h"

/* Leading CR/LF bytes (empty lines before a request line) skipped; more: TCP. */
#define PX_DETECT_MAX_SKIP 8
/* Bytes that always suffice to decide. */
#define PX_DETECT_MAX (24 + PX_DETECT_MAX_SKIP)

/* Returns the protocol, or PX_PROTO_UNKNOWN when more bytes are needed
 * (never with len >= PX_DETECT_MAX). */
enum px_conn_proto px_detect(const uint8_t *buf, size_t len);
const char *px_proto_name(enum px_conn_proto p);

#endif
