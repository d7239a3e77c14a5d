/* Unit tests of px_grpc_health_parse (proxy/grpc_health.c): the app's
 * grpc.health.v1.HealthCheckResponse in one gRPC message. The checks against
 * a real gRPC server are test/integration/grpc_probe.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "proxy/grpc_health.h"

#define PARSE(lit, st) px_grpc_health_parse((const uint8_t *)(lit), sizeof(lit) - 1, (st))

static void statuses(void **state)
{
    (void)state;
    int64_t st = 99;
    assert_int_equal(PARSE("\x00\x00\x00\x00\x02\x08\x01", &st), 0);
    assert_int_equal(st, 1); /* SERVING */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x02\x08\x02", &st), 0);
    assert_int_equal(st, 2); /* NOT_SERVING */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x00", &st), 0);
    assert_int_equal(st, 0); /* an empty message: UNKNOWN, proto3's default */
    /* unknown fields of every wire type are skipped, wherever they are */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x15\x12\x03"
                           "abc\x08\x03\x1d\x01\x02\x03\x04\x11\x01\x02\x03\x04\x05\x06\x07\x08",
                           &st),
                     0);
    assert_int_equal(st, 3);
    /* an enum is an int32: -1 comes as ten bytes */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x0b\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", &st),
                     0);
    assert_int_equal(st, -1);
    /* the last occurrence wins, as protobuf says */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x04\x08\x02\x08\x01", &st), 0);
    assert_int_equal(st, 1);
}

static void refusals(void **state)
{
    (void)state;
    int64_t st;
    assert_int_equal(PARSE("", &st), -1);
    assert_int_equal(PARSE("\x00\x00\x00\x00", &st), -1);                 /* short header */
    assert_int_equal(PARSE("\x01\x00\x00\x00\x02\x08\x01", &st), -1);     /* compressed */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x03\x08\x01", &st), -1);     /* length too big */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x01\x08\x01", &st), -1);     /* two messages */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x01\x08", &st), -1);         /* truncated varint */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x02\x0a\x05", &st), -1);     /* bytes past the end */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x02\x0b\x01", &st), -1);     /* wire type 3 */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x02\x00\x01", &st), -1);     /* field 0 */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x02\x0d\x01", &st), -1);     /* status as fixed32 */
    assert_int_equal(PARSE("\x00\x00\x00\x00\x03\x09\x01\x02", &st), -1); /* short fixed64 */
    assert_int_equal(
        PARSE("\x00\x00\x00\x00\x0c\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", &st),
        -1); /* an 11-byte varint */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(statuses),
        cmocka_unit_test(refusals),
    };
    return cmocka_run_group_tests_name("proxy/grpc_health", tests, NULL, NULL);
}
