/* The sidecar template: what the operator may change about the injected
 * containers (image, resources, args, extra env, where the CA is) without
 * rebuilding the injector. A JSON file (config key template_file) or the
 * built-in default; the file reloads when it changes on disk.
 *
 * A template is an immutable, reference-counted snapshot: a review holds the
 * one it started with while a reload swaps in the next. */
#ifndef IJ_TEMPLATE_H
#define IJ_TEMPLATE_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/watch.h"

struct ij_template {
    atomic_int refs;
    json_t *root; /* owns every string and json_t below */
    char *name;   /* the file, or "built-in" */
    const char *image;
    const char *image_pull_policy; /* Always | IfNotPresent | Never */
    json_t *args;                  /* array of strings: remora-proxy's arguments */
    json_t *env;                   /* array of EnvVar objects added to remora-proxy */
    json_t *resources;             /* ResourceRequirements of remora-proxy */
    json_t *init_resources;        /* ResourceRequirements of remora-init */
    const char *ca_address;        /* host:port the proxies send CSRs to */
    const char *ca_root_configmap; /* ConfigMap holding root.pem in every namespace */
    const char *inbound_tls;       /* strict | permissive | disabled */
    int64_t token_expiration_seconds;
    bool hold_application; /* classic mode: app waits for the proxy */
    json_t *wait_command;  /* postStart exec that blocks until the proxy is ready */
    /* The bootstrap's "discovery" block (issue 18): address NULL when the
     * template says "discovery": false; server_name NULL and
     * lookup_timeout_ms 0 leave the proxy's defaults. */
    const char *discovery_address;
    const char *discovery_server_name;
    int64_t discovery_lookup_timeout_ms;
};

/* The template's discovery address when it has no "discovery" key. */
#define IJ_TEMPLATE_DISCOVERY_ADDRESS "remora-injector.remora-system.svc:15011"

/* The built-in template's JSON text (also what --print-template prints). */
extern const char ij_template_builtin_json[];

/* Parse a template from a file (NULL: the built-in one). Returns 0 and *out
 * with one reference, or CM_ERR_INVAL with *errmsg naming file and key. */
int ij_template_load(const char *file, struct ij_template **out, char **errmsg);
/* Same from a JSON object (borrowed; the template takes its own reference). */
int ij_template_from_json(const char *name, json_t *root, struct ij_template **out, char **errmsg);
struct ij_template *ij_template_ref(struct ij_template *t);
void ij_template_unref(struct ij_template *t);

/* The template in force, swapped under a mutex; reviews take a reference. */
struct ij_template_slot {
    pthread_mutex_t mu;
    struct ij_template *cur;
    const char *file; /* borrowed; NULL: built-in, never reloads */
    struct cm_watch watch;
};

/* Load the first template. Returns 0 or CM_ERR_INVAL with *errmsg. */
int ij_template_slot_init(struct ij_template_slot *s, const char *file, char **errmsg);
void ij_template_slot_deinit(struct ij_template_slot *s);
/* The current template with a reference the caller drops with ij_template_unref. */
struct ij_template *ij_template_slot_get(struct ij_template_slot *s);
/* Reload when the file changed (or always with force). Returns 1 when a new
 * template is in force, 0 when nothing changed, CM_ERR_INVAL (the old
 * template stays) with *errmsg. */
int ij_template_slot_reload(struct ij_template_slot *s, bool force, char **errmsg);

#endif
