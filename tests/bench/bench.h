/* Benchmarks of medfl-bench and the helpers they share. */
#ifndef MEDFL_BENCH_H
#define MEDFL_BENCH_H

#include <time.h>

/* Monotonic seconds. */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int bench_train(int argc, char **argv);
int bench_dp(int argc, char **argv);
int bench_wire(int argc, char **argv);
int bench_compress(int argc, char **argv);
int bench_secagg(int argc, char **argv);
int bench_rounds(int argc, char **argv);
int bench_quant(int argc, char **argv);
int bench_train_llm(int argc, char **argv);

#endif
