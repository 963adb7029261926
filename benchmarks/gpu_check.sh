#!/usr/bin/env bash
# GPU check (issue 10): `bench run --device cuda` end to end, then per-stage training it/s on the GPU.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh              # on a CUDA machine, from the repo root
#   DEVICE=cpu QUICK=1 OUT=/tmp/dry bash benchmarks/gpu_check.sh   # a dry run of the logic on a CPU box
#
# Uses the machine's python (PY, default python3) and the torch already installed there: nothing is
# downloaded. The project's other dependencies must be importable; it is installed with
# `pip install -e . --no-deps` when pip can, else run from the source tree. Everything goes to $OUT:
#   gpu_check.log  the whole log (environment, smoke runs, per-stage table, checks)
#   steps.jsonl    one JSON line per (stage, precision, batch) from benchmarks/gpu_steps.py
#   results.tgz    the results dirs of the smoke runs (store, reports-ready)
# Each section is time-boxed so a slow or broken one cannot lose the later ones.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_check.log"
WORK=$(mktemp -d)
exec > >(tee -a "$LOG") 2>&1

section() { echo; echo "=== $* ($(date +%T))"; }
bench() { timeout "$1" "$PY" -m harness.cli "${@:2}"; echo "[exit $?]"; }
if [ "$QUICK" = 1 ]; then STEPS=(--steps 3 --warmup 1 --frame-size 16); else STEPS=(--steps 100 --warmup 10); fi

section environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
missing = []
for name in ("einops", "numpy", "scipy", "statsmodels", "pandas", "pyarrow", "h5py", "matplotlib", "rich", "jinja2"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
print("missing dependencies:", missing or "none")
EOF
if [ "$DEVICE" = cuda ]; then
    "$PY" -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 && echo "installed with pip -e --no-deps" \
        || echo "pip install failed: running from the source tree (PYTHONPATH)"
fi

section "bench run --device $DEVICE --profile smoke (both variants, seeds 0-1)"
bench 240 run --device "$DEVICE" --profile smoke --results "$WORK/smoke" --quiet
"$PY" - "$WORK/smoke" <<'EOF'
import sys, pandas as pd
from harness.store import Store
store = Store(sys.argv[1], create=False)
runs = store.runs()
print(runs[["variant", "seed", "status", "device", "precision", "error"]].to_string(index=False))
kpis = store.read("kpis").merge(runs[["run_id", "variant", "seed"]])
wanted = ["tokenizer.val_loss", "actions.val_loss", "dynamics.val_loss", "dynamics.val_token_accuracy",
          "rollout.ar_psnr", "rollout.copy_last_mse", "tokenizer.it_per_s", "actions.it_per_s", "dynamics.it_per_s"]
print(kpis[kpis["kpi"].isin(wanted)].pivot_table(index=["variant", "seed"], columns="kpi", values="value")
      .T.to_string(float_format=lambda v: f"{v:.4g}"))
EOF

section "per-stage training steps/s at 64x64, batch 16 (fp32, tf32, bf16)"
timeout 240 "$PY" benchmarks/gpu_steps.py --device "$DEVICE" "${STEPS[@]}" --batches 16 \
    --precisions "$([ "$DEVICE" = cuda ] && echo fp32,tf32,bf16 || echo fp32)" --json "$OUT/steps.jsonl"
echo "[exit $?]"

section "bf16 end to end: smoke profile with precision = \"bf16\" (one run)"
if [ "$DEVICE" = cuda ]; then
    sed 's/^\[profiles\.smoke\]$/[profiles.smoke]\nprecision = "bf16"/' bench.toml > "$WORK/bench_bf16.toml"
    bench 120 run --config "$WORK/bench_bf16.toml" --device cuda --profile smoke --variants meanpool_concat \
        --seeds 0 --results "$WORK/smoke_bf16" --quiet
else
    echo "(skipped: bf16 needs cuda)"
fi

section "determinism and kill/resume on $DEVICE (tokenizer + dynamics, tiny)"
timeout 120 "$PY" - "$DEVICE" <<'EOF'
import sys, tempfile, torch
from pathlib import Path
from worldmodel import stages
from worldmodel.config import WorldModelConfig
from worldmodel.data import VideoWindows, generate
from worldmodel.lam import LatentActionModel
from worldmodel.train import Placement
placement = Placement(sys.argv[1])
config = WorldModelConfig(frame_size=16)
for name in ("tokenizer", "actions", "dynamics"):
    s = config.stage(name)
    s.embed_dim, s.heads, s.hidden, s.blocks, s.steps, s.batch_size, s.log_every, s.checkpoint_every = 16, 4, 32, 1, 12, 8, 2, 4
config.validate()
data = generate("sprite_world", 8, 12, 16, seed=0)
train, val = VideoWindows(data, 4, "train", 0.25), VideoWindows(data, 4, "val", 0.25)
tmp = Path(tempfile.mkdtemp())
class Killed(Exception): pass
def kill(step, total, loss):
    if step == 6: raise Killed
torch.manual_seed(1)
lam = LatentActionModel(config).eval()
for stage in ("tokenizer", "dynamics"):
    def go(path, progress=None):
        if stage == "tokenizer":
            return stages.run_tokenizer(config, train, val, path, 0, progress, placement)
        return stages.run_dynamics(config, train, val, tok, lam, path, 0, progress, placement)
    model, a = go(tmp / f"{stage}-a.pt")
    _, b = go(tmp / f"{stage}-b.pt")
    try:
        go(tmp / f"{stage}-c.pt", kill)
    except Killed:
        pass
    _, c = go(tmp / f"{stage}-c.pt")
    curve = lambda o: [r["loss"] for r in o.train.curve]
    print(f"{stage}: same seed identical: {curve(a) == curve(b)}; killed+resumed identical: {curve(a) == curve(c)}; "
          f"max |diff| {max(abs(x - y) for x, y in zip(curve(a), curve(c))):.3g}; "
          f"checkpoint tensors on cpu: {all(t.device.type == 'cpu' for t in torch.load(tmp / f'{stage}-a.pt', weights_only=True)['model'].values())}")
    if stage == "tokenizer":
        tok = model
EOF
echo "[exit $?]"

section "per-stage steps/s vs batch size (tf32, bf16): how much one GPU has to spare for batched runs"
# Fewer steps here: at batch 256 one 64x64 step takes about 0.2-0.4 s on an H100.
if [ "$QUICK" = 1 ]; then SCALE=(--steps 3 --warmup 1 --frame-size 16 --batches 16,32); else SCALE=(--steps 30 --warmup 3 --batches 64,256); fi
timeout 150 "$PY" benchmarks/gpu_steps.py --device "$DEVICE" "${SCALE[@]}" \
    --precisions "$([ "$DEVICE" = cuda ] && echo tf32,bf16 || echo fp32)" --json "$OUT/steps.jsonl"
echo "[exit $?]"

section "seed-batched training (worldmodel/batched.py): samples/s at K seeds vs per-seed runs, ci model"
timeout 150 "$PY" benchmarks/batched_seeds.py --device "$DEVICE" $([ "$QUICK" = 1 ] && echo --ks 1,2 --steps 5 || echo --ks 1,2,4,8 --steps 60) --json "$OUT/batched.jsonl"; echo "[exit $?]"

if [ "$QUICK" != 1 ]; then
    section "one ci-profile run on $DEVICE (meanpool_concat, seed 0): wall time"
    start=$(date +%s%N)
    bench 120 run --device "$DEVICE" --profile ci --variants meanpool_concat --seeds 0 --results "$WORK/ci" --quiet
    echo "ci run wall: $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi

# The lever a GPU has (harness/seed_batches.py): the runs of one variant trained as one stacked model.
if [ "$QUICK" = 1 ]; then BATCH=(--profile smoke --seeds 0-1 --seed-batch 2); else BATCH=(--profile ci --seeds 0-4 --seed-batch 5); fi
section "bench run --seed-batch on $DEVICE (meanpool_concat, ${BATCH[*]}): wall time, against the run above"
start=$(date +%s%N)
bench 300 run --device "$DEVICE" "${BATCH[@]}" --variants meanpool_concat --results "$WORK/batched" --quiet
echo "seed-batched wall: $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$PY" -c "import sys, pandas as pd; r = pd.read_parquet(sys.argv[1]); print(r[['seed', 'status', 'device']].to_string(index=False))" "$WORK/batched/store/runs"
tar czf "$OUT/results.tgz" -C "$WORK" . 2>/dev/null  # before the open-ended compile section

if [ "$DEVICE" = cuda ] && [ "$QUICK" != 1 ]; then
    section "torch.compile(model.loss), tf32, batch 16 (compile time is in warmup_s)"
    timeout 100 "$PY" benchmarks/gpu_steps.py --device cuda --steps 100 --warmup 5 --batches 16 --precisions tf32 \
        --compile --json "$OUT/steps.jsonl"
    echo "[exit $?]"
fi

section done
