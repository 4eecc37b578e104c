#!/usr/bin/env bash
# The GPU path, run on a real GPU, in at most 8 minutes: prints what it found, exits non-zero on a failure.
#
#   bash benchmarks/gpu_check.sh
#
# 1. persona-train recipes/tiny-gpt2/train.yaml --bf16 true on CUDA: it finishes, eval_hits@1 is at least twice
#    chance (20 candidates: 0.10), and the run records mixed_precision bf16;
# 2. the packed fast path equals the classic path on CUDA (benchmarks/fast_path_equivalence.py: loss and MC logits,
#    tiny GPT-2 and tiny Llama, SDPA and eager attention; float32 within 1e-4, bfloat16 within its stated tolerance);
# 3. benchmarks/train_throughput.py for the GPT-2-small-sized model on CUDA in bf16 at batch sizes 8 and 32:
#    examples/s and peak GPU memory, packed against classic;
# 4. persona-eval recipes/tiny-gpt2/eval.yaml on CUDA (scoring and batched generation).
#
# A machine without CUDA is refused at once (exit 3, "no CUDA device"). A GPU machine that cannot reach a package
# registry installs what its Python lacks (datasets, evaluate, ...) from wheels carried in .whl/ beside the project,
# if that folder exists (downloaded elsewhere with `pip download --only-binary=:all: -d .whl ...`).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is false, or torch is missing): nothing to check here." >&2
  exit 3
fi
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 4
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
"$PYTHON" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
failed=0
out=$(mktemp -d)

echo "== 1. the tiny GPT-2 trained in bf16 on CUDA"
if timeout 180 "$PYTHON" -m persona.commands.train recipes/tiny-gpt2/train.yaml --bf16 true --output_dir "$out/tiny-gpt2" --dataset_cache "$out/cache" \
     > "$out/train.log" 2>&1; then
  "$PYTHON" - "$out/tiny-gpt2" <<'PY' || failed=1
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
train, evaluation = (json.loads((run / name).read_text()) for name in ("train_results.json", "eval_results.json"))
print(f"train_runtime {train['train_runtime']:.1f} s, mixed_precision {train['mixed_precision']}, "
      f"eval_hits@1 {evaluation['eval_hits@1']:.3f}, eval_perplexity {evaluation['eval_perplexity']:.2f}")
sys.exit(0 if train["mixed_precision"] == "bf16" and evaluation["eval_hits@1"] >= 0.10 else 1)
PY
else
  echo "FAILED: persona-train on CUDA"; tail -20 "$out/train.log"; failed=1
fi

echo "== 2. the packed fast path against the classic path on CUDA"
for dtype in float32 bfloat16; do
  timeout 120 "$PYTHON" benchmarks/fast_path_equivalence.py --device cuda --dtype "$dtype" 2> "$out/equivalence.log" || { failed=1; tail -5 "$out/equivalence.log"; }
done

echo "== 3. training and scoring throughput, GPT-2-small size, bf16, batch 8 and 32"
timeout 200 "$PYTHON" benchmarks/train_throughput.py --device cuda --bf16 --batch_sizes 8 32 --models "GPT-2 small size (12x768)" \
  2> "$out/throughput.log" || { failed=1; tail -5 "$out/throughput.log"; }

echo "== 4. persona-eval of the tiny GPT-2 on CUDA"
if timeout 120 "$PYTHON" -m persona.commands.eval recipes/tiny-gpt2/eval.yaml --model_name_or_path "$out/tiny-gpt2" --output_dir "$out/eval" \
     --dataset_cache "$out/cache" > "$out/eval.log" 2>&1; then
  grep "INFO persona: perplexity" "$out/eval.log"
else
  echo "FAILED: persona-eval on CUDA"; tail -20 "$out/eval.log"; failed=1
fi

echo "gpu_check: $([ $failed -eq 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED')"
exit $failed
