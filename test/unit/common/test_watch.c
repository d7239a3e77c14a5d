/* Unit tests of common/watch.h: what counts as a change (a ConfigMap-style
 * "..data" symlink swap, an in-place edit of the same size within the same
 * mtime second, delete and recreate, a chmod to unreadable, failed stat()s
 * and a change of their errno), cm_watch's memory of the last stamp (a bad
 * version is reported once), the last error, and the interval knob. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/watch.h"

static char dir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/remora-watch-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/file", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Set PATH's mtime (and so, as a side effect, its ctime) to SEC.NSEC. */
static void set_mtime(const char *p, time_t sec, long nsec)
{
    struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
}

static bool changed_since(struct cm_watch_stamp *was, const char *p)
{
    struct cm_watch_stamp now;
    cm_watch_stamp_get(p, &now);
    bool c = cm_watch_changed(was, &now);
    *was = now;
    return c;
}

static void unchanged_file_is_no_change(void **state)
{
    (void)state;
    write_file(path, "one\n");
    struct cm_watch_stamp s;
    cm_watch_stamp_get(path, &s);
    assert_true(s.ok);
    assert_int_equal(s.size, 4);
    assert_false(changed_since(&s, path));
    assert_false(changed_since(&s, path));
}

/* Kubernetes: file -> ..data/file, ..data -> ..2026_1 swapped by rename(2). */
static void configmap_data_symlink_swap(void **state)
{
    (void)state;
    char v1[160], v2[160], data[160], tmp[160], link_path[160], target[64];
    snprintf(v1, sizeof(v1), "%s/..v1", dir);
    snprintf(v2, sizeof(v2), "%s/..v2", dir);
    snprintf(data, sizeof(data), "%s/..data", dir);
    snprintf(tmp, sizeof(tmp), "%s/..data_tmp", dir);
    snprintf(link_path, sizeof(link_path), "%s/policy.json", dir);
    assert_int_equal(mkdir(v1, 0755), 0);
    assert_int_equal(mkdir(v2, 0755), 0);
    char f1[200], f2[200];
    snprintf(f1, sizeof(f1), "%s/policy.json", v1);
    snprintf(f2, sizeof(f2), "%s/policy.json", v2);
    write_file(f1, "{\"v\": 1}\n");
    write_file(f2, "{\"v\": 2}\n"); /* same size */
    set_mtime(f1, 1700000000, 0);
    set_mtime(f2, 1700000000, 0); /* same mtime too: only the inode tells */
    assert_int_equal(symlink("..v1", data), 0);
    assert_int_equal(symlink("..data/policy.json", link_path), 0);

    struct cm_watch w;
    const char *paths[] = {link_path};
    cm_watch_init(&w, paths, 1);
    assert_true(w.stamps[0].ok);
    assert_false(cm_watch_poll(&w));

    snprintf(target, sizeof(target), "..v2");
    assert_int_equal(symlink(target, tmp), 0);
    assert_int_equal(rename(tmp, data), 0); /* the atomic swap */
    assert_true(cm_watch_poll(&w));
    assert_false(cm_watch_poll(&w)); /* seen once */
    cm_watch_deinit(&w);
}

static void in_place_edit_same_size_same_second(void **state)
{
    (void)state;
    write_file(path, "aaaa\n");
    set_mtime(path, 1700000000, 100);
    struct cm_watch_stamp s;
    cm_watch_stamp_get(path, &s);
    /* rewrite in place (same inode, same size), then put the mtime back in
     * the same second with other nanoseconds */
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "bbbb\n", 5, 0), 5);
    assert_int_equal(close(fd), 0);
    set_mtime(path, 1700000000, 200);
    struct cm_watch_stamp now;
    cm_watch_stamp_get(path, &now);
    assert_int_equal(now.ino, s.ino);
    assert_int_equal(now.size, s.size);
    assert_int_equal(now.mtime.tv_sec, s.mtime.tv_sec);
    assert_true(cm_watch_changed(&s, &now));

    /* mtime restored exactly (touch -r): ctime still moved */
    s = now;
    set_mtime(path, 1700000000, 200);
    cm_watch_stamp_get(path, &now);
    assert_int_equal(now.mtime.tv_nsec, s.mtime.tv_nsec);
    if (now.ctime.tv_sec != s.ctime.tv_sec || now.ctime.tv_nsec != s.ctime.tv_nsec)
        assert_true(cm_watch_changed(&s, &now));
    else /* a coarse clock may give the same ctime: then nothing differs */
        assert_false(cm_watch_changed(&s, &now));
}

static void delete_and_recreate(void **state)
{
    (void)state;
    write_file(path, "x\n");
    struct cm_watch w;
    const char *paths[] = {path};
    cm_watch_init(&w, paths, 1);
    assert_int_equal(cm_watch_failed(&w), -1);

    assert_int_equal(unlink(path), 0);
    assert_true(cm_watch_poll(&w)); /* gone is a change to report */
    assert_int_equal(cm_watch_failed(&w), 0);
    assert_int_equal(w.stamps[0].err, ENOENT);
    assert_false(cm_watch_poll(&w)); /* ... once */

    write_file(path, "x\n");
    assert_true(cm_watch_poll(&w)); /* back again */
    assert_int_equal(cm_watch_failed(&w), -1);
    assert_false(cm_watch_poll(&w));
    cm_watch_deinit(&w);
}

