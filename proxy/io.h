/* px_io: a non-blocking socket with an input and an output evbuffer — our
 * replacement for libevent's socket bufferevent on the data path.
 *
 * Why not bufferevent: per exchange it costs two epoll_ctl per write (the
 * write event is added when data is queued and removed when drained) and an
 * ioctl(FIONREAD) per read. px_io keeps the read event registered, writes
 * speculatively — queued output is flushed with one writev when the current
 * callback batch ends, and EV_WRITE is only registered when the socket
 * pushes back (EAGAIN) — and reads into fixed-size reserved space. Under
 * load that is recv + writev per hop and no epoll_ctl at all.
 *
 * It is also the transport seam of docs/style.md: byte I/O goes through a table
 * of operations {handshake, read, write, pending, shutdown, free}:
 * plaintext here, mbedTLS in tls.c.
 *
 * Ownership: whoever calls px_io_new owns the io and frees it with
 * px_io_free (which closes the fd). Callbacks never free the io directly:
 * they mark their owner closing and free it from a deferred event. */
#ifndef PX_IO_H
#define PX_IO_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/net.h"

struct px_io;

/* Events reported through the event callback. */
#define PX_IO_EOF       0x01 /* the peer closed its sending side */
#define PX_IO_ERROR     0x02 /* a socket error; px_io_errno() says which */
#define PX_IO_TIMEOUT   0x04 /* the timer set by px_io_set_timeout fired */
#define PX_IO_CONNECTED 0x08 /* an outgoing connect completed (TCP) */
#define PX_IO_HANDSHAKE 0x10 /* a TLS handshake completed (see proxy/tls.h) */

typedef void (*px_io_cb)(struct px_io *io, void *arg);
typedef void (*px_io_event_cb)(struct px_io *io, int what, void *arg);

/* Once per event loop, before any io; px_io_deinit frees the flush event. */
void px_io_init(struct event_base *base);
void px_io_deinit(void);

/* Wrap an accepted, connected fd (made non-blocking). */
struct px_io *px_io_new(struct event_base *base, int fd);
/* Start a non-blocking connect; PX_IO_CONNECTED or PX_IO_ERROR / PX_IO_TIMEOUT
 * is reported later. Output may be queued before it completes. Returns NULL
 * only when no socket could be made (errno set). */
struct px_io *px_io_connect(struct event_base *base, const struct cm_addr *addr,
                            uint32_t timeout_ms);
/* Free the io but keep the fd open and return it (hand-over to another
 * transport); buffered input is moved into `in_out` when not NULL. */
int px_io_release_fd(struct px_io *io, struct evbuffer *in_out);
/* Close the fd and free everything. Safe on NULL. */
void px_io_free(struct px_io *io);

void px_io_setcb(struct px_io *io, px_io_cb on_read, px_io_cb on_drained, px_io_event_cb on_event,
                 void *arg);
struct evbuffer *px_io_input(struct px_io *io);
struct evbuffer *px_io_output(struct px_io *io);
int px_io_fd(const struct px_io *io);
/* The errno of the last PX_IO_ERROR. */
int px_io_errno(const struct px_io *io);

/* Reading: on by default once callbacks are set. The input never grows past
 * `limit` bytes (reads stop until the owner drains it). */
void px_io_read_enable(struct px_io *io, bool on);
void px_io_set_read_limit(struct px_io *io, size_t limit);
/* on_drained is called when the output falls to `lowat` bytes or below
 * after having been above it (0: only when empty). */
void px_io_set_write_lowat(struct px_io *io, size_t lowat);
/* One timer per io: PX_IO_TIMEOUT after ms (0 cancels). */
void px_io_set_timeout(struct px_io *io, uint32_t ms);

/* A timer re-armed lazily, for timeouts that move on every request (idle,
 * header, pool-idle): setting or clearing it records the deadline, and the
 * libevent timer is added only when it must fire earlier than it is armed
 * for; a firing before the deadline re-arms for the rest. A keep-alive
 * request then costs no event_add/event_del pair per timer. The callback
 * must start with px_timer_due(). */
struct px_timer {
    struct event *ev;
    uint64_t deadline_us; /* monotonic; 0: not set */
    uint64_t armed_us;    /* when ev fires; 0: not pending */
};
void px_timer_init(struct px_timer *t, struct event_base *base, event_callback_fn cb, void *arg);
void px_timer_set(struct px_timer *t, uint32_t ms);
void px_timer_clear(struct px_timer *t);
/* In the callback: true when the deadline has passed (the timer is then
 * clear); false when it fired early (re-armed) or was cleared. */
bool px_timer_due(struct px_timer *t);
/* Stop it for good (the event stays allocated until px_timer_free). */
void px_timer_stop(struct px_timer *t);
void px_timer_free(struct px_timer *t);
/* Half-close: shut the write side once the output is flushed. */
void px_io_shutdown_write(struct px_io *io);
/* Queue output (same as evbuffer_add on px_io_output): flushed at the end of
 * the current callback batch. */
void px_io_write(struct px_io *io, const void *data, size_t len);

#endif
