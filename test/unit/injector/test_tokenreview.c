/* Unit tests of injector/tokenreview.c's pure parts (issue 14; the API half
 * is test/integration/tokenreview.sh):
 *  - the TokenReview judge: authenticated, not, another user, another
 *    audience, the API server's pod uid, bodies that are no TokenReview;
 *  - the Pod decoder;
 *  - the cache: hits, expiry, one token's answer replaced, and the bound: a
 *    full bucket evicts the entry closest to expiry, never grows. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "injector/tokenreview.h"
#include "injector/tokenreview_int.h"

static struct ij_token_claims claims(void)
{
    struct ij_token_claims c;
    memset(&c, 0, sizeof(c));
    snprintf(c.ns, sizeof(c.ns), "%s", "shop");
    snprintf(c.sa, sizeof(c.sa), "%s", "web");
    snprintf(c.pod, sizeof(c.pod), "%s", "web-0");
    snprintf(c.pod_uid, sizeof(c.pod_uid), "%s", "u-1");
    c.exp = 2000000000;
    return c;
}

static enum ij_tokrev_result judge(const char *body, char **why)
{
    struct ij_token_claims c = claims();
    return ij_tokrev_judge_review(body, strlen(body), &c, "remora-ca", why);
}

static void judge_review(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        enum ij_tokrev_result want;
        const char *msg; /* substring of the reason, NULL for OK */
    } cases[] = {
        {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
         "\"system:serviceaccount:shop:web\"},\"audiences\":[\"x\",\"remora-ca\"]}}",
         IJ_TOKREV_OK, NULL},
        {"{\"status\":{\"authenticated\":true,\"user\":{\"username\":"
         "\"system:serviceaccount:shop:web\",\"extra\":{\"authentication.kubernetes.io/"
         "pod-uid\":[\"u-1\"]}}}}",
         IJ_TOKREV_OK, NULL},
        {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":false,\"error\":\"token "
         "has been invalidated\"}}",
         IJ_TOKREV_REJECTED, "does not authenticate this token: token has been invalidated"},
        {"{\"kind\":\"TokenReview\",\"status\":{}}", IJ_TOKREV_REJECTED,
         "(revoked, or its pod or secret is gone)"},
        {"{\"status\":{\"authenticated\":true,\"user\":{\"username\":"
         "\"system:serviceaccount:shop:webx\"}}}",
         IJ_TOKREV_REJECTED, "\"system:serviceaccount:shop:webx\", but it claims"},
        {"{\"status\":{\"authenticated\":true,\"user\":{}}}", IJ_TOKREV_REJECTED, "(no username)"},
        {"{\"status\":{\"authenticated\":true,\"user\":{\"username\":"
         "\"system:serviceaccount:shop:web\"},\"audiences\":[]}}",
         IJ_TOKREV_REJECTED, "audience remora-ca"},
        {"{\"status\":{\"authenticated\":true,\"user\":{\"username\":"
         "\"system:serviceaccount:shop:web\",\"extra\":{\"authentication.kubernetes.io/"
         "pod-uid\":[\"u-2\"]}}}}",
         IJ_TOKREV_POD_GONE, "bound to pod uid u-1, the API server says u-2"},
        {"{\"kind\":\"Status\",\"status\":\"Failure\"}", IJ_TOKREV_UNAVAILABLE,
         "not a TokenReview"},
        {"{\"status\":{\"authenticated\":\"yes\"}}", IJ_TOKREV_UNAVAILABLE, "not a boolean"},
        {"[]", IJ_TOKREV_UNAVAILABLE, "not a TokenReview"},
        {"{\"status\":", IJ_TOKREV_UNAVAILABLE, "not a TokenReview with a status: "},
        {"{\"a\":1,\"a\":2}", IJ_TOKREV_UNAVAILABLE, "not a TokenReview"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *why = NULL;
        enum ij_tokrev_result r = judge(cases[i].body, &why);
        if (r != cases[i].want)
            fail_msg("case %zu: result %d, want %d (%s)", i, r, cases[i].want, why ? why : "");
        if (cases[i].msg == NULL) {
            assert_null(why);
        } else if (why == NULL || strstr(why, cases[i].msg) == NULL) {
            fail_msg("case %zu: '%s' lacks '%s'", i, why ? why : "(null)", cases[i].msg);
        }
        free(why);
    }
    /* a control byte from the API server never reaches our message */
    char *why = NULL;
    judge("{\"status\":{\"authenticated\":false,\"error\":\"bad\\nline\\u0001\"}}", &why);
    assert_non_null(why);
    assert_non_null(strstr(why, "bad?line?"));
    free(why);
}

static void pod_uid(void **state)
{
    (void)state;
    char *uid = NULL, *err = NULL;
    const char *ok = "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"web-0\",\"uid\":\"abc\"}}";
    assert_int_equal(ij_tokrev_pod_uid(ok, strlen(ok), &uid, &err), 0);
    assert_string_equal(uid, "abc");
    assert_null(err);
    free(uid);
    static const char *const bad[] = {
        "{\"kind\":\"Status\",\"metadata\":{\"uid\":\"abc\"}}",
        "{\"metadata\":{}}",
        "{\"metadata\":{\"uid\":\"\"}}",
        "{\"metadata\":{\"uid\":7}}",
        /* a uid of 65 characters */
        ("{\"metadata\":{\"uid\":\"0123456789012345678901234567890123456789012345678901234567890123"
         "4\"}}"),
        "nope",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uid = NULL;
        err = NULL;
        if (ij_tokrev_pod_uid(bad[i], strlen(bad[i]), &uid, &err) == 0)
            fail_msg("bad %zu accepted", i);
        assert_null(uid);
        assert_non_null(err);
        free(err);
    }
}

