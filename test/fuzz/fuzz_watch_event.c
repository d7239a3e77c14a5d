/* libFuzzer target for the discovery service's watch-event decoder
 * (injector/discovery_decode.c, issue 17) and what the store does with it.
 *   byte 0 % 3   the kind: services, endpointslices, pods
 *   the rest     a watch stream: fed to the line splitter in two pieces (cut
 *                at byte 1's position), each line decoded as a watch event
 *                and, when it decodes, applied to a store (ADDED/MODIFIED
 *                put, DELETED delete), then every answer of the touched wake
 *                keys built.
 * Invariants (a violation traps): a decoded ADDED/MODIFIED/DELETED carries
 * a record whose key is the event's; an error comes with a printable
 * message; every answer is 200 with a version or 404 without, and is JSON. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "injector/discovery.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
    enum ij_disc_kind kind;
    struct ij_disc_store *store;
};

static void printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            __builtin_trap();
}

static void answer_keys(struct ij_disc_store *s, const struct ij_disc_keys *keys)
{
    for (size_t i = 0; i < keys->n; i++) {
        struct ij_disc_query q;
        char *err = NULL, *body = NULL, version[17];
        const char *k = keys->v[i];
        char arg[600];
        int rc;
        if (strncmp(k, "ip:", 3) == 0) {
            snprintf(arg, sizeof(arg), strchr(k + 3, ':') ? "[%s]:80" : "%s:80", k + 3);
            rc = ij_disc_query_parse(arg, NULL, "cluster.local", &q, &err);
        } else {
            const char *slash = strchr(k + 2, '/');
            if (slash == NULL)
                __builtin_trap();
            snprintf(arg, sizeof(arg), "%s.%.*s:80", slash + 1, (int)(slash - (k + 2)), k + 2);
            rc = ij_disc_query_parse(NULL, arg, "cluster.local", &q, &err);
        }
        free(err);
        if (rc != 0)
            continue; /* a name that is no DNS label: a proxy cannot ask for it */
        unsigned status;
        size_t len;
        ij_disc_store_answer(s, &q, &status, &body, &len, version);
        if ((status == 200) != (version[0] != '\0') || (status != 200 && status != 404))
            __builtin_trap();
        json_t *j = json_loadb(body, len, 0, NULL);
        if (j == NULL)
            __builtin_trap();
        json_decref(j);
        free(body);
    }
}

static int on_line(void *arg, const char *line, size_t len)
{
    struct ctx *c = arg;
    struct ij_disc_event ev;
    char *err = NULL;
    int rc = ij_disc_decode_event(c->kind, line, len, &ev, &err);
    if (rc != 0) {
        if (err == NULL)
            __builtin_trap();
        printable(err);
    }
    struct ij_disc_keys wake = {0};
    if (rc == 0 &&
        (ev.type == IJ_EV_ADDED || ev.type == IJ_EV_MODIFIED || ev.type == IJ_EV_DELETED)) {
        if (!ev.skipped) {
            const char *k = ij_disc_obj_key(&ev.obj);
            if (k == NULL || ev.key == NULL || strcmp(k, ev.key) != 0)
                __builtin_trap();
        }
        if (ev.type == IJ_EV_DELETED || ev.skipped) {
            if (ev.key != NULL)
                ij_disc_store_del(c->store, c->kind, ev.key, &wake);
        } else {
            ij_disc_store_put(c->store, &ev.obj, &wake);
        }
        answer_keys(c->store, &wake);
    }
    ij_disc_keys_deinit(&wake);
    ij_disc_event_deinit(&ev);
    free(err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 256 * 1024)
        return 0;
    struct ctx c = {.kind = (enum ij_disc_kind)(data[0] % 3),
                    .store = ij_disc_store_new("cluster.local", "cluster.local")};
    const char *p = (const char *)data + 2;
    size_t n = size - 2, cut = n ? data[1] % (n + 1) : 0;
    struct ij_disc_lines l = {0};
    if (ij_disc_lines_feed(&l, p, cut, on_line, &c) == 0)
        ij_disc_lines_feed(&l, p + cut, n - cut, on_line, &c);
    /* whatever is left without a newline: one more line */
    if (!l.overflow && l.len > 0)
        on_line(&c, l.buf, l.len);
    ij_disc_lines_reset(&l);
    ij_disc_store_free(c.store);
    return 0;
}
