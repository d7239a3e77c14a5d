/* Internals of the TokenReview checker (injector/tokenreview.c) that its unit
 * test drives without an API server: the checker's state and its bounded
 * cache. Not an API: injector/tokenreview.h is. */
#ifndef IJ_TOKENREVIEW_INT_H
#define IJ_TOKENREVIEW_INT_H

#include <pthread.h>
#include <stdint.h>

#include "injector/tokenreview.h"

struct ij_tokrev_slot {
    unsigned char key[32]; /* SHA-256 of the token */
    int64_t expires_ms;    /* 0: empty */
    unsigned char result;  /* enum ij_tokrev_result */
    char msg[IJ_TOKREV_MSG_MAX];
};

enum {
    IJ_TOKREV_CNT_HIT,
    IJ_TOKREV_CNT_MISS,
    IJ_TOKREV_CNT_OK,
    IJ_TOKREV_CNT_REJECTED,
    IJ_TOKREV_CNT_POD_GONE,
    IJ_TOKREV_CNT_ERROR,
    IJ_TOKREV_CNT__COUNT
};

struct ij_tokrev {
    struct ij_kube *kube;
    const char *audience;
    int64_t cache_ms;
    pthread_mutex_t mu;           /* guards slots and counters */
    struct ij_tokrev_slot *slots; /* IJ_TOKREV_CACHE_SLOTS */
    uint64_t count[IJ_TOKREV_CNT__COUNT];
};

/* The cache, under r->mu: the live entry for key at now, or NULL; store the
 * answer for key until `until` (the same token's slot, an empty or expired
 * one, else the one closest to expiry: never more than a bucket). */
struct ij_tokrev_slot *ij_tokrev_cache_lookup(struct ij_tokrev *r, const unsigned char key[32],
                                              int64_t now);
void ij_tokrev_cache_store(struct ij_tokrev *r, const unsigned char key[32], int64_t now,
                           int64_t until, enum ij_tokrev_result res, const char *msg);

#endif
