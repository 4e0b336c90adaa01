/* A host emulator for node/engine/backend_cuda.cu: just enough of the CUDA runtime, cuBLAS and the
 * kernel execution model to run the backend's own code, unchanged, on a machine without a
 * GPU, so that test_backend_parity's GPU cases compare it against the CPU backend.
 *
 * WHY: nothing CUDA can run where this project is developed; compiling is not evidence that
 * the kernels index the right elements, that warp reductions are complete, that the cuBLAS
 * operand swap for row-major matrices is right, or that the two-level batches are split
 * correctly. Here every CUDA thread of a block is a ucontext coroutine on one OS thread:
 *   - __syncthreads() suspends a thread until every live thread of its block has arrived;
 *   - __shfl_xor_sync() is a write / warp barrier / read / warp barrier exchange, and fails
 *     loudly if a lane of the warp has exited (undefined behaviour with a full mask);
 *   - blocks run one after the other, so __shared__ can be a function-local static;
 *   - launch configurations are checked against the hardware limits (block <= 1024 threads,
 *     grid.y/z <= 65535) and reported as cudaErrorInvalidConfiguration, as the runtime does;
 *   - cublasSgemm / cublasSgemmStridedBatched are column-major reference loops that validate
 *     their arguments as cuBLAS documents (lda >= max(1, rows of op's stored matrix), ...).
 * Built with -fsanitize=address it also bounds-checks every kernel access.
 * What it cannot show: timing, memory-model races between blocks (blocks are sequential),
 * real cuBLAS numerics, or device-specific behaviour. See docs/gpu.md. */
#ifndef MEDFL_CUDA_EMU_H
#define MEDFL_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

/* ------------------------------------------------------------ qualifiers and built-ins */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {

enum state_t { RUNNABLE, AT_SYNC, AT_WARP, DONE };

struct thread_t {
    ucontext_t ctx;
    uint3 tid;
    state_t state;
    unsigned long warp_seq; /* number of warp barriers passed */
    char *stack;
};

static const size_t STACK = 256 * 1024;

struct block_t {
    std::vector<thread_t> th;
    ucontext_t sched;
    thread_t *cur;
    const std::function<void()> *job;
    double shfl[32 * 32]; /* one exchange slot per lane of each warp (blockDim <= 1024) */
    std::vector<char *> stacks;
    ~block_t()
    {
        for (char *s : stacks)
            free(s);
    }
};

static block_t g_blk;
static uint3 g_block_idx;
static dim3 g_block_dim, g_grid_dim;
static int g_fault; /* a kernel broke an execution rule: reported as a launch failure */
static char g_fault_msg[256];

static void fault(const char *msg)
{
    if (!g_fault)
        snprintf(g_fault_msg, sizeof g_fault_msg, "%s", msg);
    g_fault = 1;
}

static void yield(state_t st)
{
    thread_t *t = g_blk.cur;
    t->state = st;
    swapcontext(&t->ctx, &g_blk.sched);
}

static void trampoline()
{
    (*g_blk.job)();
    g_blk.cur->state = DONE; /* uc_link returns to the scheduler */
}

static unsigned lane_of(const thread_t *t)
{
    unsigned lin = t->tid.x + t->tid.y * g_block_dim.x + t->tid.z * g_block_dim.x * g_block_dim.y;
    return lin;
}

/* Runs one block to completion; returns 0, or -1 on deadlock / rule violation. */
static int run_block(const std::function<void()> &job)
{
    unsigned n = g_block_dim.x * g_block_dim.y * g_block_dim.z;
    g_blk.th.assign(n, thread_t());
    while (g_blk.stacks.size() < n)
        g_blk.stacks.push_back((char *)malloc(STACK));
    g_blk.job = &job;
    for (unsigned i = 0; i < n; i++) {
        thread_t &t = g_blk.th[i];
        t.tid.x = i % g_block_dim.x;
        t.tid.y = (i / g_block_dim.x) % g_block_dim.y;
        t.tid.z = i / (g_block_dim.x * g_block_dim.y);
        t.state = RUNNABLE;
        t.warp_seq = 0;
        t.stack = g_blk.stacks[i];
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = t.stack;
        t.ctx.uc_stack.ss_size = STACK;
        t.ctx.uc_link = &g_blk.sched;
        makecontext(&t.ctx, trampoline, 0);
    }
    unsigned warps = (n + 31) / 32;
    for (;;) {
        bool all_done = true, progress = false;
        /* release warp barriers: every lane of the warp waiting at the same one */
        for (unsigned w = 0; w < warps; w++) {
            unsigned lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
            unsigned at = 0, done = 0;
            for (unsigned i = lo; i < hi; i++) {
                at += g_blk.th[i].state == AT_WARP;
                done += g_blk.th[i].state == DONE;
            }
            if (at && done) {
                fault("__shfl_xor_sync with a full mask after some lanes of the warp exited");
                return -1;
            }
            if (at == hi - lo) {
                unsigned long seq = g_blk.th[lo].warp_seq;
                for (unsigned i = lo; i < hi; i++)
                    if (g_blk.th[i].warp_seq != seq) {
                        fault("lanes of a warp at different shuffles (divergent shuffle)");
                        return -1;
                    }
                for (unsigned i = lo; i < hi; i++)
                    g_blk.th[i].state = RUNNABLE;
            }
        }
        /* release __syncthreads: every live thread of the block waiting there */
        unsigned sync = 0, live = 0;
        for (unsigned i = 0; i < n; i++) {
            live += g_blk.th[i].state != DONE;
            sync += g_blk.th[i].state == AT_SYNC;
        }
        if (sync && sync == live)
            for (unsigned i = 0; i < n; i++)
                if (g_blk.th[i].state == AT_SYNC)
                    g_blk.th[i].state = RUNNABLE;
        for (unsigned i = 0; i < n; i++) {
            thread_t &t = g_blk.th[i];
            if (t.state != DONE)
                all_done = false;
            if (t.state != RUNNABLE)
                continue;
            g_blk.cur = &t;
            swapcontext(&g_blk.sched, &t.ctx);
            progress = true;
        }
        if (all_done)
            return 0;
        if (!progress) {
            fault("deadlock: threads wait at barriers that others never reach");
            return -1;
        }
    }
}

static int run(dim3 g, dim3 b, const std::function<void()> &job)
{
    g_grid_dim = g;
    g_block_dim = b;
    for (unsigned z = 0; z < g.z; z++)
        for (unsigned y = 0; y < g.y; y++)
            for (unsigned x = 0; x < g.x; x++) {
                g_block_idx.x = x, g_block_idx.y = y, g_block_idx.z = z;
                if (run_block(job) != 0)
                    return -1;
            }
    return 0;
}

} // namespace emu

