/* The destination cache in the running proxy: made at start when the
 * bootstrap has a "discovery" block, with GET /destinations on the admin
 * port and its series on /metrics. */
#include <event2/buffer.h>
#include <event2/http.h>

#include "common/log.h"
#include "proxy/admin.h"
#include "proxy/discovery.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

static void write_prometheus(struct evbuffer *out, void *arg)
{
    px_disc_write_prometheus(arg, out);
}

static int on_destinations(struct evhttp_request *req, const struct evkeyvalq *q,
                           struct evbuffer *out, void *arg)
{
    (void)req, (void)q;
    struct px_server *srv = arg;
    if (srv->disc == NULL)
        return px_admin_reply_error(
            out, 404, "/destinations: no \"discovery\" in the bootstrap configuration");
    px_admin_reply_json(out, px_disc_json(srv->disc));
    return 200;
}

void px_disc_start(struct px_server *srv)
{
    const struct px_disc_cfg *c = srv->cfg->discovery;
    /* registered either way: without discovery it says so (404 naming why) */
    px_admin_route(srv->admin, PX_ADMIN_GET, "/destinations", on_destinations, srv);
    if (c == NULL || !c->enabled)
        return;
    struct px_disc_opts o;
    px_disc_opts_default(&o);
    o.tls_arg = srv->identity;
    srv->disc = px_disc_new(srv->base, c, &o);
    px_metrics_register_with(srv->metrics, write_prometheus, srv->disc);
    char a[320];
    cm_info("discovery: asking %s (%s), outbound_policy %s, %zu egress_allow entries",
            px_disc_cfg_address(c, a, sizeof(a)), c->server_name,
            c->policy == PX_OUTBOUND_REGISTRY_ONLY ? "registry_only" : "allow_any", c->negress);
}

void px_disc_shutdown(struct px_server *srv)
{
    px_admin_route(srv->admin, PX_ADMIN_GET, "/destinations", NULL, NULL);
    if (srv->disc == NULL)
        return;
    px_metrics_unregister_with(srv->metrics, write_prometheus, srv->disc);
    px_disc_free(srv->disc);
    srv->disc = NULL;
}
