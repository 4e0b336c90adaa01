/* Helpers of the (name, shape, float*) tensor descriptor shared by the file formats. */
#include "common/named_tensor.h"

#include <stdio.h>
#include <stdlib.h>

size_t named_tensor_numel(const named_tensor_t *t)
{
    if (t->ndim < 0 || t->ndim > NT_MAX_DIMS) return 0;
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) return 0;
        if (t->shape[i] && n > SIZE_MAX / (size_t)t->shape[i]) return 0;
        n *= (size_t)t->shape[i];
    }
    return n;
}

const char *named_tensor_shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

void named_tensor_list_free(named_tensor_t **list_p, size_t count)
{
    if (!list_p || !*list_p) return;
    for (size_t i = 0; i < count; i++) {
        free((*list_p)[i].name);
        free((*list_p)[i].data);
    }
    free(*list_p);
    *list_p = NULL;
}
