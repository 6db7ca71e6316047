#!/bin/sh
# Installs PyTorch into the virtualenv whose python is $1: PyTorch's CPU wheels where there is no NVIDIA
# GPU (about 1 GB, against about 7 GB for PyPI's CUDA build). Where the CPU index cannot be reached (a
# machine that reaches PyPI alone) or gives no working torch/torchvision pair, it says so in one line and
# leaves torch to `pip install .`, which takes PyPI's build.
set -eu
python="$1"
index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
works() { "$python" -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" >/dev/null 2>&1; }
if command -v nvidia-smi >/dev/null 2>&1 || works; then
    exit 0   # an NVIDIA GPU (PyPI's torch is the CUDA build it wants), or a working pair already
fi
if "$python" -m pip install -q --timeout 20 --retries 0 --index-url "$index" torch torchvision >/dev/null 2>&1 && works; then
    echo "setup: PyTorch's CPU wheels from $index (no NVIDIA GPU here)"
else
    "$python" -m pip uninstall -q -y torch torchvision >/dev/null 2>&1 || true
    echo "setup: $index cannot be reached; PyPI's torch comes instead (the CUDA build, about 7 GB)"
fi
