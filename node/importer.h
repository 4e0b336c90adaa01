/* `medfl-node import-model`: turns a Hugging Face BERT folder (config.json,
 * model.safetensors, vocab.txt, optional tokenizer_config.json) into the node's base model
 * HDF5 file (common/base_file.h). Everything is checked before anything is written: the
 * architecture (model_type bert, hidden_act gelu, absolute positions), every required tensor's
 * presence, shape and dtype, and the vocabulary against vocab_size. */
#ifndef MEDFL_NODE_IMPORTER_H
#define MEDFL_NODE_IMPORTER_H

#include "common/base_file.h"

/* Reads config.json (+ tokenizer_config.json for do_lower_case) of dir into cfg. */
int model_read_hf_config(const char *dir, base_config_t *cfg);
/* Imports dir into out_path (written through temp + fsync + rename). */
int model_import_hf(const char *dir, const char *out_path);

#endif
