"""Where and in what precision the network runs: CUDA or CPU, bf16 autocast where it pays."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> str:
        return f"{self.device.type} {self.precision}"


def cpu_has_native_bf16() -> bool:
    """True where the cores compute bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def choose_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """auto: CUDA if present; bf16 where the hardware has it natively, fp32 otherwise."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: received 'cuda' but no CUDA device is visible; allowed: auto, cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    target = torch.device("cuda" if use_cuda else "cpu")
    native = torch.cuda.is_bf16_supported() if use_cuda else cpu_has_native_bf16()
    if precision == "bf16" and not use_cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise UserError("--precision: received 'bf16' but this CPU cannot run it; allowed: auto, fp32")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    return Runtime(target, bf16=precision == "bf16" or (precision == "auto" and native))
