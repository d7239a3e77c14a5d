#include "injector/jsonpatch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"

char *ij_jsonpatch_escape(const char *key)
{
    size_t n = 0;
    for (const char *p = key; *p; p++)
        n += (*p == '~' || *p == '/') ? 2 : 1;
    char *out = cm_xmalloc(n + 1), *o = out;
    for (const char *p = key; *p; p++) {
        if (*p == '~') {
            *o++ = '~';
            *o++ = '0';
        } else if (*p == '/') {
            *o++ = '~';
            *o++ = '1';
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static char *vpath(const char *first, va_list ap)
{
    size_t len = 0, cap = 64;
    char *out = cm_xmalloc(cap);
    out[0] = '\0';
    for (const char *seg = first; seg != NULL; seg = va_arg(ap, const char *)) {
        char *e = ij_jsonpatch_escape(seg);
        size_t el = strlen(e);
        while (len + el + 2 > cap)
            cap *= 2;
        out = cm_xrealloc(out, cap);
        out[len++] = '/';
        memcpy(out + len, e, el + 1);
        len += el;
        free(e);
    }
    return out;
}

char *ij_jsonpatch_path(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    char *p = vpath(first, ap);
    va_end(ap);
    return p;
}

void ij_jsonpatch_op(json_t *patch, const char *op, const char *path, json_t *value)
{
    json_t *o = json_object();
    json_object_set_new(o, "op", json_string(op));
    json_object_set_new(o, "path", json_string(path));
    if (value != NULL)
        json_object_set_new(o, "value", value);
    json_array_append_new(patch, o);
}

void ij_jsonpatch_add(json_t *patch, json_t *value, ...)
{
    va_list ap;
    va_start(ap, value);
    const char *first = va_arg(ap, const char *);
    char *p = vpath(first, ap);
    va_end(ap);
    ij_jsonpatch_op(patch, "add", p, value);
    free(p);
}

/* ---- apply (tests and fuzzing) -------------------------------------------- */

/* Unescape one token in place; false on a bad "~" sequence. */
static bool unescape(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p != '~') {
            *o++ = *p;
            continue;
        }
        if (p[1] == '0')
            *o++ = '~';
        else if (p[1] == '1')
            *o++ = '/';
        else
            return false;
        p++;
    }
    *o = '\0';
    return true;
}

/* Array index token: digits without a leading zero, or "-" (append) when allowed. */
static bool array_index(const char *tok, size_t size, bool dash_ok, size_t *out)
{
    if (strcmp(tok, "-") == 0 && dash_ok) {
        *out = size;
        return true;
    }
    if (*tok == '\0' || (tok[0] == '0' && tok[1] != '\0'))
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(tok, &end, 10);
    if (*end != '\0' || errno != 0 || tok[0] == '-' || tok[0] == '+')
        return false;
    *out = (size_t)v;
    return true;
}

/* Resolve all but the last token: *parent and the unescaped last token (heap). */
static int resolve(json_t *doc, const char *path, json_t **parent, char **last)
{
    if (path[0] != '/')
        return CM_ERR_INVAL;
    char *copy = cm_xstrdup(path + 1), *save = copy;
    json_t *cur = doc;
    for (;;) {
        char *slash = strchr(copy, '/');
        if (slash == NULL)
            break;
        *slash = '\0';
        if (!unescape(copy))
            goto fail;
        if (json_is_object(cur)) {
            cur = json_object_get(cur, copy);
        } else if (json_is_array(cur)) {
            size_t i;
            if (!array_index(copy, json_array_size(cur), false, &i))
                goto fail;
            cur = json_array_get(cur, i);
        } else {
            goto fail;
        }
        if (cur == NULL)
            goto fail;
        copy = slash + 1;
    }
    if (!unescape(copy))
        goto fail;
    *parent = cur;
    *last = cm_xstrdup(copy);
    free(save);
    return 0;
fail:
    free(save);
    return CM_ERR_INVAL;
}

static int apply_one(json_t *doc, json_t *op)
{
    const char *name = json_string_value(json_object_get(op, "op"));
    const char *path = json_string_value(json_object_get(op, "path"));
    json_t *value = json_object_get(op, "value"), *parent;
    char *last = NULL;
    size_t i;
    int rc = CM_ERR_INVAL;

    if (name == NULL || path == NULL || path[0] == '\0')
        return CM_ERR_INVAL; /* whole-document operations are never ours */
    if (resolve(doc, path, &parent, &last) != 0)
        return CM_ERR_INVAL;
    if (strcmp(name, "add") == 0 && value != NULL) {
        if (json_is_object(parent))
            rc = json_object_set_new(parent, last, json_deep_copy(value)) == 0 ? 0 : CM_ERR_INVAL;
        else if (json_is_array(parent) && array_index(last, json_array_size(parent), true, &i) &&
                 i <= json_array_size(parent))
            rc = json_array_insert_new(parent, i, json_deep_copy(value)) == 0 ? 0 : CM_ERR_INVAL;
    } else if (strcmp(name, "replace") == 0 && value != NULL) {
        if (json_is_object(parent) && json_object_get(parent, last) != NULL)
            rc = json_object_set_new(parent, last, json_deep_copy(value)) == 0 ? 0 : CM_ERR_INVAL;
        else if (json_is_array(parent) && array_index(last, json_array_size(parent), false, &i) &&
                 i < json_array_size(parent))
            rc = json_array_set_new(parent, i, json_deep_copy(value)) == 0 ? 0 : CM_ERR_INVAL;
    } else if (strcmp(name, "remove") == 0) {
        if (json_is_object(parent))
            rc = json_object_del(parent, last) == 0 ? 0 : CM_ERR_INVAL;
        else if (json_is_array(parent) && array_index(last, json_array_size(parent), false, &i))
            rc = json_array_remove(parent, i) == 0 ? 0 : CM_ERR_INVAL;
    } else if (strcmp(name, "test") == 0 && value != NULL) {
        json_t *cur = NULL;
        if (json_is_object(parent))
            cur = json_object_get(parent, last);
        else if (json_is_array(parent) && array_index(last, json_array_size(parent), false, &i))
            cur = json_array_get(parent, i);
        rc = cur != NULL && json_equal(cur, value) ? 0 : CM_ERR_INVAL;
    }
    free(last);
    return rc;
}

int ij_jsonpatch_apply(json_t *doc, json_t *patch)
{
    size_t i;
    json_t *op;
    if (!json_is_array(patch))
        return CM_ERR_INVAL;
    json_array_foreach(patch, i, op)
    {
        if (!json_is_object(op) || apply_one(doc, op) != 0)
            return CM_ERR_INVAL;
    }
    return 0;
}
