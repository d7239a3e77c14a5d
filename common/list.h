/* Intrusive circular doubly-linked list (the Linux kernel's / h2o's shape). */
#ifndef CM_LIST_H
#define CM_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct cm_list {
    struct cm_list *prev, *next;
};

#define cm_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void cm_list_init(struct cm_list *l)
{
    l->prev = l->next = l;
}
static inline bool cm_list_empty(const struct cm_list *l)
{
    return l->next == l;
}
/* Is the node linked into some list? (nodes are re-initialised on removal) */
static inline bool cm_list_linked(const struct cm_list *n)
{
    return n->next != n && n->next != NULL;
}
static inline void cm_list_insert_tail(struct cm_list *l, struct cm_list *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}
static inline void cm_list_insert_head(struct cm_list *l, struct cm_list *n)
{
    n->next = l->next;
    n->prev = l;
    l->next->prev = n;
    l->next = n;
}
static inline void cm_list_remove(struct cm_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define cm_list_foreach_safe(pos, tmp, head)                                                       \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

#endif
