#!/usr/bin/env bash
# Wheels of the peers' packages (the `peers` extra), for a machine without internet access:
#
#   bash benchmarks/peer_wheels.sh DIR        # here, with the Python that will build them
#   pip install --no-index --find-links DIR rf-cutie sam2 hydra-core iopath einops   # there
#
# sam2 is published as a source archive only; it is built here into a pure-Python wheel without
# its optional CUDA extension (SAM2_BUILD_CUDA=0: sam2 then skips its small-hole filling, and
# benchmarks/fps.py says so in the peer's description). Building needs torch and setuptools in
# this Python. torch, torchvision, numpy, pillow and tqdm are expected on the target machine.
set -euo pipefail
out=${1:?usage: benchmarks/peer_wheels.sh DIR}
python=${PYTHON:-python3}
mkdir -p "$out"
# The versions the benchmark's peers were run with; hydra-core 1.3 and omegaconf 2.3 need antlr 4.9.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" \
    rf-cutie==1.0.1 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 iopath==0.1.10 \
    portalocker==4.4.2 einops==0.8.2
SAM2_BUILD_CUDA=0 "$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" sam2==1.1.0
ls "$out"
