#!/usr/bin/env bash
# Every GPU figure in one call sized for a short GPU lease: the benchmarks in order of priority,
# each in its own process (a failure, an OOM or a hang costs that step only) under what is left
# of a time budget, then a summary against the speed targets (gpu_summary.py).
#
#     bash benchmarks/run_gpu.sh [--budget SECONDS] [--results DIR] [--wheels DIR | --no-wheels]
#                                [STEP ...]
#     bash benchmarks/run_gpu.sh --rehearse [--results DIR]   # every step at toy sizes on the CPU
#
# STEP, in the order they run (default: all):
#   gputests  the tests marked gpu (pytest -m gpu): bf16 autocast steps follow float32 in
#             every mode, a latent pretraining step synchronises with the host twice, the whole
#             model replayed as CUDA graphs trains as eager (tests/test_gpu.py), and `pretrain`
#             with its GPU loader defaults gives the losses of blocking copies (test_training.py)
#   small     training and features at the reference shape, width 256 x 8, every attention
#             mode and mask ratio, PatchTST and (where braindecode is installed or carried)
#             LUNA beside (bench_training.py)
#   base      the same at width 768 x 12: does it fit batch 32?
#   compiled  the default model and PatchTST, both compiled whole (torch.compile), mask
#             ratio 0.5; megfm chooses its hidden tokens between its two graphs
#   loader    data-loader windows/s (Arrow and streamed Parquet, 0-8 workers) beside the step rate
#   trainer   `megfm pretrain`'s own loop (Trainer, collator, loader workers, bf16) beside the
#             bare step: does the data path keep the GPU fed? Then 3 steps profiled: how long
#             the host waits for the GPU and for batches (bench_pretrain.py)
#   mixed     padding and speed when a dataset mixes MEG systems (bench_mixed_arrays.py)
#   finetune  fine-tuning memory on 306 sensors x 30 s windows, full and LoRA, activation
#             checkpointing off and on: does it fit one 24 GB GPU? (bench_finetuning.py)
#   decodeall the default model decoding every token, not only the hidden ones: what the
#             work it leaves out would cost here
#   graphs    the same with mode="reduce-overhead": both replayed as CUDA graphs
#   largebatch  the default model eager at batch 128: does a step bound by launching its
#             kernels carry 4x the windows in about the same time?
#   profile   one eager step of the default model under torch.profiler: how busy the GPU is
#             against the wall time, kernels and operators per step (bench_profile.py)
#   profilegraphs  the same compiled whole and replayed as CUDA graphs
#   trainergraphs  `megfm pretrain`'s own loop with the Trainer compiling the whole model,
#             torch_compile_mode="reduce-overhead" (Arrow only), profiled as `trainer` is
#
# --budget (default 540 s) bounds the whole run; a step starts only with at least 45 s left and
# is stopped when the budget runs out, keeping every measurement it finished. On a machine
# without network, carry the wheels of benchmarks/gpu_wheels.sh in .whl/ (or --wheels DIR):
# they are installed into a private folder first (--no-wheels skips them). Results go to
# benchmarks/results/ (or DIR) and, where $OUT is set, are copied there (the records as one
# archive), with the summary and the log. PYTHON names the interpreter (default: python3).
# --rehearse proves the script end to end anywhere in a minute or two.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
budget=540 rehearse=0 results="" wheels="$root/.whl" steps=()
all_steps=(gputests small base compiled loader trainer mixed finetune decodeall graphs profile
    profilegraphs trainergraphs largebatch)
while [ $# -gt 0 ]; do
    case $1 in
        --budget) budget=$2; shift 2 ;;
        --results) results=$2; shift 2 ;;
        --rehearse) rehearse=1; shift ;;
        --wheels) wheels=$2; shift 2 ;;
        --no-wheels) wheels=""; shift ;;
        -h | --help) sed -n '2,/^set -uo/{/^set -uo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *)
            case " ${all_steps[*]} " in
                *" $1 "*) steps+=("$1") ;;
                *) echo "unknown step '$1'; steps are: ${all_steps[*]}" >&2; exit 2 ;;
            esac
            shift ;;
    esac
