/* Per-port inbound mTLS mode and the plaintext counters (inbound_tls.h).
 * The counters are this module's own bounded table, like the policy's
 * denials (policy_metrics.c): one slot per port some listener lists (at most
 * SLOTS; the config bounds each listener to PX_MAX_PERMISSIVE_PORTS), the
 * rest under "other". */
#include "proxy/inbound_tls.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>

#include "proxy/metrics.h"

#define SLOTS 256

static struct {
    uint16_t port[SLOTS];
    uint64_t n[SLOTS];
    size_t nslots;
    uint64_t other;
} T;

static bool listed(const struct px_listener_cfg *l, uint16_t port)
{
    for (size_t i = 0; i < l->npermissive_ports; i++)
        if (l->permissive_ports[i] == port)
            return true;
    return false;
}

enum px_tls_mode px_inbound_tls_mode(const struct px_listener_cfg *l, uint16_t port)
{
    if (l->tls == PX_TLS_STRICT && listed(l, port))
        return PX_TLS_PERMISSIVE;
    return l->tls;
}

/* The slot of `port`, or -1. */
static int slot_of(uint16_t port)
{
    for (size_t i = 0; i < T.nslots; i++)
        if (T.port[i] == port)
            return (int)i;
    return -1;
}

static void write_prometheus(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP remora_inbound_plaintext_total Plaintext connections "
                             "accepted by an mTLS listener (permissive, or a strict listener's "
                             "permissive_ports), by original destination port.\n"
                             "# TYPE remora_inbound_plaintext_total counter\n");
    for (size_t i = 0; i < T.nslots; i++)
        evbuffer_add_printf(out, "remora_inbound_plaintext_total{port=\"%u\"} %" PRIu64 "\n",
                            (unsigned)T.port[i], T.n[i]);
    evbuffer_add_printf(out, "remora_inbound_plaintext_total{port=\"other\"} %" PRIu64 "\n",
                        T.other);
}

static void write_json(json_t *stats)
{
    json_t *o = json_object();
    char key[8];
    for (size_t i = 0; i < T.nslots; i++) {
        snprintf(key, sizeof(key), "%u", (unsigned)T.port[i]);
        json_object_set_new(o, key, json_integer((json_int_t)T.n[i]));
    }
    json_object_set_new(o, "other", json_integer((json_int_t)T.other));
    json_object_set_new(stats, "inbound_plaintext", o);
}

void px_inbound_tls_listener_started(const struct px_listener_cfg *l)
{
    if (l->direction != PX_DIR_INBOUND || (l->tls != PX_TLS_STRICT && l->tls != PX_TLS_PERMISSIVE))
        return;
    for (size_t i = 0; i < l->npermissive_ports; i++)
        if (slot_of(l->permissive_ports[i]) < 0 && T.nslots < SLOTS) {
            T.port[T.nslots] = l->permissive_ports[i];
            T.n[T.nslots++] = 0;
        }
    px_metrics_register(write_prometheus); /* a second time is a no-op */
    px_metrics_register_json(write_json);
}

void px_inbound_plaintext_count(const struct px_listener_cfg *l, uint16_t port)
{
    int s = listed(l, port) ? slot_of(port) : -1;
    if (s >= 0)
        T.n[s]++;
    else
        T.other++;
}

uint64_t px_inbound_plaintext(uint16_t port)
{
    if (port == 0)
        return T.other;
    int s = slot_of(port);
    return s >= 0 ? T.n[s] : 0;
}

void px_inbound_tls_dump(const struct px_listener_cfg *l, json_t *lj)
{
    static const char *const names[] = {
        [PX_TLS_DISABLED] = "disabled",
        [PX_TLS_STRICT] = "strict",
        [PX_TLS_PERMISSIVE] = "permissive",
        [PX_TLS_MESH] = "mesh",
    };
    if (l->direction != PX_DIR_INBOUND)
        return;
    json_t *o = json_object();
    char key[8];
    for (size_t i = 0; i < l->npermissive_ports; i++) {
        snprintf(key, sizeof(key), "%u", (unsigned)l->permissive_ports[i]);
        json_object_set_new(o, key,
                            json_string(names[px_inbound_tls_mode(l, l->permissive_ports[i])]));
    }
    json_object_set_new(o, "other", json_string(names[l->tls]));
    json_object_set_new(lj, "tls_by_port", o);
}

void px_inbound_tls_reset(void)
{
    T.nslots = 0;
    T.other = 0;
}
