/* Unit tests of common/net.c: "host:port" parsing for IPv4 / IPv6 / any,
 * refusal of everything else, formatting and its round trip, equality,
 * loopback / any classification, and a real listening socket on port 0. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/net.h"

static const char *fmt(const struct cm_addr *a)
{
    static char buf[CM_ADDR_STRLEN];
    return cm_addr_format(a, buf, sizeof(buf));
}

static void parse_ipv4(void **state)
{
    (void)state;
    struct cm_addr a;
    assert_int_equal(cm_addr_parse("1.2.3.4:80", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(cm_addr_port(&a), 80);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.ss;
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x01020304);
    assert_string_equal(fmt(&a), "1.2.3.4:80");

    assert_int_equal(cm_addr_parse("255.255.255.255:65535", &a), 0);
    assert_int_equal(cm_addr_port(&a), 65535);
    assert_string_equal(fmt(&a), "255.255.255.255:65535");
    assert_int_equal(cm_addr_parse("10.0.0.1:0", &a), 0);
    assert_int_equal(cm_addr_port(&a), 0);
}

static void parse_ipv6(void **state)
{
    (void)state;
    struct cm_addr a;
    assert_int_equal(cm_addr_parse("[::1]:8080", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_int_equal(cm_addr_port(&a), 8080);
    assert_string_equal(fmt(&a), "[::1]:8080");
    assert_true(cm_addr_is_loopback(&a));

    assert_int_equal(cm_addr_parse("[2001:db8::a:b]:443", &a), 0);
    assert_string_equal(fmt(&a), "[2001:db8::a:b]:443");
    assert_false(cm_addr_is_loopback(&a));
    assert_false(cm_addr_is_any(&a));

    /* the longest text form still fits CM_ADDR_STRLEN */
    const char *longest = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535";
    assert_int_equal(cm_addr_parse(longest, &a), 0);
    char buf[CM_ADDR_STRLEN];
    cm_addr_format(&a, buf, sizeof(buf));
    assert_true(strlen(buf) < sizeof(buf));
    struct cm_addr b;
    assert_int_equal(cm_addr_parse(buf, &b), 0);
    assert_true(cm_addr_equal(&a, &b));
}

