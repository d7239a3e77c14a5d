/* Running the proxy: used by main.c. */
#ifndef PX_SERVER_RUN_H
#define PX_SERVER_RUN_H

#include "proxy/config.h"

/* Bind everything in cfg and run the event loop until drained (SIGTERM,
 * /quitquitquit). Returns 0 on a clean exit. cfg stays owned by the caller. */
int px_server_run(struct px_config *cfg);

#endif
