/* Unit tests of injector/jsonpatch.c: RFC 6901 escaping of every reference
 * token, path building, op building, and the small applier the tests and
 * the fuzzer use (including the RFC 6902 appendix cases it supports and
 * refusals of bad pointers). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "injector/jsonpatch.h"

static void test_escape(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", ""},
        {"plain", "plain"},
        {"remora.io/status", "remora.io~1status"},
        {"a~b", "a~0b"},
        {"~1", "~01"}, /* escape '~' first, or "~1" would read back as "/" */
        {"/~/", "~1~0~1"},
        {"~~//", "~0~0~1~1"},
        {"kubectl.kubernetes.io/default-container", "kubectl.kubernetes.io~1default-container"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *e = ij_jsonpatch_escape(cases[i].in);
        assert_string_equal(e, cases[i].out);
        free(e);
    }
}

static void test_path(void **state)
{
    (void)state;
    char *p = ij_jsonpatch_path("metadata", "annotations", "remora.io/status", NULL);
    assert_string_equal(p, "/metadata/annotations/remora.io~1status");
    free(p);
    p = ij_jsonpatch_path("spec", "containers", "0", "livenessProbe", "httpGet", NULL);
    assert_string_equal(p, "/spec/containers/0/livenessProbe/httpGet");
    free(p);
    p = ij_jsonpatch_path("", NULL);
    assert_string_equal(p, "/"); /* the empty key, not the whole document */
    free(p);
}

static void test_ops(void **state)
{
    (void)state;
    json_t *patch = json_array();
    ij_jsonpatch_add(patch, json_string("v"), "metadata", "annotations", "a/b~c", NULL);
    ij_jsonpatch_op(patch, "remove", "/x", NULL);
    char *s = json_dumps(patch, JSON_COMPACT);
    assert_string_equal(s, "[{\"op\":\"add\",\"path\":\"/metadata/annotations/a~1b~0c\","
                           "\"value\":\"v\"},{\"op\":\"remove\",\"path\":\"/x\"}]");
    free(s);
    json_decref(patch);
}

/* Apply `patch` (JSON text) to `doc`; compare with `want` or expect failure. */
static void apply_case(const char *doc, const char *patch, const char *want)
{
    json_t *d = json_loads(doc, 0, NULL), *p = json_loads(patch, 0, NULL);
    assert_non_null(d);
    assert_non_null(p);
    int rc = ij_jsonpatch_apply(d, p);
    if (want == NULL) {
        assert_int_not_equal(rc, 0);
    } else {
        assert_int_equal(rc, 0);
        json_t *w = json_loads(want, 0, NULL);
        assert_non_null(w);
        if (!json_equal(d, w)) {
            char *got = json_dumps(d, JSON_COMPACT);
            fail_msg("got %s want %s", got, want);
        }
        json_decref(w);
    }
    json_decref(d);
    json_decref(p);
}

static void test_apply(void **state)
{
    (void)state;
    /* RFC 6902 A.1, A.2, A.4, A.5, A.16 and friends. */
    apply_case("{\"foo\":\"bar\"}", "[{\"op\":\"add\",\"path\":\"/baz\",\"value\":\"qux\"}]",
               "{\"foo\":\"bar\",\"baz\":\"qux\"}");
    apply_case("{\"foo\":[\"bar\",\"baz\"]}",
               "[{\"op\":\"add\",\"path\":\"/foo/1\",\"value\":\"q\"}]",
               "{\"foo\":[\"bar\",\"q\",\"baz\"]}");
    apply_case("{\"foo\":[\"bar\"]}", "[{\"op\":\"add\",\"path\":\"/foo/-\",\"value\":[\"x\"]}]",
               "{\"foo\":[\"bar\",[\"x\"]]}");
    apply_case("{\"foo\":\"bar\",\"baz\":\"qux\"}", "[{\"op\":\"remove\",\"path\":\"/baz\"}]",
               "{\"foo\":\"bar\"}");
    apply_case("{\"foo\":\"bar\"}", "[{\"op\":\"replace\",\"path\":\"/foo\",\"value\":1}]",
               "{\"foo\":1}");
    apply_case("{\"/\":{\"~\":1}}", "[{\"op\":\"replace\",\"path\":\"/~1/~0\",\"value\":2}]",
               "{\"/\":{\"~\":2}}");
    apply_case("{\"a\":[]}", "[{\"op\":\"add\",\"path\":\"/a/0\",\"value\":1}]", "{\"a\":[1]}");
    apply_case("{\"a\":1}", "[{\"op\":\"test\",\"path\":\"/a\",\"value\":1}]", "{\"a\":1}");
    /* Refusals: missing parents, bad indices and escapes, out-of-range inserts. */
    apply_case("{}", "[{\"op\":\"add\",\"path\":\"/a/b\",\"value\":1}]", NULL);
    apply_case("{\"a\":[]}", "[{\"op\":\"add\",\"path\":\"/a/1\",\"value\":1}]", NULL);
    apply_case("{\"a\":[1]}", "[{\"op\":\"add\",\"path\":\"/a/01\",\"value\":1}]", NULL);
    apply_case("{\"a\":[1]}", "[{\"op\":\"add\",\"path\":\"/a/-1\",\"value\":1}]", NULL);
    apply_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"/~2\",\"value\":1}]", NULL);
    apply_case("{\"a\":1}", "[{\"op\":\"replace\",\"path\":\"/b\",\"value\":1}]", NULL);
    apply_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"a\",\"value\":1}]", NULL);
    apply_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"\",\"value\":1}]", NULL);
    apply_case("{\"a\":1}", "[{\"op\":\"move\",\"from\":\"/a\",\"path\":\"/b\"}]", NULL);
    apply_case("{\"a\":1}", "[{\"op\":\"test\",\"path\":\"/a\",\"value\":2}]", NULL);
    apply_case("{\"a\":1}", "{\"op\":\"add\"}", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_ops),
        cmocka_unit_test(test_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
