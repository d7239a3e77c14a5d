/* RFC 6902 JSON Patch documents, built with jansson, with RFC 6901 JSON
 * Pointer escaping of every key that goes into a path. */
#ifndef IJ_JSONPATCH_H
#define IJ_JSONPATCH_H

#include <jansson.h>
#include <stddef.h>

/* Escape one reference token: '~' -> "~0", '/' -> "~1". Returns a heap
 * string the caller frees. */
char *ij_jsonpatch_escape(const char *key);

/* Build a pointer from unescaped segments: ij_jsonpatch_path("metadata",
 * "annotations", "remora.io/status", NULL) -> "/metadata/annotations/remora.io~1status".
 * Heap string, caller frees. */
char *ij_jsonpatch_path(const char *first, ...) __attribute__((sentinel));

/* Append {"op": op, "path": path, "value": value} to the patch array.
 * Steals the reference to value (NULL for "remove"). */
void ij_jsonpatch_op(json_t *patch, const char *op, const char *path, json_t *value);
/* Same with a path given as segments (escaped here), NULL-terminated. */
void ij_jsonpatch_add(json_t *patch, json_t *value, ...) __attribute__((sentinel));

/* Apply a patch to doc in place (add, remove, replace, test; enough to check
 * our own patches in unit tests and the fuzzer). Returns 0 or CM_ERR_INVAL. */
int ij_jsonpatch_apply(json_t *doc, json_t *patch);

#endif
