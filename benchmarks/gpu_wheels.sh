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

# Exact versions of this environment, so the GPU run uses what the tests ran with. A package
# the run needs that is not installed here stops the script (a shorter list would carry
# wheels that cannot import); the LUNA peer's are left out, with a note, where braindecode is
# not installed (the benchmarks then record LUNA as left out).
pins=$("$python" - <<'EOF'
import importlib.metadata as metadata
import sys

NEEDED = (
    "transformers", "datasets", "dill", "multiprocess", "mne", "mne-bids", "pooch",
    # huggingface-hub 2, which transformers requires at import, and what it needs
    "huggingface-hub", "hf-xet", "httpx2", "httpcore2", "h11", "truststore", "anyio", "idna",
    "click", "regex",
    "platformdirs", "decorator", "lazy-loader", "peft",
    # the benchmarks compile megfm by regions (accelerate.utils.compile_regions, 1.5 and newer)
    "accelerate",
)
# braindecode's LUNA (benchmarks/peers.py), without torchaudio
LUNA = (
    "braindecode", "einops", "docstring-inheritance", "torchinfo", "pydantic", "pydantic-core",
    "annotated-types", "typing-inspection",
)


def installed(names):
    versions, missing = {}, []
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return versions, missing


needed, missing = installed(NEEDED)
if missing:
    sys.exit(f"gpu_wheels.sh: not installed in {sys.prefix}: {', '.join(missing)}; "
             'install the project first (pip install -e ".[test]")')
luna, missing = installed(LUNA)
if missing:
    print(f"gpu_wheels.sh: LUNA left out ({', '.join(missing)} not installed here; see "
          "benchmarks/README.md, bench_training.py, for its install command)", file=sys.stderr)
    luna = {}
for name, version in {**needed, **luna}.items():
    print(f"{name}=={version}")
EOF
)
mapfile -t pins <<<"$pins"

rm -rf "$dir"
mkdir -p "$dir"
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" .

platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
    platforms+=(--platform "$tag")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "${TARGET_PYTHON:-3.12}" \
    --implementation cp "${platforms[@]}" -d "$dir" "${pins[@]}"
ls -1 "$dir"
du -sh "$dir"
