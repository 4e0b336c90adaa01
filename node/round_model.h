/* The model trainer (node/train) behind the round participation interface (node/round.h),
 * and `medfl-node init-adapter`, which writes the adapter a federation starts from.
 *
 * WHY a separate module: node/round.c only knows a round_trainer_t; this file is where the
 * node's configuration ([data], [deid], [model], [train]) becomes a trainer with its records
 * loaded through the de-identification gate, exactly as `train-local` does, so federated and
 * local training read the same data the same way. */
#ifndef MEDFL_NODE_ROUND_MODEL_H
#define MEDFL_NODE_ROUND_MODEL_H

#include "node/node_config.h"
#include "node/round.h"

typedef struct model_trainer_t model_trainer_t;

/* Opens base model, label set (data.labels) and records (de-identification gate applied:
 * policy refuse + flagged records -> MEDFL_EPERM). */
model_trainer_t *model_trainer_new(const node_config_t *cfg);
void model_trainer_destroy(model_trainer_t **self_p);
void model_trainer_bind(model_trainer_t *m, round_trainer_t *t);
/* Training records of the local split (announced in Hello). */
size_t model_trainer_records(const model_trainer_t *m);
/* Floats of the packed trainable vector a version of this model holds. */
size_t model_trainer_numel(const model_trainer_t *m);

#endif
