/* medfl-bench: benchmark programs. Each prints its figures as `name: value unit` lines on
 * stdout (design.md), comparing against a baseline measured in the same process. */
#include "common/cli.h"
#include "tests/bench/bench.h"

static const cli_command_t s_benches[] = {
    {"secagg", bench_secagg, "secure aggregation round in-process: mask, unmask, bytes"},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return cli_dispatch("medfl-bench", "medfl benchmark programs", s_benches, argc, argv);
}
