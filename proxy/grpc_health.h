/* gRPC probes on the health port (issue 19): kubelet's `grpc:` probes, which
 * the injector rewrites to an HTTP GET of /app-health/<container>/<kind> on
 * 15020, are answered by a grpc.health.v1.Health/Check call to the app over
 * plaintext h2c on 127.0.0.1 (nghttp2), as kubelet would make it: 200 when the
 * app says SERVING, else 503 saying why. The targets come from the env
 * REMORA_APP_GRPC_PROBERS, written by the injector:
 *   {"/app-health/api/livez": {"grpc": {"port": 9000, "service": ""},
 *                              "timeoutSeconds": 1}}
 * The HTTP probes are proxy/prober.c's (REMORA_APP_PROBERS). */
#ifndef PX_GRPC_HEALTH_H
#define PX_GRPC_HEALTH_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct px_grpc_health;

/* The probers of `env` (NULL or "": none; bad entries are logged and left
 * out, so their paths answer 404). Never NULL; free with px_grpc_health_free. */
struct px_grpc_health *px_grpc_health_new(struct event_base *base, const char *env);
/* Answer every check in flight 503 ("shutting down") and free all. */
void px_grpc_health_free(struct px_grpc_health *g);
/* Is `path` one of ours? Then the check starts and `req` is answered when it
 * ends (true); else false and the caller goes on. */
bool px_grpc_health_handle(struct px_grpc_health *g, const char *path, struct evhttp_request *req);
/* How many probers were loaded. */
size_t px_grpc_health_count(const struct px_grpc_health *g);

/* Read a grpc.health.v1.HealthCheckResponse from one length-prefixed gRPC
 * message (flag byte, 4-byte length, protobuf): 0 with *status (1 SERVING,
 * 2 NOT_SERVING, 3 SERVICE_UNKNOWN, 0 UNKNOWN or absent, other values as
 * sent), -1 when the bytes are not exactly one such uncompressed message. */
int px_grpc_health_parse(const uint8_t *buf, size_t len, int64_t *status);

#endif
