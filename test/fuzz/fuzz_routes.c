/* libFuzzer target for px_routes_parse (proxy/routes_config.c): the bytes are a
 * routes file. Either it loads and satisfies what the data path relies on
 * (at least one endpoint per route but a "service" one, attempts >= 1, a
 * match of exactly one kind, every route's host, address or service matching
 * the first route in file order that has it), or it fails naming the file —
 * never a crash or a leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "proxy/routes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_routes *r = NULL;
    char *err = NULL;
    int rc = px_routes_parse("fuzz.json", (const char *)data, size, &r, &err);
    if (rc != 0) {
        if (r != NULL || err == NULL || strncmp(err, "fuzz.json", 9) != 0)
            __builtin_trap();
        free(err);
        return 0;
    }
    if (r == NULL || err != NULL)
        __builtin_trap();
    for (size_t i = 0; i < r->n; i++) {
        const struct px_route *rt = &r->routes[i];
        /* a "service" route may list no endpoints (the discovered ones serve it) */
        if ((rt->neps < 1 && rt->match_service == NULL) || rt->attempts < 1 || rt->name == NULL)
            __builtin_trap();
        if ((rt->match_host != NULL) + rt->has_match_addr + (rt->match_service != NULL) != 1)
            __builtin_trap();
        if (rt->match_service != NULL) {
            /* never matched by host or address; found by its name, first in file order */
            const struct px_route *first = px_routes_match_service(r, rt->match_service);
            if (first == NULL || first > rt || strcmp(first->match_service, rt->match_service) != 0)
                __builtin_trap();
            continue;
        }
        for (size_t k = 0; k < rt->neps; k++)
            if (rt->eps[k].weight < 1)
                __builtin_trap();
        if (rt->match_host != NULL) {
            /* its host matches the first route with that host (the index
             * answers what a scan in file order would) */
            const struct px_route *first = rt;
            for (size_t k = 0; k < i; k++)
                if (r->routes[k].match_host != NULL &&
                    strcmp(r->routes[k].match_host, rt->match_host) == 0) {
                    first = &r->routes[k];
                    break;
                }
            if (px_routes_match(r, rt->match_host, NULL) != first)
                __builtin_trap();
        } else {
            const struct px_route *first = rt;
            for (size_t k = 0; k < i; k++)
                if (r->routes[k].has_match_addr &&
                    cm_addr_equal(&r->routes[k].match_addr, &rt->match_addr)) {
                    first = &r->routes[k];
                    break;
                }
            if (px_routes_match(r, NULL, &rt->match_addr) != first)
                __builtin_trap();
        }
    }
    px_routes_match(r, "example.com:8080", NULL);
    px_routes_unref(r);
    return 0;
}
