/* Unit tests of proxy/iptables.c, the capture rule generator.
 *
 * Data-driven (test/data/iptables/, under $REMORA_ROOT or the current
 * directory); a new case is a new file:
 *   NAME.args        the flags, one argv element per line
 *   NAME.rules       what `remora-proxy iptables --dry-run --ipv6 no NAME.args`
 *                    prints (the case may say --ipv6 yes: later flags win)
 *   NAME.save        optional: the current `iptables-save -t nat`; then
 *                    NAME.rules is the IPv4 document generated against it
 *                    (reconciling the jumps from PREROUTING/OUTPUT)
 *   bad-NAME.args    flags that must be refused with exit status 2 and a
 *   bad-NAME.err     message on stderr containing this file's first line
 * Every case runs px_iptables_main in a child process (with --dry-run
 * always first, so no case can touch the machine's rules): a crash or a
 * leak fails that case alone.
 *
 * Then the pieces: CIDR canonicalisation, IPv6 detection from an
 * if_inet6-format file, and the jump reconciliation's invariants. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/xalloc.h"
#include "proxy/iptables.h"
#include "proxy/iptables_int.h"

static char data_dir[4096];

static void find_data_dir(void)
{
    const char *root = getenv("REMORA_ROOT");
    snprintf(data_dir, sizeof(data_dir), "%s/test/data/iptables", root && *root ? root : ".");
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Whole file into a heap string, or NULL when it does not exist. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = cm_xmalloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap) {
            cap *= 2;
            buf = cm_xrealloc(buf, cap);
        }
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

#define MAX_ARGS 64

/* argv for px_iptables_main: "iptables --dry-run --ipv6 no" + NAME.args. */
static int load_args(const char *path, char *text, char **argv)
{
    int argc = 0;
    argv[argc++] = (char *)"iptables";
    argv[argc++] = (char *)"--dry-run";
    argv[argc++] = (char *)"--ipv6";
    argv[argc++] = (char *)"no";
    for (char *line = text; line != NULL && *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        if (argc == MAX_ARGS - 1) {
            print_error("%s: too many arguments\n", path);
            return -1;
        }
        argv[argc++] = line;
        line = nl != NULL ? nl + 1 : NULL;
    }
    argv[argc] = NULL;
    return argc;
}

/* Run px_iptables_main(argv) in a child with stdout and stderr in files;
 * returns its exit status (128+signal when killed). */