#define threadIdx (emu::g_blk.cur->tid)
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid_dim)

inline void __syncthreads()
{
    emu::yield(emu::AT_SYNC);
}

static inline void s_emu_warp_barrier()
{
    emu::g_blk.cur->warp_seq++;
    emu::yield(emu::AT_WARP);
}

template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int o)
{
    if (mask != 0xffffffffu)
        emu::fault("emulator supports full-mask shuffles only");
    unsigned lin = emu::lane_of(emu::g_blk.cur), lane = lin & 31, base = lin - lane;
    emu::g_blk.shfl[base + lane] = (double)v; /* exact for float and double */
    s_emu_warp_barrier();
    unsigned src = lane ^ (unsigned)o;
    T r = (T)emu::g_blk.shfl[base + src];
    s_emu_warp_barrier();
    return r;
}

template <class T> static inline T atomicAdd(T *p, T v)
{
    T old = *p; /* coroutines on one OS thread: no interleaving inside */
    *p = old + v;
    return old;
}

/* ------------------------------------------------------------ CUDA runtime */

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef enum { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 } cudaMemcpyKind;
typedef struct emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 0x01
struct cudaDeviceProp {
    char name[256];
    int major, minor;
};

static cudaError_t g_emu_last = cudaSuccess;

static inline cudaError_t s_emu_ret(cudaError_t e)
{
    if (e != cudaSuccess)
        g_emu_last = e;
    return e;
}

