/* medfl-bench: benchmark programs. Each prints its figures as `name: value unit` lines on
 * stdout (design.md), comparing against a baseline measured in the same process. */
#include "common/cli.h"
#include "tests/bench/bench.h"

static const cli_command_t s_benches[] = {
    {"train", bench_train, "LoRA training examples/s and peak RSS (MiniLM-sized)"},
    {"train-llm", bench_train_llm,
     "decoder LoRA training tok/s, peak RSS, DP-SGD step overhead (SmolLM2 shape, Q4_1)"},
    {"dp", bench_dp, "DP-SGD clip + noise cost on a MiniLM-sized LoRA vector"},
    {"wire", bench_wire, "64 MiB update node -> aggregator over loopback, CURVE vs bare libzmq"},
    {"compress", bench_compress, "update compression: wire ratio, speed, accuracy cost"},
    {"secagg", bench_secagg, "secure aggregation round in-process: mask, unmask, bytes"},
    {"rounds", bench_rounds, "round overhead as a federation ages: first vs last rounds of R"},
    {"quant", bench_quant, "de-quantizing matmul (Q4_1, Q8_0) vs sgemm at SmolLM2's MLP shape"},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return cli_dispatch("medfl-bench", "medfl benchmark programs", s_benches, argc, argv);
}
