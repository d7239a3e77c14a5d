#include "common/log.h"

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
