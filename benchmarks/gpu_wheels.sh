#!/usr/bin/env bash
# The wheels a GPU machine without network needs to run the benchmarks, into one folder
# (default: .whl/ at the repository root, which git ignores):
#
#     bash benchmarks/gpu_wheels.sh [DIR]
#
# Run it from the project's environment (the versions taken are the ones installed here, which
# the test suite ran with) right before carrying the folder: it holds a wheel of megfm-hf built
# from this tree, and benchmarks/run_gpu.sh refuses a wheel older than the tree.
#
# A CUDA image that ships torch, numpy, pyarrow, pandas, scipy, scikit-learn, matplotlib,
# accelerate and huggingface-hub usually lacks `datasets` and `mne` and has an older
# transformers, huggingface-hub and accelerate (and a peft of their time, if any); those and
# their needs come as wheels for CPython 3.12 (about 35 MB), with braindecode for the LUNA peer
# (without its torchaudio, which only loads beside the torch release it was built for).
# transformers checks the versions of huggingface-hub and regex when it is imported, and
# huggingface-hub 2 talks HTTP through httpx2, so those come with their own needs too.
# PYTHON names the interpreter (default: python), TARGET_PYTHON the GPU machine's Python
# version (default: 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
python=${PYTHON:-python}
rm -rf "$dir"
mkdir -p "$dir"

"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" .

# Exact versions of this environment, so the GPU run uses what the tests ran with.
mapfile -t pins < <("$python" - <<'EOF'
import importlib.metadata as metadata

for name in (
    "transformers", "datasets", "dill", "multiprocess", "mne", "mne-bids", "pooch",
    # huggingface-hub 2, which transformers requires at import, and what it needs
    "huggingface-hub", "hf-xet", "httpx2", "httpcore2", "h11", "truststore", "anyio", "idna",
    "click", "regex",
    "platformdirs", "decorator", "lazy-loader", "peft",
    # the benchmarks compile megfm by regions (accelerate.utils.compile_regions, 1.5 and newer)
    "accelerate",
    # braindecode's LUNA (benchmarks/peers.py), without torchaudio
    "braindecode", "einops", "docstring-inheritance", "torchinfo", "pydantic", "pydantic-core",
    "annotated-types", "typing-inspection",
):
    print(f"{name}=={metadata.version(name)}")
EOF
)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
    platforms+=(--platform "$tag")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "${TARGET_PYTHON:-3.12}" \
    --implementation cp "${platforms[@]}" -d "$dir" "${pins[@]}"
ls -1 "$dir"
du -sh "$dir"
