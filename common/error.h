/* Error codes shared by every medfl module, with one strerror table, plus a per-thread
 * detail message. Functions return 0 / -1 and record *what* went wrong and *where*
 * (file, line, field) with medfl_error_set(), so that the program's edge can print one
 * precise line instead of each layer logging its own half-story. */
#ifndef MEDFL_ERROR_H
#define MEDFL_ERROR_H

#include <stdarg.h>

typedef enum {
    MEDFL_OK = 0,
    MEDFL_EINVAL,      /* bad argument or value */
    MEDFL_EIO,         /* file system or stream error */
    MEDFL_ENOMEM,      /* allocation failed */
    MEDFL_ECONFIG,     /* configuration file error */
    MEDFL_EFORMAT,     /* malformed file or record */
    MEDFL_EPROTO,      /* malformed or unexpected network message */
    MEDFL_ECRYPTO,     /* key, signature or decryption failure */
    MEDFL_EPERM,       /* permissions too loose, or not allowed */
    MEDFL_ENOTFOUND,   /* missing file, key, node or tensor */
    MEDFL_EUNSUPPORTED,/* valid but not supported (architecture, dtype, version) */
    MEDFL_ETIMEOUT,    /* deadline passed */
    MEDFL_EBUDGET,     /* privacy budget would be exceeded */
    MEDFL_ESTATE,      /* operation not valid in the current state */
    MEDFL_EDEVICE,     /* compute device unavailable or failed */
    MEDFL_EDB,         /* SQLite store error */
    MEDFL_EBUSY,       /* held by another process (a daemon's state-folder lock) */
    MEDFL_ERR_COUNT
} medfl_err_t;

/* Static, human-readable name of an error code ("invalid argument", ...). */
const char *medfl_strerror(medfl_err_t code);

/* Records the last error of this thread; always returns -1 so callers can write
 * `return medfl_error_set(MEDFL_EINVAL, "field '%s' ...", name);`. */
int medfl_error_set(medfl_err_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int medfl_error_vset(medfl_err_t code, const char *fmt, va_list ap);

/* Prepends context ("node.conf: ") to the current message, keeping the code. */
int medfl_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

medfl_err_t medfl_error_code(void);
/* The last detail message, or the code's name when none was recorded. */
const char *medfl_error_message(void);
void medfl_error_clear(void);

#endif
