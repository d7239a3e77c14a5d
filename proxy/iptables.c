/* `remora-proxy iptables`: the capture rules the init container installs
 * (docs/contract.md "remora-proxy"; design note in docs/capture.md).
 *
 * The rules live in four chains of the nat table that belong to us alone:
 *   REMORA_INBOUND      PREROUTING, TCP: the proxy's own ports and the excluded
 *                       ports RETURN, everything else goes to REMORA_IN_REDIRECT
 *   REMORA_IN_REDIRECT  REDIRECT --to-ports <inbound port>
 *   REMORA_OUTPUT       OUTPUT, TCP: the proxy's UID (and GID), loopback and the
 *                       exclusions RETURN, everything else goes to REMORA_REDIRECT
 *   REMORA_REDIRECT     REDIRECT --to-ports <outbound port>
 *
 * Idempotence: the document is fed to iptables-restore --noflush. Declaring
 * a chain (":REMORA_X - [0:0]") creates it or flushes it, so our chains are
 * always rewritten whole; the jumps from the built-in PREROUTING and OUTPUT
 * chains are the only rules outside them, and those are reconciled against
 * the current `iptables-save -t nat`: an exact copy that is already there is
 * kept, anything else jumping to our chains is deleted, a missing one is
 * appended. Running the command twice leaves the same ruleset.
 *
 * IPv6 gets the same rules through ip6tables-restore when the pod has a
 * global IPv6 address on a non-loopback interface (/proc/net/if_inet6), or
 * when forced with --ipv6 yes. */
#include "proxy/iptables.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/xalloc.h"
#include "proxy/iptables_int.h"

#define IPT_EXIT_USAGE 2
#define IPT_EXIT_FAIL  1

/* Ports of the proxy itself that inbound capture must never redirect: the
 * admin API (loopback-only; redirected it would be reachable from the mesh
 * as 127.0.0.1:15000), health (kubelet), Istio's 15021/15090 layout. The
 * outbound capture port is added at run time. */
static const uint16_t own_inbound_ports[] = {15000, 15020, 15021, 15090};

/* ---- flag values ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: remora-proxy iptables [flags]\n"
               "  --proxy-uid UID                   traffic of this UID is not captured (1337)\n"
               "  --proxy-gid GID                   nor of this GID (default: none)\n"
               "  --inbound-port PORT               inbound capture listener (15006)\n"
               "  --outbound-port PORT              outbound capture listener (15001)\n"
               "  --exclude-inbound-ports P,...     inbound ports reaching the app directly\n"
               "  --exclude-outbound-ports P,...    outbound destination ports not captured\n"
               "  --exclude-outbound-ip-ranges C,.. outbound destination CIDRs not captured\n"
               "  --ipv6 auto|yes|no                IPv6 rules (auto: when the pod has a global\n"
               "                                    IPv6 address)\n"
               "  --dry-run                         print the iptables-restore input, change "
               "nothing\n");
}

static int usage_error(const char *flag, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const char *flag, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "remora-proxy iptables: ");
    if (flag != NULL)
        fprintf(stderr, "%s: ", flag);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return IPT_EXIT_USAGE;
}

/* Decimal digits only (no sign, no blanks), value in [min, max]. */
static bool parse_uint(const char *s, size_t len, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 10)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v < min || v > max)
        return false;
    *out = v;
    return true;
}

static int parse_port(const char *flag, const char *s, uint16_t *out)
{
    uint64_t v;
    if (!parse_uint(s, strlen(s), 1, 65535, &v))
        return usage_error(flag, "\"%s\" is not a port (1..65535)", s);
    *out = (uint16_t)v;
    return 0;
}

static int parse_id(const char *flag, const char *s, uint32_t *out)
{
    uint64_t v;
    /* 4294967295 is (uid_t)-1, "no owner"; the owner match refuses it */
    if (!parse_uint(s, strlen(s), 0, 4294967294u, &v))
        return usage_error(flag, "\"%s\" is not a numeric id (0..4294967294)", s);
    *out = (uint32_t)v;
    return 0;
}