static int run_child(int argc, char **argv, const char *out, const char *err)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0)
            _exit(120);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        close(o);
        close(e);
        int rc = px_iptables_main(argc, argv);
        fflush(stdout);
        _exit(rc);
    }
    int st;
    assert_true(waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Show the first differing line of two texts. */
static void show_diff(const char *name, const char *got, const char *want)
{
    int line = 1;
    const char *g = got, *w = want;
    while (*g && *g == *w) {
        if (*g == '\n')
            line++;
        g++, w++;
    }
    const char *gl = g, *wl = w;
    while (gl > got && gl[-1] != '\n')
        gl--;
    while (wl > want && wl[-1] != '\n')
        wl--;
    print_error("%s: line %d differs\n  got:  %.*s\n  want: %.*s\n", name, line,
                (int)strcspn(gl, "\n"), gl, (int)strcspn(wl, "\n"), wl);
}

struct tally {
    int ok, bad;
};

static bool run_case(const char *name, struct tally *t)
{
    char path[4608], out[4608], err[4608], want_path[4608], save_path[4608];
    bool bad = strncmp(name, "bad-", 4) == 0;
    snprintf(path, sizeof(path), "%s/%s.args", data_dir, name);
    snprintf(want_path, sizeof(want_path), "%s/%s.%s", data_dir, name, bad ? "err" : "rules");
    snprintf(save_path, sizeof(save_path), "%s/%s.save", data_dir, name);
    snprintf(out, sizeof(out), "/tmp/remora-ipt-%d.out", (int)getpid());
    snprintf(err, sizeof(err), "/tmp/remora-ipt-%d.err", (int)getpid());
    char *args = slurp(path), *want = slurp(want_path), *save = slurp(save_path);
    char *argv[MAX_ARGS];
    bool okay = false;
    int argc = args != NULL ? load_args(path, args, argv) : -1;
    if (want == NULL) {
        print_error("%s: no %s\n", name, want_path);
    } else if (argc < 0) {
        print_error("%s: cannot read %s\n", name, path);
    } else if (save != NULL) {
        /* against a current ruleset: the generator directly */
        struct ipt_opts o;
        if (px_iptables_parse_args(argc, argv, &o) != 0) {
            print_error("%s: flags refused\n", name);
        } else {
            char *doc = px_iptables_build_doc(&o, AF_INET, save);
            okay = strcmp(doc, want) == 0;
            if (!okay)
                show_diff(name, doc, want);
            free(doc);
        }
    } else {
        int rc = run_child(argc, argv, out, err);
        char *got_out = slurp(out), *got_err = slurp(err);
        if (bad) {
            want[strcspn(want, "\n")] = '\0';
            okay = rc == 2 && got_err != NULL && strstr(got_err, want) != NULL && got_out != NULL &&
                   *got_out == '\0';
            if (!okay)
                print_error("%s: exit %d, stderr \"%s\", want exit 2 and \"%s\"\n", name, rc,
                            got_err ? got_err : "", want);
        } else {
            okay = rc == 0 && got_out != NULL && strcmp(got_out, want) == 0;
            if (!okay) {
                print_error("%s: exit %d, stderr \"%s\"\n", name, rc, got_err ? got_err : "");
                if (got_out != NULL)
                    show_diff(name, got_out, want);
            }
        }
        free(got_out);
        free(got_err);
        unlink(out);
        unlink(err);
    }
    free(args);
    free(want);
    free(save);
    if (bad)
        t->bad++;
    else
        t->ok++;
    return okay;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One data case: its name (NAME of NAME.args) is the test's state. */
static void test_data_case(void **state)
{
    struct tally t = {0, 0};
    if (!run_case(*state, &t))
        fail_msg("%s", (const char *)*state);
}

#define MAX_CASES 512

/* Every NAME.args of the data directory, sorted; returns the count. */
static size_t list_cases(char **names)
{
    DIR *d = opendir(data_dir);
    if (d == NULL)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < MAX_CASES) {
        if (ends_with(e->d_name, ".args"))
            names[n++] = cm_xstrndup(e->d_name, strlen(e->d_name) - 5);
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), by_name);
    return n;
}

/* ---- pieces ------------------------------------------------------------------ */

static void expect_cidr(const char *in, const char *want)
{
    struct ipt_cidr c;
    bool ok = px_iptables_cidr_parse(in, strlen(in), &c);
    if (want == NULL) {
        if (ok)
            fail_msg("\"%s\" accepted as %s", in, c.text);
        return;
    }
    if (!ok)
        fail_msg("\"%s\" refused", in);
    assert_string_equal(c.text, want);
}

