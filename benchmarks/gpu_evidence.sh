#!/usr/bin/env bash
# GPU evidence (issues #3 and #5) on a machine with an NVIDIA GPU and streamrec installed
# with onnxruntime-gpu (CUDA 13, cuDNN 9):
#
#   bash benchmarks/gpu_evidence.sh OUTDIR train latency bench1 bench4 profile1
#
# train = ml + gen. ml: the GRU on MovieLens 100K (ML=dir of `streamrec import` output,
#   default data/ml), on the GPU, evaluated. gen: the GRU on two generated logs (3,706 and
#   ~1,000,000 items).
# latency: one inference call per batch of 1/64/1,024 events, CUDA vs CPU provider.
# bench1: `streamrec bench` with the 1 M-item model: raw loop, bare Faust, one worker.
# bench4: four workers sharing the GPU.
# profile1: one worker at its max rate on the 1 M-item model, sampled by py-spy (on PATH).
# Everything lands in OUTDIR.
# On the lent H100 (2026-11-23): wheels installed with `pip install --no-deps --target
# /tmp/site` (typer and click left out: the image's own work), streamrec likewise, and the
# script run from a directory outside the source tree (its `streamrec` would shadow the
# installed one, which maps schemas/ into the package) with benchmarks/ linked there.
set -euo pipefail
OUT=${1:?usage: gpu_evidence.sh OUTDIR PHASE...}
shift
PHASES=" $* "
WORK=.streamrec/gpu
mkdir -p "$OUT" "$WORK"
ML=${ML:-data/ml}
say() { echo "== $(date +%T) $*"; }

latest() { ls -d "$1"/gru-* | sort | tail -1; }

[[ $PHASES == *" train "* ]] && PHASES="$PHASES ml gen "

if [[ $PHASES == *" ml "* || $PHASES == *" gen "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" |
    tee -a "$OUT/gpu.txt"
fi

if [[ $PHASES == *" ml "* ]]; then
  say "MovieLens 100K: train on the GPU, evaluate"
  streamrec train --events "$ML/events.jsonl.gz" --catalog "$ML/catalog.jsonl.gz" \
    --out "$WORK/models-ml" --no-activate 2>&1 | tee "$OUT/train-ml.log"
  streamrec evaluate --events "$ML/events.jsonl.gz" --model "$(latest "$WORK/models-ml")" \
    --out "$OUT/evaluate-ml.json" 2>&1 | tee "$OUT/evaluate-ml.log"
fi

if [[ $PHASES == *" gen "* ]]; then
  say "generated logs: 3,706 and 1,000,000 items"
  python3 - "$WORK" <<'EOF'
import sys
from streamrec.datasets import generate_log, write_jsonl
# The 1 M log hops between chains more often (chain=0.5) so that most items occur.
for name, users, items, per_user, chain in (
    ("3706", 6040, 3706, 30, 0.8), ("1m", 150_000, 1_000_000, 20, 0.5)
):
    events, _ = generate_log(
        users=users, items=items, events_per_user=per_user, seed=5, chain=chain
    )
    write_jsonl(f"{sys.argv[1]}/events-{name}.jsonl", events)
    print(name, len(events), "events")
EOF
  streamrec train --events "$WORK/events-3706.jsonl" --out "$WORK/models-3706" --epochs 5 \
    --no-activate 2>&1 | tee "$OUT/train-3706.log"
  streamrec train --events "$WORK/events-1m.jsonl" --out "$WORK/models-1m" --epochs 1 \
    --no-activate 2>&1 | tee "$OUT/train-1m.log"

fi

if [[ $PHASES == *" latency "* ]]; then
  say "one inference call per batch: CUDA vs CPU provider"
  for m in ml 3706 1m; do
    [ -d "$WORK/models-$m" ] || continue
    python3 benchmarks/ort_latency.py --model "$(latest "$WORK/models-$m")" \
      --json "$OUT/latency-$m.json" 2>&1 | grep -v "^\s*$" | tee "$OUT/latency-$m.log"
  done
fi

if [[ $PHASES == *" bench1 "* ]]; then
  model=$(latest "$WORK/models-1m")
  say "bench, 1 M items, one worker on the GPU"
  streamrec bench --items 1000000 --users 50000 --events 50000 --model "$model" \
    --workdir "$WORK/bench-1" 2>&1 | tee "$OUT/bench-1.log"
  cp "$WORK/bench-1/bench.json" "$OUT/bench-1.json"
fi

if [[ $PHASES == *" bench4 "* ]]; then
  model=$(latest "$WORK/models-1m")
  say "bench, 1 M items, four workers sharing the GPU"
  streamrec bench --items 1000000 --users 50000 --events 100000 --model "$model" \
    --systems worker --workers 4 --workdir "$WORK/bench-4" 2>&1 | tee "$OUT/bench-4.log"
  cp "$WORK/bench-4/bench.json" "$OUT/bench-4.json"
fi
if [[ $PHASES == *" profile1 "* ]]; then
  model=$(latest "$WORK/models-1m")
  say "profile: one worker at its max rate, py-spy for 10 s"
  rm -rf "$WORK/bench-p"
  streamrec bench --items 1000000 --users 50000 --events 100000 --model "$model" \
    --systems worker --workdir "$WORK/bench-p" >"$OUT/profile-bench.log" 2>&1 &
  bench=$!
  until pgrep -f "streamrec.cli worker" >/dev/null; do sleep 0.2; done
  sleep 8  # loading the model and joining the group
  py-spy record -p "$(pgrep -f 'streamrec.cli worker' | head -1)" -d 10 -r 200 -f raw \
    -o "$OUT/profile-worker.txt" --threads --idle >/dev/null 2>&1 || echo "py-spy failed"
  wait $bench
fi
say done