static void unreadable_file(void **state)
{
    (void)state;
    write_file(path, "secret\n");
    struct cm_watch_stamp s;
    cm_watch_stamp_get(path, &s);
    assert_int_equal(chmod(path, 0), 0);
    /* stat() still works (the directory is searchable): the stamp is good,
     * and the mode change moved ctime, so the owner re-reads and reports the
     * read error itself */
    struct cm_watch_stamp now;
    cm_watch_stamp_get(path, &now);
    assert_true(now.ok);
    assert_int_equal(now.ino, s.ino);
    if (now.ctime.tv_sec != s.ctime.tv_sec || now.ctime.tv_nsec != s.ctime.tv_nsec)
        assert_true(cm_watch_changed(&s, &now));
    assert_false(changed_since(&now, path));
}

static void stat_failures(void **state)
{
    (void)state;
    char loop[160], through[160];
    snprintf(loop, sizeof(loop), "%s/loop", dir);
    snprintf(through, sizeof(through), "%s/file/below", dir);
    assert_int_equal(symlink("loop", loop), 0);
    write_file(path, "f\n");

    struct cm_watch_stamp s;
    cm_watch_stamp_get(loop, &s);
    assert_false(s.ok);
    assert_int_equal(s.err, ELOOP);
    assert_false(changed_since(&s, loop)); /* the same failure is no change */

    cm_watch_stamp_get(through, &s);
    assert_false(s.ok);
    assert_int_equal(s.err, ENOTDIR);

    /* a different failure is a change: the owner reports the new reason */
    struct cm_watch_stamp other;
    cm_watch_stamp_get(loop, &other);
    assert_true(cm_watch_changed(&s, &other));

    /* a failed stat() and a good one always differ, both ways */
    struct cm_watch_stamp good;
    cm_watch_stamp_get(path, &good);
    assert_true(cm_watch_changed(&good, &s));
    assert_true(cm_watch_changed(&s, &good));

    cm_watch_stamp_get(NULL, &s);
    assert_false(s.ok);
    assert_int_equal(s.err, ENOENT);
}

static void several_files_and_null_paths(void **state)
{
    (void)state;
    char a[160], b[160];
    snprintf(a, sizeof(a), "%s/a", dir);
    snprintf(b, sizeof(b), "%s/b", dir);
    write_file(a, "a\n");
    write_file(b, "b\n");
    struct cm_watch w;
    const char *paths[] = {a, NULL, b, a};
    cm_watch_init(&w, paths, 4);
    assert_int_equal(w.n, 3); /* NULL skipped, bounded by CM_WATCH_MAX_FILES */
    assert_false(cm_watch_poll(&w));
    write_file(b, "bb\n");
    assert_true(cm_watch_poll(&w)); /* any one changed */
    assert_false(cm_watch_poll(&w));
    cm_watch_deinit(&w);
}

static void last_error(void **state)
{
    (void)state;
    struct cm_watch w;
    cm_watch_init(&w, NULL, 0);
    assert_null(cm_watch_last_error(&w));
    cm_watch_set_error(&w, "%s: %d", "bad", 7);
    assert_string_equal(cm_watch_last_error(&w), "bad: 7");
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cm_watch_set_error(&w, "%s", big); /* not truncated */
    assert_int_equal(strlen(cm_watch_last_error(&w)), sizeof(big) - 1);
    cm_watch_set_error(&w, NULL);
    assert_null(cm_watch_last_error(&w));
    cm_watch_set_error(&w, "again");
    cm_watch_deinit(&w); /* frees it (ASan) */
    assert_null(cm_watch_last_error(&w));
}

static void interval_knob_read_once(void **state)
{
    (void)state;
    assert_int_equal(setenv(CM_WATCH_ENV, "250", 1), 0);
    assert_int_equal(cm_watch_interval_ms(), 250);
    assert_int_equal(setenv(CM_WATCH_ENV, "5000", 1), 0);
    assert_int_equal(cm_watch_interval_ms(), 250); /* read once */
    unsetenv(CM_WATCH_ENV);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(unchanged_file_is_no_change, setup, teardown),
        cmocka_unit_test_setup_teardown(configmap_data_symlink_swap, setup, teardown),
        cmocka_unit_test_setup_teardown(in_place_edit_same_size_same_second, setup, teardown),
        cmocka_unit_test_setup_teardown(delete_and_recreate, setup, teardown),
        cmocka_unit_test_setup_teardown(unreadable_file, setup, teardown),
        cmocka_unit_test_setup_teardown(stat_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(several_files_and_null_paths, setup, teardown),
        cmocka_unit_test(last_error),
        cmocka_unit_test(interval_knob_read_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
