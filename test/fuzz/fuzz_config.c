/* libFuzzer target for px_config_parse (proxy/config.c): the bytes are a
 * bootstrap config. Either it loads, and then it satisfies what the rest of
 * the proxy relies on, or it fails with a message naming the file — never a
 * crash, a leak, or a config handed back on failure. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "proxy/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char name[] = "fuzz.json";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_config *cfg = NULL;
    char *err = NULL;
    int rc = px_config_parse(name, (const char *)data, size, &cfg, &err);
    if (rc != 0) {
        if (rc != CM_ERR_INVAL || cfg != NULL || err == NULL)
            __builtin_trap();
        if (strncmp(err, "fuzz.json: ", 11) != 0)
            __builtin_trap();
        free(err);
        return 0;
    }
    if (cfg == NULL || err != NULL)
        __builtin_trap();
    if (cfg->nlisteners < 1 || cfg->nlisteners > 64 || cfg->listeners == NULL)
        __builtin_trap();
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct px_listener_cfg *l = &cfg->listeners[i];
        if (l->name == NULL || l->name[0] == '\0')
            __builtin_trap();
        for (size_t j = 0; j < i; j++)
            if (strcmp(l->name, cfg->listeners[j].name) == 0)
                __builtin_trap();
        int fam = l->addr.ss.ss_family;
        if (fam != AF_INET && fam != AF_INET6)
            __builtin_trap();
        if (l->direction == PX_DIR_INBOUND && l->tls == PX_TLS_MESH)
            __builtin_trap();
        if (l->direction == PX_DIR_OUTBOUND && l->tls != PX_TLS_DISABLED && l->tls != PX_TLS_MESH)
            __builtin_trap();
    }
    const struct px_limits *lim = &cfg->limits;
    if (lim->max_header_bytes < 1024 || lim->max_headers < 8 || lim->buffer_bytes < 4096 ||
        lim->max_connections < 1)
        __builtin_trap();
    if (cfg->identity != NULL && !json_is_object(cfg->identity))
        __builtin_trap();
    px_config_free(cfg);
    return 0;
}
