/* The test oracle of the policy engine: px_policy_decide without the index, a
 * plain scan of the rules in file order. The index must find the same rule
 * (docs/policy.md "Performance"), so test_policy.c and the fuzzers
 * fuzz_policy.c, fuzz_policy_decide.c and fuzz_detect_tcp.c hold the two to the
 * same answer. Shared by those; not part of the proxy. */
#ifndef TEST_POLICY_ORACLE_H
#define TEST_POLICY_ORACLE_H

#include "proxy/policy.h"
#include "proxy/policy_int.h"

static inline void decide_linear(const struct px_policy *p, const struct px_policy_request *r,
                                 char *scratch, size_t scratch_len, struct px_policy_decision *d)
{
    struct px_policy_view v;
    if (px_policy_prepare(p, r, scratch, scratch_len, &v, d) != 0)
        return;
    int64_t deny = px_policy_find_linear(p, true, &v);
    int64_t allow = deny < 0 ? px_policy_find_linear(p, false, &v) : -1;
    px_policy_conclude(p, deny, allow, d);
}

#endif
