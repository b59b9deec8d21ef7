#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (a pod slice has several worker VMs): creates
# the TPU VM or reuses it, copies this repository to every worker, installs it,
# then runs the same t2ijax command on all workers at once (--worker=all). Each
# worker is one jax process; T2IJAX_DISTRIBUTED=1 makes it call
# jax.distributed.initialize(), which finds the other workers through the TPU
# metadata.
#
# Usage (from the repository root, with gcloud logged in):
#   TPU_NAME=t2i-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   launch/tpu_pod.sh --config=configs/dmgan.py:cub \
#       --workdir=gs://BUCKET/runs/dmgan_cub \
#       --config.data.data_dir=gs://BUCKET/datasets \
#       --config.damsm.workdir=gs://BUCKET/runs/damsm_cub \
#       --config.train.batch_size=128
#
# Environment (defaults in brackets):
#   TPU_NAME          the TPU VM to create or reuse [required]
#   ZONE              its zone [required]
#   ACCELERATOR_TYPE  e.g. v4-32, v5litepod-16 [v4-8]; used only to create
#   TPU_VERSION       the VM image [tpu-ubuntu2204-base]; used only to create
#   PROJECT           the GCP project [gcloud's default]
#   SPOT=1            create a Spot VM (preemptible; reruns resume)
#   SKIP_INSTALL=1    do not copy and install the code again
#   DRY_RUN=1         print the gcloud commands instead of running them
#
# The config overrides that matter:
#   --workdir  must be shared by all workers: gs://bucket/path (Orbax writes the
#              checkpoints there; only worker 0 writes logs and images).
#   --config.train.batch_size  the GLOBAL batch: divisible by the number of TPU
#              chips (the 'data' axis) and of workers.
#   --config.mesh.shape  '(-1,1)' data parallel (default), '(-1,2)' with a
#              'model' axis of 2; --config.sharding.strategy=fsdp shards the
#              parameters and optimizer states over 'data'.
# Prepare data sets on worker 0 once, or prepare them locally and copy them to
# the gs:// data_dir; all workers read them from there.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME, the TPU VM to create or reuse}"
: "${ZONE:?set ZONE, e.g. us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="t2ijax"

if [[ $# -eq 0 ]]; then
  sed -n '2,40p' "$0"
  exit 2
fi

project_flags=()
if [[ -n "${PROJECT:-}" ]]; then
  project_flags=("--project=${PROJECT}")
fi

run() {
  if [[ "${DRY_RUN:-}" == "1" ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

tpu() {
  run gcloud compute tpus tpu-vm "$@" --zone="${ZONE}" "${project_flags[@]}"
}

# ---- create the TPU VM, or reuse it ----
if [[ "${DRY_RUN:-}" != "1" ]] && gcloud compute tpus tpu-vm describe "${TPU_NAME}" \
    --zone="${ZONE}" "${project_flags[@]}" > /dev/null 2>&1; then
  echo "reusing TPU VM ${TPU_NAME}" >&2
else
  spot_flags=()
  if [[ "${SPOT:-}" == "1" ]]; then
    spot_flags=("--spot")
  fi
  echo "creating TPU VM ${TPU_NAME} (${ACCELERATOR_TYPE})" >&2
  tpu create "${TPU_NAME}" --accelerator-type="${ACCELERATOR_TYPE}" \
      --version="${TPU_VERSION}" "${spot_flags[@]}"
fi

# ---- copy the code (tracked files only) and install it on every worker ----
if [[ "${SKIP_INSTALL:-}" != "1" ]]; then
  staging="$(mktemp -d -t t2ijax_code.XXXXXX)"
  archive="${staging}/code.tar.gz"
  git ls-files -z | tar --null -czf "${archive}" -T -
  tpu ssh "${TPU_NAME}" --worker=all --command="rm -rf ${REMOTE_DIR} && mkdir -p ${REMOTE_DIR}"
  tpu scp "${archive}" "${TPU_NAME}:${REMOTE_DIR}/code.tar.gz" --worker=all
  rm -rf "${staging}"
  tpu ssh "${TPU_NAME}" --worker=all --command="cd ${REMOTE_DIR} && tar -xzf code.tar.gz \
&& python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip \
&& .venv/bin/pip install -q -e '.[tpu]'"
fi

# ---- run the same command on all workers ----
args=""
for arg in "$@"; do
  args+=" $(printf '%q' "${arg}")"
done
tpu ssh "${TPU_NAME}" --worker=all --command="cd ${REMOTE_DIR} && \
T2IJAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m t2ijax.main${args}"
