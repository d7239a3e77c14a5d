/* The JSON access log (proxy/accesslog.h; fields in docs/observability.md). */
#include "proxy/accesslog.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/conn.h"
#include "proxy/stream.h"
#include "proxy/trace.h"

/* Peer-supplied text may be anything (0xff is not UTF-8, and jansson refuses
 * it): escaped, so the line always names what was asked. */
static void set_escaped(json_t *o, const char *key, const char *v)
{
    size_t n = strlen(v);
    char small[256];
    char *e = 4 * n + 1 <= sizeof(small) ? small : cm_xmalloc(4 * n + 1);
    cm_log_escape(e, 4 * n + 1, v, n);
    json_object_set_new(o, key, json_string(e));
    if (e != small)
        free(e);
}

static void set_hex(json_t *o, const char *key, const uint8_t *b, size_t n)
{
    char h[33];
    px_trace_hex(b, n, h);
    json_object_set_new(o, key, json_string(h));
}

static void emit(FILE *f, json_t *o)
{
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (line != NULL) {
        fputs(line, f);
        fputc('\n', f);
        fflush(f);
        free(line);
    }
    json_decref(o);
}

/* The fields both kinds of line start with. */
static json_t *common_fields(const struct px_listener_cfg *lcfg, const struct cm_addr *peer,
                             const char *protocol)
{
    json_t *o = json_object();
    char ts[32], p[CM_ADDR_STRLEN];
    json_object_set_new(o, "time", json_string(cm_fmt_rfc3339_ms(cm_wall_ms(), ts, sizeof(ts))));
    json_object_set_new(o, "listener", json_string(lcfg->name));
    json_object_set_new(o, "direction",
                        json_string(lcfg->direction == PX_DIR_INBOUND ? "inbound" : "outbound"));
    json_object_set_new(o, "protocol", json_string(protocol));
    json_object_set_new(o, "peer", json_string(cm_addr_format(peer, p, sizeof(p))));
    return o;
}

void px_accesslog_http(FILE *f, const struct px_stream *s, int status, uint64_t dur_us)
{
    if (f == NULL)
        return;
    const struct px_trace *t = &s->tr;
    const char *dname = s->ops[PX_DOWN] != NULL ? s->ops[PX_DOWN]->name : "";
    const char *proto = strncmp(dname, "h2", 2) == 0 ? "HTTP/2"
                        : s->req.http_minor == 0     ? "HTTP/1.0"
                                                     : "HTTP/1.1";
    json_t *o = common_fields(s->lcfg, &s->conn_peer, proto);
    if (t->request_id != NULL)
        json_object_set_new(o, "request_id", json_string(t->request_id));
    if (t->traced) {
        set_hex(o, "trace_id", t->trace_id, sizeof(t->trace_id));
        set_hex(o, "span_id", t->span_id, sizeof(t->span_id));
        if (t->has_parent)
            set_hex(o, "parent_span_id", t->parent_id, sizeof(t->parent_id));
        json_object_set_new(o, "sampled", json_boolean(t->flags & 1));
    }
    if (t->peer_id != NULL)
        set_escaped(o, "peer_identity", t->peer_id);
    set_escaped(o, "method", s->req.method ? s->req.method : "-");
    set_escaped(o, "authority", s->req.authority ? s->req.authority : "");
    set_escaped(o, "path", s->req.path ? s->req.path : "-");
    json_object_set_new(o, "status", json_integer(status));
    json_object_set_new(o, "duration_ms", json_real((double)dur_us / 1000.0));
    json_object_set_new(o, "request_bytes", json_integer((json_int_t)s->req_body_bytes));
    json_object_set_new(o, "response_bytes", json_integer((json_int_t)s->resp_body_bytes));
    if ((s->head_sent[PX_UP] || s->tries > 0) && s->target.addr.len > 0) {
        char up[CM_ADDR_STRLEN];
        json_object_set_new(o, "upstream",
                            json_string(cm_addr_format(&s->target.addr, up, sizeof(up))));
        json_object_set_new(o, "upstream_protocol",
                            json_string(s->target.proto == PX_TGT_H2 ? "HTTP/2" : "HTTP/1.1"));
    }
    if (t->rule != NULL)
        set_escaped(o, "policy_rule", t->rule);
    json_object_set_new(o, "retries", json_integer(s->tries > 1 ? s->tries - 1 : 0));
    if (s->cause != PX_CAUSE_NONE)
        json_object_set_new(o, "cause", json_string(px_cause_str(s->cause)));
    emit(f, o);
}

void px_accesslog_tcp(FILE *f, const struct px_conn *c, const struct px_tcp_log *l)
{
    if (f == NULL)
        return;
    json_t *o = common_fields(c->lcfg, &c->peer, "tcp");
    json_object_set_new(o, "connection", json_integer((json_int_t)c->id));
    if (c->mtls && c->peer_id[0] != '\0')
        set_escaped(o, "peer_identity", c->peer_id);
    json_object_set_new(o, "duration_ms",
                        json_real((double)(cm_mono_us() - c->accepted_us) / 1000.0));
    json_object_set_new(o, "request_bytes", json_integer((json_int_t)l->bytes[0]));
    json_object_set_new(o, "response_bytes", json_integer((json_int_t)l->bytes[1]));
    if (l->upstream.len > 0) {
        char up[CM_ADDR_STRLEN];
        json_object_set_new(o, "upstream",
                            json_string(cm_addr_format(&l->upstream, up, sizeof(up))));
    }
    if (l->rule[0] != '\0')
        set_escaped(o, "policy_rule", l->rule);
    if (l->cause != NULL)
        json_object_set_new(o, "cause", json_string(l->cause));
    emit(f, o);
}
