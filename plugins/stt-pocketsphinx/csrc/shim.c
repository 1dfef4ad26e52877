/* Glue between PocketSphinx and the Rust side of plugins/stt-pocketsphinx.
 *
 * - A log callback (PocketSphinx's is variadic, which stable Rust cannot define): messages at
 *   WARN and above are formatted here; ERROR (and FATAL) lines since the last gw_ps_clear_error
 *   are kept, one per line, for the error the plugin returns (gw_ps_errors), and every message
 *   is handed to gw_ps_log (Rust) to log.
 * - wasm32 only: the libc pieces WASI lacks (mmap, getrusage, longjmp), see wasm-include/. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pocketsphinx.h>

#ifdef __wasm__
#define GW_THREAD_LOCAL
#else
#define GW_THREAD_LOCAL _Thread_local
#endif

/* Implemented in Rust (src/ffi.rs): log one formatted message. */
extern void gw_ps_log(int level, const char *message);

static GW_THREAD_LOCAL char errors[1024];

static void
gw_ps_callback(void *user_data, err_lvl_t level, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    size_t n;

    (void)user_data;
    if (level < ERR_WARN)
        return;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    n = strlen(message);
    while (n > 0 && (message[n - 1] == '\n' || message[n - 1] == ' '))
        message[--n] = '\0';
    if (level >= ERR_ERROR) {
        /* Append "\n<message>", cut to the buffer. */
        size_t used = strlen(errors);
        if (used > 0 && used + 1 < sizeof(errors))
            errors[used++] = '\n';
        if (used + 1 < sizeof(errors)) {
            size_t room = sizeof(errors) - used - 1;
            size_t take = n < room ? n : room;
            memcpy(errors + used, message, take);
            errors[used + take] = '\0';
        }
    }
    gw_ps_log((int)level, message);
}

/* Route PocketSphinx's log through gw_ps_callback (process-wide; idempotent). */
void
gw_ps_install_log(void)
{
    err_set_callback(gw_ps_callback, NULL);
    err_set_loglevel(ERR_WARN);
}

/* The ERROR lines logged on this thread since the last clear, one per line ("" when none). */
const char *
gw_ps_errors(void)
{
    return errors;
}

void
gw_ps_clear_errors(void)
{
    errors[0] = '\0';
}

#ifdef __wasm__
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/resource.h>

void *
mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    (void)addr; (void)length; (void)prot; (void)flags; (void)fd; (void)offset;
    errno = ENOSYS;
    return MAP_FAILED;
}

int
munmap(void *addr, size_t length)
{
    (void)addr; (void)length;
    errno = ENOSYS;
    return -1;
}

int
getrusage(int who, struct rusage *usage)
{
    (void)who;
    memset(usage, 0, sizeof(*usage));
    return 0;
}

_Noreturn void
longjmp(jmp_buf env, int val)
{
    (void)env; (void)val;
    abort();
}
#endif
