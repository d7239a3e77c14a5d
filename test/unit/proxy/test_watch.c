/* Unit tests of proxy/watch.h: the watch's timer on a real event loop
 * ($REMORA_WATCH_MS set to 20 ms), the callback on a change, a file gone
 * (last_error and gone=true, once), its return, and a watch without a loop
 * looked at by hand (identity's ca_root). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/watch.h"
#include "proxy/watch.h"

static char dir[64], path[128];

struct seen {
    int calls;
    bool gone;
};

static void on_change(void *arg, bool gone)
{
    struct seen *s = arg;
    s->calls++;
    s->gone = gone;
}

static void write_file(const char *text)
{
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0); /* a new inode, as a ConfigMap swap */
}

/* Run the loop until S has seen WANT calls, at most about 5 s. */
static void run_until(struct event_base *base, struct seen *s, int want)
{
    for (int i = 0; i < 500 && s->calls < want; i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(s->calls, want);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/remora-pxwatch-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/routes.json", dir);
    write_file("{}\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return rmdir(dir);
}

static void timer_reports_changes_and_a_file_gone(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    struct seen s = {0, false};
    struct px_watch w;
    const char *paths[] = {path};
    px_watch_start(&w, "routes", base, paths, 1, on_change, &s);
    assert_non_null(w.timer);

    write_file("{\"routes\": []}\n");
    run_until(base, &s, 1);
    assert_false(s.gone);
    assert_null(cm_watch_last_error(&w.files)); /* the owner sets it on a failed load */

    assert_int_equal(unlink(path), 0);
    run_until(base, &s, 2);
    assert_true(s.gone);
    char want[256];
    snprintf(want, sizeof(want), "%s: No such file or directory (keeping the last good routes)",
             path);
    assert_string_equal(cm_watch_last_error(&w.files), want);
    /* still gone at the next ticks: not reported again */
    struct timeval tv = {0, 100000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    assert_int_equal(s.calls, 2);

    write_file("{}\n");
    run_until(base, &s, 3);
    assert_false(s.gone);
    px_watch_stop(&w); /* frees the timer and last_error (ASan) */
    event_base_free(base);
}

static void without_a_loop_it_is_checked_by_hand(void **state)
{
    (void)state;
    struct seen s = {0, false};
    struct px_watch w;
    const char *paths[] = {path};
    px_watch_start(&w, "identity", NULL, paths, 1, on_change, &s);
    assert_null(w.timer);
    assert_false(px_watch_check(&w));
    write_file("changed\n");
    assert_true(px_watch_check(&w));
    assert_int_equal(s.calls, 1);
    assert_false(px_watch_check(&w)); /* each version once */
    px_watch_stop(&w);
}

int main(void)
{
    setenv(CM_WATCH_ENV, "20", 1);
    assert_int_equal(cm_watch_interval_ms(), 20);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(timer_reports_changes_and_a_file_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(without_a_loop_it_is_checked_by_hand, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
