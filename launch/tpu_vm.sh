#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU VM slice; the code and the
# environment are set up on the workers once.
#
#   launch/tpu_vm.sh TPU_NAME ZONE -- COMMAND...
#   DRY_RUN=1 launch/tpu_vm.sh TPU_NAME ZONE -- COMMAND...   # print the commands only
#
# Every worker gets this clone's committed tree (git archive HEAD) in
# ~/attention_jax; `.venv` there is created once with jax[tpu] (a marker file
# records it), and COMMAND runs from ~/attention_jax with
# ATTENTION_JAX_DISTRIBUTED=1, so the trainer calls jax.distributed.initialize(),
# which finds the slice's workers itself. Put --workdir on a disk every
# worker mounts (NFS, Filestore): checkpoints are written by all of them.
set -euo pipefail

if [[ $# -lt 4 || $3 != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
name=$1 zone=$2
shift 3
archive=${TMPDIR:-/tmp}/attention_jax.tar.gz
remote=attention_jax

run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then  # one line, each argument quoted only where the shell needs it
    local out=() arg
    for arg in "$@"; do
      if [[ $arg =~ ^[A-Za-z0-9_./:=,@+-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}

setup="mkdir -p ~/$remote && tar -xzf ~/attention_jax.tar.gz -C ~/$remote && cd ~/$remote && \
(test -f .venv/.tpu_ready || (python3 -m venv .venv && .venv/bin/pip install -q -e . \"jax[tpu]\" \
&& touch .venv/.tpu_ready))"
command="cd ~/$remote && . .venv/bin/activate && ATTENTION_JAX_DISTRIBUTED=1 $*"

run git archive --format=tar.gz -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$name:~/attention_jax.tar.gz" --zone="$zone" --worker=all
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$setup"
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$command"
