#!/usr/bin/env bash
# Prepares .gpu_bundle/ for the GPU machine, which has torch, timm, opencv and tensorboard
# but not Ray, segmentation-models-pytorch or albumentations, and reaches no package index:
#   .gpu_bundle/wheels/      the wheels it lacks (for its Python 3.12, x86-64 manylinux)
#   .gpu_bundle/busi-256.npz the project's 256 px cache of the real BUSI, compressed
# and checks that they and the working tree that travels with them stay under 64 MiB.
# Run from anywhere, with the project's virtual environment active:
#   bash benchmarks/gpu_bundle.sh [BUSI_DIR]   (default: $BUSI_DATA or ../shared/busi/Dataset_BUSI_with_GT)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${BUSI_DATA:-../shared/busi/Dataset_BUSI_with_GT}}"
bundle=.gpu_bundle
limit=$((64 * 1024 * 1024))

# smp 0.6.0 needs huggingface-hub, numpy, pillow, safetensors, timm, torch, torchvision and
# tqdm: all on the GPU image. albumentations 2.0.8 needs numpy, scipy, PyYAML, opencv
# (there) and pydantic and albucore (missing); pydantic needs pydantic-core,
# annotated-types, typing-inspection and typing-extensions >= 4.16 (carried, since the
# image's version is unknown); albucore needs stringzilla and simsimd. Versions: those
# this project's environment runs.
wheels=(
  segmentation-models-pytorch==0.6.0
  albumentations==2.0.8
  albucore==0.0.24
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  stringzilla==5.3.2
  simsimd==6.5.16
)
target=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64)

rm -rf "$bundle"
mkdir -p "$bundle/wheels"
python -m pip download -q --no-deps "${target[@]}" -d "$bundle/wheels" "${wheels[@]}"
# Every wheel must install on the GPU machine's Python (a dry run, for its tags).
python -m pip install -q --dry-run --no-index --no-deps "${target[@]}" \
  --target "$(mktemp -d)" "$bundle"/wheels/*.whl
python -m benchmarks.bundle_cache --data "$data" --out "$bundle/busi-256.npz"

bundle_bytes=$(du -sb "$bundle" | cut -f1)
tree_bytes=$(git ls-files -co --exclude-standard | grep -v "^$bundle/" | tr '\n' '\0' \
  | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((bundle_bytes + tree_bytes))
printf '%s: %.1f MiB (wheels %.1f MiB); working tree %.1f MiB; together %.1f MiB of 64\n' \
  "$bundle" "$(echo "$bundle_bytes / 1048576" | bc -l)" \
  "$(echo "$(du -sb "$bundle/wheels" | cut -f1) / 1048576" | bc -l)" \
  "$(echo "$tree_bytes / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if ((total > limit)); then
  echo "too large for the device tool's 64 MiB" >&2
  exit 1
fi
