/* px_io internals shared by io.c and the transports (tls.c). */
#ifndef PX_IO_INT_H
#define PX_IO_INT_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <sys/types.h>

#include "common/list.h"
#include "common/net.h"
#include "proxy/io.h"

/* ops return codes besides byte counts */
#define PX_IO_AGAIN_READ  (-2) /* wait until readable */
#define PX_IO_AGAIN_WRITE (-3) /* wait until writable */
#define PX_IO_FAILED      (-1) /* error: errno (plain) or the transport's message */

/* A transport under an io: plaintext sockets, or TLS (tls.c). */
struct px_io_ops {
    /* Drive the handshake: 0 done, PX_IO_AGAIN_*, PX_IO_FAILED. NULL: none. */
    int (*handshake)(struct px_io *io);
    /* Read into `in`: >0 bytes, 0 EOF, PX_IO_AGAIN_*, PX_IO_FAILED. */
    ssize_t (*read)(struct px_io *io, struct evbuffer *in, size_t max);
    /* Write from `out`, draining what was sent: >=0 bytes, PX_IO_AGAIN_*, PX_IO_FAILED. */
    ssize_t (*write)(struct px_io *io, struct evbuffer *out);
    /* Bytes already read from the socket and decoded, waiting (TLS records). */
    size_t (*pending)(struct px_io *io);
    /* Half-close our sending side (TLS: close_notify first). */
    void (*shutdown)(struct px_io *io);
    /* Free transport state (io->xprt). */
    void (*free)(struct px_io *io);
};

struct px_io {
    struct event_base *base;
    int fd;
    const struct px_io_ops *ops;
    struct evbuffer *in, *out;
    struct event *rev, *wev;
    struct px_timer timer;
    px_io_cb on_read, on_drained;
    px_io_event_cb on_event;
    void *arg;
    size_t read_limit;
    size_t lowat;
    int err;
    bool read_on;   /* the owner wants input */
    bool rev_added; /* rev is registered */
    bool wev_added; /* wev is registered (output pushed back, or connecting) */
    bool connecting;
    bool connect_failed; /* connect() failed at once; reported from the timer */
    bool eof;
    bool shut_pending; /* shutdown(SHUT_WR) once the output is empty */
    bool shut_done;
    bool dead;          /* an error was reported: no more I/O */
    bool dirty;         /* on the flush list */
    bool handshaking;   /* a transport handshake (TLS) is in progress */
    bool out_blocked;   /* the socket pushed back: wait for EV_WRITE */
    bool hs_want_write; /* ... and waits for the socket to be writable */
    void *xprt;         /* transport state (TLS), owned through ops->free */
    bool has_addr;      /* addr is the connected peer (client side) */
    struct cm_addr addr;
    bool zombie;   /* freed (or fd released) during a callback: release after it */
    bool close_fd; /* ... and close the fd then */
    int busy;      /* depth of callbacks running on this io */
    struct cm_list dirty_link;
};

/* io.c: the handshake finished (tls.c calls it through the ops contract) */
void px_io_handshake_step(struct px_io *io);

#endif
