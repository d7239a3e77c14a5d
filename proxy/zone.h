/* The proxy's own zone (issue 18 follow-up; docs/routes.md "Locality from
 * discovery"). Endpoints are local when their zone equals ours. The
 * bootstrap key "cluster" sets ours; without it, and with "discovery", the
 * proxy learns it: it looks up its own pod address (POD_IP, which the
 * injector sets, else the first listener's address when it is a specific
 * one; the port is the first listener's: a pod answer does not depend on it)
 * in the discovery cache once a second (a cache hit while the cache's
 * long-poll keeps the answer current), and takes the zone of the endpoint
 * with its address. "" or 404: no locality preference; discovery unreachable:
 * the last zone learned stays. A change re-ranks every route's endpoints
 * (routes state's zone_gen) before the next pick. */
#ifndef PX_ZONE_H
#define PX_ZONE_H

#include <jansson.h>
#include <stdbool.h>

#include "common/net.h"
#include "proxy/discovery.h"

struct px_server;
struct px_routes_state;

#define PX_ZONE_TICK_MS 1000 /* how often the own address is looked up */
#define PX_ZONE_MAX_LEN 253  /* a longer zone (or one with control bytes) is ignored */

/* From px_routes_start: cfg->cluster is the locality ("config"); else, with
 * discovery configured and an own address known, start learning it. */
void px_zone_start(struct px_server *srv, struct px_routes_state *rs);
/* Stop learning (a waiting lookup is cancelled), free the zone learned. */
void px_zone_free(struct px_routes_state *rs);

/* The own address's lookup finished: res, and ans for FOUND (borrowed).
 * FOUND: the zone of the endpoint at self's IP (any port; a kind pod answer's
 * one endpoint otherwise), "" = none; NOT_FOUND: none; UNAVAILABLE: no
 * change. Nothing changes with a configured cluster. Returns true when our
 * locality changed. */
bool px_zone_apply(struct px_routes_state *rs, const struct cm_addr *self, enum px_disc_result res,
                   const struct px_dest_answer *ans);

/* "config", "discovery" (a zone learned) or "none". */
const char *px_zone_source(const struct px_routes_state *rs);
/* For GET /clusters: {"zone", "zone_source", "zone_address", "zone_changes",
 * "zone_last_result"} (a new reference). */
json_t *px_zone_json(const struct px_routes_state *rs);

#endif
