/* Unit tests of common/xalloc.c and common/err.c: the allocation wrappers
 * (zero sizes, copies, formatting, and abort on out-of-memory, checked in a
 * child process) and the error codes' texts and fatal range. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/xalloc.h"

static void zero_sizes(void **state)
{
    (void)state;
    void *p = cm_xmalloc(0);
    assert_non_null(p);
    free(p);
    p = cm_xcalloc(0, 0);
    assert_non_null(p);
    free(p);
    p = cm_xcalloc(0, 8);
    assert_non_null(p);
    free(p);
    p = cm_xrealloc(NULL, 0);
    assert_non_null(p);
    p = cm_xrealloc(p, 0); /* shrinking to nothing still gives a block */
    assert_non_null(p);
    free(p);
}

static void calloc_zeroes_realloc_keeps(void **state)
{
    (void)state;
    unsigned char *p = cm_xcalloc(1000, 3);
    for (size_t i = 0; i < 3000; i++)
        assert_int_equal(p[i], 0);
    memset(p, 0xab, 3000);
    p = cm_xrealloc(p, 1 << 20);
    for (size_t i = 0; i < 3000; i++)
        assert_int_equal(p[i], 0xab);
    memset(p, 0xcd, 1 << 20); /* all of it is ours (ASan checks) */
    p = cm_xrealloc(p, 10);
    assert_int_equal(p[9], 0xcd);
    free(p);
}

static void strings(void **state)
{
    (void)state;
    char *s = cm_xstrdup("remora");
    assert_string_equal(s, "remora");
    free(s);
    s = cm_xstrdup("");
    assert_string_equal(s, "");
    free(s);
    s = cm_xstrndup("remora-proxy", 6);
    assert_string_equal(s, "remora");
    free(s);
    s = cm_xstrndup("a\0b", 3); /* copies n bytes, NULs included */
    assert_memory_equal(s, "a\0b\0", 4);
    free(s);
    s = cm_xstrndup("xyz", 0);
    assert_string_equal(s, "");
    free(s);
}

static void asprintf_any_length(void **state)
{
    (void)state;
    char *s = cm_xasprintf("%s: %s: %d", "x.json", "listeners[1]", 42);
    assert_string_equal(s, "x.json: listeners[1]: 42");
    free(s);
    s = cm_xasprintf("%s", "");
    assert_string_equal(s, "");
    free(s);
    static char big[100001];
    memset(big, 'q', sizeof(big) - 1);
    s = cm_xasprintf("<%s>", big);
    assert_int_equal(strlen(s), sizeof(big) + 1);
    assert_int_equal(s[0], '<');
    assert_int_equal(s[sizeof(big)], '>');
    free(s);
}

/* Runs fn in a child; true when the child died instead of returning. */
static bool dies(void (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the report (ours or the sanitizer's) is expected: keep logs clean */
        if (freopen("/dev/null", "w", stderr) == NULL)
            _exit(3);
        fn();
        _exit(0); /* returned: the allocation "succeeded" */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
}

static void *volatile sink;
static void huge_malloc(void)
{
    sink = cm_xmalloc(SIZE_MAX - 16);
}
static void huge_calloc(void)
{
    sink = cm_xcalloc(SIZE_MAX / 2, 4); /* n * size overflows */
}
static void huge_realloc(void)
{
    sink = cm_xrealloc(NULL, SIZE_MAX - 16);
}

static void out_of_memory_aborts(void **state)
{
    (void)state;
    assert_true(dies(huge_malloc));
    assert_true(dies(huge_calloc));
    assert_true(dies(huge_realloc));
}

static void error_texts(void **state)
{
    (void)state;
    static const struct {
        int err;
        const char *text;
    } cases[] = {
        {CM_OK, "ok"},
        {CM_ERR_INVAL, "invalid input"},
        {CM_ERR_IO, "i/o error"},
        {CM_ERR_PROTO, "protocol error"},
        {CM_ERR_LIMIT, "limit exceeded"},
        {CM_ERR_TIMEOUT, "timed out"},
        {CM_ERR_NOTFOUND, "not found"},
        {CM_ERR_AGAIN, "try again"},
        {CM_ERR_NOMEM, "out of memory"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_string_equal(cm_err_str(cases[i].err), cases[i].text);
    assert_string_equal(cm_err_str(-99), "unknown error");
    assert_string_equal(cm_err_str(1), "unknown error");
    assert_string_equal(cm_err_str(CM_ERR_FATAL), "unknown error");
    for (int e = -200; e <= 10; e++)
        assert_non_null(cm_err_str(e));
}

static void fatal_range(void **state)
{
    (void)state;
    assert_false(cm_err_is_fatal(CM_OK));
    assert_false(cm_err_is_fatal(CM_ERR_INVAL));
    assert_false(cm_err_is_fatal(CM_ERR_AGAIN));
    assert_false(cm_err_is_fatal(CM_ERR_FATAL + 1));
    assert_true(cm_err_is_fatal(CM_ERR_FATAL));
    assert_true(cm_err_is_fatal(CM_ERR_NOMEM));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(zero_sizes),
        cmocka_unit_test(calloc_zeroes_realloc_keeps),
        cmocka_unit_test(strings),
        cmocka_unit_test(asprintf_any_length),
        cmocka_unit_test(out_of_memory_aborts),
        cmocka_unit_test(error_texts),
        cmocka_unit_test(fatal_range),
    };
    return cmocka_run_group_tests_name("common/xalloc+err", tests, NULL, NULL);
}
