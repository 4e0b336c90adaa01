/* A float32 tensor with a name and a shape: the unit exchanged between the model and the file
 * formats (safetensors, base model HDF5, adapter HDF5, PEFT export). Keeping the file code on
 * (name, shape, float*) lists means it never depends on the model's internal layout; the
 * model points these at slices of its contiguous parameter buffers. */
#ifndef MEDFL_NAMED_TENSOR_H
#define MEDFL_NAMED_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define NT_MAX_DIMS 8

typedef struct {
    char *name;
    int ndim;
    int64_t shape[NT_MAX_DIMS];
    float *data; /* numel floats, row-major */
} named_tensor_t;

/* Product of the shape (1 for a scalar); 0 when a dimension is negative or it overflows. */
size_t named_tensor_numel(const named_tensor_t *t);
/* "[3, 4]" into buf. */
const char *named_tensor_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);
/* Frees the names and data of an owned list (as returned by the readers) and the array. */
void named_tensor_list_free(named_tensor_t **list_p, size_t count);

#endif