done
[ ${#steps[@]} -gt 0 ] || steps=("${all_steps[@]}")
results=$(mkdir -p "${results:-$root/benchmarks/results}" && cd "${results:-$root/benchmarks/results}" && pwd)
cd "$root/benchmarks"

if [ -n "$wheels" ] && [ "$rehearse" = 0 ] && ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "no wheels in $wheels: run benchmarks/gpu_wheels.sh and carry .whl, or pass --no-wheels" >&2
    exit 1
fi
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    # The carried megfm wheel must be this tree, or the figures belong to other code.
    if ! diff -rq -x __pycache__ "$root/modeling" "$site/megfm_hf/modeling" >/dev/null ||
        ! diff -rq -x __pycache__ -x modeling -x model_cards "$root/megfm_hf" "$site/megfm_hf" >/dev/null; then
        echo "the megfm-hf wheel in $wheels is not this tree: run benchmarks/gpu_wheels.sh again" >&2
        exit 1
    fi
fi

if [ "$rehearse" = 1 ]; then
    device=cpu-rehearsal
    # 200 samples: whole patches of 25 (megfm, PatchTST) and of 40 (LUNA).
    training=(--device cpu --batch 2 --sensors 30 --samples 200 --steps 1 --warmup 0
        --modes latent factorized full)
    # 768 x 12 at one mask ratio: its models are slow to build on a CPU, and `small` already
    # runs every ratio through the same code.
    base=(--ratios 0.5)
    loader=(--windows 64 --workers 0 2)
    pretrain=(--windows 64 --sensors 30 --samples 100 --batch 4 --steps 8 --warmup 2 --device cpu
        --profile-steps 2)
    mixed=(--windows-per-system 4 --samples 100 --batch 4 --device cpu)
    finetune=(--device cpu --sensors 30 --seconds 2 --batches 1 2 --steps 1 --warmup 0)
    profile=(--device cpu --batch 1 --sensors 30 --samples 100 --steps 1 --timed 1 --warmup 0)
    large=(--batch 4)
else
    "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")' || exit 1
    device=$("$py" -c 'import bench_training as b, torch; print(b.device_slug(torch.device("cuda")))') || exit 1
    training=()
    base=()
    loader=(--windows 1024 --workers 0 2 4 8)
    pretrain=(--windows 1024 --steps 80 --warmup 10 --profile-steps 3)
    mixed=(--windows-per-system 64 --samples 1000 --batch 32)
    finetune=(--batches 1 4 16 --steps 3 --warmup 1)
    profile=()
    large=(--batch 128)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
fi
log="$results/run_gpu_${device}.log"
: >"$log"
"$py" -c 'import torch, transformers, datasets, megfm_hf; print("torch", torch.__version__,
"cuda", torch.version.cuda, "| transformers", transformers.__version__, "| datasets",
datasets.__version__, "| megfm-hf", megfm_hf.__version__, "from", megfm_hf.__file__)' 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "the benchmark packages do not import (see above)" >&2; exit 1; }

prefix="$results/training_${device}"
declare -A command=(
    [gputests]="-m pytest -q -rs -p no:cacheprovider -m gpu $root/tests/test_gpu.py $root/tests/test_training.py"
    [small]="bench_training.py ${training[*]} --sizes small --output ${prefix}_small.json"
    [base]="bench_training.py ${training[*]} ${base[*]} --sizes base --output ${prefix}_base.json"
    [compiled]="bench_training.py ${training[*]} --sizes small --modes latent --ratios 0.5 --compile --compile-scope whole --skip-features --skip-luna --output ${prefix}_small_compiled.json"
    [decodeall]="bench_training.py ${training[*]} --sizes small --modes latent --decode-visible --skip-features --skip-patchtst --skip-luna --output ${prefix}_small_decode_visible.json"
    [graphs]="bench_training.py ${training[*]} --sizes small --modes latent --ratios 0.5 --compile-mode reduce-overhead --compile-scope whole --skip-features --skip-luna --output ${prefix}_small_graphs.json"
    [largebatch]="bench_training.py ${training[*]} ${large[*]} --sizes small --modes latent --ratios 0.5 --skip-features --skip-patchtst --skip-luna --output ${prefix}_small_large_batch.json"
    [loader]="bench_dataloader.py ${loader[*]} --output $results/dataloader_${device}.json"
    [trainer]="bench_pretrain.py ${pretrain[*]} --output $results/pretrain_${device}.json"
    [mixed]="bench_mixed_arrays.py ${mixed[*]} --output $results/mixed_arrays_${device}.json"
    [finetune]="bench_finetuning.py ${finetune[*]} --strategies full lora --output $results/finetuning_${device}.json"
    [profile]="bench_profile.py ${profile[*]} --output $results/profile_${device}.json"
    [profilegraphs]="bench_profile.py ${profile[*]} --compile-mode reduce-overhead --output $results/profile_${device}_graphs.json"
    [trainergraphs]="bench_pretrain.py ${pretrain[*]} --sources arrow --torch-compile-mode reduce-overhead --output $results/pretrain_${device}_graphs.json"
)
declare -A outcome=()
failed=0
for step in "${steps[@]}"; do
    left=$((budget - SECONDS))
    if [ "$left" -lt 45 ]; then
        outcome[$step]="skipped (${left} s of the budget left)"
        failed=1
        continue
    fi
    echo "== $step (at ${SECONDS} s, ${left} s left): ${command[$step]}" | tee -a "$log"
    start=$SECONDS
    # shellcheck disable=SC2086  # the command line is split into its arguments on purpose
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$left" "$py" ${command[$step]} 2>&1 | tee -a "$log"
    code=${PIPESTATUS[0]}
    case $code in
        0) outcome[$step]="ok in $((SECONDS - start)) s" ;;
        124 | 137) outcome[$step]="stopped at the budget after $((SECONDS - start)) s"; failed=1 ;;
        *) outcome[$step]="failed (exit $code) after $((SECONDS - start)) s"; failed=1 ;;
    esac
done

echo | tee -a "$log"
"$py" gpu_summary.py --results "$results" --device "$device" 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || failed=1
{
    echo
    echo "steps (budget ${budget} s, used ${SECONDS} s):"
    for step in "${steps[@]}"; do echo "  $step: ${outcome[$step]}"; done
} | tee -a "$log"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    # Three files: the records in one archive, the summary and the log.
    (cd "$results" && tar -czf "$OUT/results_${device}.tar.gz" ./*"_${device}"*.json)
    cp "$results/gpu_summary_${device}.md" "$log" "$OUT"/ 2>/dev/null
    echo "copied to $OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit $failed
