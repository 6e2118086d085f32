#!/usr/bin/env bash
# `jointdiff fit` inside a SLURM allocation, with auto-requeue: the step the sbatch templates run (see
# docs/workflow.md, "Running on SLURM"). Arguments are `jointdiff fit` arguments (the configs of a composition).
#
# What it adds, after your arguments:
#   --config $JOINTDIFF_SLURM_PRESET (default configs/base/slurm.yaml: GPU, DDP, requeue-stable logger)
#   --trainer.devices   = tasks per node  (one process per GPU, started by srun; Lightning checks they match)
#   --trainer.num_nodes = nodes of the allocation
#   --trainer.default_root_dir = $JOINTDIFF_RUN_DIR (where Lightning writes hpc_ckpt_<n>.ckpt on SIGUSR1)
#   --config configs/base/wandb.yaml when JOINTDIFF_WANDB=1 (so W&B comes last, after the logger switch)
# The run folder $JOINTDIFF_RUN_DIR defaults to runs/slurm/<job name>/<job id> (<array job>_<task> for arrays):
# a requeued job keeps its id, so every attempt finds the same folder, HPC checkpoint and W&B run id. Set it
# yourself to continue a run in a new job.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
  RUN_KEY="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
  RUN_KEY="${SLURM_JOB_ID:?fit.sh runs inside a SLURM job (sbatch experiments/slurm/single_node.sbatch ...)}"
fi
export JOINTDIFF_RUN_DIR="${JOINTDIFF_RUN_DIR:-runs/slurm/${SLURM_JOB_NAME:-jointdiff}/${RUN_KEY}}"
mkdir -p "$JOINTDIFF_RUN_DIR"
echo "jointdiff: run folder $JOINTDIFF_RUN_DIR, attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )), " \
     "${SLURM_NNODES:-1} node(s) x ${SLURM_NTASKS_PER_NODE:-1} task(s)"
WANDB_ARGS=()
if [ "${JOINTDIFF_WANDB:-0}" = 1 ]; then
  WANDB_ARGS=(--config configs/base/wandb.yaml)
fi
srun --kill-on-bad-exit=1 ${JOINTDIFF_BIN:-jointdiff} fit "$@" \
  --config "${JOINTDIFF_SLURM_PRESET:-configs/base/slurm.yaml}" \
  --trainer.devices="${SLURM_NTASKS_PER_NODE:-1}" \
  --trainer.num_nodes="${SLURM_NNODES:-1}" \
  --trainer.default_root_dir="$JOINTDIFF_RUN_DIR" \
  ${WANDB_ARGS[@]+"${WANDB_ARGS[@]}"}
