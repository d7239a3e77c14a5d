/* Unit tests of common/json.c: loading (syntax errors, top-level type,
 * duplicate keys), paths in messages ("x.json: listeners[1].direction: ..."),
 * unknown keys, and every getter's type, range and presence rules. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/json.h"

static json_t *load(const char *text)
{
    json_t *root = NULL;
    char *err = NULL;
    if (cm_json_load_buf("x.json", text, strlen(text), true, &root, &err) != 0)
        fail_msg("load failed: %s", err ? err : "?");
    assert_null(err);
    return root;
}

/* Asserts rc is CM_ERR_INVAL and *err equals want exactly; frees it. */
static void expect_err(int rc, char **err, const char *want)
{
    assert_int_equal(rc, CM_ERR_INVAL);
    assert_non_null(*err);
    assert_string_equal(*err, want);
    free(*err);
    *err = NULL;
}

static void load_buf_errors(void **state)
{
    (void)state;
    json_t *root = NULL;
    char *err = NULL;

    const char *syntax = "{\"a\": 1,\n \"b\": }";
    assert_int_equal(cm_json_load_buf("x.json", syntax, strlen(syntax), true, &root, &err),
                     CM_ERR_INVAL);
    assert_null(root);
    assert_non_null(err);
    assert_true(strncmp(err, "x.json: line 2 column ", 22) == 0);
    free(err);
    err = NULL;

    expect_err(cm_json_load_buf("x.json", "[1, 2]", 6, true, &root, &err), &err,
               "x.json: expected a JSON object at the top level");
    assert_null(root);
    /* arrays are fine when no object is wanted */
    assert_int_equal(cm_json_load_buf("x.json", "[1, 2]", 6, false, &root, &err), 0);
    assert_true(json_is_array(root));
    json_decref(root);
    root = NULL;

    const char *dup = "{\"a\": 1, \"a\": 2}";
    assert_int_equal(cm_json_load_buf("x.json", dup, strlen(dup), true, &root, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "duplicate"));
    assert_true(strncmp(err, "x.json: ", 8) == 0);
    free(err);
    err = NULL;

    assert_int_equal(cm_json_load_buf("x.json", "", 0, true, &root, &err), CM_ERR_INVAL);
    assert_true(strncmp(err, "x.json: ", 8) == 0);
    free(err);
    err = NULL;

    /* only len bytes are read: the rest of the buffer is not JSON */
    const char *tail = "{\"a\": 1}garbage";
    assert_int_equal(cm_json_load_buf("x.json", tail, 8, true, &root, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(root, "a")), 1);
    json_decref(root);
    root = NULL;
    assert_int_equal(cm_json_load_buf("x.json", tail, strlen(tail), true, &root, &err),
                     CM_ERR_INVAL);
    free(err);
    err = NULL;

    /* errmsg may be NULL: the code alone is returned */
    assert_int_equal(cm_json_load_buf("x.json", "[", 1, true, &root, NULL), CM_ERR_INVAL);
}

static void load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/remora-test-json-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "{\"listeners\": [{\"name\": \"a\"}]}";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);

    json_t *root = NULL;
    char *err = NULL;
    assert_int_equal(cm_json_load_file(path, true, &root, &err), 0);
    assert_null(err);
    assert_true(json_is_array(json_object_get(root, "listeners")));
    json_decref(root);
    unlink(path);

    /* a missing file is named in the message */
    assert_int_equal(cm_json_load_file(path, true, &root, &err), CM_ERR_INVAL);
    assert_non_null(err);
    assert_true(strncmp(err, path, strlen(path)) == 0);
    free(err);
}

static void paths(void **state)
{
    (void)state;
    struct cm_jpath root, l, li, d;
    cm_jpath_root(&root, "x.json");
    assert_string_equal(root.path, "");
    cm_jpath_key(&l, &root, "listeners");
    assert_string_equal(l.path, "listeners");
    cm_jpath_index(&li, &l, 1);
    assert_string_equal(li.path, "listeners[1]");
    cm_jpath_key(&d, &li, "direction");
    assert_string_equal(d.path, "listeners[1].direction");
    assert_string_equal(d.file, "x.json");

    char *err = NULL;
    expect_err(cm_json_fail(&d, &err, "expected %s", "\"inbound\" or \"outbound\""), &err,
               "x.json: listeners[1].direction: expected \"inbound\" or \"outbound\"");
    /* at the root there is no path part */
    expect_err(cm_json_fail(&root, &err, "bad"), &err, "x.json: bad");
    /* a second failure replaces (and frees) the first message */
    cm_json_fail(&root, &err, "first");
    expect_err(cm_json_fail(&d, &err, "second"), &err, "x.json: listeners[1].direction: second");
    assert_int_equal(cm_json_fail(&d, NULL, "no message wanted"), CM_ERR_INVAL);
}

