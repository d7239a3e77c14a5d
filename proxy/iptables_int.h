/* Internals of `remora-proxy iptables` (proxy/iptables.c) that its unit test
 * drives without running iptables: the parsed options, flag parsing and the
 * iptables-restore document. Not an API: proxy/iptables.h is. */
#ifndef PX_IPTABLES_INT_H
#define PX_IPTABLES_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IPT_MAX_ITEMS 256         /* per exclusion flag */
#define IPT_MAX_SAVE  (16u << 20) /* bytes of iptables-save output we read */

enum ipt_v6 {
    IPT_V6_AUTO = 0, /* ip6tables when the pod has a global IPv6 address */
    IPT_V6_YES,      /* always (fails where the kernel has no IPv6 nat) */
    IPT_V6_NO        /* never */
};

struct ipt_cidr {
    int family;    /* AF_INET or AF_INET6 */
    char text[64]; /* canonical "network/prefix" */
};

struct ipt_opts {
    uint32_t proxy_uid;
    bool has_gid;
    uint32_t proxy_gid;
    uint16_t inbound_port, outbound_port;
    uint16_t excl_in[IPT_MAX_ITEMS];
    size_t nexcl_in;
    uint16_t excl_out[IPT_MAX_ITEMS];
    size_t nexcl_out;
    struct ipt_cidr ranges[IPT_MAX_ITEMS];
    size_t nranges;
    enum ipt_v6 ipv6;
    bool dry_run;
};

/* Parse argv (argv[0] is "iptables") into *o. Returns 0, IPT_EXIT_USAGE
 * after a message, or -1 for --help (printed). */
int px_iptables_parse_args(int argc, char **argv, struct ipt_opts *o);
/* One "network/prefix" item (len bytes) into *out (canonical text); false when bad. */
bool px_iptables_cidr_parse(const char *item, size_t len, struct ipt_cidr *out);
/* The iptables-restore document for family (AF_INET / AF_INET6) given the
 * current `iptables-save -t nat` text (saved, may be NULL); heap string. */
char *px_iptables_build_doc(const struct ipt_opts *o, int family, const char *saved);
/* Does the if_inet6 file at path list a global (or ULA) address on a
 * non-loopback interface? */
bool px_iptables_has_global_ipv6(const char *path);

#endif
