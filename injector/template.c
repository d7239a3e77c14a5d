#include "injector/template.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/json.h"
#include "common/net.h"
#include "common/xalloc.h"

/* Kept in step with manifests/injector/template.json (the test compares them). */
const char ij_template_builtin_json[] =
    "{\n"
    "  \"image\": \"ghcr.io/remora-mesh/remora-proxy:0.1.0\",\n"
    "  \"image_pull_policy\": \"IfNotPresent\",\n"
    "  \"args\": [\"-c\", \"/etc/remora/bootstrap/bootstrap.json\"],\n"
    "  \"env\": [],\n"
    "  \"resources\": {\"requests\": {\"cpu\": \"50m\", \"memory\": \"32Mi\"},\n"
    "                \"limits\": {\"cpu\": \"1\", \"memory\": \"128Mi\"}},\n"
    "  \"init_resources\": {\"requests\": {\"cpu\": \"10m\", \"memory\": \"16Mi\"},\n"
    "                     \"limits\": {\"cpu\": \"100m\", \"memory\": \"64Mi\"}},\n"
    "  \"ca_address\": \"remora-injector.remora-system.svc:15012\",\n"
    "  \"ca_root_configmap\": \"remora-ca-root\",\n"
    "  \"inbound_tls\": \"strict\",\n"
    "  \"token_expiration_seconds\": 43200,\n"
    "  \"hold_application\": true,\n"
    "  \"wait_command\": [\"remora-proxy\", \"wait\", \"--timeout\", \"60\"],\n"
    "  \"discovery\": {\"address\": \"" IJ_TEMPLATE_DISCOVERY_ADDRESS "\"}\n"
    "}\n";

static const char *const keys[] = {"image",
                                   "image_pull_policy",
                                   "args",
                                   "env",
                                   "resources",
                                   "init_resources",
                                   "ca_address",
                                   "ca_root_configmap",
                                   "inbound_tls",
                                   "token_expiration_seconds",
                                   "hold_application",
                                   "wait_command",
                                   "discovery",
                                   NULL};
static const char *const pull_policies[] = {"Always", "IfNotPresent", "Never", NULL};
static const char *const tls_modes[] = {"strict", "permissive", "disabled", NULL};
/* Env vars the injector sets itself; the template may not shadow them. */
static const char *const reserved_env[] = {
    "POD_NAME", "POD_NAMESPACE",      "SERVICE_ACCOUNT",
    "POD_IP",   "REMORA_APP_PROBERS", "REMORA_APP_GRPC_PROBERS",
    NULL};

static int string_array(const struct cm_jpath *p, json_t *obj, const char *key, bool nonempty,
                        json_t **out, char **errmsg)
{
    struct cm_jpath c, e;
    json_t *a = NULL, *v;
    size_t i;
    int rc = cm_json_get_child(p, obj, key, true, JSON_ARRAY, &a, errmsg);
    if (rc != 0)
        return rc;
    cm_jpath_key(&c, p, key);
    if (nonempty && json_array_size(a) == 0)
        return cm_json_fail(&c, errmsg, "must not be empty");
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v)) {
            cm_jpath_index(&e, &c, i);
            return cm_json_fail(&e, errmsg, "expected a string");
        }
    }
    *out = a;
    return 0;
}

/* ResourceRequirements: {"requests": {name: quantity}, "limits": {...}}.
 * Quantities are checked loosely (digits first); the API server has the last word. */
static int resources(const struct cm_jpath *p, json_t *obj, const char *key, json_t **out,
                     char **errmsg)
{
    static const char *const rkeys[] = {"requests", "limits", NULL};
    struct cm_jpath c, k, q;
    json_t *r = NULL;
    int rc = cm_json_get_child(p, obj, key, true, JSON_OBJECT, &r, errmsg);
    if (rc != 0)
        return rc;
    cm_jpath_key(&c, p, key);
    if ((rc = cm_json_check_keys(&c, r, rkeys, errmsg)) != 0)
        return rc;
    for (int i = 0; rkeys[i] != NULL; i++) {
        json_t *m = NULL, *v;
        const char *name;
        if ((rc = cm_json_get_child(&c, r, rkeys[i], false, JSON_OBJECT, &m, errmsg)) != 0)
            return rc;
        if (m == NULL)
            continue;
        cm_jpath_key(&k, &c, rkeys[i]);
        json_object_foreach(m, name, v)
        {
            cm_jpath_key(&q, &k, name);
            const char *s = json_string_value(v);
            if (s == NULL || !(isdigit((unsigned char)s[0]) || s[0] == '.'))
                return cm_json_fail(&q, errmsg, "expected a quantity string such as \"100m\"");
        }
    }
    *out = r;
    return 0;
}

