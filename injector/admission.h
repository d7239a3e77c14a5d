/* AdmissionReview in, AdmissionReview out: parse and check the request,
 * decide, build the patch, encode the response. No I/O: the HTTP server
 * and the fuzzer both call ij_admission_review. */
#ifndef IJ_ADMISSION_H
#define IJ_ADMISSION_H

#include <stddef.h>

#include "injector/inject.h"

struct ij_review {
    int http_status;           /* 200, or 400 for a body that is not an AdmissionReview */
    enum ij_decision decision; /* meaningful when http_status is 200 */
    char *body;                /* response body (JSON, heap); caller frees */
    size_t body_len;
    char *uid;    /* the request's uid (heap, NULL on 400), for logs */
    char *errmsg; /* why a 400 (heap, NULL on 200) */
};

/* Review one request body. Always fills *out (body included, also for a
 * 400); the caller releases it with ij_review_deinit. Never aborts on
 * input; bounded work for bounded input. */
void ij_admission_review(const struct ij_inject_params *p, const char *body, size_t len,
                         struct ij_review *out);
void ij_review_deinit(struct ij_review *r);

/* Standard base64 of s (heap, caller frees; *olen its length), or NULL; for the unit tests. */
char *ij_admission_base64(const char *s, size_t len, size_t *olen);

#endif
