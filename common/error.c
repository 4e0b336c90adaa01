/* One strerror table for medfl's error codes and a per-thread last-error message. The
 * message is thread-local so that the node's training thread and network thread never
 * overwrite each other's diagnosis. */
#include "common/error.h"

#include <stdio.h>
#include <string.h>

#define ERROR_MSG_MAX 1024

static const char *const s_names[MEDFL_ERR_COUNT] = {
    [MEDFL_OK] = "success",
    [MEDFL_EINVAL] = "invalid argument",
    [MEDFL_EIO] = "input/output error",
    [MEDFL_ENOMEM] = "out of memory",
    [MEDFL_ECONFIG] = "configuration error",
    [MEDFL_EFORMAT] = "malformed input",
    [MEDFL_EPROTO] = "protocol error",
    [MEDFL_ECRYPTO] = "cryptographic failure",
    [MEDFL_EPERM] = "permission denied",
    [MEDFL_ENOTFOUND] = "not found",
    [MEDFL_EUNSUPPORTED] = "unsupported",
    [MEDFL_ETIMEOUT] = "timed out",
    [MEDFL_EBUDGET] = "privacy budget exceeded",
    [MEDFL_ESTATE] = "invalid state",
    [MEDFL_EDEVICE] = "device error",
    [MEDFL_EDB] = "database error",
    [MEDFL_EBUSY] = "in use by another process",
};

static _Thread_local medfl_err_t s_code = MEDFL_OK;
static _Thread_local char s_msg[ERROR_MSG_MAX];

const char *medfl_strerror(medfl_err_t code)
{
    if ((int)code < 0 || code >= MEDFL_ERR_COUNT || !s_names[code])
        return "unknown error";
    return s_names[code];
}

int medfl_error_vset(medfl_err_t code, const char *fmt, va_list ap)
{
    s_code = code;
    if (fmt)
        vsnprintf(s_msg, sizeof s_msg, fmt, ap);
    else
        s_msg[0] = '\0';
    return -1;
}

int medfl_error_set(medfl_err_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    medfl_error_vset(code, fmt, ap);
    va_end(ap);
    return -1;
}

int medfl_error_prefix(const char *fmt, ...)
{
    char prefix[ERROR_MSG_MAX];
    char old[ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, s_msg, sizeof old);
    snprintf(s_msg, sizeof s_msg, "%s%s", prefix, old);
    return -1;
}

medfl_err_t medfl_error_code(void) { return s_code; }

const char *medfl_error_message(void)
{
    return s_msg[0] ? s_msg : medfl_strerror(s_code);
}

void medfl_error_clear(void)
{
    s_code = MEDFL_OK;
    s_msg[0] = '\0';
}
