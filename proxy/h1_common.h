/* Pieces shared by the HTTP/1.1 server and client codecs (private). */
#ifndef PX_H1_COMMON_H
#define PX_H1_COMMON_H

#include <event2/buffer.h>
#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/http.h"
#include "proxy/io.h"
#include "proxy/stream.h"

/* Collects a token that llhttp may hand over in several pieces (a header
 * name, then its value; or the URL). Bounded: over `max` it refuses. The
 * buffer belongs to the connection and is reused by every request on it. */
struct h1_acc {
    char *buf;
    size_t len, cap;
    size_t name_len; /* where the value starts, once the name is complete */
};

void px_h1_acc_reset(struct h1_acc *a);
void px_h1_acc_free(struct h1_acc *a);
/* Append; returns false when the total would pass max. */
bool px_h1_acc_append(struct h1_acc *a, const char *at, size_t len, size_t max);

/* The accumulated field is complete: validate it (RFC 9110 token name, no
 * CR/LF/NUL in the value, trailing whitespace dropped) and add it to m.
 * Returns 0, 400 for an invalid field, or 431 over the bounds; resets a. */
int px_h1_acc_take_header(struct h1_acc *a, struct px_arena *arena, struct px_msg *m,
                          uint32_t max_bytes, uint32_t max_count);

/* How a message body is delimited, decided from its head alone (RFC 9112
 * 6.1-6.3) before anything is forwarded. */
struct px_h1_framing {
    int64_t content_length; /* -1: none */
    bool chunked;           /* Transfer-Encoding: chunked */
};
/* Check the framing fields of m (Content-Length, Transfer-Encoding; all of
 * their field lines), received as HTTP/1.<http_minor>. Valid: at most one
 * Content-Length field holding 1 to 19 digits and at most 2^63-1; a
 * Transfer-Encoding whose codings are exactly one "chunked" (the only coding
 * we can take apart: anything else would reach the next hop undeclared); not
 * both; no Transfer-Encoding in HTTP/1.0. Returns NULL and fills out when
 * valid; else a static reason for the log, with *status 400 (or 501 for a
 * transfer coding other than chunked ahead of a final chunked). A response
 * is refused (502) on any reason. */
const char *px_h1_check_framing(const struct px_msg *m, int http_minor, struct px_h1_framing *out,
                                int *status);

/* A message head written into one extent reserved in the output evbuffer:
 * one reserve + commit per head instead of an evbuffer_add (each running the
 * buffer's callbacks) per piece, and no printf. `need` is an upper bound; if
 * it was short, the rest goes through evbuffer_add, so it is never wrong. */
struct px_h1_head {
    struct evbuffer *out;
    struct evbuffer_iovec v;
    char *p, *end; /* NULL: writing straight to out */
};

/* At least the bytes px_h1_put_headers writes for m (exact when no header was
 * removed from it): the size to reserve for a head. */
size_t px_h1_headers_size(const struct px_msg *m);
void px_h1_head_begin(struct px_h1_head *w, struct evbuffer *out, size_t need);
void px_h1_put(struct px_h1_head *w, const char *s, size_t n);
void px_h1_put_str(struct px_h1_head *w, const char *s);
void px_h1_put_u64(struct px_h1_head *w, uint64_t v);
/* The header list, skipping the framing headers the codec writes itself:
 * content-length, transfer-encoding, host, connection. */
void px_h1_put_headers(struct px_h1_head *w, const struct px_msg *m);
void px_h1_head_end(struct px_h1_head *w);

/* Body framing helpers (the per-request ones inline: they run on the
 * request path of both codecs). */
void px_h1_write_chunk(struct evbuffer *out, const uint8_t *data, size_t len);
void px_h1_write_last_chunk(struct evbuffer *out);
/* Body bytes as they go: one chunk, or as they are (a length or the close
 * delimits the body). */
static inline void px_h1_write_body(struct evbuffer *out, bool chunked, const uint8_t *data,
                                    size_t len)
{
    if (chunked)
        px_h1_write_chunk(out, data, len);
    else
        evbuffer_add(out, data, len);
}

/* Both codecs' input loop: the next run for llhttp. Resumes a parser paused
 * by a callback (*paused is cleared) and peeks the first extent of `in`
 * into *v. A parser paused on the body's last bytes stands just before
 * on_message_complete, which needs no input, and the peer sends nothing
 * more until it is answered: then *v is an empty run. Returns false when
 * there is nothing to run. */
static inline bool px_h1_next_run(llhttp_t *p, bool *paused, struct evbuffer *in,
                                  struct evbuffer_iovec *v)
{
    bool resumed = *paused;
    if (resumed) {
        llhttp_resume(p);
        *paused = false;
    }
    if (evbuffer_peek(in, -1, NULL, v, 1) < 1 || v->iov_len == 0) {
        if (!resumed)
            return false;
        v->iov_base = (void *)"";
        v->iov_len = 0;
    }
    return true;
}

/* A tunnel after a 101: hand the first extent of io's input to s as data
 * from `from` (the request's from downstream, the response's from
 * upstream) and drain it; when the other side is full set *paused and stop
 * reading. Returns false when the input is empty. */
bool px_h1_tunnel_step(struct px_io *io, struct px_stream *s, enum px_side from, bool *paused);

/* The stream's resume op: reading goes on if the body had paused it.
 * Returns whether it had (the caller then processes the held input). */
static inline bool px_h1_resume_read(struct px_io *io, bool *paused)
{
    if (!*paused)
        return false;
    *paused = false;
    px_io_read_enable(io, true);
    return true;
}

/* The server half's drain and shutdown (h1_server.c), called by px_h1_drain
 * and px_h1_shutdown (h1_client.c). */
void px_h1_server_drain(void);
void px_h1_server_shutdown(void);

/* llhttp returns: do not let a codec call back into itself. */
#define PX_H1_PAUSE HPE_PAUSED

#endif