static void parse_any(void **state)
{
    (void)state;
    struct cm_addr a;
    assert_int_equal(cm_addr_parse("*:15006", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_true(cm_addr_is_any(&a));
    assert_string_equal(fmt(&a), "0.0.0.0:15006");

    assert_int_equal(cm_addr_parse(":15001", &a), 0);
    assert_true(cm_addr_is_any(&a));
    assert_int_equal(cm_addr_port(&a), 15001);

    assert_int_equal(cm_addr_parse("0.0.0.0:1", &a), 0);
    assert_true(cm_addr_is_any(&a));
    assert_false(cm_addr_is_loopback(&a));

    assert_int_equal(cm_addr_parse("[::]:15006", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_true(cm_addr_is_any(&a));
    assert_string_equal(fmt(&a), "[::]:15006");

    assert_int_equal(cm_addr_parse("127.0.0.1:1", &a), 0);
    assert_false(cm_addr_is_any(&a));
}

static void parse_refuses_bad_input(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "1.2.3.4",         /* no port */
        "1.2.3.4:",        /* empty port */
        "1.2.3.4:65536",   /* port out of range */
        "1.2.3.4:99999",   /* port out of range, 5 digits */
        "1.2.3.4:123456",  /* six digits */
        "1.2.3.4:-1",      /* sign */
        "1.2.3.4:+80",     /* sign */
        "1.2.3.4:80x",     /* trailing garbage */
        "1.2.3.4: 80",     /* space */
        "1.2.3.4:0x50",    /* hex */
        "256.1.1.1:80",    /* octet out of range */
        "1.2.3:80",        /* three octets */
        "1.2.3.4.5:80",    /* five octets */
        "localhost:80",    /* names are not resolved */
        "::1:80",          /* IPv6 needs brackets */
        "[::1]",           /* no port */
        "[::1]:",          /* empty port */
        "[::1]80",         /* no colon */
        "[::1:80",         /* no closing bracket */
        "[]:80",           /* empty host */
        "[1.2.3.4]:80",    /* IPv4 in brackets */
        "[::1]:80:81",     /* garbage after the port */
        "[:::]:80",        /* bad IPv6 */
        "*:",              /* any without port */
        "**:80",           /* not the any marker */
        " 1.2.3.4:80",     /* leading space */
        "1.2.3.4:80 ",     /* trailing space */
        "[fe80::1%lo]:80", /* no zone ids */
        "[::1]:65536",     /* port out of range */
        "123456789012345678901234567890123456789012345678901234567890:80", /* long host */
        "[1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc]:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cm_addr a;
        int rc = cm_addr_parse(bad[i], &a);
        if (rc != CM_ERR_INVAL)
            fail_msg("cm_addr_parse(\"%s\") = %d, want CM_ERR_INVAL", bad[i], rc);
    }
    struct cm_addr a;
    assert_int_equal(cm_addr_parse(NULL, &a), CM_ERR_INVAL);
}

static void format_round_trip(void **state)
{
    (void)state;
    static const char *const good[] = {
        "0.0.0.0:0",   "127.0.0.1:15000", "10.1.0.7:9080",      "[::]:0",
        "[::1]:15006", "[fe80::1]:65535", "[::ffff:1.2.3.4]:80"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct cm_addr a, b;
        assert_int_equal(cm_addr_parse(good[i], &a), 0);
        assert_string_equal(fmt(&a), good[i]);
        assert_int_equal(cm_addr_parse(fmt(&a), &b), 0);
        assert_true(cm_addr_equal(&a, &b));
    }
}

static void format_host_and_truncation(void **state)
{
    (void)state;
    struct cm_addr a;
    char buf[CM_ADDR_STRLEN];
    assert_int_equal(cm_addr_parse("[::1]:80", &a), 0);
    assert_string_equal(cm_addr_format_host(&a, buf, sizeof(buf)), "::1");
    assert_int_equal(cm_addr_parse("192.168.1.20:80", &a), 0);
    assert_string_equal(cm_addr_format_host(&a, buf, sizeof(buf)), "192.168.1.20");

    /* a short buffer is cut, never overrun */
    char small[8];
    memset(small, 'X', sizeof(small));
    cm_addr_format(&a, small, sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_memory_equal(small, "192.168", 7);

    /* an address of no known family prints "?" */
    struct cm_addr none;
    memset(&none, 0, sizeof(none));
    assert_string_equal(cm_addr_format_host(&none, buf, sizeof(buf)), "?");
    assert_string_equal(fmt(&none), "?:0");
    assert_int_equal(cm_addr_port(&none), 0);
    assert_false(cm_addr_is_any(&none));
    assert_false(cm_addr_is_loopback(&none));
    assert_false(cm_addr_equal(&none, &none));
}

static void equal(void **state)
{
    (void)state;
    struct cm_addr a, b;
    assert_int_equal(cm_addr_parse("10.0.0.1:80", &a), 0);
    assert_int_equal(cm_addr_parse("10.0.0.1:80", &b), 0);
    assert_true(cm_addr_equal(&a, &b));
    assert_int_equal(cm_addr_parse("10.0.0.1:81", &b), 0);
    assert_false(cm_addr_equal(&a, &b));
    assert_int_equal(cm_addr_parse("10.0.0.2:80", &b), 0);
    assert_false(cm_addr_equal(&a, &b));
    /* the v4-mapped form is another family: not equal */
    assert_int_equal(cm_addr_parse("[::ffff:10.0.0.1]:80", &b), 0);
    assert_false(cm_addr_equal(&a, &b));
    assert_false(cm_addr_equal(&b, &a));

    assert_int_equal(cm_addr_parse("[::1]:80", &a), 0);
    assert_int_equal(cm_addr_parse("[0:0:0:0:0:0:0:1]:80", &b), 0);
    assert_true(cm_addr_equal(&a, &b));
    assert_int_equal(cm_addr_parse("[::1]:8080", &b), 0);
    assert_false(cm_addr_equal(&a, &b));
    assert_int_equal(cm_addr_parse("[::2]:80", &b), 0);
    assert_false(cm_addr_equal(&a, &b));
}

static void loopback_and_ports(void **state)
{
    (void)state;
    struct cm_addr a;
    static const struct {
        const char *s;
        bool loopback;
    } cases[] = {
        {"127.0.0.1:1", true},          {"127.255.1.2:1", true},        {"126.0.0.1:1", false},
        {"128.0.0.1:1", false},         {"10.0.0.1:1", false},          {"[::1]:1", true},
        {"[::ffff:127.0.0.9]:1", true}, {"[::ffff:10.0.0.1]:1", false}, {"[::2]:1", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(cm_addr_parse(cases[i].s, &a), 0);
        if (cm_addr_is_loopback(&a) != cases[i].loopback)
            fail_msg("cm_addr_is_loopback(%s) != %d", cases[i].s, cases[i].loopback);
    }

    assert_int_equal(cm_addr_parse("1.2.3.4:80", &a), 0);
    cm_addr_set_port(&a, 8080);
    assert_string_equal(fmt(&a), "1.2.3.4:8080");
    assert_int_equal(cm_addr_parse("[::1]:80", &a), 0);
    cm_addr_set_port(&a, 443);
    assert_string_equal(fmt(&a), "[::1]:443");

    struct cm_addr lo, v6;
    cm_addr_loopback(&lo, NULL, 9);
    assert_string_equal(fmt(&lo), "127.0.0.1:9");
    assert_int_equal(lo.len, sizeof(struct sockaddr_in));
    assert_int_equal(cm_addr_parse("[2001:db8::1]:1", &v6), 0);
    cm_addr_loopback(&lo, &v6, 10);
    assert_string_equal(fmt(&lo), "[::1]:10");
    assert_int_equal(lo.len, sizeof(struct sockaddr_in6));
    assert_true(cm_addr_is_loopback(&lo));
    assert_int_equal(cm_addr_parse("10.0.0.1:1", &a), 0);
    cm_addr_loopback(&lo, &a, 11);
    assert_string_equal(fmt(&lo), "127.0.0.1:11");
}

static void from_sockaddr(void **state)
{
    (void)state;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(4242);
    sin.sin_addr.s_addr = htonl(0x0a000005);
    struct cm_addr a, b;
    cm_addr_from_sockaddr(&a, (const struct sockaddr *)&sin, sizeof(sin));
    assert_int_equal(a.len, sizeof(sin));
    assert_string_equal(fmt(&a), "10.0.0.5:4242");
    assert_int_equal(cm_addr_parse("10.0.0.5:4242", &b), 0);
    assert_true(cm_addr_equal(&a, &b));

    /* an oversized length is clamped to the storage */
    struct sockaddr_storage big;
    memset(&big, 0, sizeof(big));
    memcpy(&big, &sin, sizeof(sin));
    cm_addr_from_sockaddr(&a, (const struct sockaddr *)&big, (socklen_t)sizeof(big) + 100);
    assert_int_equal(a.len, sizeof(a.ss));
    assert_string_equal(fmt(&a), "10.0.0.5:4242");
}

static void listen_on_port_zero(void **state)
{
    (void)state;
    struct cm_addr a, bound;
    assert_int_equal(cm_addr_parse("127.0.0.1:0", &a), 0);
    int fd = cm_net_listen(&a, 16);
    assert_true(fd >= 0);
    assert_int_equal(cm_net_local_addr(fd, &bound), 0);
    assert_int_equal(bound.ss.ss_family, AF_INET);
    assert_true(cm_addr_port(&bound) != 0);
    assert_true(cm_addr_is_loopback(&bound));
    /* a second listener on the same port fails with -1 */
    int fd2 = cm_net_listen(&bound, 16);
    assert_int_equal(fd2, -1);
    close(fd);

    assert_int_equal(cm_net_local_addr(-1, &bound), CM_ERR_IO);
}

static void dns_labels(void **state)
{
    (void)state;
    static const char *const good[] = {"a", "shop", "web-1", "0x", NULL};
    static const char *const bad[] = {"", "-a", "a-", "Shop", "a_b", "a.b", NULL};
    for (size_t i = 0; good[i] != NULL; i++)
        assert_true(cm_dns_label(good[i], strlen(good[i])));
    for (size_t i = 0; bad[i] != NULL; i++)
        assert_false(cm_dns_label(bad[i], strlen(bad[i])));
    char l[65];
    memset(l, 'a', sizeof(l));
    assert_true(cm_dns_label(l, 63));
    assert_false(cm_dns_label(l, 64));
    assert_true(cm_dns_label("shop/web", 4)); /* only the first n bytes */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_ipv4),
        cmocka_unit_test(parse_ipv6),
        cmocka_unit_test(parse_any),
        cmocka_unit_test(parse_refuses_bad_input),
        cmocka_unit_test(format_round_trip),
        cmocka_unit_test(format_host_and_truncation),
        cmocka_unit_test(equal),
        cmocka_unit_test(loopback_and_ports),
        cmocka_unit_test(from_sockaddr),
        cmocka_unit_test(listen_on_port_zero),
        cmocka_unit_test(dns_labels),
    };
    return cmocka_run_group_tests_name("common/net", tests, NULL, NULL);
}