static bool env_name_ok(const char *s)
{
    if (*s == '\0' || isdigit((unsigned char)*s))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_' || *s == '-' || *s == '.'))
            return false;
    return true;
}

static int env_list(const struct cm_jpath *p, json_t *obj, json_t **out, char **errmsg)
{
    static const char *const ekeys[] = {"name", "value", "valueFrom", NULL};
    struct cm_jpath c, e;
    json_t *a = NULL, *v;
    size_t i;
    int rc = cm_json_get_child(p, obj, "env", true, JSON_ARRAY, &a, errmsg);
    if (rc != 0)
        return rc;
    cm_jpath_key(&c, p, "env");
    json_array_foreach(a, i, v)
    {
        const char *name = NULL, *value = NULL;
        json_t *from = NULL;
        cm_jpath_index(&e, &c, i);
        if (!json_is_object(v))
            return cm_json_fail(&e, errmsg, "expected an object {\"name\", \"value\"}");
        if ((rc = cm_json_check_keys(&e, v, ekeys, errmsg)) != 0 ||
            (rc = cm_json_get_string(&e, v, "name", true, &name, errmsg)) != 0 ||
            (rc = cm_json_get_string(&e, v, "value", false, &value, errmsg)) != 0 ||
            (rc = cm_json_get_child(&e, v, "valueFrom", false, JSON_OBJECT, &from, errmsg)) != 0)
            return rc;
        if (!env_name_ok(name))
            return cm_json_fail(&e, errmsg, "\"%s\" is not a valid variable name", name);
        for (int r = 0; reserved_env[r] != NULL; r++)
            if (strcmp(name, reserved_env[r]) == 0)
                return cm_json_fail(&e, errmsg, "%s is set by the injector", name);
        if (value != NULL && from != NULL)
            return cm_json_fail(&e, errmsg, "value and valueFrom are exclusive");
    }
    *out = a;
    return 0;
}

/* host:port, the host a DNS name or an address ([v6] bracketed), the port
 * 1-65535: what the proxy's discovery.address takes. */
static bool host_port_ok(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s || strlen(s) > 253 + 8)
        return false;
    uint16_t port;
    if (cm_port_parse(colon + 1, &port) != 0 || port == 0)
        return false;
    for (const char *c = s; c < colon; c++)
        if (!(isalnum((unsigned char)*c) || strchr(".-_:[]", *c) != NULL))
            return false;
    return s[0] != '[' || colon[-1] == ']';
}

/* "discovery": the proxy's discovery block for every injected pod (issue 18);
 * absent: the default address; false: none. */
static int discovery(const struct cm_jpath *p, json_t *root, struct ij_template *t, char **errmsg)
{
    static const char *const dkeys[] = {"address", "server_name", "lookup_timeout_ms", NULL};
    struct cm_jpath c, k;
    json_t *d = json_object_get(root, "discovery");
    int rc;
    t->discovery_address = IJ_TEMPLATE_DISCOVERY_ADDRESS;
    if (d == NULL)
        return 0;
    cm_jpath_key(&c, p, "discovery");
    if (json_is_false(d)) {
        t->discovery_address = NULL;
        return 0;
    }
    if (!json_is_object(d))
        return cm_json_fail(&c, errmsg,
                            "expected an object {\"address\", \"server_name\", "
                            "\"lookup_timeout_ms\"} or false");
    if ((rc = cm_json_check_keys(&c, d, dkeys, errmsg)) != 0 ||
        (rc = cm_json_get_string(&c, d, "address", true, &t->discovery_address, errmsg)) != 0 ||
        (rc = cm_json_get_string(&c, d, "server_name", false, &t->discovery_server_name, errmsg)) !=
            0 ||
        (rc = cm_json_get_int(&c, d, "lookup_timeout_ms", false, 1, 60000,
                              &t->discovery_lookup_timeout_ms, errmsg)) != 0)
        return rc;
    if (!host_port_ok(t->discovery_address)) {
        cm_jpath_key(&k, &c, "address");
        return cm_json_fail(&k, errmsg, "\"%s\" is not host:port", t->discovery_address);
    }
    if (t->discovery_server_name != NULL) {
        const char *n = t->discovery_server_name;
        bool ok = *n != '\0' && strlen(n) <= 253;
        for (; ok && *n; n++)
            ok = isalnum((unsigned char)*n) || *n == '.' || *n == '-' || *n == '_';
        if (!ok) {
            cm_jpath_key(&k, &c, "server_name");
            return cm_json_fail(&k, errmsg, "\"%s\" is not a DNS name", t->discovery_server_name);
        }
    }
    return 0;
}

