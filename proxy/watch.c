/* The event loop's file watch (proxy/watch.h). */
#include "proxy/watch.h"

#include <event2/event.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

static void report_gone(struct px_watch *w, int i)
{
    cm_watch_set_error(&w->files, "%s: %s (keeping the last good %s)", w->files.paths[i],
                       strerror(w->files.stamps[i].err), w->what);
    cm_warn("%s: %s", w->what, cm_watch_last_error(&w->files));
}

bool px_watch_check(struct px_watch *w)
{
    if (!cm_watch_poll(&w->files))
        return false;
    int gone = cm_watch_failed(&w->files);
    if (gone >= 0)
        report_gone(w, gone);
    if (w->on_change != NULL)
        w->on_change(w->arg, gone >= 0);
    return true;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_watch_check(arg);
}

void px_watch_start(struct px_watch *w, const char *what, struct event_base *base,
                    const char *const *paths, size_t n, px_watch_fn on_change, void *arg)
{
    memset(w, 0, sizeof(*w));
    cm_watch_init(&w->files, paths, n);
    w->what = what;
    w->on_change = on_change;
    w->arg = arg;
    if (base == NULL || on_change == NULL)
        return;
    w->timer = event_new(base, -1, EV_PERSIST, on_tick, w);
    if (w->timer == NULL)
        return;
    int64_t ms = cm_watch_interval_ms();
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(w->timer, &tv);
}

void px_watch_stop(struct px_watch *w)
{
    if (w->timer != NULL)
        event_free(w->timer);
    cm_watch_deinit(&w->files);
    memset(w, 0, sizeof(*w));
}
