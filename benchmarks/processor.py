"""The processor's peaks, measured, and what stands between vggtune and its matrix units.

`peaks()` compiles peak/peak.c with the instruction sets /proc/cpuinfo lists, runs one copy per
core at once and reads: the clock (a chain of dependent one-cycle instructions), and how many
fp32 FMA (AVX-512 or AVX2), bf16 dot-product (AVX512-BF16) and int8 dot-product (AVX512-VNNI)
instructions the cores retire a second, each instruction's work counted as the ISA defines it.
Where the AMX tiles are usable (the CPU lists them and the kernel grants this process the tile
state) their tile dot products are measured too (TDPBF16PS, TDPBUSD: `amx_gops`); the ISA's
nominal rate (1,024 bf16 or 2,048 int8 operations per cycle per core) at the measured clock is
kept beside it, and is the peak where the tiles cannot be run.

`amx_evidence()` says why AMX is or is not usable here (CPUID bits, XCR0, the kernel's permission),
and `onednn_kernels()` which implementation oneDNN picks for vggtune's convolutions (ONEDNN_VERBOSE).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vggtune.model.runtime import cpuinfo_fields

SOURCE = Path(__file__).resolve().parent / "peak" / "peak.c"
# Intel's figures per core and cycle, counted as operations (a multiply-add is two): 1,024 bf16, 2,048 int8;
# TDPBF16PS and TDPBUSD measured here (peak.c) retire 0.87 and 0.82 of them.
AMX_OPS_PER_CYCLE = {"bf16": 1024, "int8": 2048}


def cpu_flags() -> set[str]:
    return set(cpuinfo_fields().get("flags", "").split())


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def compile_peak(folder: Path, flags: set[str]) -> Path | None:
    """The microkernels built for this processor, or None where there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    binary = folder / "peak"
    isa = ["-mavx512f"] if "avx512f" in flags else ["-mavx2", "-mfma"]
    if {"amx_tile", "amx_bf16", "amx_int8"} <= flags:
        isa += ["-mamx-tile", "-mamx-bf16", "-mamx-int8"]
    subprocess.run([compiler, "-O2", *isa, str(SOURCE), "-o", str(binary)], check=True)
    return binary


def all_cores(binary: Path, kernel: str, seconds: float) -> float:
    """Units a second summed over one copy a core, all started together."""
    copies = [subprocess.Popen([str(binary), kernel, str(seconds)], stdout=subprocess.PIPE, text=True)
              for _ in range(cores())]
    outputs = [copy.communicate()[0].split() for copy in copies]
    if any(copy.returncode for copy in copies):        # a kernel the processor faulted on measures nothing
        return 0.0
    return sum(float(output[0]) for output in outputs)


def kernels_for(flags: set[str]) -> dict[str, str]:
    """precision -> the microkernel that measures its vector peak on this processor."""
    chosen = {"fp32": "fp32" if "avx512f" in flags else "fp32_avx2"}
    if "avx512_bf16" in flags:
        chosen["bf16"] = "bf16"
    if "avx512_vnni" in flags:
        chosen["int8"] = "int8"
    return chosen


def peaks(seconds: float = 1.0, rounds: int = 5) -> dict:
    """Per precision: the vector peak measured (ops/s, all cores), ops per cycle per core, and AMX's nominal peak.
    The best of `rounds`: on a shared machine another tenant can only lower a rate, never raise it."""
    flags = cpu_flags()
    with tempfile.TemporaryDirectory() as folder:
        binary = compile_peak(Path(folder), flags)
        if binary is None:
            return {"measured": False, "why": "no C compiler (cc or gcc) on PATH"}
        clock = max(all_cores(binary, "clock", seconds) / cores() for _ in range(rounds))
        result = {"measured": True, "cores": cores(), "clock_ghz": round(clock / 1e9, 3), "precisions": {}}
        for precision, kernel in kernels_for(flags).items():
            ops = max(all_cores(binary, kernel, seconds) for _ in range(rounds))
            entry = {"instruction": kernel, "vector_gops": round(ops / 1e9, 1),
                     "ops_per_cycle_per_core": round(ops / clock / cores(), 1)}
            amx_flag = {"bf16": "amx_bf16", "int8": "amx_int8"}.get(precision)
            if amx_flag in flags:
                entry["amx_nominal_gops"] = round(AMX_OPS_PER_CYCLE[precision] * clock * cores() / 1e9, 1)
                tiles = max(all_cores(binary, amx_flag, seconds) for _ in range(rounds))
                if tiles:           # 0: the kernel refused this process the tile state
                    entry["amx_gops"] = round(tiles / 1e9, 1)
                    entry["amx_ops_per_cycle_per_core"] = round(tiles / clock / cores(), 1)
            result["precisions"][precision] = entry
    return result


