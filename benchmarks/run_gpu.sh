#!/usr/bin/env bash
# Every GPU figure in one go, each benchmark in its own process (so one failure or OOM does not
# stop the others), written to benchmarks/results/. Run from the repository root with the
# package installed on a CUDA machine:
#
#     bash benchmarks/run_gpu.sh            # all
#     bash benchmarks/run_gpu.sh small      # one step only: small | base | mixed | loader | modes
#
# Each step stays under 10 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
gpu=$(python -c "import bench_training as b, torch; print(b.device_slug(torch.device('cuda')))")
failed=0
run() {
    echo "== $*"
    "$@" || { echo "!! failed: $*"; failed=1; }
}
step=${1:-all}
selected() { [ "$step" = all ] || [ "$step" = "$1" ]; }
if selected small; then
    run python bench_training.py --sizes small --output "results/training_${gpu}_small.json"
fi
if selected base; then
    run python bench_training.py --sizes base --output "results/training_${gpu}_base.json"
fi
if selected mixed; then
    run python bench_mixed_arrays.py --windows-per-system 64 --samples 1000 --batch 32
fi
if selected loader; then
    run python bench_dataloader.py --windows 1024 --workers 0 2 4 8 \
        --output "results/dataloader_${gpu}.json"
fi
if selected modes; then
    run python bench_attention_modes.py
fi
exit $failed
