/* Socket addresses: "host:port" parsing for IPv4 and IPv6 ("[::1]:80"),
 * formatting, and small socket helpers. */
#ifndef CM_NET_H
#define CM_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cm_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* Longest text form: "[" + INET6_ADDRSTRLEN + "]:" + port. */
#define CM_ADDR_STRLEN 64

/* Parse "1.2.3.4:80", "[::1]:8080", "*:80" / ":80" (any IPv4). Numeric only,
 * no name resolution. Returns 0 or CM_ERR_INVAL. */
int cm_addr_parse(const char *s, struct cm_addr *out);
/* A port in decimal, 0-65535, digits only (at most 5): 0, or CM_ERR_INVAL. */
int cm_port_parse(const char *s, uint16_t *out);
/* Format as "1.2.3.4:80" / "[::1]:80" into buf (CM_ADDR_STRLEN); returns buf. */
char *cm_addr_format(const struct cm_addr *a, char *buf, size_t len);
/* Format the host part alone ("1.2.3.4", "::1"). */
char *cm_addr_format_host(const struct cm_addr *a, char *buf, size_t len);
uint16_t cm_addr_port(const struct cm_addr *a);
void cm_addr_set_port(struct cm_addr *a, uint16_t port);
bool cm_addr_equal(const struct cm_addr *a, const struct cm_addr *b);
bool cm_addr_is_loopback(const struct cm_addr *a);
bool cm_addr_is_any(const struct cm_addr *a);
/* Build from a sockaddr (accept(), getsockname()). */
void cm_addr_from_sockaddr(struct cm_addr *a, const struct sockaddr *sa, socklen_t len);
/* 127.0.0.1:port or [::1]:port, matching the family of `like` (NULL: IPv4). */
void cm_addr_loopback(struct cm_addr *out, const struct cm_addr *like, uint16_t port);

/* s[0..n) is a DNS-1123 label (a Kubernetes namespace or Service name): 1..63
 * of [a-z0-9-], not starting or ending with '-'. */
bool cm_dns_label(const char *s, size_t n);

/* Bound, listening, non-blocking, close-on-exec socket with SO_REUSEADDR.
 * Returns the fd or -1 with errno set. */
int cm_net_listen(const struct cm_addr *a, int backlog);
/* The address a socket is bound to; returns 0 or CM_ERR_IO. */
int cm_net_local_addr(int fd, struct cm_addr *out);

#endif
