/* Per-port inbound mTLS mode and the plaintext counters (inbound_tls.h). The
 * counters are the listener's (struct px_listener.plaintext); the /metrics
 * writer is registered on the server's metrics with the server as argument
 * and sums them by port. The label set is bounded by the config: the ports
 * the mTLS listeners list (at most PX_MAX_PERMISSIVE_PORTS each) and "other". */
#include "proxy/inbound_tls.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>

#include "proxy/listener.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

/* The index of port in l's permissive_ports, or -1. */
static int index_of(const struct px_listener_cfg *l, uint16_t port)
{
    for (size_t i = 0; i < l->npermissive_ports; i++)
        if (l->permissive_ports[i] == port)
            return (int)i;
    return -1;
}

enum px_tls_mode px_inbound_tls_mode(const struct px_listener_cfg *l, uint16_t port)
{
    if (l->tls == PX_TLS_STRICT && index_of(l, port) >= 0)
        return PX_TLS_PERMISSIVE;
    return l->tls;
}

static bool counted(const struct px_listener *l)
{
    return l != NULL && l->cfg->direction == PX_DIR_INBOUND &&
           (l->cfg->tls == PX_TLS_STRICT || l->cfg->tls == PX_TLS_PERMISSIVE);
}

/* Was `port` already written, from a listener before index `upto`? */
static bool seen_before(const struct px_server *srv, size_t upto, size_t j)
{
    uint16_t port = srv->listeners[upto]->cfg->permissive_ports[j];
    for (size_t i = 0; i < upto; i++)
        if (counted(srv->listeners[i]) && index_of(srv->listeners[i]->cfg, port) >= 0)
            return true;
    for (size_t k = 0; k < j; k++) /* the config refuses duplicates; cheap to be sure */
        if (srv->listeners[upto]->cfg->permissive_ports[k] == port)
            return true;
    return false;
}

static void write_prometheus(struct evbuffer *out, void *arg)
{
    const struct px_server *srv = arg;
    uint64_t other = 0;
    evbuffer_add_printf(out, "# HELP remora_inbound_plaintext_total Plaintext connections "
                             "accepted by an mTLS listener (permissive, or a strict listener's "
                             "permissive_ports), by original destination port.\n"
                             "# TYPE remora_inbound_plaintext_total counter\n");
    for (size_t i = 0; i < srv->nlisteners; i++) {
        const struct px_listener *l = srv->listeners[i];
        if (!counted(l))
            continue;
        other += l->plaintext[PX_MAX_PERMISSIVE_PORTS];
        for (size_t j = 0; j < l->cfg->npermissive_ports; j++) {
            if (seen_before(srv, i, j))
                continue;
            uint16_t port = l->cfg->permissive_ports[j];
            uint64_t n = 0;
            for (size_t k = i; k < srv->nlisteners; k++) {
                int x = counted(srv->listeners[k]) ? index_of(srv->listeners[k]->cfg, port) : -1;
                if (x >= 0)
                    n += srv->listeners[k]->plaintext[x];
            }
            evbuffer_add_printf(out, "remora_inbound_plaintext_total{port=\"%u\"} %" PRIu64 "\n",
                                (unsigned)port, n);
        }
    }
    evbuffer_add_printf(out, "remora_inbound_plaintext_total{port=\"other\"} %" PRIu64 "\n", other);
}

void px_inbound_tls_listener_started(struct px_listener *l)
{
    if (!counted(l) || l->srv == NULL || l->srv->metrics == NULL)
        return;
    px_metrics_register_with(l->srv->metrics, write_prometheus, l->srv); /* once per server */
}

void px_inbound_plaintext_count(struct px_listener *l, uint16_t port)
{
    int x = index_of(l->cfg, port);
    l->plaintext[x >= 0 ? (size_t)x : PX_MAX_PERMISSIVE_PORTS]++;
}

uint64_t px_inbound_plaintext_of(const struct px_listener *l, uint16_t port)
{
    int x = port == 0 ? -1 : index_of(l->cfg, port);
    if (port != 0 && x < 0)
        return 0;
    return l->plaintext[x >= 0 ? (size_t)x : PX_MAX_PERMISSIVE_PORTS];
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