static inline const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorLaunchFailure";
    }
}
static inline const char *cudaGetErrorString(cudaError_t e)
{
    if (e == cudaErrorLaunchFailure && emu::g_fault)
        return emu::g_fault_msg;
    return cudaGetErrorName(e);
}
static inline cudaError_t cudaGetLastError()
{
    cudaError_t e = g_emu_last;
    g_emu_last = cudaSuccess;
    return e;
}
static inline cudaError_t cudaGetDeviceCount(int *n)
{
    if (getenv("MEDFL_EMU_NO_GPU")) {
        *n = 0;
        return s_emu_ret(cudaErrorNoDevice);
    }
    *n = 1;
    return cudaSuccess;
}
static inline cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int)
{
    snprintf(p->name, sizeof p->name, "host emulator");
    p->major = 9, p->minor = 0;
    return cudaSuccess;
}
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    free(s);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (s == NULL)
        return s_emu_ret(cudaErrorInvalidValue);
    return emu::g_fault ? cudaErrorLaunchFailure : cudaSuccess; /* sticky, like a fault */
}
static inline cudaError_t cudaMalloc(void **p, size_t n)
{
    /* a separate allocation per buffer, so ASan sees overruns of device buffers */
    *p = n ? malloc(n) : NULL;
    if (*p == NULL)
        return s_emu_ret(cudaErrorMemoryAllocation);
    memset(*p, 0xA5, n); /* not zero: the backend must zero what it promises to zero */
    return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind,
                                          cudaStream_t st)
{
    if (st == NULL)
        return s_emu_ret(cudaErrorInvalidValue);
    memmove(d, s, n);
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st)
{
    if (st == NULL)
        return s_emu_ret(cudaErrorInvalidValue);
    memset(d, v, n);
    return cudaSuccess;
}

/* kernel<<<grid, block, smem, stream>>>(args) is rewritten by run.sh to
 * EMU_LAUNCH(kernel, grid, block, smem, stream)(args) */
template <class... P> static auto s_emu_launcher(void (*k)(P...), dim3 g, dim3 b)
{
    return [=](auto... a) {
        if (b.x * b.y * b.z == 0 || b.x * b.y * b.z > 1024 || g.x == 0 || g.y == 0 ||
            g.z == 0 || g.y > 65535 || g.z > 65535) {
            s_emu_ret(cudaErrorInvalidConfiguration);
            return;
        }
        if (emu::g_fault)
            return;
        std::function<void()> job = [=]() { k(a...); };
        if (emu::run(g, b, job) != 0) {
            fprintf(stderr, "cuda-emu: kernel fault: %s\n", emu::g_fault_msg);
            s_emu_ret(cudaErrorLaunchFailure);
        }
    };
}
#define EMU_LAUNCH(k, g, b, smem, stream) s_emu_launcher(k, dim3(g), dim3(b))

/* ------------------------------------------------------------ cuBLAS */

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3
} cublasMath_t;
typedef struct emu_blas {
    cudaStream_t stream;
    cublasMath_t math;
} *cublasHandle_t;

static inline const char *cublasGetStatusName(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS         ? "CUBLAS_STATUS_SUCCESS"
           : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE"
                                              : "CUBLAS_STATUS_NOT_INITIALIZED";
}
static inline const char *cublasGetStatusString(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_INVALID_VALUE ? "an invalid numeric value was used as an argument"
                                            : cublasGetStatusName(s);
}
static inline cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)calloc(1, sizeof **h);
    return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
static inline cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

/* Column-major reference with cuBLAS' argument checks. */
static inline cublasStatus_t s_emu_sgemm(cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, float alpha, const float *A, int lda,
                                         const float *B, int ldb, float beta, float *C, int ldc)
{
    int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (a_rows > 1 ? a_rows : 1) ||
        ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int l = 0; l < k; l++) {
                float a = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                float b = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                s += (double)a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            *c = beta == 0.0f ? (float)(alpha * s) : (float)(alpha * s + (double)beta * *c);
        }
    return CUBLAS_STATUS_SUCCESS;
}

static inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         const float *B, int ldb, const float *beta, float *C,
                                         int ldc)
{
    if (h == NULL || h->stream == NULL)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    return s_emu_sgemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
}

static inline cublasStatus_t cublasSgemmStridedBatched(
    cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const float *alpha, const float *A, int lda, long long sA, const float *B, int ldb,
    long long sB, const float *beta, float *C, int ldc, long long sC, int count)
{
    if (h == NULL || h->stream == NULL)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (count < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (count > 1 && sC == 0) {
        /* outputs written concurrently on a GPU: a race the backend must never request */
        fprintf(stderr, "cuda-emu: cublasSgemmStridedBatched with strideC = 0\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (int i = 0; i < count; i++) {
        cublasStatus_t st = s_emu_sgemm(ta, tb, m, n, k, *alpha, A + i * sA, lda, B + i * sB,
                                        ldb, *beta, C + i * sC, ldc);
        if (st != CUBLAS_STATUS_SUCCESS)
            return st;
    }
    return CUBLAS_STATUS_SUCCESS;
}

#endif
