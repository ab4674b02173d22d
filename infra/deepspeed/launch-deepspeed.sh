#!/usr/bin/env bash
# Meta-train with the DeepSpeed launcher on one node or on every node of a hostfile.
#
#   infra/deepspeed/launch-deepspeed.sh TRAIN_YAML DS_JSON [extra args for mend.distributed.train]
#
#   NODES=2 GPUS=8 HOSTFILE=infra/deepspeed/hostfile \
#     infra/deepspeed/launch-deepspeed.sh infra/deepspeed/train-llama-2-70b.yaml \
#     deepspeed_configs/zero3_bf16.json --set max_minutes=600
#
# Run from the repository root on the first node; the repository (same path), the
# virtual environment and the model folder must exist on every node, and output_dir
# must be on a filesystem all nodes share (checkpoints are written by every rank).
set -euo pipefail
config=${1:?training config (YAML)}
ds_config=${2:?DeepSpeed config (deepspeed_configs/*.json)}
shift 2
NODES=${NODES:-1}
GPUS=${GPUS:-8}
MASTER_PORT=${MASTER_PORT:-29500}

mend plan --config "$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['model'])" "$config")/config.json" \
  --train-config "$config" --deepspeed "$ds_config" --ranks $((NODES * GPUS)) --nodes "$NODES" \
  --device-gb "${DEVICE_GB:-80}" || true

launcher=(deepspeed --num_gpus "$GPUS" --master_port "$MASTER_PORT")
if [[ "$NODES" -gt 1 ]]; then
  launcher+=(--hostfile "${HOSTFILE:?set HOSTFILE for more than one node}" --num_nodes "$NODES")
fi
exec "${launcher[@]}" --module mend.distributed.train --config "$config" --deepspeed "$ds_config" "$@"