/* A checker without a client: only the cache is used. */
static struct ij_tokrev *cache_only(void)
{
    struct ij_tokrev *r = cm_xcalloc(1, sizeof(*r));
    r->cache_ms = 60000;
    r->slots = cm_xcalloc(IJ_TOKREV_CACHE_SLOTS, sizeof(*r->slots));
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

/* A key landing in bucket 0, told apart by its last bytes. */
static void key_in_bucket0(unsigned char key[32], unsigned n)
{
    memset(key, 0, 32);
    key[30] = (unsigned char)(n >> 8);
    key[31] = (unsigned char)n;
}

static void cache_bounded(void **state)
{
    (void)state;
    struct ij_tokrev *r = cache_only();
    unsigned char k[32];
    const int64_t now = 1000;
    /* hits, misses, expiry */
    key_in_bucket0(k, 1);
    ij_tokrev_cache_store(r, k, now, now + 500, IJ_TOKREV_POD_GONE, "gone");
    struct ij_tokrev_slot *s = ij_tokrev_cache_lookup(r, k, now + 499);
    assert_non_null(s);
    assert_int_equal(s->result, IJ_TOKREV_POD_GONE);
    assert_string_equal(s->msg, "gone");
    assert_null(ij_tokrev_cache_lookup(r, k, now + 500));
    /* the same token's answer is replaced in place */
    ij_tokrev_cache_store(r, k, now, now + 900, IJ_TOKREV_OK, NULL);
    assert_int_equal(ij_tokrev_cache_lookup(r, k, now + 800)->result, IJ_TOKREV_OK);
    /* a full bucket: the entry closest to expiry goes, never more than the bucket */
    for (unsigned n = 2; n <= IJ_TOKREV_BUCKET; n++) {
        key_in_bucket0(k, n);
        ij_tokrev_cache_store(r, k, now, now + 1000 + n, IJ_TOKREV_OK, NULL);
    }
    for (unsigned n = 1; n <= IJ_TOKREV_BUCKET; n++) {
        key_in_bucket0(k, n);
        assert_non_null(ij_tokrev_cache_lookup(r, k, now));
    }
    key_in_bucket0(k, 100);
    ij_tokrev_cache_store(r, k, now, now + 5000, IJ_TOKREV_REJECTED, "no");
    assert_non_null(ij_tokrev_cache_lookup(r, k, now));
    key_in_bucket0(k, 1); /* expired soonest (now + 900): evicted */
    assert_null(ij_tokrev_cache_lookup(r, k, now));
    for (unsigned n = 2; n <= IJ_TOKREV_BUCKET; n++) {
        key_in_bucket0(k, n);
        assert_non_null(ij_tokrev_cache_lookup(r, k, now));
    }
    /* nothing outside bucket 0 was touched */
    for (size_t i = IJ_TOKREV_BUCKET; i < IJ_TOKREV_CACHE_SLOTS; i++)
        assert_int_equal(r->slots[i].expires_ms, 0);
    /* an expired entry's slot is reused before anything is evicted */
    key_in_bucket0(k, 101);
    ij_tokrev_cache_store(r, k, now + 2000, now + 9000, IJ_TOKREV_OK,
                          NULL); /* all but 100 expired by now+2000 */
    key_in_bucket0(k, 100);
    assert_non_null(ij_tokrev_cache_lookup(r, k, now + 2000));
    /* a long message is cut, NUL-terminated */
    char big[600];
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    key_in_bucket0(k, 102);
    ij_tokrev_cache_store(r, k, now, now + 100, IJ_TOKREV_REJECTED, big);
    assert_int_equal(strlen(ij_tokrev_cache_lookup(r, k, now)->msg), IJ_TOKREV_MSG_MAX - 1);
    ij_tokrev_free(r);
}

static void metrics_text(void **state)
{
    (void)state;
    char *m = ij_tokrev_metrics(NULL);
    assert_string_equal(m, "");
    free(m);
    struct ij_tokrev *r = cache_only();
    r->count[IJ_TOKREV_CNT_HIT] = 3;
    r->count[IJ_TOKREV_CNT_ERROR] = 2;
    m = ij_tokrev_metrics(r);
    assert_non_null(strstr(m, "remora_injector_ca_token_review_cache_total{result=\"hit\"} 3\n"));
    assert_non_null(strstr(m, "remora_injector_ca_token_reviews_total{result=\"error\"} 2\n"));
    assert_non_null(strstr(m, "remora_injector_ca_token_reviews_total{result=\"pod_gone\"} 0\n"));
    free(m);
    ij_tokrev_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(judge_review),
        cmocka_unit_test(pod_uid),
        cmocka_unit_test(cache_bounded),
        cmocka_unit_test(metrics_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
