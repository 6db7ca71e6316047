"""Where and in what precision the network runs: CUDA or CPU, bf16 autocast where it is faster,
int8 frozen blocks on request."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.model.quantize import check_available


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    int8: bool = False  # frozen blocks quantized (quantize.py); the rest as `bf16` says

    def to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the device as the convolutions take it: float32 (autocast lowers it), channels-last.
        On CUDA the copy comes from pinned memory, so it overlaps the previous batch's work."""
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(self.device, torch.float32, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @property
    def precision(self) -> str:
        if self.int8:
            return "int8"
        return "bf16" if self.bf16 else "fp32"

    def processor(self) -> str:
        """The GPU's name, or the CPU's model name as /proc/cpuinfo gives it and the cores this process sees."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        name = cpuinfo_fields().get("model name")
        if name is None:
            import platform

            return platform.processor() or platform.machine()
        return f"{name} ({os.cpu_count()} cores)"

    def describe(self) -> str:
        trainable = "bf16" if self.bf16 else "fp32"
        if self.int8:
            return f"{self.device.type} int8 (frozen blocks) + {trainable}"
        return f"{self.device.type} {trainable}"


def cpu_bf16_pays() -> bool:
    """True where bf16 runs faster than fp32 on this CPU: where its bf16 units outpace its fp32 FMAs.
    That is Intel's AMX tiles, and AMD's AVX512-BF16 (Zen 4 on). Intel's AVX512-BF16 without AMX
    (Cooper Lake; Sapphire and Emerald Rapids where a hypervisor hides AMX) retires one bf16 dot
    product about every two cycles, half the rate of fp32 FMAs, so VGG16 runs faster in fp32 there
    (benchmarks/roofline.py; BENCHMARKS.md §16). Emulated bf16, without either, is slower still."""
    fields = cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    return "amx_bf16" in flags or ("avx512_bf16" in flags and fields.get("vendor_id") == "AuthenticAMD")


def cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (`flags`, `vendor_id`, `model`...); empty where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def choose_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """auto: CUDA if present; bf16 where it is faster than fp32 (CUDA GPUs that have it, `cpu_bf16_pays`), fp32
    otherwise."""
    if precision == "int8":
        return _int8_runtime(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: received 'cuda' but no CUDA device is visible; allowed: auto, cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    target = torch.device("cuda" if use_cuda else "cpu")
    native = torch.cuda.is_bf16_supported() if use_cuda else cpu_bf16_pays()
    if precision == "bf16" and not use_cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise UserError("--precision: received 'bf16' but this CPU cannot run it; allowed: auto, fp32")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    return Runtime(target, bf16=precision == "bf16" or (precision == "auto" and native))


def _int8_runtime(device: str) -> Runtime:
    """int8 frozen blocks use the CPU's quantized engine; the trainable part runs in bf16 where that pays."""
    if device == "cuda":
        raise UserError(
            "--precision int8: runs on the CPU only, received --device cuda; "
            "allowed: --device auto or cpu with int8, or bf16/fp32 on cuda"
        )
    check_available()
    return Runtime(torch.device("cpu"), bf16=cpu_bf16_pays(), int8=True)


def runtime_for(int8_trained: bool, device: str, precision: str, run: Path) -> Runtime:
    """Where a trained model predicts: one trained on int8 features through the same int8 blocks, on the CPU."""
    origin = display_path(run)
    if int8_trained and device == "cuda":
        raise UserError(
            f"{origin}: this model's frozen blocks run in int8 on the CPU, received --device cuda; allowed: auto, cpu"
        )
    if not int8_trained and precision == "int8":
        raise UserError(
            f"{origin}: --precision int8, but this model was trained without it; "
            "allowed: auto, bf16, fp32 (int8 is chosen when training)"
        )
    if int8_trained:
        return choose_runtime("cpu", "int8" if precision == "auto" else precision)
    return choose_runtime(device, precision)
