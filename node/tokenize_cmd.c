/* `medfl-node tokenize --model BASE`: text lines on standard input, each line's token ids on
 * standard output, space-separated, one output line per input line, no special tokens added.
 * For people checking what the model sees and for scripts comparing with Hugging Face
 * (`tokenizer(line, add_special_tokens=False)`, which also parses special-token text).
 *
 * BASE is a decoder's base: a GGUF file (import-model --gguf copies one as base.gguf), its
 * tokenizer read through node/engine/bpe_gguf over node/engine/gguf. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "node/commands.h"
#include "node/engine/bpe_gguf.h"
#include "node/import_gguf.h"

#define PROG "medfl-node tokenize"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: medfl-node tokenize (--model BASE | -c node.conf) [--pre NAME] [--no-parse-special]\n"
            "\n"
            "Reads text lines on standard input and prints each line's token ids,\n"
            "space-separated, one line per input line (the newline ending a line is not\n"
            "part of it; a carriage return is). No special tokens are added.\n"
            "\n"
            "  --model BASE          the model: a GGUF file (byte-level BPE tokenizer);\n"
            "                        base.h5 means the base.gguf beside it\n"
            "  -c FILE               node config: the model is its model.base\n"
            "  --pre NAME            override the file's pre-tokenizer (gpt-2, smollm,\n"
            "                        llama-bpe, qwen2)\n"
            "  --no-parse-special    special-token text such as <|im_end|> stays text\n"
            "                        (default: it becomes the special token, as in HF)\n"
            "\n"
            "A line that is not valid UTF-8 is an error naming the line and byte offset.\n"
            "Bytes the vocabulary has no token for are left out, as HF does, with a\n"
            "warning on standard error naming the line and the count.\n");
}

static int s_bad(const char *what, const char *arg)
{
    fprintf(stderr, PROG ": %s%s\n(" PROG " --help for usage)\n", what, arg ? arg : "");
    return 2;
}

static int s_print(const bpe_ids_t *ids)
{
    for (size_t i = 0; i < ids->n; i++)
        if (printf(i ? " %d" : "%d", ids->v[i]) < 0) return -1;
    return putchar('\n') == EOF ? -1 : 0;
}

/* Tokenizes stdin line by line; returns the exit status. */
static int s_run(const bpe_t *bpe, int flags)
{
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    bpe_ids_t ids = {0};
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') len--;
        ids.n = ids.dropped = 0;
        if (bpe_encode(bpe, line, (size_t)len, flags, &ids) < 0) {
            medfl_error_prefix("standard input line %zu: ", lineno);
            rc = cli_fail(PROG);
            break;
        }
        if (ids.dropped)
            fprintf(stderr, PROG ": warning: line %zu: %zu bytes have no token in this "
                            "vocabulary and were left out\n", lineno, ids.dropped);
        if (s_print(&ids) < 0) {
            fprintf(stderr, PROG ": cannot write to standard output\n");
            rc = 1;
        }
    }
    free(line);
    bpe_ids_free(&ids);
    if (rc == 0 && fflush(stdout) != 0) {
        fprintf(stderr, PROG ": cannot write to standard output\n");
        rc = 1;
    }
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    enum { O_MODEL = 1000, O_PRE, O_NOPARSE };
    static const struct option opts[] = {
        {"model", required_argument, NULL, O_MODEL},
        {"config", required_argument, NULL, 'c'},
        {"pre", required_argument, NULL, O_PRE},
        {"no-parse-special", no_argument, NULL, O_NOPARSE},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *pre = NULL, *config = NULL;
    int flags = BPE_PARSE_SPECIAL, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model = optarg; break;
        case 'c': config = optarg; break;
        case O_PRE: pre = optarg; break;
        case O_NOPARSE: flags = 0; break;
        case ':': return s_bad("option needs a value: ", argv[optind - 1]);
        default: return s_bad("unknown option: ", argv[optind - 1]);
        }
    }
    if (optind < argc) return s_bad("unexpected argument: ", argv[optind]);
    if (!model && !config) return s_bad("--model BASE or -c node.conf is required", NULL);
    char path[4096];
    if (import_gguf_resolve_base(model, config, path, sizeof path) != 0) return cli_fail(PROG);
    model = path;
    bpe_gguf_t g;
    if (bpe_gguf_read(model, &g) < 0) return cli_fail(PROG);
    bpe_t *bpe = bpe_gguf_tokenizer(&g, pre);
    bpe_gguf_clear(&g);
    if (!bpe) {
        medfl_error_prefix("%s: ", model);
        return cli_fail(PROG);
    }
    int rc = s_run(bpe, flags);
    bpe_destroy(&bpe);
    return rc;
}
