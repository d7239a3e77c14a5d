/* Admin API on admin.address (plain HTTP for curl), served with libevent's
 * evhttp on the proxy's event loop. Endpoints: DESIGN.md "Admin API". */
#ifndef PX_ADMIN_H
#define PX_ADMIN_H

#include <event2/event.h>

#include "common/net.h"

struct px_admin;

/* Bind and serve. Returns 0 and *out, or CM_ERR_IO with *errmsg. */
int px_admin_start(struct event_base *base, const struct cm_addr *addr, struct px_admin **out,
                   char **errmsg);
/* The bound address (port 0 in the config resolves to a real port). */
void px_admin_local_addr(const struct px_admin *a, struct cm_addr *out);
void px_admin_free(struct px_admin *a);

#endif
