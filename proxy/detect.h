/* Protocol detection from a connection's first bytes (Envoy's "protocol
 * sniffing"): HTTP/2 preface, an HTTP/1.x request line, a TLS ClientHello,
 * else opaque TCP. Pure function, so it is fuzzed on its own. */
#ifndef PX_DETECT_H
#define PX_DETECT_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/conn.h"

/* Bytes that always suffice to decide. */
#define PX_DETECT_MAX 24

/* Returns the protocol, or PX_PROTO_UNKNOWN when more bytes are needed
 * (never with len >= PX_DETECT_MAX). */
enum px_conn_proto px_detect(const uint8_t *buf, size_t len);
const char *px_proto_name(enum px_conn_proto p);

#endif
