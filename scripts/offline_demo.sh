#!/usr/bin/env bash
# The offline IXT path as a new user runs it, on the real SmolLM2-135M-Instruct (CPU):
# reward service up (checked with grpcurl: reflection + health) -> annotate reasoning-gym samples
# sampled from the policy with the verifier critic, and a few with the vLLM critic -> train with and
# without IXT conditioning -> evaluate both under positive / negative / no conditioning.
# Usage: scripts/offline_demo.sh [OUT_DIR] [NUM_SAMPLES] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/offline-demo}; n=${2:-256}; steps=${3:-20}
mkdir -p "$out"
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
common=(run.run_dir="$out" reward.port="$port" client.address=127.0.0.1:"$port")
stamp() { date +%s.%N; }

serve() {  # serve <backend overrides...>: start the reward service and wait for SERVING
  ixt serve reward "${common[@]}" "$@" > "$out/reward-$1.log" 2>&1 &
  echo $! > "$out/reward.pid"
  for _ in $(seq 300); do
    grpcurl -plaintext 127.0.0.1:"$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && return
    sleep 1
  done
  echo "reward service did not come up" >&2; exit 1
}
stop() { kill "$(cat "$out/reward.pid")"; wait "$(cat "$out/reward.pid")" 2>/dev/null || true; }

echo "== reward service (verifier), checked with grpcurl"
serve reward=verifier
grpcurl -plaintext 127.0.0.1:"$port" list | tee "$out/grpcurl_list.txt"
grpcurl -plaintext 127.0.0.1:"$port" grpc.health.v1.Health/Check
t0=$(stamp)
ixt annotate "${common[@]}" annotate.responses=policy annotate.num_samples="$n" annotate.output="$out/annotated.jsonl" \
  | tee "$out/annotate_verifier.txt"
echo "annotate (policy sampling + verifier): $(python -c "print(round($(stamp)-$t0,1))") s" | tee -a "$out/timings.txt"
stop

echo "== the vLLM critic (SmolLM2 thinks, then critiques) on 32 of the same samples"
serve reward=vllm
head -n 32 "$out/annotated.jsonl" > "$out/subset.jsonl"
t0=$(stamp)
ixt annotate "${common[@]}" annotate.source=jsonl annotate.input="$out/subset.jsonl" annotate.num_samples=32 \
  annotate.output="$out/annotated_vllm.jsonl" | tee "$out/annotate_vllm.txt"
echo "annotate (vllm critic, 32): $(python -c "print(round($(stamp)-$t0,1))") s" | tee -a "$out/timings.txt"
stop

for mode in critique none; do
  echo "== train (condition.mode=$mode)"
  t0=$(stamp)
  ixt train "${common[@]}" train.data="$out/annotated.jsonl" condition.mode=$mode learner.max_steps="$steps" \
    learner.tokens_per_batch=2048 condition.max_seq_len=512 train.output_dir="$out/model-$mode" | tail -3
  echo "train $mode: $(python -c "print(round($(stamp)-$t0,1))") s" | tee -a "$out/timings.txt"
  ixt eval "${common[@]}" eval.checkpoint="$out/model-$mode" eval.output="$out/eval-$mode.json" | tee "$out/eval-$mode.txt"
done