static void long_paths_are_cut(void **state)
{
    (void)state;
    struct cm_jpath p, c;
    cm_jpath_root(&p, "x.json");
    char key[600];
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    /* deep nesting and long keys: the path is cut, never overrun */
    for (int i = 0; i < 50; i++) {
        cm_jpath_key(&c, &p, i % 2 ? key : "abc");
        assert_true(strlen(c.path) < sizeof(c.path));
        cm_jpath_index(&p, &c, (size_t)i * 1000000007u);
        assert_true(strlen(p.path) < sizeof(p.path));
    }
    assert_int_equal(strlen(p.path), sizeof(p.path) - 1);
    char *err = NULL;
    char long_msg[1200];
    memset(long_msg, 'm', sizeof(long_msg) - 1);
    long_msg[sizeof(long_msg) - 1] = '\0';
    assert_int_equal(cm_json_fail(&p, &err, "%s", long_msg), CM_ERR_INVAL);
    assert_true(strncmp(err, "x.json: abc", 11) == 0);
    free(err);
}

static void check_keys(void **state)
{
    (void)state;
    json_t *root = load("{\"admin\": {\"address\": \"x\", \"adress\": \"y\"}, \"ok\": 1}");
    static const char *const akeys[] = {"address", NULL};
    static const char *const rkeys[] = {"admin", "ok", NULL};
    static const char *const none[] = {NULL};
    struct cm_jpath p, a;
    char *err = NULL;
    cm_jpath_root(&p, "x.json");
    assert_int_equal(cm_json_check_keys(&p, root, rkeys, &err), 0);
    assert_null(err);
    cm_jpath_key(&a, &p, "admin");
    expect_err(cm_json_check_keys(&a, json_object_get(root, "admin"), akeys, &err), &err,
               "x.json: admin.adress: unknown key");
    expect_err(cm_json_check_keys(&p, root, none, &err), &err, "x.json: admin: unknown key");
    /* an empty object has no unknown key */
    json_t *empty = json_object();
    assert_int_equal(cm_json_check_keys(&p, empty, none, &err), 0);
    json_decref(empty);
    /* keys are compared exactly: case matters */
    json_t *upper = load("{\"Admin\": {}}");
    assert_int_equal(cm_json_check_keys(&p, upper, rkeys, &err), CM_ERR_INVAL);
    free(err);
    json_decref(upper);
    json_decref(root);
}

static void get_string_and_bool(void **state)
{
    (void)state;
    json_t *o = load("{\"s\": \"v\", \"n\": 1, \"t\": true, \"f\": false, \"z\": null}");
    struct cm_jpath p;
    char *err = NULL;
    cm_jpath_root(&p, "x.json");

    const char *s = "preset";
    assert_int_equal(cm_json_get_string(&p, o, "s", true, &s, &err), 0);
    assert_string_equal(s, "v");
    s = "preset";
    assert_int_equal(cm_json_get_string(&p, o, "missing", false, &s, &err), 0);
    assert_string_equal(s, "preset"); /* left untouched */
    assert_null(err);
    expect_err(cm_json_get_string(&p, o, "missing", true, &s, &err), &err,
               "x.json: missing: required key is missing");
    expect_err(cm_json_get_string(&p, o, "n", true, &s, &err), &err,
               "x.json: n: expected a string");
    expect_err(cm_json_get_string(&p, o, "z", false, &s, &err), &err,
               "x.json: z: expected a string");

    bool b = false;
    assert_int_equal(cm_json_get_bool(&p, o, "t", true, &b, &err), 0);
    assert_true(b);
    assert_int_equal(cm_json_get_bool(&p, o, "f", true, &b, &err), 0);
    assert_false(b);
    b = true;
    assert_int_equal(cm_json_get_bool(&p, o, "missing", false, &b, &err), 0);
    assert_true(b);
    expect_err(cm_json_get_bool(&p, o, "s", false, &b, &err), &err,
               "x.json: s: expected true or false");
    expect_err(cm_json_get_bool(&p, o, "n", false, &b, &err), &err,
               "x.json: n: expected true or false");
    expect_err(cm_json_get_bool(&p, o, "missing", true, &b, &err), &err,
               "x.json: missing: required key is missing");
    json_decref(o);
}

