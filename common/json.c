#include "common/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"

void cm_jpath_root(struct cm_jpath *p, const char *file)
{
    p->file = file;
    p->path[0] = '\0';
}

/* Paths longer than the buffer are cut: they only serve messages. */
static void path_join(struct cm_jpath *child, const struct cm_jpath *parent, const char *suffix)
{
    char tmp[sizeof(child->path)];
    size_t a = strnlen(parent->path, sizeof(tmp) - 1);
    memcpy(tmp, parent->path, a);
    size_t b = strlen(suffix);
    if (b > sizeof(tmp) - 1 - a)
        b = sizeof(tmp) - 1 - a;
    memcpy(tmp + a, suffix, b);
    tmp[a + b] = '\0';
    memcpy(child->path, tmp, a + b + 1);
}

void cm_jpath_key(struct cm_jpath *child, const struct cm_jpath *parent, const char *key)
{
    char seg[sizeof(child->path)];
    size_t klen = strnlen(key, sizeof(seg) - 2);
    size_t o = 0;
    if (parent->path[0] != '\0')
        seg[o++] = '.';
    memcpy(seg + o, key, klen);
    seg[o + klen] = '\0';
    child->file = parent->file;
    path_join(child, parent, seg);
}

void cm_jpath_index(struct cm_jpath *child, const struct cm_jpath *parent, size_t i)
{
    char seg[32];
    if (snprintf(seg, sizeof(seg), "[%zu]", i) < 0)
        seg[0] = '\0';
    child->file = parent->file;
    path_join(child, parent, seg);
}

int cm_json_fail(const struct cm_jpath *p, char **errmsg, const char *fmt, ...)
{
    if (errmsg != NULL) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        free(*errmsg);
        if (p->path[0] != '\0')
            *errmsg = cm_xasprintf("%s: %s: %s", p->file, p->path, msg);
        else
            *errmsg = cm_xasprintf("%s: %s", p->file, msg);
    }
    return CM_ERR_INVAL;
}

static int finish_load(const char *name, json_t *root, json_error_t *jerr, bool want_object,
                       json_t **out, char **errmsg)
{
    struct cm_jpath p;
    cm_jpath_root(&p, name);
    if (root == NULL) {
        if (jerr->line > 0)
            return cm_json_fail(&p, errmsg, "line %d column %d: %s", jerr->line, jerr->column,
                                jerr->text);
        return cm_json_fail(&p, errmsg, "%s", jerr->text);
    }
    if (want_object && !json_is_object(root)) {
        json_decref(root);
        return cm_json_fail(&p, errmsg, "expected a JSON object at the top level");
    }
    *out = root;
    return 0;
}

int cm_json_load_file(const char *file, bool want_object, json_t **out, char **errmsg)
{
    json_error_t jerr;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    return finish_load(file, root, &jerr, want_object, out, errmsg);
}

int cm_json_load_buf(const char *name, const char *buf, size_t len, bool want_object, json_t **out,
                     char **errmsg)
{
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    return finish_load(name, root, &jerr, want_object, out, errmsg);
}

int cm_json_check_keys(const struct cm_jpath *p, json_t *obj, const char *const *allowed,
                       char **errmsg)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a != NULL; a++) {
            if (strcmp(*a, key) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            struct cm_jpath c;
            cm_jpath_key(&c, p, key);
            return cm_json_fail(&c, errmsg, "unknown key");
        }
    }
    return 0;
}

static json_t *member(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                      struct cm_jpath *c, char **errmsg, int *rc)
{
    cm_jpath_key(c, p, key);
    json_t *v = json_object_get(obj, key);
    *rc = 0;
    if (v == NULL && required)
        *rc = cm_json_fail(c, errmsg, "required key is missing");
    return v;
}

int cm_json_get_string(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                       const char **out, char **errmsg)
{
    struct cm_jpath c;
    int rc;
    json_t *v = member(p, obj, key, required, &c, errmsg, &rc);
    if (v == NULL)
        return rc;
    if (!json_is_string(v))
        return cm_json_fail(&c, errmsg, "expected a string");
    *out = json_string_value(v);
    return 0;
}

int cm_json_get_bool(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                     bool *out, char **errmsg)
{
    struct cm_jpath c;
    int rc;
    json_t *v = member(p, obj, key, required, &c, errmsg, &rc);
    if (v == NULL)
        return rc;
    if (!json_is_boolean(v))
        return cm_json_fail(&c, errmsg, "expected true or false");
    *out = json_is_true(v);
    return 0;
}

int cm_json_get_int(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                    int64_t min, int64_t max, int64_t *out, char **errmsg)
{
    struct cm_jpath c;
    int rc;
    json_t *v = member(p, obj, key, required, &c, errmsg, &rc);
    if (v == NULL)
        return rc;
    if (!json_is_integer(v))
        return cm_json_fail(&c, errmsg, "expected an integer");
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return cm_json_fail(&c, errmsg, "%lld is out of range [%lld, %lld]", (long long)i,
                            (long long)min, (long long)max);
    *out = (int64_t)i;
    return 0;
}

int cm_json_get_child(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                      json_type type, json_t **out, char **errmsg)
{
    struct cm_jpath c;
    int rc;
    json_t *v = member(p, obj, key, required, &c, errmsg, &rc);
    if (v == NULL)
        return rc;
    if (json_typeof(v) != type)
        return cm_json_fail(&c, errmsg, "expected an %s", type == JSON_OBJECT ? "object" : "array");
    *out = v;
    return 0;
}

int cm_json_get_enum(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                     const char *const *choices, int *out, char **errmsg)
{
    const char *s = NULL;
    int rc = cm_json_get_string(p, obj, key, required, &s, errmsg);
    if (rc != 0 || s == NULL)
        return rc;
    for (int i = 0; choices[i] != NULL; i++) {
        if (strcmp(choices[i], s) == 0) {
            *out = i;
            return 0;
        }
    }
    char list[256] = "";
    size_t o = 0;
    for (int i = 0; choices[i] != NULL && o < sizeof(list); i++)
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s\"%s\"", i ? ", " : "", choices[i]);
    struct cm_jpath c;
    cm_jpath_key(&c, p, key);
    return cm_json_fail(&c, errmsg, "\"%s\" is not one of %s", s, list);
}
