#!/usr/bin/env bash
# Run `bipft pretrain` on every worker of a Cloud TPU VM pod slice at once.
# JAX finds the coordinator, process count and process id from the TPU metadata, so only
# `--distributed` is passed. The repository must already be on each worker at $REPO_DIR
# (see launch/README.md for a one-time setup command).
#
# Usage:  TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh [--] <bipft pretrain arguments...>
#   e.g.  ... launch/tpu_pod.sh --config configs/pretrain/bipft_base.py --workdir /mnt/gcs/run1
#   (the workdir must be shared by all workers, e.g. an NFS/Filestore mount; see launch/README.md)
#
# Environment:
#   TPU_NAME, ZONE   (required) the TPU VM and its zone
#   PROJECT          optional GCP project (default: gcloud's configured project)
#   REPO_DIR=~/bipft_jax   checkout on the workers; VENV=$REPO_DIR/.venv activated if present
#   EXTRA_ENV        extra "K=V ..." exported on each worker (e.g. "TFDS_DATA_DIR=gs://b/tfds")
#   DRY_RUN=1        print the gcloud command instead of running it
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone, e.g. us-central2-b}"
if [[ "${1:-}" == "--" ]]; then shift; fi

repo_dir=${REPO_DIR:-'~/bipft_jax'}
venv=${VENV:-"${repo_dir}/.venv"}

# Quote the user's arguments so they survive the remote shell unchanged.
quoted_args=""
if (($# > 0)); then quoted_args=$(printf '%q ' "$@"); fi
remote="cd ${repo_dir} && { [ -f ${venv}/bin/activate ] && . ${venv}/bin/activate || true; }"
remote+=" && ${EXTRA_ENV:+export ${EXTRA_ENV} && }bipft pretrain --distributed ${quoted_args}"

gcloud_cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE")
if [[ -n "${PROJECT:-}" ]]; then gcloud_cmd+=(--project "$PROJECT"); fi
gcloud_cmd+=(--worker=all --command "$remote")

if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${gcloud_cmd[@]}"; echo
  exit 0
fi
exec "${gcloud_cmd[@]}"