/* Trim blanks at both ends of [*s, *s + *len). */
static void trim(const char **s, size_t *len)
{
    while (*len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

/* Split a comma list and hand each item (trimmed, non-empty) to fn. */
static int each_item(const char *flag, const char *list,
                     int (*fn)(const char *flag, const char *item, size_t len, void *arg),
                     void *arg)
{
    if (*list == '\0')
        return usage_error(flag, "empty list");
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *item = p;
        trim(&item, &len);
        if (len == 0)
            return usage_error(flag, "\"%s\" has an empty item", list);
        int rc = fn(flag, item, len, arg);
        if (rc != 0)
            return rc;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

struct port_list {
    uint16_t *ports;
    size_t *n;
};

static int add_port(const char *flag, const char *item, size_t len, void *arg)
{
    struct port_list *pl = arg;
    uint64_t v;
    if (!parse_uint(item, len, 1, 65535, &v))
        return usage_error(flag, "\"%.*s\" is not a port (1..65535)", (int)(len > 64 ? 64 : len),
                           item);
    for (size_t i = 0; i < *pl->n; i++)
        if (pl->ports[i] == v)
            return 0; /* listed twice: one rule */
    if (*pl->n == IPT_MAX_ITEMS)
        return usage_error(flag, "more than %d ports", IPT_MAX_ITEMS);
    pl->ports[(*pl->n)++] = (uint16_t)v;
    return 0;
}

/* Parse "a.b.c.d[/n]" or "v6[/n]" into a canonical network/prefix (host bits
 * cleared, as iptables-save prints it). Returns false on anything else. */
bool px_iptables_cidr_parse(const char *item, size_t len, struct ipt_cidr *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    unsigned char addr[16];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, item, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    int family = strchr(buf, ':') != NULL ? AF_INET6 : AF_INET;
    unsigned maxbits = family == AF_INET ? 32 : 128;
    if (inet_pton(family, buf, addr) != 1)
        return false;
    uint64_t bits = maxbits;
    if (slash != NULL && !parse_uint(slash + 1, strlen(slash + 1), 0, maxbits, &bits))
        return false;
    size_t nbytes = maxbits / 8;
    for (size_t i = 0; i < nbytes; i++) {
        size_t keep = bits >= (i + 1) * 8 ? 8 : bits > i * 8 ? bits - i * 8 : 0;
        addr[i] &= (unsigned char)(0xff00u >> keep);
    }
    char net[INET6_ADDRSTRLEN];
    if (inet_ntop(family, addr, net, sizeof(net)) == NULL)
        return false;
    out->family = family;
    snprintf(out->text, sizeof(out->text), "%s/%u", net, (unsigned)bits);
    return true;
}

static int add_cidr(const char *flag, const char *item, size_t len, void *arg)
{
    struct ipt_opts *o = arg;
    struct ipt_cidr c;
    if (!px_iptables_cidr_parse(item, len, &c))
        return usage_error(flag, "\"%.*s\" is not an IPv4 or IPv6 CIDR (a.b.c.d/n, x:y::/n)",
                           (int)(len > 64 ? 64 : len), item);
    for (size_t i = 0; i < o->nranges; i++)
        if (strcmp(o->ranges[i].text, c.text) == 0)
            return 0;
    if (o->nranges == IPT_MAX_ITEMS)
        return usage_error(flag, "more than %d ranges", IPT_MAX_ITEMS);
    o->ranges[o->nranges++] = c;
    return 0;
}

enum {
    OPT_UID = 1000,
    OPT_GID,
    OPT_IN,
    OPT_OUT,
    OPT_EX_IN,
    OPT_EX_OUT,
    OPT_EX_RANGES,
    OPT_IPV6,
    OPT_DRY,
    OPT_HELP
};

/* Parse argv (argv[0] is "iptables"). Returns 0, IPT_EXIT_USAGE after a
 * message, or -1 for --help (printed). */
int px_iptables_parse_args(int argc, char **argv, struct ipt_opts *o)
{
    static const struct option opts[] = {
        {"proxy-uid", required_argument, NULL, OPT_UID},
        {"proxy-gid", required_argument, NULL, OPT_GID},
        {"inbound-port", required_argument, NULL, OPT_IN},
        {"outbound-port", required_argument, NULL, OPT_OUT},
        {"exclude-inbound-ports", required_argument, NULL, OPT_EX_IN},
        {"exclude-outbound-ports", required_argument, NULL, OPT_EX_OUT},
        {"exclude-outbound-ip-ranges", required_argument, NULL, OPT_EX_RANGES},
        {"ipv6", required_argument, NULL, OPT_IPV6},
        {"dry-run", no_argument, NULL, OPT_DRY},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof(*o));
    o->proxy_uid = 1337;
    o->inbound_port = 15006;
    o->outbound_port = 15001;
    optind = 0; /* glibc: full re-initialisation (tests call this repeatedly) */
    opterr = 0;
    int ch, idx = -1, rc;
    while ((ch = getopt_long(argc, argv, ":h", opts, &idx)) != -1) {
        char name[48] = "";
        if (idx >= 0)
            snprintf(name, sizeof(name), "--%s", opts[idx].name);
        const char *flag = name;
        idx = -1;
        rc = 0;
        switch (ch) {
        case OPT_UID:
            rc = parse_id(flag, optarg, &o->proxy_uid);
            break;
        case OPT_GID:
            rc = parse_id(flag, optarg, &o->proxy_gid);
            o->has_gid = true;
            break;
        case OPT_IN:
            rc = parse_port(flag, optarg, &o->inbound_port);
            break;
        case OPT_OUT:
            rc = parse_port(flag, optarg, &o->outbound_port);
            break;
        case OPT_EX_IN: {
            struct port_list pl = {o->excl_in, &o->nexcl_in};
            rc = each_item(flag, optarg, add_port, &pl);
            break;
        }
        case OPT_EX_OUT: {
            struct port_list pl = {o->excl_out, &o->nexcl_out};
            rc = each_item(flag, optarg, add_port, &pl);
            break;
        }
        case OPT_EX_RANGES:
            rc = each_item(flag, optarg, add_cidr, o);
            break;
        case OPT_IPV6:
            if (strcmp(optarg, "auto") == 0)
                o->ipv6 = IPT_V6_AUTO;
            else if (strcmp(optarg, "yes") == 0)
                o->ipv6 = IPT_V6_YES;
            else if (strcmp(optarg, "no") == 0)
                o->ipv6 = IPT_V6_NO;
            else
                rc = usage_error(flag, "\"%s\" is not one of auto, yes, no", optarg);
            break;
        case OPT_DRY:
            o->dry_run = true;
            break;
        case OPT_HELP:
        case 'h':
            usage(stdout);
            return -1;
        case ':':
            return usage_error(argv[optind - 1], "needs a value (see --help)");
        default:
            return usage_error(NULL, "unknown flag \"%s\" (see --help)", argv[optind - 1]);
        }
        if (rc != 0)
            return rc;
    }
    if (optind < argc)
        return usage_error(NULL, "unexpected argument \"%s\" (see --help)", argv[optind]);
    if (o->inbound_port == o->outbound_port)
        return usage_error("--outbound-port", "%u is also the inbound port",
                           (unsigned)o->outbound_port);
    return 0;
}

/* ---- the document ------------------------------------------------------------- */

struct jump {
    const char *builtin; /* PREROUTING / OUTPUT */
    const char *chain;   /* ours */
};

static const struct jump jumps[] = {
    {"PREROUTING", "REMORA_INBOUND"},
    {"OUTPUT", "REMORA_OUTPUT"},
};

static const char *const our_chains[] = {"REMORA_INBOUND", "REMORA_IN_REDIRECT", "REMORA_OUTPUT",
                                         "REMORA_REDIRECT", NULL};

/* The canonical text of a jump rule after "-A ", as iptables-save prints it. */
static void jump_spec(const struct jump *j, char *buf, size_t len)
{
    snprintf(buf, len, "%s -p tcp -j %s", j->builtin, j->chain);
}

/* Does `line` (an iptables-save rule, "-A CHAIN ...") jump to chain `target`? */
static bool rule_jumps_to(const char *line, size_t len, const char *target)
{
    size_t tl = strlen(target);
    for (size_t i = 0; i + 4 + tl <= len; i++) {
        if (memcmp(line + i, " -j ", 4) == 0 && memcmp(line + i + 4, target, tl) == 0 &&
            (i + 4 + tl == len || line[i + 4 + tl] == ' '))
            return true;
    }
    return false;
}

/* Reconcile the jumps from built-in chains against `saved` (the current
 * iptables-save -t nat text, NULL when none): -D lines for every rule of a
 * built-in chain that jumps to one of ours and is not the single canonical
 * copy to keep; sets keep[j] when that copy exists. */
static void plan_jumps(FILE *doc, const char *saved, bool keep[2])
{
    keep[0] = keep[1] = false;
    if (saved == NULL)
        return;
    char want[2][96];
    for (size_t j = 0; j < 2; j++)
        jump_spec(&jumps[j], want[j], sizeof(want[j]));
    for (const char *p = saved; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        while (len > 0 && p[len - 1] == '\r')
            len--;
        if (len > 3 && memcmp(p, "-A ", 3) == 0 &&
            (strncmp(p + 3, "PREROUTING ", 11) == 0 || strncmp(p + 3, "OUTPUT ", 7) == 0 ||
             strncmp(p + 3, "INPUT ", 6) == 0 || strncmp(p + 3, "POSTROUTING ", 12) == 0)) {
            bool ours = false;
            for (size_t c = 0; our_chains[c] != NULL; c++)
                ours = ours || rule_jumps_to(p, len, our_chains[c]);
            if (ours) {
                bool kept = false;
                for (size_t j = 0; j < 2; j++) {
                    if (!keep[j] && strlen(want[j]) == len - 3 &&
                        memcmp(p + 3, want[j], len - 3) == 0) {
                        keep[j] = kept = true;
                        break;
                    }
                }
                if (!kept)
                    fprintf(doc, "-D %.*s\n", (int)(len - 3), p + 3);
            }
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }
}

/* The iptables-restore --noflush input for one family, against the current
 * state `saved` (NULL: a namespace without our rules). Heap string. */
char *px_iptables_build_doc(const struct ipt_opts *o, int family, const char *saved)
{
    char *text = NULL;
    size_t tlen = 0;
    FILE *doc = open_memstream(&text, &tlen);
    if (doc == NULL)
        abort(); /* out of memory */
    const char *lo = family == AF_INET ? "127.0.0.0/8" : "::1/128";
    unsigned uid = o->proxy_uid, gid = o->proxy_gid;

    fprintf(doc, "# remora-proxy iptables: %s capture (%s --noflush)\n",
            family == AF_INET ? "IPv4" : "IPv6",
            family == AF_INET ? "iptables-restore" : "ip6tables-restore");
    fprintf(doc, "*nat\n");
    for (size_t c = 0; our_chains[c] != NULL; c++)
        fprintf(doc, ":%s - [0:0]\n", our_chains[c]); /* creates, or flushes ours */
    bool keep[2];
    plan_jumps(doc, saved, keep);

    /* inbound: the proxy's own ports, then the exclusions, reach their
     * listeners directly; everything else goes to the inbound listener */
    for (size_t i = 0; i < sizeof(own_inbound_ports) / sizeof(own_inbound_ports[0]); i++)
        if (own_inbound_ports[i] != o->inbound_port)
            fprintf(doc, "-A REMORA_INBOUND -p tcp -m tcp --dport %u -j RETURN\n",
                    (unsigned)own_inbound_ports[i]);
    fprintf(doc, "-A REMORA_INBOUND -p tcp -m tcp --dport %u -j RETURN\n",
            (unsigned)o->outbound_port);
    for (size_t i = 0; i < o->nexcl_in; i++)
        fprintf(doc, "-A REMORA_INBOUND -p tcp -m tcp --dport %u -j RETURN\n",
                (unsigned)o->excl_in[i]);
    fprintf(doc, "-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT\n");
    fprintf(doc, "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports %u\n",
            (unsigned)o->inbound_port);

    /* outbound. The proxy reaching its own pod's IP (an app calling its own
     * Service) goes through inbound capture, so the pod's inbound policy
     * applies; the proxy's traffic to 127/8 (inbound forwarding to the app)
     * is never touched. Apps talking over loopback, or to their own pod IP
     * (which the kernel routes over lo), are not captured (Istio's rules). */
    fprintf(doc, "-A REMORA_OUTPUT ! -d %s -o lo -m owner --uid-owner %u -j REMORA_INBOUND\n", lo,
            uid);
    fprintf(doc, "-A REMORA_OUTPUT -o lo -m owner ! --uid-owner %u -j RETURN\n", uid);
    fprintf(doc, "-A REMORA_OUTPUT -m owner --uid-owner %u -j RETURN\n", uid);
    if (o->has_gid) {
        fprintf(doc, "-A REMORA_OUTPUT ! -d %s -o lo -m owner --gid-owner %u -j REMORA_INBOUND\n",
                lo, gid);
        fprintf(doc, "-A REMORA_OUTPUT -o lo -m owner ! --gid-owner %u -j RETURN\n", gid);
        fprintf(doc, "-A REMORA_OUTPUT -m owner --gid-owner %u -j RETURN\n", gid);
    }
    fprintf(doc, "-A REMORA_OUTPUT -d %s -j RETURN\n", lo);
    for (size_t i = 0; i < o->nexcl_out; i++)
        fprintf(doc, "-A REMORA_OUTPUT -p tcp -m tcp --dport %u -j RETURN\n",
                (unsigned)o->excl_out[i]);
    for (size_t i = 0; i < o->nranges; i++)
        if (o->ranges[i].family == family)
            fprintf(doc, "-A REMORA_OUTPUT -d %s -j RETURN\n", o->ranges[i].text);
    fprintf(doc, "-A REMORA_OUTPUT -j REMORA_REDIRECT\n");
    fprintf(doc, "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports %u\n",
            (unsigned)o->outbound_port);

    for (size_t j = 0; j < 2; j++) {
        if (!keep[j]) {
            char spec[96];
            jump_spec(&jumps[j], spec, sizeof(spec));
            fprintf(doc, "-A %s\n", spec);
        }
    }
    fprintf(doc, "COMMIT\n");
    if (fclose(doc) != 0)
        abort();
    return text;
}

/* ---- IPv6 detection ---------------------------------------------------------- */

/* A global-scope IPv6 address on an interface other than lo, read from an
 * if_inet6 file ("addr ifindex prefixlen scope flags name" per line). A pod
 * with only link-local addresses (every IPv4-only pod with IPv6 enabled in
 * the kernel) is not IPv6: no peer can reach it over IPv6 anyway. */
bool px_iptables_has_global_ipv6(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false; /* no IPv6 in this kernel or namespace */
    char line[256];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        char addr[40], name[32];
        unsigned idx, plen, scope, flags;
        if (sscanf(line, "%39s %x %x %x %x %31s", addr, &idx, &plen, &scope, &flags, name) != 6)
            continue;
        found = scope == 0 && strcmp(name, "lo") != 0;
    }
    fclose(f);
    return found;
}

/* ---- running the iptables tools ------------------------------------------------- */

/* Run argv (execvp, no shell) with `input` on stdin (NULL: /dev/null) and,
 * when `output` is set, its stdout collected into a heap string (bounded by
 * IPT_MAX_SAVE). Returns the exit status, or -1 when it could not run or
 * was killed (with a message). */
static int run_tool(char *const argv[], const char *input, char **output)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    if (pipe(in) != 0 || (output != NULL && pipe(out) != 0)) {
        fprintf(stderr, "remora-proxy iptables: pipe: %s\n", strerror(errno));
        goto fail_pipes;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "remora-proxy iptables: fork: %s\n", strerror(errno));
        goto fail_pipes;
    }
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        if (output != NULL)
            dup2(out[1], STDOUT_FILENO);
        close(in[0]);
        close(in[1]);
        if (output != NULL) {
            close(out[0]);
            close(out[1]);
        }
        execvp(argv[0], argv);
        fprintf(stderr, "remora-proxy iptables: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(in[0]);
    in[0] = -1;
    if (output != NULL) {
        close(out[1]);
        out[1] = -1;
    }
    /* The input is small (a few kB) and the child reads all of it before it
     * writes much; iptables-save reads nothing, so the writer never blocks
     * against a full stdout pipe. */
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    if (input != NULL) {
        size_t len = strlen(input), off = 0;
        while (off < len) {
            ssize_t n = write(in[1], input + off, len - off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break; /* the child went away: its status says why */
            off += (size_t)n;
        }
    }
    close(in[1]);
    in[1] = -1;
    signal(SIGPIPE, old);
    if (output != NULL) {
        size_t cap = 65536, len = 0;
        char *buf = cm_xmalloc(cap);
        for (;;) {
            if (len + 1 == cap) {
                if (cap >= IPT_MAX_SAVE)
                    break; /* truncated: enough to find our jumps in any sane table */
                cap *= 2;
                buf = cm_xrealloc(buf, cap);
            }
            ssize_t n = read(out[0], buf + len, cap - 1 - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        buf[len] = '\0';
        close(out[0]);
        out[0] = -1;
        *output = buf;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "remora-proxy iptables: waitpid: %s\n", strerror(errno));
            return -1;
        }
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    fprintf(stderr, "remora-proxy iptables: %s killed by signal %d\n", argv[0],
            WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return -1;

fail_pipes:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    return -1;
}

/* Install the rules of one family. Returns 0 or IPT_EXIT_FAIL. */
static int install(const struct ipt_opts *o, int family)
{
    const char *save = family == AF_INET ? "iptables-save" : "ip6tables-save";
    const char *restore = family == AF_INET ? "iptables-restore" : "ip6tables-restore";
    char *const save_argv[] = {(char *)save, (char *)"-t", (char *)"nat", NULL};
    char *const restore_argv[] = {(char *)restore, (char *)"--noflush", NULL};
    char *saved = NULL;
    int rc = run_tool(save_argv, NULL, &saved);
    if (rc != 0) {
        /* No nat table yet (legacy iptables before first use) reads as empty:
         * there is nothing of ours to reconcile. */
        fprintf(stderr, "remora-proxy iptables: %s -t nat exited with %d; assuming no rules\n",
                save, rc);
        free(saved);
        saved = NULL;
    }
    char *doc = px_iptables_build_doc(o, family, saved);
    free(saved);
    rc = run_tool(restore_argv, doc, NULL);
    if (rc != 0) {
        /* iptables-restore names failing lines by number: show them */
        fprintf(stderr, "remora-proxy iptables: %s --noflush exited with %d; its input was:\n",
                restore, rc);
        int n = 1;
        for (const char *p = doc; *p; n++) {
            const char *nl = strchr(p, '\n');
            int len = nl != NULL ? (int)(nl - p) : (int)strlen(p);
            fprintf(stderr, "%4d  %.*s\n", n, len, p);
            if (nl == NULL)
                break;
            p = nl + 1;
        }
        free(doc);
        return IPT_EXIT_FAIL;
    }
    free(doc);
    return 0;
}

/* Entry point of `remora-proxy iptables` (argv[0] is "iptables"). Exit
 * status: 0 done, 1 a tool failed, 2 usage error. */
int px_iptables_main(int argc, char **argv)
{
    static struct ipt_opts o; /* large: keep it off the stack */
    int rc = px_iptables_parse_args(argc, argv, &o);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    bool v6 = o.ipv6 == IPT_V6_YES ||
              (o.ipv6 == IPT_V6_AUTO && px_iptables_has_global_ipv6("/proc/net/if_inet6"));
    if (o.dry_run) {
        char *doc = px_iptables_build_doc(&o, AF_INET, NULL);
        fputs(doc, stdout);
        free(doc);
        if (v6) {
            doc = px_iptables_build_doc(&o, AF_INET6, NULL);
            fputs(doc, stdout);
            free(doc);
        }
        return fflush(stdout) == 0 ? 0 : IPT_EXIT_FAIL;
    }
    if ((rc = install(&o, AF_INET)) != 0)
        return rc;
    if (v6 && (rc = install(&o, AF_INET6)) != 0)
        return rc;
    fprintf(stderr,
            "remora-proxy iptables: capture rules installed (IPv4%s): inbound -> %u, "
            "outbound -> %u, uid %u exempt\n",
            v6 ? " and IPv6" : "", (unsigned)o.inbound_port, (unsigned)o.outbound_port,
            (unsigned)o.proxy_uid);
    return 0;
}
