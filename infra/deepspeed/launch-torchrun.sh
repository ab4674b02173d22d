#!/usr/bin/env bash
# Meta-train with torchrun: run this on EVERY node (e.g. from a Slurm/Kubernetes job),
# with the same MASTER_ADDR (rank 0's node) everywhere.
#
#   NODES=2 GPUS=8 MASTER_ADDR=node-a infra/deepspeed/launch-torchrun.sh \
#     infra/deepspeed/train-llama-2-70b.yaml deepspeed_configs/zero3_bf16.json
#
# torchrun's c10d rendezvous assigns node ranks; DeepSpeed reads RANK, WORLD_SIZE and
# LOCAL_RANK from the environment torchrun sets.
set -euo pipefail
config=${1:?training config (YAML)}
ds_config=${2:?DeepSpeed config (deepspeed_configs/*.json)}
shift 2
NODES=${NODES:-1}
GPUS=${GPUS:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
exec torchrun --nnodes "$NODES" --nproc-per-node "$GPUS" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-mend}" \
  -m mend.distributed.train --config "$config" --deepspeed "$ds_config" "$@"
