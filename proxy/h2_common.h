/* Private to the HTTP/2 codec (proxy/h2.c, h2_server.c, h2_client.c): the
 * session and per-stream objects shared by the server and client sides.
 *
 * A px_h2_session wraps one nghttp2 session and one px_io (proxy/io.h).
 * Input is fed to nghttp2_session_mem_recv(); output goes through
 * nghttp2_session_send() whose callbacks append to the io's output and
 * answer WOULDBLOCK above PX_H2_OUT_HIGH, so the socket buffer stays
 * bounded. DATA frames are
 * written with NGHTTP2_DATA_FLAG_NO_COPY: the payload moves from the
 * stream's evbuffer to the socket's without a copy into nghttp2.
 *
 * Nothing is freed inside an nghttp2 or px_io callback: a finished
 * session is marked PX_H2_CLOSING and its `defer` event frees it on the
 * next loop turn (after reporting its remaining streams as failed). */
#ifndef PX_H2_COMMON_H
#define PX_H2_COMMON_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/list.h"
#include "common/net.h"
#include "proxy/conn.h"
#include "proxy/io.h"
#include "proxy/stream.h"

/* Socket output high watermark: nghttp2 stops producing frames above it and
 * resumes when the io's output drained to half of it. */
#define PX_H2_OUT_HIGH (64 * 1024)
/* Interim (1xx) responses skipped on one client stream before we call the
 * upstream broken: each costs arena memory. */
#define PX_H2_MAX_1XX 8
/* Consecutive empty DATA frames (no payload, no END_STREAM) a client may
 * send: each costs a callback round and carries nothing (CVE-2019-9518). */
#define PX_H2_MAX_EMPTY_FRAMES 100

enum px_h2_role {
    PX_H2_SERVER = 0, /* downstream: we answer requests */
    PX_H2_CLIENT = 1  /* upstream: we send requests */
};

enum px_h2_sess_state {
    PX_H2_CONNECTING = 0, /* client: TCP connect in flight; frames wait inside nghttp2 */
    PX_H2_OPEN,           /* frames flow both ways; new streams are welcome */
    PX_H2_GOAWAY,         /* GOAWAY sent or received: in-flight streams finish, no new ones */
    PX_H2_CLOSING         /* finished; `defer` frees it on the next loop turn */
};

struct px_h2_session {
    enum px_h2_role role;
    enum px_h2_sess_state state;
    nghttp2_session *ng;      /* owned */
    struct px_io *io;         /* owned (server: taken over from the px_conn) */
    struct event *defer;      /* zero-delay work: flush output, or free when closing */
    struct event *idle;       /* no streams for a while: server idle / pool idle timeout */
    struct event *head_timer; /* server: a request head unfinished after header_timeout_ms */
    struct cm_list streams;   /* px_h2_stream of this session */
    uint32_t nstreams;
    uint32_t norphans;        /* client: streams flagged orphan since the last defer walk */
    bool close_when_flushed;  /* nghttp2 is done: close once the output is written */
    bool got_settings;        /* client: the upstream's first SETTINGS arrived */
    enum px_cause fail_cause; /* client: what the remaining streams are told */
    struct cm_list link;      /* in the server list, or in the client pool */
    struct px_conn *conn;     /* server: the downstream connection (owned) */
    struct cm_addr addr;      /* client: upstream address (the pool key) */
    bool tls;                 /* client: mTLS to another sidecar (part of the pool key) */
    char *expected_id;        /* client: the SPIFFE ID the peer must show (pool key), or NULL */
    uint64_t nrequests;       /* client: streams started on it */
    uint64_t id;              /* for logs; unique (a resend avoids a session by it) */
    struct px_server *srv;    /* the proxy it belongs to */
    /* server: hostile-peer bookkeeping (proxy/h2_server.c) */
    int32_t last_req_id;      /* highest client stream id seen on a HEADERS frame */
    uint32_t nready;          /* streams with a complete head not dispatched yet */
    uint32_t nresets;         /* stream resets charged to the client in this window */
    uint32_t nempty;          /* consecutive DATA frames without payload or END_STREAM */
    uint64_t reset_window_ms; /* when the current reset window started (monotonic) */

    /* client: its endpoint's circuit breakers (this connection is counted there) */
    struct px_upstream_ep *pool_ep; /* client: its pool record (proxy/pool.h) */
    struct cm_list plink;           /* client: in pool_ep->h2_sessions */
};

