#include "common/log.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"

enum cm_log_level cm_log_current_level = CM_LOG_INFO;
static enum cm_log_format log_format = CM_LOG_FORMAT_TEXT;
static const char *log_component = "remora";

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void cm_log_set_level(enum cm_log_level level)
{
    cm_log_current_level = level;
}

int cm_log_level_parse(const char *s, enum cm_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum cm_log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = CM_LOG_WARN;
        return 0;
    }
    return CM_ERR_INVAL;
}

const char *cm_log_level_name(enum cm_log_level level)
{
    if ((unsigned)level < sizeof(level_names) / sizeof(level_names[0]))
        return level_names[level];
    return "unknown";
}

void cm_log_set_format(enum cm_log_format fmt)
{
    log_format = fmt;
}

void cm_log_set_component(const char *name)
{
    log_component = name;
}

/* Escape for a JSON string; the message is ours but may quote peer input. */
static size_t json_escape(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)src; *p && o + 7 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)*p;
        } else if (*p < 0x20) {
            o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", *p);
        } else {
            dst[o++] = (char)*p;
        }
    }
    dst[o] = '\0';
    return o;
}

void cm_log_vwrite(enum cm_log_level level, const char *fmt, va_list ap)
{
    char msg[2048], ts[32];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* One event, one line: peer-controlled text must not forge lines. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    cm_fmt_rfc3339_ms(cm_wall_ms(), ts, sizeof(ts));
    if (log_format == CM_LOG_FORMAT_JSON) {
        char esc[sizeof(msg) * 2];
        json_escape(esc, sizeof(esc), msg);
        fprintf(stderr, "{\"time\":\"%s\",\"level\":\"%s\",\"component\":\"%s\",\"msg\":\"%s\"}\n",
                ts, cm_log_level_name(level), log_component, esc);
    } else {
        fprintf(stderr, "%s %-5s %s: %s\n", ts, cm_log_level_name(level), log_component, msg);
    }
}

void cm_log_write(enum cm_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cm_log_vwrite(level, fmt, ap);
    va_end(ap);
}

size_t cm_log_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            if (o + 1 >= cap)
                break;
            dst[o++] = (char)c;
        } else {
            if (o + 4 >= cap)
                break;
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o] = '\0';
    return o;
}

/* ---- rate-limited lines ------------------------------------------------------ */

unsigned cm_log_limit_burst = 5;
unsigned cm_log_limit_window_ms = 1000;

struct limit_slot {
    char key[48];             /* "" when free */
    uint64_t window_ms;       /* start of the current window (monotonic) */
    uint64_t last_ms;         /* last event, to pick the slot to reuse */
    unsigned written;         /* lines written in this window */
    unsigned long suppressed; /* lines counted, not written, since the last report */
    enum cm_log_level level;
};
static struct limit_slot slots[CM_LOG_LIMIT_KEYS];

static void report_suppressed(struct limit_slot *sl)
{
    if (sl->suppressed == 0)
        return;
    if (sl->level <= cm_log_current_level)
        cm_log_write(sl->level, "%s: suppressed %lu similar lines", sl->key, sl->suppressed);
    sl->suppressed = 0;
}

static struct limit_slot *slot_for(const char *key, uint64_t now)
{
    struct limit_slot *free_sl = NULL, *oldest = &slots[0];
    for (size_t i = 0; i < CM_LOG_LIMIT_KEYS; i++) {
        struct limit_slot *sl = &slots[i];
        if (sl->key[0] == '\0') {
            if (free_sl == NULL)
                free_sl = sl;
            continue;
        }
        if (strncmp(sl->key, key, sizeof(sl->key) - 1) == 0)
            return sl;
        if (sl->last_ms < oldest->last_ms)
            oldest = sl;
    }
    struct limit_slot *sl = free_sl;
    if (sl == NULL) {
        sl = oldest;
        report_suppressed(sl);
    }
    memset(sl, 0, sizeof(*sl));
    snprintf(sl->key, sizeof(sl->key), "%s", key[0] ? key : "-");
    sl->window_ms = now;
    return sl;
}

bool cm_log_limited(enum cm_log_level level, const char *key, const char *fmt, ...)
{
    if (level > cm_log_current_level)
        return false; /* not wanted at this level: not even counted */
    uint64_t now = cm_mono_ms();
    struct limit_slot *sl = slot_for(key, now);
    sl->level = level;
    sl->last_ms = now;
    if (now - sl->window_ms >= cm_log_limit_window_ms) {
        sl->window_ms = now;
        sl->written = 0;
    }
    if (sl->written >= cm_log_limit_burst) {
        sl->suppressed++;
        return false;
    }
    sl->written++;
    char msg[1900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (sl->suppressed > 0) {
        cm_log_write(level, "%s (suppressed %lu similar)", msg, sl->suppressed);
        sl->suppressed = 0;
    } else {
        cm_log_write(level, "%s", msg);
    }
    return true;
}

void cm_log_limited_flush(void)
{
    uint64_t now = cm_mono_ms();
    for (size_t i = 0; i < CM_LOG_LIMIT_KEYS; i++) {
        struct limit_slot *sl = &slots[i];
        if (sl->key[0] != '\0' && sl->suppressed > 0 &&
            now - sl->window_ms >= cm_log_limit_window_ms)
            report_suppressed(sl);
    }
}

void cm_log_limited_reset(void)
{
    memset(slots, 0, sizeof(slots));
}
