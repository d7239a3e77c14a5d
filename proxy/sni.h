/* The server name (SNI, RFC 6066 section 3) of a TLS ClientHello, read from
 * the first bytes of a connection that detection called TLS (proxy/detect.h).
 * Used on outbound connections outside the mesh: egress_allow names match it
 * (proxy/discovery.h, px_disc_route); the TLS itself is never terminated.
 *
 * Bounded and strict: only a ClientHello that lies whole in the first TLS
 * record is read (a ClientHello fragmented over records, a record over
 * 2^14 bytes, a malformed length anywhere, a second server_name extension,
 * a name that is not a DNS host name: no name). It never reads past len.
 * Pure function, fuzzed by test/fuzz/fuzz_sni.c. */
#ifndef PX_SNI_H
#define PX_SNI_H

#include <stddef.h>
#include <stdint.h>

/* Bytes that always suffice to decide: one record header and its largest body. */
#define PX_SNI_MAX_BYTES (5 + 16384)
/* The longest name kept (a DNS name), and the buffer it needs. */
#define PX_SNI_NAME_MAX 253
#define PX_SNI_NAME_BUF (PX_SNI_NAME_MAX + 1)

enum px_sni_result {
    PX_SNI_MORE = 0, /* the first record is not complete yet (never with len >= PX_SNI_MAX_BYTES) */
    PX_SNI_FOUND,    /* name holds the host name, lower-case, without a trailing dot */
    PX_SNI_NONE      /* decided: no usable name (none sent, or not a well-formed ClientHello) */
};

/* Read the SNI host name from buf[0..len). name must hold PX_SNI_NAME_BUF
 * bytes; it is "" unless the result is PX_SNI_FOUND. */
enum px_sni_result px_sni_parse(const uint8_t *buf, size_t len, char name[PX_SNI_NAME_BUF]);

#endif
