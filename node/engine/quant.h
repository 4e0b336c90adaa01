/* Quantized weight blocks in ggml's layouts (what GGUF files store) and the de-quantizing
 * matmul that lets a frozen base stay quantized in memory while LoRA trains on top of it
 * (QLoRA-style): the weight is expanded to fp32 one small panel of rows at a time, right
 * before BLAS uses it, so a 4-bit base costs ~0.6 bytes per weight instead of 4.
 *
 * Types carry ggml's numeric ids (the values GGUF tensor infos hold). Block layouts, 32
 * values per block, little-endian, fp16 = IEEE binary16:
 *   Q8_0  34 bytes: fp16 d, int8 q[32]                 x = q * d
 *   Q4_0  18 bytes: fp16 d, 16 bytes of nibbles         x = (q - 8) * d
 *   Q4_1  20 bytes: fp16 d, fp16 m, 16 bytes of nibbles x = q * d + m
 * Nibble order (ggml's): byte j holds element j in its low nibble and element j + 16 in its
 * high nibble. F32, F16 and BF16 are "blocks" of one value.
 *
 * Row-major matrices; a "row" is the contiguous dimension (GGUF's ne[0]). Buffers of
 * quantized data need no alignment (blocks are 18/20/34 bytes): values are read with memcpy. */
#ifndef MEDFL_QUANT_H
#define MEDFL_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ggml type ids of the types this module computes with. Other ids of ggml_type are known to
 * quant_type_info (sizes, names) so that a GGUF reader can validate and list them. */
typedef enum {
    QUANT_F32 = 0,
    QUANT_F16 = 1,
    QUANT_Q4_0 = 2,
    QUANT_Q4_1 = 3,
    QUANT_Q8_0 = 8,
    QUANT_BF16 = 30,
} quant_type_t;

#define QUANT_BLOCK 32 /* values per Q8_0 / Q4_0 / Q4_1 block */

/* Block size (values) and type size (bytes per block) of any ggml type id, and its name
 * ("Q4_K"). false for ids ggml does not define (then the outputs are untouched). */
bool quant_type_info(uint32_t type, size_t *block_size, size_t *type_size, const char **name);
/* Name of a type id, "unknown" when it has none. */
const char *quant_type_name(uint32_t type);
/* true for the types the functions below compute with (F32 F16 BF16 Q8_0 Q4_0 Q4_1). */
bool quant_supported(uint32_t type);

/* Bytes of a row of n values, 0 when the type is unknown or n is not a multiple of its block
 * size (check with quant_type_info first when 0 is a valid answer, i.e. n == 0). */
size_t quant_row_bytes(uint32_t type, size_t n);

/* IEEE half and bfloat16 conversions (round to nearest even; NaN stays NaN). */
float quant_f16_to_f32(uint16_t h);
uint16_t quant_f32_to_f16(float f);
float quant_bf16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);

/* Expands n values (a multiple of the type's block size) from src into dst. Bit-identical to
 * gguf-py's dequantize. -1 with an error for an unsupported type or a bad n. */
int quant_dequantize_row(uint32_t type, const void *src, float *dst, size_t n);

/* Quantizes n values into dst (quant_row_bytes(type, n) bytes), byte-identical to gguf-py's
 * (and ggml's reference) quantizers: Q8_0 d = amax/127, q = round-half-away(x/d); Q4_0
 * d = (value of largest magnitude)/-8, q = min(15, trunc(x/d + 8.5)); Q4_1 d = (max-min)/15,
 * m = min, q = min(15, trunc((x-m)/d + 0.5)); F32/F16/BF16 convert. */
int quant_quantize_row(uint32_t type, const float *src, void *dst, size_t n);

/* Y[n_tokens x rows_out] = X[n_tokens x cols_in] . W^T, W row-major [rows_out x cols_in] of
 * `type` (a Linear weight [out, in]; GGUF ne = {cols_in, rows_out}). W is de-quantized a panel
 * of rows at a time into a scratch of at most quant_matmul_scratch_bytes(cols_in) bytes and
 * multiplied with sgemm; up to 4 tokens (generation) stream W row by row instead (sdot, a
 * row-sized buffer). Y is overwritten. -1 with an error for an unsupported type, cols_in
 * not a multiple of the block size, or no memory. */
int quant_matmul(uint32_t type, const void *W, size_t rows_out, size_t cols_in, const float *X,
                 size_t n_tokens, float *Y);

/* The backward use of the same frozen weight: dX[n_tokens x cols_in] = dY[n_tokens x rows_out]
 * . W (gradients flowing through the base to earlier layers' adapters). dX is overwritten. */
int quant_matmul_t(uint32_t type, const void *W, size_t rows_out, size_t cols_in,
                   const float *dY, size_t n_tokens, float *dX);

/* Peak scratch the two matmuls allocate for a given row length (bytes). */
size_t quant_matmul_scratch_bytes(size_t cols_in);

#endif
