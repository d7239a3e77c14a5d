#include "common/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

int cm_port_parse(const char *s, uint16_t *out)
{
    if (*s == '\0' || strlen(s) > 5)
        return CM_ERR_INVAL;
    unsigned v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return CM_ERR_INVAL;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v > 65535)
        return CM_ERR_INVAL;
    *out = (uint16_t)v;
    return 0;
}

int cm_addr_parse(const char *s, struct cm_addr *out)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port;
    size_t hlen;

    if (s == NULL)
        return CM_ERR_INVAL;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return CM_ERR_INVAL;
        hlen = (size_t)(close - s - 1);
        port = close + 2;
        if (hlen == 0 || hlen >= sizeof(host))
            return CM_ERR_INVAL;
        memcpy(host, s + 1, hlen);
        host[hlen] = '\0';
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        uint16_t p;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1 || cm_port_parse(port, &p) != 0)
            return CM_ERR_INVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(p);
        out->len = sizeof(*sin6);
        return 0;
    }
    const char *colon = strrchr(s, ':');
    if (colon == NULL || strchr(s, ':') != colon)
        return CM_ERR_INVAL;
    hlen = (size_t)(colon - s);
    port = colon + 1;
    if (hlen >= sizeof(host))
        return CM_ERR_INVAL;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    uint16_t p;
    if (cm_port_parse(port, &p) != 0)
        return CM_ERR_INVAL;
    if (hlen == 0 || strcmp(host, "*") == 0)
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
        return CM_ERR_INVAL;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(p);
    out->len = sizeof(*sin);
    return 0;
}

char *cm_addr_format_host(const struct cm_addr *a, char *buf, size_t len)
{
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    if (sa->sa_family == AF_INET6) {
        if (inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf,
                      (socklen_t)len) == NULL)
            snprintf(buf, len, "?");
    } else if (sa->sa_family == AF_INET) {
        if (inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len) ==
            NULL)
            snprintf(buf, len, "?");
    } else {
        snprintf(buf, len, "?");
    }
    return buf;
}

char *cm_addr_format(const struct cm_addr *a, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    cm_addr_format_host(a, host, sizeof(host));
    if (a->ss.ss_family == AF_INET6)
        snprintf(buf, len, "[%s]:%u", host, cm_addr_port(a));
    else
        snprintf(buf, len, "%s:%u", host, cm_addr_port(a));
    return buf;
}

uint16_t cm_addr_port(const struct cm_addr *a)
{
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return 0;
}

void cm_addr_set_port(struct cm_addr *a, uint16_t port)
{
    if (a->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(port);
    else if (a->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&a->ss)->sin_port = htons(port);
}

bool cm_addr_equal(const struct cm_addr *a, const struct cm_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return false;
}

bool cm_addr_is_loopback(const struct cm_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr) >> 24) == 127;
    if (a->ss.ss_family == AF_INET6) {
        const struct in6_addr *ip = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(ip))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(ip))
            return ip->s6_addr[12] == 127;
    }
    return false;
}

bool cm_addr_is_any(const struct cm_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (a->ss.ss_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr);
    return false;
}

void cm_addr_from_sockaddr(struct cm_addr *a, const struct sockaddr *sa, socklen_t len)
{
    memset(a, 0, sizeof(*a));
    if (len > sizeof(a->ss))
        len = sizeof(a->ss);
    memcpy(&a->ss, sa, len);
    a->len = len;
}

void cm_addr_loopback(struct cm_addr *out, const struct cm_addr *like, uint16_t port)
{
    memset(out, 0, sizeof(*out));
    if (like != NULL && like->ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        sin6->sin6_port = htons(port);
        out->len = sizeof(*sin6);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin->sin_port = htons(port);
        out->len = sizeof(*sin);
    }
}

int cm_net_listen(const struct cm_addr *a, int backlog)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int cm_net_local_addr(int fd, struct cm_addr *out)
{
    memset(out, 0, sizeof(*out));
    out->len = sizeof(out->ss);
    if (getsockname(fd, (struct sockaddr *)&out->ss, &out->len) != 0)
        return CM_ERR_IO;
    return 0;
}

bool cm_dns_label(const char *s, size_t n)
{
    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}