enum px_h2_in_state {
    PX_H2_IN_HEAD = 0, /* receiving the head (HEADERS + CONTINUATION, or 1xx heads) */
    PX_H2_IN_BODY,     /* head reported to the stream; DATA flows */
    PX_H2_IN_TRAILERS, /* receiving a trailer block */
    PX_H2_IN_DONE      /* END_STREAM received and reported */
};

enum px_h2_out_state {
    PX_H2_OUT_IDLE = 0, /* our head not submitted yet */
    PX_H2_OUT_BODY,     /* head submitted; body bytes pass through `out` */
    PX_H2_OUT_END,      /* send_end seen: EOF (then trailers) once `out` is empty */
    PX_H2_OUT_DONE      /* END_STREAM framed, or the stream was reset */
};

/* One HTTP/2 stream of a session, the codec's side of a px_stream
 * (s->ctx[PX_DOWN] for the server, s->ctx[PX_UP] for the client). Owned by
 * the session: freed on nghttp2's on_stream_close, or when the session is
 * destroyed. It borrows `s` until it detaches (s = NULL afterwards). */
struct px_h2_stream {
    struct px_h2_session *sess;
    struct px_stream *s; /* NULL once detached */
    int32_t id;          /* nghttp2 stream id; -1 before the request is submitted */
    enum px_h2_in_state in;
    enum px_h2_out_state out;
    struct evbuffer *buf; /* body bytes toward the peer, not framed yet */
    size_t held;          /* DATA bytes received but not consumed (window held back) */
    bool paused;          /* the other side is full: hold window updates */
    bool deferred;        /* our data provider said DEFERRED: resume on new bytes */
    bool refused;         /* server: the head was refused (RST or local answer) */
    bool too_big;         /* the head passed max_header_bytes / max_headers */
    bool failing;         /* reporting an error to the stream: ignore abort */
    bool head_ready;      /* server: head complete, dispatched once the input read so
                           * far is processed (a RST_STREAM in it cancels it first) */
    bool head_es;         /* server: ... and it ended the stream */
    bool orphan;          /* client: nghttp2 will never mention it again (never
                           * submitted, or its HEADERS were not sent): `defer`
                           * reports `fail` if still attached, then frees it */
    enum px_cause fail;
    bool connect;              /* client: an extended CONNECT (RFC 8441) carrying an HTTP Upgrade */
    bool no_connect;           /* client: ... that the peer did not enable: `defer` answers 502 */
    int n1xx;                  /* client: interim responses skipped */
    uint64_t head_deadline_ms; /* server: the head must be complete by then */
    struct px_msg *trailers;   /* trailer block being received */
    struct cm_list link;       /* in sess->streams */
};

/* ---- shared machinery (proxy/h2.c) ---- */

/* A session with its events (not its nghttp2 session, which the
 * server/client code sets up); takes ownership of io. Freed through
 * px_h2_session_close(). */
struct px_h2_session *px_h2_session_new(struct px_server *srv, enum px_h2_role role,
                                        struct px_io *io);
/* nghttp2 options and callbacks common to both roles; role-specific
 * callbacks are added by the caller. Caller deletes both. */
void px_h2_common_setup(nghttp2_session_callbacks **cbs, nghttp2_option **opt);
/* Our SETTINGS (max concurrent streams, windows, header list size) and the
 * connection window. Returns 0 or an nghttp2 error. */
int px_h2_submit_settings(struct px_h2_session *sess);
/* Create sess->ng for the session's role from the callbacks and options of
 * px_h2_common_setup (both deleted here); aborts on out of memory. */
void px_h2_session_make_ng(struct px_h2_session *sess, nghttp2_session_callbacks *cbs,
                           nghttp2_option *opt);
/* Install the read/drained/event callbacks on sess->io. */
void px_h2_session_io(struct px_h2_session *sess);
/* Mark the session closing (once) and free it on the next loop turn; its
 * remaining streams are reported with `cause` (client) or as downstream
 * resets (server). */
void px_h2_session_close(struct px_h2_session *sess, enum px_cause cause);
/* Flush (and read held input) on the next loop turn. */
void px_h2_session_schedule(struct px_h2_session *sess);
/* Server: a request head started; make sure it finishes in time. */
void px_h2_session_watch_head(struct px_h2_session *sess, struct px_h2_stream *st);
/* Arm or disarm the idle timer after the stream count changed. */
void px_h2_session_idle_update(struct px_h2_session *sess);
/* Connection became usable (client connected): send what nghttp2 queued. */
void px_h2_session_flush(struct px_h2_session *sess);

