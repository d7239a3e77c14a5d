/* libFuzzer target for the request-id and traceparent parsers
 * (proxy/trace.c), and the request-head hook that applies them.
 * Invariants (a violation traps):
 *   - a parsed traceparent has non-zero ids and a version other than ff; its
 *     version-00 form parses again to the same fields; a version-00 input
 *     formats back to exactly itself;
 *   - px_reqid_valid accepts only 1..128 visible ASCII bytes;
 *   - after the hook, the hop-by-hop strip and px_trace_restore (byte 0 bit 1 adds a
 *     Connection header naming both), the head has exactly one x-request-id,
 *     well-formed, and (outbound, or when the input had one) exactly one valid
 *     traceparent. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/http.h"
#include "proxy/stream.h"
#include "proxy/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int count(const struct px_msg *m, const char *name)
{
    int n = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++)
        n += strcmp(m->hdrs[i].name, name) == 0;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct px_traceparent tp, again;
    if (px_traceparent_parse(s, size, &tp) == 0) {
        uint8_t z[16] = {0};
        if (tp.version == 0xff || memcmp(tp.trace_id, z, 16) == 0 ||
            memcmp(tp.parent_id, z, 8) == 0 || size < PX_TRACEPARENT_LEN)
            __builtin_trap();
        char out[PX_TRACEPARENT_LEN + 1];
        px_traceparent_format(&tp, out);
        if (px_traceparent_parse(out, PX_TRACEPARENT_LEN, &again) != 0 ||
            memcmp(again.trace_id, tp.trace_id, 16) != 0 ||
            memcmp(again.parent_id, tp.parent_id, 8) != 0 || again.flags != tp.flags)
            __builtin_trap();
        if (tp.version == 0 && memcmp(out, s, PX_TRACEPARENT_LEN) != 0)
            __builtin_trap();
    }
    bool ok = size >= 1 && size <= PX_REQID_MAX;
    for (size_t i = 0; i < size && ok; i++)
        ok = data[i] >= 0x21 && data[i] <= 0x7e;
    if (px_reqid_valid(s, size) != ok)
        __builtin_trap();

    /* the hook: the input split at the first '\n' into an x-request-id and a
     * traceparent value, the first byte's low bit choosing the direction */
    static struct px_stream st;
    memset(&st, 0, sizeof(st));
    px_arena_init(&st.arena);
    px_msg_init(&st.req);
    px_msg_init(&st.resp);
    const uint8_t *nl = memchr(data, '\n', size);
    size_t a = nl ? (size_t)(nl - data) : size;
    bool outbound = size > 0 && (data[0] & 1);
    px_msg_add(&st.arena, &st.req, "x-request-id", 12, s, a, UINT32_MAX, UINT32_MAX);
    bool had_tp = nl != NULL;
    if (had_tp)
        px_msg_add(&st.arena, &st.req, "traceparent", 11, (const char *)nl + 1, size - a - 1,
                   UINT32_MAX, UINT32_MAX);
    if (size > 0 && (data[0] & 2)) /* a client naming both as hop-by-hop */
        px_msg_add(&st.arena, &st.req, "connection", 10, "x-request-id, traceparent", 25,
                   UINT32_MAX, UINT32_MAX);
    px_trace_on_req_head(&st, outbound, size > 0 ? data[0] % 101u : 0);
    px_msg_strip_hop_by_hop(&st.req, false);
    px_trace_restore(&st);
    const struct px_hdr *id = px_msg_find(&st.req, "x-request-id");
    if (count(&st.req, "x-request-id") != 1 || !px_reqid_valid(id->value, id->valuelen))
        __builtin_trap();
    if (outbound || had_tp) {
        const struct px_hdr *h = px_msg_find(&st.req, "traceparent");
        if (count(&st.req, "traceparent") != 1 ||
            px_traceparent_parse(h->value, h->valuelen, &tp) != 0)
            __builtin_trap();
    }
    px_trace_on_respond(&st);
    if (count(&st.resp, "x-request-id") != 1)
        __builtin_trap();
    px_arena_deinit(&st.arena);
    return 0;
}
