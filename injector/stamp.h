/* Has a file changed on disk? stat() follows symlinks, so a Kubernetes Secret
 * or ConfigMap volume, which swaps its "..data" symlink atomically, shows up
 * as a new inode. */
#ifndef IJ_STAMP_H
#define IJ_STAMP_H

#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>

struct ij_stamp {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    bool present;
};

static inline struct ij_stamp ij_stamp_get(const char *path)
{
    struct ij_stamp s;
    struct stat st;
    memset(&s, 0, sizeof(s));
    if (path != NULL && stat(path, &st) == 0) {
        s.dev = st.st_dev;
        s.ino = st.st_ino;
        s.size = st.st_size;
        s.mtime = st.st_mtim;
        s.ctime = st.st_ctim;
        s.present = true;
    }
    return s;
}

static inline bool ij_stamp_equal(const struct ij_stamp *a, const struct ij_stamp *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

#endif
