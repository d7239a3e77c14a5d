/* Config loading on jansson with errors that name the file and the key:
 *   "proxy.json: listeners[1].direction: expected "inbound" or "outbound""
 * Every getter takes the object, the key, a path prefix for messages and
 * char **errmsg (heap string, caller frees) and returns 0 or CM_ERR_INVAL. */
#ifndef CM_JSON_H
#define CM_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* Where a value sits: file name plus a JSON path ("listeners[1].address"). */
struct cm_jpath {
    const char *file;
    char path[256];
};

/* Load a JSON document from a file (objects only when want_object).
 * Returns 0 and *out (caller decrefs) or CM_ERR_INVAL with *errmsg. */
int cm_json_load_file(const char *file, bool want_object, json_t **out, char **errmsg);
/* Same from memory; `name` is used in messages. */
int cm_json_load_buf(const char *name, const char *buf, size_t len, bool want_object, json_t **out,
                     char **errmsg);

/* Child path helpers: key of an object, index of an array. */
void cm_jpath_root(struct cm_jpath *p, const char *file);
void cm_jpath_key(struct cm_jpath *child, const struct cm_jpath *parent, const char *key);
void cm_jpath_index(struct cm_jpath *child, const struct cm_jpath *parent, size_t i);

/* Set *errmsg to "<file>: <path>: <message>". Always returns CM_ERR_INVAL. */
int cm_json_fail(const struct cm_jpath *p, char **errmsg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Refuse keys of obj that are not in the NULL-terminated list `allowed`:
 * a misspelt key must never be silently ignored. */
int cm_json_check_keys(const struct cm_jpath *p, json_t *obj, const char *const *allowed,
                       char **errmsg);

/* Getters. A missing key is an error when required, otherwise the out
 * value is left untouched (so callers preset defaults). *out strings are
 * borrowed from the json_t. */
int cm_json_get_string(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                       const char **out, char **errmsg);
int cm_json_get_bool(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                     bool *out, char **errmsg);
int cm_json_get_int(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                    int64_t min, int64_t max, int64_t *out, char **errmsg);
/* Object or array member; type is JSON_OBJECT or JSON_ARRAY. */
int cm_json_get_child(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                      json_type type, json_t **out, char **errmsg);
/* String chosen from a NULL-terminated list; *out is its index. */
int cm_json_get_enum(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                     const char *const *choices, int *out, char **errmsg);

#endif
