/* One definition of "this file changed" (common/watch.h). */
#include "common/watch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/xalloc.h"

void cm_watch_stamp_get(const char *path, struct cm_watch_stamp *out)
{
    struct stat st;
    memset(out, 0, sizeof(*out));
    if (path == NULL) {
        out->err = ENOENT;
        return;
    }
    if (stat(path, &st) != 0) {
        out->err = errno;
        return;
    }
    out->ok = true;
    out->dev = st.st_dev;
    out->ino = st.st_ino;
    out->size = st.st_size;
    out->mtime = st.st_mtim;
    out->ctime = st.st_ctim;
}

static bool same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

bool cm_watch_changed(const struct cm_watch_stamp *was, const struct cm_watch_stamp *now)
{
    if (was->ok != now->ok)
        return true;
    if (!now->ok)
        return was->err != now->err;
    return was->dev != now->dev || was->ino != now->ino || was->size != now->size ||
           !same_time(&was->mtime, &now->mtime) || !same_time(&was->ctime, &now->ctime);
}

void cm_watch_init(struct cm_watch *w, const char *const *paths, size_t n)
{
    memset(w, 0, sizeof(*w));
    for (size_t i = 0; i < n && w->n < CM_WATCH_MAX_FILES; i++)
        if (paths[i] != NULL)
            w->paths[w->n++] = paths[i];
    cm_watch_poll(w);
}

bool cm_watch_poll(struct cm_watch *w)
{
    bool changed = false;
    for (size_t i = 0; i < w->n; i++) {
        struct cm_watch_stamp now;
        cm_watch_stamp_get(w->paths[i], &now);
        changed = changed || cm_watch_changed(&w->stamps[i], &now);
        w->stamps[i] = now;
    }
    return changed;
}

int cm_watch_failed(const struct cm_watch *w)
{
    for (size_t i = 0; i < w->n; i++)
        if (!w->stamps[i].ok)
            return (int)i;
    return -1;
}

void cm_watch_set_error(struct cm_watch *w, const char *fmt, ...)
{
    free(w->last_error);
    w->last_error = NULL;
    if (fmt == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    w->last_error = cm_xvasprintf(fmt, ap);
    va_end(ap);
}

const char *cm_watch_last_error(const struct cm_watch *w)
{
    return w->last_error;
}

void cm_watch_deinit(struct cm_watch *w)
{
    free(w->last_error);
    memset(w, 0, sizeof(*w));
}

int64_t cm_watch_interval_ms(void)
{
    static int64_t ms; /* 0: not read yet */
    if (ms != 0)
        return ms;
    ms = CM_WATCH_MS;
    const char *v = getenv(CM_WATCH_ENV);
    if (v == NULL || v[0] == '\0')
        return ms;
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || n < CM_WATCH_MIN_MS || n > CM_WATCH_MAX_MS)
        cm_warn("$%s: \"%.40s\" is not a number of ms in %d..%d, using %d", CM_WATCH_ENV, v,
                CM_WATCH_MIN_MS, CM_WATCH_MAX_MS, CM_WATCH_MS);
    else
        ms = n;
    return ms;
}