def higher(first: dict, second: dict) -> dict:
    """Two measurements of the peaks merged: each figure the higher of the two."""
    if not first.get("measured"):
        return second
    merged = dict(first, clock_ghz=max(first["clock_ghz"], second["clock_ghz"]), precisions={})
    for name, entry in first["precisions"].items():
        other = second["precisions"][name]
        faster = dict(max(entry, other, key=lambda e: e["vector_gops"]))
        for key in ("amx_nominal_gops", "amx_gops"):
            if key in entry or key in other:
                faster[key] = max(entry.get(key, 0), other.get(key, 0))
        merged["precisions"][name] = faster
    return merged


def best_peak(peak: dict, precision: str) -> float | None:
    """GOP/s of the fastest unit this processor has for `precision`: AMX's measured rate where the tiles ran,
    else its nominal rate where the CPU lists them, else the vector units'."""
    entry = peak.get("precisions", {}).get(precision)
    if entry is None:
        return None
    return entry.get("amx_gops") or entry.get("amx_nominal_gops", entry["vector_gops"])


def amx_evidence() -> dict:
    """What /proc/cpuinfo and the processor itself say about AMX in this process."""
    flags = cpu_flags()
    evidence = {"cpuinfo_amx_flags": sorted(f for f in flags if f.startswith("amx")),
                "cpu_family_model": _family_model()}
    with tempfile.TemporaryDirectory() as folder:
        binary = compile_peak(Path(folder), flags)
        if binary is not None:
            report = subprocess.run([str(binary), "amx"], capture_output=True, text=True, check=True).stdout
            evidence.update(line.split(" ", 1) for line in report.splitlines())
    return evidence


def _family_model() -> str:
    fields = cpuinfo_fields()
    return ", ".join(f"{key} {fields[key]}" for key in ("vendor_id", "cpu family", "model") if key in fields)


ONEDNN_PROBE = """
import torch
from torch.ao.nn.quantized import functional as qf
conv = torch.nn.Conv2d(512, 512, 3, padding=1).eval().to(memory_format=torch.channels_last)
x = torch.randn(4, 512, 28, 28).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
torch.backends.quantized.engine = "onednn"
qx = torch.quantize_per_tensor(x.relu(), 0.05, 0, torch.quint8)
qw = torch.quantize_per_channel(conv.weight.detach(), torch.full((512,), 0.01), torch.zeros(512, dtype=torch.long), 0, torch.qint8)
qf.conv2d(qx, qw, conv.bias.detach(), padding=1, scale=0.1, zero_point=0)
"""


def onednn_kernels() -> dict[str, str]:
    """The implementation oneDNN ran for a 512->512 3x3 convolution in fp32, bf16 and int8 (as vggtune's
    frozen blocks run them: channels-last, autocast, the onednn quantized engine), from ONEDNN_VERBOSE."""
    run = subprocess.run([sys.executable, "-c", ONEDNN_PROBE], capture_output=True, text=True,
                         env=dict(os.environ, ONEDNN_VERBOSE="1"))
    found = {}
    for line in run.stdout.splitlines():
        fields = line.split(",")
        if len(fields) > 8 and fields[2] == "primitive" and fields[3] == "exec" and fields[5] == "convolution":
            dtype = re.search(r"src:(\w+)", line)
            found.setdefault({"f32": "fp32", "bf16": "bf16", "u8": "int8"}.get(dtype.group(1), dtype.group(1)),
                             fields[6])
        elif "isa:" in line and "info" in line:
            found.setdefault("oneDNN's ISA", line.split("isa:", 1)[1].strip())
    return found
