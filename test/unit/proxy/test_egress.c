/* Unit tests of the egress decision by name (px_disc_route with a host,
 * proxy/discovery.c): under registry_only, egress_allow's host and *.domain
 * entries match the HTTP Host ("name" takes the destination's port,
 * "name:port" its own) or the TLS SNI, any case, a trailing dot ignored;
 * CIDR entries match the destination address only; an address written as
 * the Host is never a name; malformed hosts match nothing; allow_any lets
 * everything out; the counters of remora_egress_total follow. And which
 * destinations are let out by a name alone (px_disc_egress_by_name): those
 * must be addresses of the name (egress_verify_names, proxy/resolve.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/net.h"
#include "proxy/config.h"
#include "proxy/discovery.h"

static const char doc[] =
    "{\"listeners\": [{\"name\": \"o\", \"address\": \"127.0.0.1:0\", \"direction\": "
    "\"outbound\"}], \"identity\": {\"trust_domain\": \"t.local\", \"namespace\": \"a\", "
    "\"service_account\": \"b\", \"cert_file\": \"c\", \"key_file\": \"k\", \"bundle_file\": "
    "\"b\"}, \"discovery\": {\"address\": \"127.0.0.1:1\"}, \"outbound_policy\": "
    "\"registry_only\", \"egress_allow\": [\"api.example.com:443\", \"*.wild.example:8443\", "
    "\"203.0.113.0/24:80\"]}";

static struct px_config *cfg;
static struct event_base *base;
static struct px_disc *d;

static int setup(void **state)
{
    (void)state;
    char *err = NULL;
    if (px_config_parse("p.json", doc, strlen(doc), &cfg, &err) != 0) {
        fprintf(stderr, "config: %s\n", err);
        free(err);
        return -1;
    }
    base = event_base_new();
    struct px_disc_opts o;
    px_disc_opts_default(&o);
    o.plaintext = true;
    o.tls_conf = NULL;
    d = px_disc_new(base, cfg->discovery, &o);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_disc_free(d);
    event_base_free(base);
    px_config_free(cfg);
    return 0;
}

static enum px_disc_route route(const char *dst, const char *host)
{
    struct cm_addr a;
    assert_int_equal(cm_addr_parse(dst, &a), 0);
    const char *id = "x";
    enum px_disc_route r = px_disc_route(d, PX_DISC_NOT_FOUND, NULL, &a, host, &id);
    assert_null(id);
    return r;
}

static void names(void **state)
{
    (void)state;
    struct px_disc_stats st0, st;
    px_disc_get_stats(d, &st0);
    /* a Host without a port takes the destination's */
    assert_int_equal(route("198.51.100.1:443", "api.example.com"), PX_ROUTE_EGRESS);
    assert_int_equal(route("198.51.100.1:443", "API.Example.COM."), PX_ROUTE_EGRESS);
    assert_int_equal(route("198.51.100.1:80", "api.example.com"), PX_ROUTE_REFUSED);
    /* with a port, its own */
    assert_int_equal(route("198.51.100.1:80", "api.example.com:443"), PX_ROUTE_EGRESS);
    assert_int_equal(route("198.51.100.1:443", "api.example.com:8443"), PX_ROUTE_REFUSED);
    /* *.domain: names below it, not the domain itself */
    assert_int_equal(route("198.51.100.1:8443", "a.wild.example"), PX_ROUTE_EGRESS);
    assert_int_equal(route("198.51.100.1:1", "a.b.wild.example:8443"), PX_ROUTE_EGRESS);
    assert_int_equal(route("198.51.100.1:8443", "wild.example"), PX_ROUTE_REFUSED);
    assert_int_equal(route("198.51.100.1:8443", "xwild.example"), PX_ROUTE_REFUSED);
    /* a similar name is not the listed one */
    assert_int_equal(route("198.51.100.1:443", "api.example.com.evil"), PX_ROUTE_REFUSED);
    assert_int_equal(route("198.51.100.1:443", "evilapi.example.com"), PX_ROUTE_REFUSED);
    px_disc_get_stats(d, &st);
    assert_int_equal(st.egress_allowed - st0.egress_allowed, 5);
    assert_int_equal(st.egress_refused - st0.egress_refused, 6);
}

