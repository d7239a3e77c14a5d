/* Placeholder until the policy engine lands: no policy_file means no
 * authorization step (everything allowed, as without a policy in Istio); a
 * configured policy_file is refused at startup rather than ignored. */
#include "proxy/authz.h"

#include "common/err.h"
#include "common/xalloc.h"

int px_authz_start(const struct px_config *cfg, char **errmsg)
{
    if (cfg->policy_file != NULL) {
        *errmsg = cm_xasprintf("%s: policy_file: the policy engine is not in this build", cfg->file);
        return CM_ERR_INVAL;
    }
    return 0;
}

int px_authz_reload(char **errmsg)
{
    (void)errmsg;
    return 0;
}

void px_authz_admin_routes(void)
{
}

void px_authz_shutdown(void)
{
}

bool px_authz_check(struct px_stream *s)
{
    (void)s;
    return true;
}