static void get_int_range(void **state)
{
    (void)state;
    json_t *o = load("{\"lo\": 1, \"hi\": 10, \"under\": 0, \"over\": 11, \"neg\": -5,"
                     " \"real\": 2.5, \"str\": \"3\", \"big\": 9223372036854775807}");
    struct cm_jpath p, l;
    char *err = NULL;
    cm_jpath_root(&p, "x.json");
    cm_jpath_key(&l, &p, "limits");
    int64_t v = 42;

    assert_int_equal(cm_json_get_int(&l, o, "lo", true, 1, 10, &v, &err), 0);
    assert_int_equal(v, 1);
    assert_int_equal(cm_json_get_int(&l, o, "hi", true, 1, 10, &v, &err), 0);
    assert_int_equal(v, 10);
    v = 42;
    expect_err(cm_json_get_int(&l, o, "under", true, 1, 10, &v, &err), &err,
               "x.json: limits.under: 0 is out of range [1, 10]");
    expect_err(cm_json_get_int(&l, o, "over", true, 1, 10, &v, &err), &err,
               "x.json: limits.over: 11 is out of range [1, 10]");
    expect_err(cm_json_get_int(&l, o, "neg", true, 0, 10, &v, &err), &err,
               "x.json: limits.neg: -5 is out of range [0, 10]");
    assert_int_equal(v, 42); /* failures leave the value alone */
    expect_err(cm_json_get_int(&l, o, "real", true, 0, 10, &v, &err), &err,
               "x.json: limits.real: expected an integer");
    expect_err(cm_json_get_int(&l, o, "str", true, 0, 10, &v, &err), &err,
               "x.json: limits.str: expected an integer");
    expect_err(cm_json_get_int(&l, o, "missing", true, 0, 10, &v, &err), &err,
               "x.json: limits.missing: required key is missing");
    assert_int_equal(cm_json_get_int(&l, o, "missing", false, 0, 10, &v, &err), 0);
    assert_int_equal(v, 42);
    assert_int_equal(cm_json_get_int(&l, o, "big", true, 0, INT64_MAX, &v, &err), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(cm_json_get_int(&l, o, "neg", true, INT64_MIN, 0, &v, &err), 0);
    assert_int_equal(v, -5);
    json_decref(o);
}

static void get_child(void **state)
{
    (void)state;
    json_t *o = load("{\"obj\": {}, \"arr\": [], \"s\": \"x\"}");
    struct cm_jpath p;
    char *err = NULL;
    json_t *c = NULL;
    cm_jpath_root(&p, "x.json");
    assert_int_equal(cm_json_get_child(&p, o, "obj", true, JSON_OBJECT, &c, &err), 0);
    assert_true(json_is_object(c));
    assert_int_equal(cm_json_get_child(&p, o, "arr", true, JSON_ARRAY, &c, &err), 0);
    assert_true(json_is_array(c));
    expect_err(cm_json_get_child(&p, o, "arr", true, JSON_OBJECT, &c, &err), &err,
               "x.json: arr: expected an object");
    expect_err(cm_json_get_child(&p, o, "obj", true, JSON_ARRAY, &c, &err), &err,
               "x.json: obj: expected an array");
    expect_err(cm_json_get_child(&p, o, "s", false, JSON_ARRAY, &c, &err), &err,
               "x.json: s: expected an array");
    c = NULL;
    assert_int_equal(cm_json_get_child(&p, o, "missing", false, JSON_OBJECT, &c, &err), 0);
    assert_null(c);
    expect_err(cm_json_get_child(&p, o, "missing", true, JSON_OBJECT, &c, &err), &err,
               "x.json: missing: required key is missing");
    json_decref(o);
}

static void get_enum(void **state)
{
    (void)state;
    json_t *o = load("{\"listeners\": [{}, {\"direction\": \"sideways\", \"ok\": \"outbound\","
                     " \"num\": 1}]}");
    static const char *const dirs[] = {"inbound", "outbound", NULL};
    struct cm_jpath p, l, li;
    char *err = NULL;
    cm_jpath_root(&p, "x.json");
    cm_jpath_key(&l, &p, "listeners");
    cm_jpath_index(&li, &l, 1);
    json_t *obj = json_array_get(json_object_get(o, "listeners"), 1);
    int v = -1;
    assert_int_equal(cm_json_get_enum(&li, obj, "ok", true, dirs, &v, &err), 0);
    assert_int_equal(v, 1);
    v = -1;
    expect_err(cm_json_get_enum(&li, obj, "direction", true, dirs, &v, &err), &err,
               "x.json: listeners[1].direction: \"sideways\" is not one of \"inbound\", "
               "\"outbound\"");
    assert_int_equal(v, -1);
    expect_err(cm_json_get_enum(&li, obj, "num", true, dirs, &v, &err), &err,
               "x.json: listeners[1].num: expected a string");
    expect_err(cm_json_get_enum(&li, obj, "missing", true, dirs, &v, &err), &err,
               "x.json: listeners[1].missing: required key is missing");
    assert_int_equal(cm_json_get_enum(&li, obj, "missing", false, dirs, &v, &err), 0);
    assert_int_equal(v, -1);

    /* a choice list longer than the message buffer is cut, not overrun */
    static char names[40][48];
    const char *many[41];
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "choice-number-%02d-with-a-long-name", i);
        many[i] = names[i];
    }
    many[40] = NULL;
    assert_int_equal(cm_json_get_enum(&li, obj, "direction", true, many, &v, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "\"sideways\" is not one of \"choice-number-00"));
    free(err);
    json_decref(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(load_buf_errors), cmocka_unit_test(load_file),
        cmocka_unit_test(paths),           cmocka_unit_test(long_paths_are_cut),
        cmocka_unit_test(check_keys),      cmocka_unit_test(get_string_and_bool),
        cmocka_unit_test(get_int_range),   cmocka_unit_test(get_child),
        cmocka_unit_test(get_enum),
    };
    return cmocka_run_group_tests_name("common/json", tests, NULL, NULL);
}
