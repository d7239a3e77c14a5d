/* `remora-proxy iptables`: installs the pod's capture rules (proxy/iptables.c;
 * docs/capture.md). Run by the init container, never by the running proxy. */
#ifndef PX_IPTABLES_H
#define PX_IPTABLES_H

/* The subcommand: argv[0] is "iptables", the rest its flags. Returns the exit
 * status: 0 done (rules installed, printed with --dry-run, or --help), 1 a
 * tool failed, 2 usage error. */
int px_iptables_main(int argc, char **argv);

#endif