/* A stream record in sess->streams (counted, idle timer stopped). */
struct px_h2_stream *px_h2_stream_new(struct px_h2_session *sess, struct px_stream *s);
/* Unlink and free a stream record (after it detached). */
void px_h2_stream_free(struct px_h2_stream *st);
/* Detach from the px_stream once (st->s becomes NULL). */
void px_h2_stream_detach(struct px_h2_stream *st);
/* The other side accepted held bytes: consume them (window updates). */
void px_h2_stream_consume(struct px_h2_stream *st, size_t len);
/* The stream ops' pending / resume: bytes queued toward the peer; the
 * other side drained, so consume what was held. */
size_t px_h2_stream_pending(const struct px_h2_stream *st);
void px_h2_stream_resume(struct px_h2_stream *st);
/* Report `cause` to the attached px_stream on this role's side, with
 * st->failing set meanwhile (its abort op then leaves the stream alone). */
void px_h2_stream_fail(struct px_h2_stream *st, enum px_cause cause);
/* From on_stream_close: detach (if attached), forget and free the record. */
void px_h2_stream_closed(struct px_h2_stream *st);
/* A second HEADERS after the body: the trailers message starts (arena). */
void px_h2_stream_begin_trailers(struct px_h2_stream *st);

/* Fill an nghttp2 header list for a request (client) or response (server)
 * head. Strips connection-specific fields; content-length comes from
 * m->content_length. *nva and *clmem are heap memory the caller frees
 * (after submitting: nghttp2 copies); strings point into m, statusbuf (4
 * bytes) and *clmem. Returns the count. */
size_t px_h2_make_nv(const struct px_msg *m, bool request, nghttp2_nv **nva, char *statusbuf,
                     char **clmem);
/* Header list of a trailer block (same filtering). */
size_t px_h2_make_trailer_nv(const struct px_msg *m, nghttp2_nv **nva);
/* Data provider reading st->buf (NO_COPY; trailers submitted at EOF). */
ssize_t px_h2_read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                        uint32_t *flags, nghttp2_data_source *src, void *user_data);
/* Queue body bytes / the end of the body on st and wake the data provider. */
void px_h2_stream_queue(struct px_h2_stream *st, const uint8_t *data, size_t len);
void px_h2_stream_queue_end(struct px_h2_stream *st);
/* Received DATA bytes (from on_data_chunk_recv) were handed to the stream:
 * consume now, or hold the window when the other side is full; consume
 * them too when the stream went away taking them. */
void px_h2_stream_received(struct px_h2_stream *st, size_t len, bool full);
/* on_data_chunk_recv of either role: the peer's DATA bytes on stream `id`
 * (record st, or NULL) go to the attached stream (the request body on the
 * server, the response body on the client), then px_h2_stream_received;
 * bytes nobody takes (no stream, refused, not in the body) are consumed. */
void px_h2_stream_in_data(nghttp2_session *ng, int32_t id, struct px_h2_stream *st,
                          const uint8_t *data, size_t len);
/* The peer's message ended (END_STREAM, or `trailers`, NULL for none):
 * st->in becomes DONE and the attached stream learns it. */
void px_h2_stream_in_end(struct px_h2_stream *st, struct px_msg *trailers);
/* Parse a header field into msg (pseudo fields by name). Returns 0, or
 * CM_ERR_LIMIT when over the head bounds, CM_ERR_PROTO when invalid. */
int px_h2_add_field(struct px_stream *s, struct px_msg *m, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen);
/* on_header of either role: a field of the head (into `head`) or of the
 * trailers, by st->in. Over the bounds sets st->too_big and returns 0;
 * returns CM_ERR_PROTO for an invalid field. */
int px_h2_stream_add_field(struct px_h2_stream *st, struct px_msg *head, const uint8_t *name,
                           size_t namelen, const uint8_t *value, size_t valuelen);

/* ---- per-role hooks ---- */
/* Server: report the request heads completed by the input just processed
 * (streams reset in the same input never reach the upstream). */
void px_h2_server_dispatch_heads(struct px_h2_session *sess);
/* Server: nghttp2 refused the input (bad preface, fatal framing error):
 * GOAWAY with the matching code, then close once it is written. Returns
 * false when the session must close at once. */
bool px_h2_server_bad_input(struct px_h2_session *sess, int lib_error);
void px_h2_client_fail_pending(struct px_h2_session *sess);
void px_h2_client_on_event(struct px_h2_session *sess, short what);
void px_h2_server_drain_all(void);
void px_h2_client_drain_all(void);
/* Destroy now (shutdown path; also used by the deferred close). */
void px_h2_session_destroy(struct px_h2_session *sess);

extern struct cm_list px_h2_server_list;
extern struct cm_list px_h2_client_list;
extern unsigned px_h2_nserver, px_h2_nclient;

#endif
