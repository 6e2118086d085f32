#!/usr/bin/env bash
# `make gpu-wheels`: what the device machine lacks, for its CPython 3.12 on manylinux x86-64, into .whl/ (ignored),
# and the Fashion-MNIST files into .gpu_data/fashion-mnist/ (ignored); prints the total the `device` call carries
# (64 MiB at most, data included). The versions are the ones this checkout's virtual environment runs, so the
# device runs the code against the libraries its tests pass with. Its torch 2.11, lightning 2.6.6, torchvision,
# torchmetrics, PyYAML, numpy, scipy and pillow are already there (device KINDS.md) and are not carried.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
WHEELS=(
  "jsonargparse==$(version jsonargparse)"         # LightningCLI
  "docstring-parser==$(version docstring-parser)"  # jsonargparse[signatures]
  "typeshed-client==$(version typeshed-client)"    # jsonargparse[signatures]
  "kornia==$(version kornia)"                      # classifier-input augmentation
  "kornia-rs==$(version kornia-rs)"                # kornia's Rust core
  "torch-fidelity==$(version torch-fidelity)"      # FID statistics
  "torchdata==$(version torchdata)"                # StatefulDataLoader (exact mid-epoch resume)
)
rm -rf .whl && mkdir -p .whl
for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d .whl "$spec"
done
DATA=${JOINTDIFF_DATA_ROOT:-../shared/data}/fashion-mnist
if [ ! -d "$DATA" ]; then
  echo "no Fashion-MNIST at $DATA: set JOINTDIFF_DATA_ROOT to the folder holding fashion-mnist/" >&2
  exit 1
fi
rm -rf .gpu_data && mkdir -p .gpu_data && cp -r "$DATA" .gpu_data/fashion-mnist
ls -l .whl
du -sh .whl .gpu_data
echo "carried in all: $(du -cb .whl .gpu_data | tail -1 | cut -f1) bytes (limit 67108864)"
