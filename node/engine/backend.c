/* Backend selection by device name ("cpu", "cuda", "auto") and the common destructor and
 * status check.
 * WHY: the node config and the CLIs name a device; this is the one place that turns the name
 * into a backend, so the fallback rule (auto -> cpu without a usable GPU, logged once per
 * process) and the error for an explicit but unavailable "cuda" are the same everywhere.
 * The CUDA side is reached only through node/engine/backend_cuda.h, and only in builds with the
 * CUDA toolkit (MEDFL_HAVE_CUDA): a USE_CUDA=0 build references no CUDA symbol. */
#include "node/engine/backend.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"

#ifdef MEDFL_HAVE_CUDA
#include "node/engine/backend_cuda.h"
#endif

/* "no GPU found" is said once per process, not once per model or round */
static void s_log_cpu_fallback(const backend_t *cpu, const char *why)
{
    static int logged = 0;
    if (__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
        return;
    LOG_INFO(TRAIN, "no GPU found: training on the CPU (OpenBLAS, %d threads)", cpu->threads);
    if (why && *why)
        LOG_DEBUG(TRAIN, "device auto: %s", why);
}

backend_t *backend_new(const char *device, int threads)
{
    if (device == NULL || strcmp(device, "cpu") == 0)
        return backend_cpu_new(threads);
    if (strcmp(device, "cuda") == 0) {
#ifdef MEDFL_HAVE_CUDA
        return backend_cuda_new(threads); /* NULL + "device = cuda but no CUDA GPU ..." */
#else
        medfl_error_set(MEDFL_EDEVICE,
                        "device = cuda but this build has no CUDA backend (built without the "
                        "CUDA toolkit or with USE_CUDA=0)");
        return NULL;
#endif
    }
    if (strcmp(device, "auto") == 0) {
        char why[256] = "";
#ifdef MEDFL_HAVE_CUDA
        if (backend_cuda_device_count(why, sizeof why) > 0) {
            backend_t *g = backend_cuda_new(threads);
            if (g)
                return g;
            /* a GPU is visible but unusable (driver, memory): say why, then use the CPU */
            LOG_WARN(TRAIN, "device auto: %s", medfl_error_message());
            snprintf(why, sizeof why, "%s", medfl_error_message());
        }
#else
        snprintf(why, sizeof why, "this build has no CUDA backend");
#endif
        backend_t *b = backend_cpu_new(threads);
        if (b)
            s_log_cpu_fallback(b, why);
        return b;
    }
    medfl_error_set(MEDFL_EINVAL, "device '%s': expected auto, cpu or cuda", device);
    return NULL;
}

int backend_status(backend_t *b)
{
    if (b == NULL || b->status == NULL)
        return 0;
    return b->status(b);
}

void backend_destroy(backend_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    backend_t *b = *self_p;
    *self_p = NULL;
    b->destroy(b);
}
