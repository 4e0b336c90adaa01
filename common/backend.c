/* Backend selection by device name ("cpu", "cuda", "auto") and the common destructor.
 * WHY: the node config and the CLIs name a device; this is the one place that turns the name
 * into a backend, so the fallback rule (auto -> cpu without a usable GPU, logged once) and the
 * error for an explicit but unavailable "cuda" are the same everywhere. */
#include "common/backend.h"

#include <stdbool.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"

#ifdef MEDFL_HAVE_CUDA_BACKEND
backend_t *backend_cuda_new(int threads);
#endif

backend_t *backend_new(const char *device, int threads)
{
    if (device == NULL || strcmp(device, "cpu") == 0)
        return backend_cpu_new(threads);
    if (strcmp(device, "cuda") == 0) {
#ifdef MEDFL_HAVE_CUDA_BACKEND
        return backend_cuda_new(threads);
#else
        medfl_error_set(MEDFL_EDEVICE, "device 'cuda': this build has no CUDA backend");
        return NULL;
#endif
    }
    if (strcmp(device, "auto") == 0) {
#ifdef MEDFL_HAVE_CUDA_BACKEND
        backend_t *b = backend_cuda_new(threads);
        if (b)
            return b;
        LOG_INFO(MAIN, "device auto: no usable GPU (%s), using the CPU", medfl_error_message());
#else
        static bool logged = false;
        if (!logged) {
            logged = true;
            LOG_INFO(MAIN, "device auto: built without a CUDA backend, using the CPU");
        }
#endif
        return backend_cpu_new(threads);
    }
    medfl_error_set(MEDFL_EINVAL, "device '%s': expected auto, cpu or cuda", device);
    return NULL;
}

void backend_destroy(backend_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    backend_t *b = *self_p;
    *self_p = NULL;
    b->destroy(b);
}