int ij_template_from_json(const char *name, json_t *root, struct ij_template **out, char **errmsg)
{
    struct cm_jpath p, c;
    int rc, pull = 1, tls = 0;
    struct ij_template *t = cm_xcalloc(1, sizeof(*t));

    atomic_init(&t->refs, 1);
    t->root = json_incref(root);
    t->name = cm_xstrdup(name);
    t->token_expiration_seconds = 43200;
    t->hold_application = true;
    cm_jpath_root(&p, t->name);
    if (!json_is_object(root)) {
        rc = cm_json_fail(&p, errmsg, "expected a JSON object at the top level");
        goto fail;
    }
    if ((rc = cm_json_check_keys(&p, root, keys, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, root, "image", true, &t->image, errmsg)) != 0 ||
        (rc = cm_json_get_enum(&p, root, "image_pull_policy", false, pull_policies, &pull,
                               errmsg)) != 0 ||
        (rc = string_array(&p, root, "args", false, &t->args, errmsg)) != 0 ||
        (rc = env_list(&p, root, &t->env, errmsg)) != 0 ||
        (rc = resources(&p, root, "resources", &t->resources, errmsg)) != 0 ||
        (rc = resources(&p, root, "init_resources", &t->init_resources, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, root, "ca_address", true, &t->ca_address, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, root, "ca_root_configmap", true, &t->ca_root_configmap,
                                 errmsg)) != 0 ||
        (rc = cm_json_get_enum(&p, root, "inbound_tls", false, tls_modes, &tls, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, root, "token_expiration_seconds", false, 600, 86400 * 2,
                              &t->token_expiration_seconds, errmsg)) != 0 ||
        (rc = cm_json_get_bool(&p, root, "hold_application", false, &t->hold_application,
                               errmsg)) != 0)
        goto fail;
    if ((rc = discovery(&p, root, t, errmsg)) != 0)
        goto fail;
    if (t->hold_application &&
        (rc = string_array(&p, root, "wait_command", true, &t->wait_command, errmsg)) != 0)
        goto fail;
    if (*t->image == '\0') {
        cm_jpath_key(&c, &p, "image");
        rc = cm_json_fail(&c, errmsg, "must not be empty");
        goto fail;
    }
    if (*t->ca_root_configmap == '\0' || strlen(t->ca_root_configmap) > 253) {
        cm_jpath_key(&c, &p, "ca_root_configmap");
        rc = cm_json_fail(&c, errmsg, "must be a ConfigMap name");
        goto fail;
    }
    t->image_pull_policy = pull_policies[pull];
    t->inbound_tls = tls_modes[tls];
    *out = t;
    return 0;

fail:
    ij_template_unref(t);
    return rc;
}

int ij_template_load(const char *file, struct ij_template **out, char **errmsg)
{
    json_t *root = NULL;
    int rc;
    if (file == NULL)
        rc = cm_json_load_buf("built-in template", ij_template_builtin_json,
                              strlen(ij_template_builtin_json), true, &root, errmsg);
    else
        rc = cm_json_load_file(file, true, &root, errmsg);
    if (rc != 0)
        return rc;
    rc = ij_template_from_json(file != NULL ? file : "built-in template", root, out, errmsg);
    json_decref(root);
    return rc;
}

struct ij_template *ij_template_ref(struct ij_template *t)
{
    atomic_fetch_add(&t->refs, 1);
    return t;
}

void ij_template_unref(struct ij_template *t)
{
    if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    json_decref(t->root);
    free(t->name);
    free(t);
}

int ij_template_slot_init(struct ij_template_slot *s, const char *file, char **errmsg)
{
    memset(s, 0, sizeof(*s));
    s->file = file;
    cm_watch_init(&s->watch, &file, 1);
    int rc = ij_template_load(file, &s->cur, errmsg);
    if (rc != 0)
        return rc;
    pthread_mutex_init(&s->mu, NULL);
    return 0;
}

void ij_template_slot_deinit(struct ij_template_slot *s)
{
    ij_template_unref(s->cur);
    cm_watch_deinit(&s->watch);
    pthread_mutex_destroy(&s->mu);
    memset(s, 0, sizeof(*s));
}

struct ij_template *ij_template_slot_get(struct ij_template_slot *s)
{
    pthread_mutex_lock(&s->mu);
    struct ij_template *t = ij_template_ref(s->cur);
    pthread_mutex_unlock(&s->mu);
    return t;
}

int ij_template_slot_reload(struct ij_template_slot *s, bool force, char **errmsg)
{
    if (s->file == NULL)
        return 0;
    /* The stamp moves on even on failure: a bad file is reported once, not
     * every tick; the next change is tried again. */
    if (!cm_watch_poll(&s->watch) && !force)
        return 0;
    struct ij_template *t = NULL;
    int rc = ij_template_load(s->file, &t, errmsg);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    struct ij_template *old = s->cur;
    s->cur = t;
    pthread_mutex_unlock(&s->mu);
    ij_template_unref(old);
    return 1;
}