static void addresses(void **state)
{
    (void)state;
    /* CIDR entries match the destination, whatever the Host says */
    assert_int_equal(route("203.0.113.5:80", NULL), PX_ROUTE_EGRESS);
    assert_int_equal(route("203.0.113.5:80", "anything.example"), PX_ROUTE_EGRESS);
    assert_int_equal(route("203.0.113.5:81", NULL), PX_ROUTE_REFUSED);
    /* an address as the Host is not a name, and not the destination either */
    assert_int_equal(route("198.51.100.1:80", "203.0.113.5:80"), PX_ROUTE_REFUSED);
    assert_int_equal(route("198.51.100.1:80", "203.0.113.5"), PX_ROUTE_REFUSED);
    assert_int_equal(route("198.51.100.1:443", "[2001:db8::1]:443"), PX_ROUTE_REFUSED);
}

static void malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"",
                                      ":443",
                                      "api.example.com:",
                                      "api.example.com:0",
                                      "api.example.com:65536",
                                      "api.example.com:44x",
                                      "api example.com",
                                      "api..example.com",
                                      "-api.example.com",
                                      "api.example.com:443:443",
                                      "*.example.com"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (route("198.51.100.1:443", bad[i]) != PX_ROUTE_REFUSED)
            fail_msg("host \"%s\" was let out", bad[i]);
    char big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(route("198.51.100.1:443", big), PX_ROUTE_REFUSED);
    /* an overlong name whose tail is a listed one is not that name */
    memcpy(big + sizeof(big) - 1 - strlen(".api.example.com"), ".api.example.com", 17);
    assert_int_equal(route("198.51.100.1:443", big), PX_ROUTE_REFUSED);
}

static void allow_any(void **state)
{
    (void)state;
    cfg->discovery->policy = PX_OUTBOUND_ALLOW_ANY;
    struct px_disc_stats st0, st;
    px_disc_get_stats(d, &st0);
    assert_int_equal(route("198.51.100.1:443", "unlisted.example"), PX_ROUTE_EGRESS);
    assert_int_equal(route("198.51.100.1:443", NULL), PX_ROUTE_EGRESS);
    px_disc_get_stats(d, &st);
    assert_int_equal(st.egress_passthrough - st0.egress_passthrough, 2);
    assert_int_equal(st.egress_refused, st0.egress_refused);
    cfg->discovery->policy = PX_OUTBOUND_REGISTRY_ONLY;
}

/* px_disc_egress_by_name: the name to check against DNS, when a name entry
 * alone lets the destination out (proxy/resolve.h). */
static bool by_name(enum px_disc_result res, const char *dst, const char *host, char *name)
{
    struct cm_addr a;
    assert_int_equal(cm_addr_parse(dst, &a), 0);
    name[0] = '\0';
    return px_disc_egress_by_name(d, res, NULL, &a, host, name, 254);
}

static void names_to_check(void **state)
{
    (void)state;
    char name[254];
    assert_true(cfg->discovery->verify_names); /* the default */
    assert_true(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:443", "API.Example.COM.", name));
    assert_string_equal(name, "api.example.com"); /* lower case, no trailing dot */
    assert_true(by_name(PX_DISC_UNAVAILABLE, "198.51.100.1:8443", "a.b.wild.example", name));
    assert_string_equal(name, "a.b.wild.example");
    assert_true(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:80", "api.example.com:443", name));
    /* a CIDR entry vouches for the address: nothing to check */
    assert_false(by_name(PX_DISC_NOT_FOUND, "203.0.113.9:80", "api.example.com:443", name));
    /* not let out by a name at all: refused anyway, nothing to check */
    assert_false(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:443", "unlisted.example", name));
    assert_false(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:443", "198.51.100.1", name));
    assert_false(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:443", NULL, name));
    /* egress_verify_names false, or allow_any: names are believed */
    cfg->discovery->verify_names = false;
    assert_false(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:443", "api.example.com", name));
    cfg->discovery->verify_names = true;
    cfg->discovery->policy = PX_OUTBOUND_ALLOW_ANY;
    assert_false(by_name(PX_DISC_NOT_FOUND, "198.51.100.1:443", "api.example.com", name));
    cfg->discovery->policy = PX_OUTBOUND_REGISTRY_ONLY;
    /* the refusal is counted as one */
    struct px_disc_stats st0, st;
    px_disc_get_stats(d, &st0);
    struct cm_addr a;
    assert_int_equal(cm_addr_parse("198.51.100.1:443", &a), 0);
    px_disc_egress_refuse_name(d, &a, "api.example.com", "the name resolves to other addresses");
    px_disc_get_stats(d, &st);
    assert_int_equal(st.egress_refused - st0.egress_refused, 1);
    assert_int_equal(st.egress_refused_dns - st0.egress_refused_dns, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names),     cmocka_unit_test(addresses),      cmocka_unit_test(malformed),
        cmocka_unit_test(allow_any), cmocka_unit_test(names_to_check),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
