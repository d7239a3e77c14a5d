/* Unit tests of common/list.h: the intrusive list's insertion at both ends,
 * removal (which re-initialises the node), emptiness and linkage tests,
 * removal while iterating with cm_list_foreach_safe, and cm_container_of. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "common/list.h"

struct item {
    int v;
    char pad[13]; /* the link is not at offset 0 */
    struct cm_list link;
};

/* The values in list order, as "1,2,3"; checks prev links agree. */
static const char *order(struct cm_list *head)
{
    static char buf[256];
    size_t o = 0;
    buf[0] = '\0';
    struct cm_list *prev = head;
    for (struct cm_list *n = head->next; n != head; n = n->next) {
        assert_ptr_equal(n->prev, prev);
        prev = n;
        struct item *it = cm_container_of(n, struct item, link);
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%d", o ? "," : "", it->v);
    }
    assert_ptr_equal(head->prev, prev);
    return buf;
}

static void insert_and_remove(void **state)
{
    (void)state;
    struct cm_list head;
    struct item it[5];
    cm_list_init(&head);
    assert_true(cm_list_empty(&head));
    for (int i = 0; i < 5; i++) {
        it[i].v = i;
        cm_list_init(&it[i].link);
        assert_false(cm_list_linked(&it[i].link));
    }
    cm_list_insert_tail(&head, &it[1].link);
    cm_list_insert_tail(&head, &it[2].link);
    cm_list_insert_head(&head, &it[0].link);
    cm_list_insert_tail(&head, &it[3].link);
    assert_false(cm_list_empty(&head));
    assert_string_equal(order(&head), "0,1,2,3");
    assert_true(cm_list_linked(&it[2].link));
    assert_false(cm_list_linked(&it[4].link));

    cm_list_remove(&it[2].link);
    assert_false(cm_list_linked(&it[2].link)); /* re-initialised */
    assert_string_equal(order(&head), "0,1,3");
    cm_list_remove(&it[0].link);
    cm_list_remove(&it[3].link);
    assert_string_equal(order(&head), "1");
    cm_list_remove(&it[1].link);
    assert_true(cm_list_empty(&head));
    assert_string_equal(order(&head), "");
    /* a removed node can go into a list again */
    cm_list_insert_head(&head, &it[2].link);
    assert_string_equal(order(&head), "2");
}

static void static_initialiser_and_zeroed_nodes(void **state)
{
    (void)state;
    static struct cm_list head = {&head, &head}; /* the codecs' static lists */
    assert_true(cm_list_empty(&head));
    struct item it;
    memset(&it, 0, sizeof(it));
    assert_false(cm_list_linked(&it.link)); /* calloc'd objects are not linked */
    it.v = 7;
    cm_list_insert_tail(&head, &it.link);
    assert_string_equal(order(&head), "7");
    cm_list_remove(&it.link);
    assert_true(cm_list_empty(&head));
}

static void foreach_safe_removes(void **state)
{
    (void)state;
    struct cm_list head, *n, *t;
    struct item it[10];
    cm_list_init(&head);
    for (int i = 0; i < 10; i++) {
        it[i].v = i;
        cm_list_insert_tail(&head, &it[i].link);
    }
    int seen = 0;
    cm_list_foreach_safe(n, t, &head)
    {
        struct item *x = cm_container_of(n, struct item, link);
        assert_int_equal(x->v, seen);
        seen++;
        if (x->v % 2 == 0)
            cm_list_remove(n);
    }
    assert_int_equal(seen, 10);
    assert_string_equal(order(&head), "1,3,5,7,9");
    cm_list_foreach_safe(n, t, &head) cm_list_remove(n);
    assert_true(cm_list_empty(&head));
    seen = 0;
    cm_list_foreach_safe(n, t, &head) seen++;
    assert_int_equal(seen, 0);
}

static void container_of(void **state)
{
    (void)state;
    struct item it;
    assert_ptr_equal(cm_container_of(&it.link, struct item, link), &it);
    assert_int_equal((char *)&it.link - (char *)&it, offsetof(struct item, link));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(insert_and_remove),
        cmocka_unit_test(static_initialiser_and_zeroed_nodes),
        cmocka_unit_test(foreach_safe_removes),
        cmocka_unit_test(container_of),
    };
    return cmocka_run_group_tests_name("common/list", tests, NULL, NULL);
}