static void test_cidr(void **state)
{
    (void)state;
    expect_cidr("10.0.0.0/8", "10.0.0.0/8");
    expect_cidr("10.1.2.3/8", "10.0.0.0/8");
    expect_cidr("10.1.2.3", "10.1.2.3/32");
    expect_cidr("10.1.2.3/0", "0.0.0.0/0");
    expect_cidr("10.255.255.255/9", "10.128.0.0/9");
    expect_cidr("192.168.1.129/25", "192.168.1.128/25");
    expect_cidr("fd00::1/8", "fd00::/8");
    expect_cidr("2001:db8:abcd:1234::1/50", "2001:db8:abcd::/50");
    expect_cidr("::1", "::1/128");
    expect_cidr("::/0", "::/0");
    expect_cidr("10.0.0.0/33", NULL);
    expect_cidr("10.0.0.0/-1", NULL);
    expect_cidr("10.0.0.0/ 8", NULL);
    expect_cidr("10.0.0/8", NULL);
    expect_cidr("fd00::/129", NULL);
    expect_cidr("fd00:::/8", NULL);
    expect_cidr("", NULL);
    expect_cidr("/8", NULL);
    expect_cidr("10.0.0.0/08x", NULL);
    /* longer than any address: refused before copying */
    expect_cidr("1111:2222:3333:4444:5555:6666:7777:8888:9999/128", NULL);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_ipv6_detection(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/remora-ipt-if6-%d", (int)getpid());
    /* loopback only */
    write_file(path, "00000000000000000000000000000001 01 80 10 80       lo\n");
    assert_false(px_iptables_has_global_ipv6(path));
    /* link-local on eth0: an IPv4-only pod with IPv6 enabled in the kernel */
    write_file(path, "00000000000000000000000000000001 01 80 10 80       lo\n"
                     "fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n");
    assert_false(px_iptables_has_global_ipv6(path));
    /* a global (or ULA) address on eth0 */
    write_file(path, "fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n"
                     "fd000000000000000000000000000002 02 40 00 80     eth0\n");
    assert_true(px_iptables_has_global_ipv6(path));
    /* garbage lines are skipped */
    write_file(path, "nonsense\n\n fd00 zz\n");
    assert_false(px_iptables_has_global_ipv6(path));
    unlink(path);
    /* no file: no IPv6 in this kernel */
    assert_false(px_iptables_has_global_ipv6(path));
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Applying the document to a ruleset that already has it must add no jump
 * and delete none: the second run is a no-op for the built-in chains. */
static void test_jumps_idempotent(void **state)
{
    (void)state;
    struct ipt_opts o;
    char *argv[] = {(char *)"iptables", (char *)"--dry-run", NULL};
    assert_int_equal(px_iptables_parse_args(2, argv, &o), 0);
    char *first = px_iptables_build_doc(&o, AF_INET, NULL);
    assert_int_equal(count(first, "-A PREROUTING -p tcp -j REMORA_INBOUND\n"), 1);
    assert_int_equal(count(first, "-A OUTPUT -p tcp -j REMORA_OUTPUT\n"), 1);
    /* what iptables-save prints after the first run */
    const char *saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                        "-A PREROUTING -p tcp -j REMORA_INBOUND\n"
                        "-A OUTPUT -p tcp -j REMORA_OUTPUT\n"
                        "-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT\nCOMMIT\n";
    char *second = px_iptables_build_doc(&o, AF_INET, saved);
    assert_int_equal(count(second, "-A PREROUTING"), 0);
    assert_int_equal(count(second, "-A OUTPUT"), 0);
    assert_int_equal(count(second, "-D "), 0);
    /* the chain bodies are the same either way */
    assert_int_equal(strlen(first) - strlen("-A PREROUTING -p tcp -j REMORA_INBOUND\n") -
                         strlen("-A OUTPUT -p tcp -j REMORA_OUTPUT\n"),
                     strlen(second));
    free(first);
    free(second);
    /* CRLF line ends and a missing last newline do not matter */
    second = px_iptables_build_doc(&o, AF_INET,
                                   "-A PREROUTING -p tcp -j REMORA_INBOUND\r\n"
                                   "-A OUTPUT -p tcp -j REMORA_OUTPUT");
    assert_int_equal(count(second, "-A PREROUTING"), 0);
    assert_int_equal(count(second, "-A OUTPUT"), 0);
    free(second);
}

/* A chain named like ours but longer is not ours; other rules stay. */
static void test_jumps_foreign(void **state)
{
    (void)state;
    struct ipt_opts o;
    char *argv[] = {(char *)"iptables", (char *)"--dry-run", NULL};
    assert_int_equal(px_iptables_parse_args(2, argv, &o), 0);
    char *doc = px_iptables_build_doc(&o, AF_INET,
                                      "-A PREROUTING -p tcp -j REMORA_INBOUND_OLD\n"
                                      "-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
                                      "-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053\n"
                                      "-A REMORA_OUTPUT -j REMORA_REDIRECT\n");
    assert_int_equal(count(doc, "-D "), 0);
    assert_int_equal(count(doc, "-A PREROUTING -p tcp -j REMORA_INBOUND\n"), 1);
    free(doc);
}

int main(void)
{
    find_data_dir();
    static char *names[MAX_CASES];
    static struct CMUnitTest cases[MAX_CASES];
    size_t n = list_cases(names), ok = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        cases[i] = (struct CMUnitTest){
            .name = names[i], .test_func = test_data_case, .initial_state = names[i]};
        if (strncmp(names[i], "bad-", 4) == 0)
            bad++;
        else
            ok++;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_ipv6_detection),
        cmocka_unit_test(test_jumps_idempotent),
        cmocka_unit_test(test_jumps_foreign),
    };
    int failed = cmocka_run_group_tests_name("proxy/iptables", tests, NULL, NULL);
    /* a missing data directory is a failure, not an empty pass */
    if (ok < 10 || bad < 10) {
        fprintf(stderr,
                "test_iptables: %zu accepted and %zu refused cases in %s (want >= 10 "
                "each)\n",
                ok, bad, data_dir);
        failed++;
    }
    failed += _cmocka_run_group_tests("proxy/iptables data", cases, n, NULL, NULL);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    return failed != 0;
}
