"""A roofline of the default recipe on this machine: the processor's peaks (processor.py: measured
clock and instruction rates), and for each stage of a run the work it does (FLOPs counted by
torch's FlopCounterMode on the real VGG16 shapes), the rate it reaches and its fraction of the
peak for the precision it runs in. Stages, at the recipe's batch size (32) and head (flatten, 256):

  decode       a JPEG to the clean 224x224 view (one thread; no FLOPs to count)
  frozen       block1..block4 forward (extraction to the cache; the test pass's first part), on
               PyTorch and on each inference runtime installed (features/engine.py)
  cache read   32 block4 rows gathered from a float16 file and made the stage's input
  block5 fwd   the fine-tune stage's forward: block5 + head, training mode
  block5 bwd   its backward (block5's input needs no gradient: its features are cached)
  optimiser    fused Adam over block5 + head
  head step    the head stage's whole step on block5 features
  test pass    one image through the whole network, clean view and mirror (test-time augmentation)

Random-init weights (the cost does not depend on the values; int8 is calibrated on random views).
Each precision the processor runs is measured, and the one `--precision auto` picks is marked.
Also records the AMX evidence and the oneDNN kernels (processor.py). Prints tables; writes
results/roofline.json."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from vggtune.model import quantize
from vggtune.features.choice import resolve
from vggtune.features.engine import frozen, installed
from vggtune.features.extract import decode_clean
from vggtune.model.classifier import Classifier
from vggtune.model.policy import ScoringPolicy
from vggtune.model.heads import HeadSpec
from vggtune.model.runtime import choose_runtime
from vggtune.training.schedule import StageNet, make_optimizer
from vggtune.model.weights import VGG16_IMAGENET1K_V1

import processor
from common import DATA, save, table

BATCH = 32
PREP = VGG16_IMAGENET1K_V1.preprocessing


def counted(work) -> float:
    """FLOPs of `work()` (forward and any backward it runs), as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def timed(work, seconds: float) -> float:
    """Seconds per call of `work()`, median of calls after one warm-up, for at least `seconds`."""
    work()
    samples, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(samples) < 3:
        begun = time.perf_counter()
        work()
        samples.append(time.perf_counter() - begun)
    return float(np.median(samples))


def classifier(runtime) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(HeadSpec("flatten", 2, hidden=256, dropout=0.5))
    model.to(memory_format=torch.channels_last)
    if runtime.int8:
        views = torch.randn(16, 3, 224, 224)
        quantize.calibrate_model(model, "block4", views, runtime.autocast)
    return model


def decode_stage(count: int, seconds: float) -> dict:
    """Milliseconds an image, one thread, real photos where ../shared has them."""
    photos = sorted((DATA / "cats-vs-dogs-2k" / "cat").glob("*.jpg"))[:count]
    if not photos:
        return {"stage": "decode", "note": "no photos in ../shared/data"}
    position = iter(range(10**9))
    per_image = timed(lambda: decode_clean(str(photos[next(position) % len(photos)]), PREP), seconds)
    return {"stage": "decode", "ms_per_image": round(per_image * 1000, 2)}


def cache_read_stage(runtime, folder: Path, seconds: float) -> dict:
    """A batch of block4 rows from a float16 file, as CachedSource reads them, made the stage's input."""
    rows = np.lib.format.open_memmap(folder / "rows.npy", mode="w+", dtype=np.float16, shape=(256, 512, 28, 28))
    rows[:] = np.random.default_rng(0).standard_normal(rows.shape, dtype=np.float32)
    rows.flush()
    rows = np.load(folder / "rows.npy", mmap_mode="r")
    rng = np.random.default_rng(1)
    read = lambda: runtime.to_input(torch.from_numpy(rows[np.sort(rng.choice(256, BATCH, replace=False))]))
    per_batch = timed(read, seconds)
    return {"stage": "cache read", "ms_per_image": round(per_batch / BATCH * 1000, 2),
            "gb_per_s": round(BATCH * rows[0].nbytes / per_batch / 1e9, 2)}


def rate(stage: str, flops_per_image: float, seconds_per_image: float, unit: str) -> dict:
    """A stage's work and speed; `unit` is the precision of the unit it runs on (its peak is added later)."""
    return {"stage": stage, "ms_per_image": round(seconds_per_image * 1000, 2),
            "gflop_per_image": round(flops_per_image / 1e9, 2),
            "achieved_gops": round(flops_per_image / seconds_per_image / 1e9, 1), "unit": unit}


def with_fractions(row: dict, peak: dict) -> dict:
    """`row` with the peak of its unit and its fraction of it, and its fraction of the best peak this processor
    has for that kind of number (int8 for int8; the faster of fp32 and bf16 for floating point)."""
    if "achieved_gops" not in row:
        return row
    own = processor.best_peak(peak, row["unit"])
    best = own if row["unit"] == "int8" else max(processor.best_peak(peak, name) or 0 for name in ("fp32", "bf16"))
    return dict(row, peak_gops=own, of_peak=round(row["achieved_gops"] / own, 3) if own else None,
                of_best_peak=round(row["achieved_gops"] / best, 3) if best else None)


def frozen_stage(model, runtime, seconds: float, engine: str = "torch") -> dict:
    """Blocks 1-4 on `engine` (features/engine.py), which runs them at the runtime's precision or its own."""
    images = torch.randn(BATCH, 3, 224, 224)
    chosen = resolve(engine, runtime, model)
    network = frozen(model, runtime, chosen, upto="block4")
    with torch.inference_mode(), runtime.autocast():
        x = runtime.to_input(images)
        flops = counted(lambda: model.backbone.run(x, upto="block4"))       # the int8 blocks do the same work
        per_batch = timed(lambda: network(images), seconds)
    suffix = "" if engine == "torch" else f" on {engine}"
    return rate(f"frozen (block1-4){suffix}", flops / BATCH, per_batch / BATCH, chosen.precision)


def train_step_stages(model, runtime, cut: str, seconds: float) -> list[dict]:
    """One training step from features at `cut`, split into forward, backward and the optimiser."""
    side, channels = 224 >> (int(cut[-1])), 512
    model.set_trainable(("block5",) if cut == "block4" else ())
    model.train()
    net = StageNet(model, cut)
    optimizer = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-5}])
    features = runtime.to_input(torch.randn(BATCH, channels, side, side).abs())
    labels = torch.randint(0, 2, (BATCH,)).float()
    parts = {"forward": [], "backward": [], "optimiser": []}

    def step(record: bool):
        started = time.perf_counter()
        with runtime.autocast():
            logits = net(features)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float()[:, 0], labels)
        forward_done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        if record:
            parts["forward"].append(forward_done - started)
            parts["backward"].append(backward_done - forward_done)
            parts["optimiser"].append(time.perf_counter() - backward_done)

    with runtime.autocast():
        forward_flops = counted(lambda: net(features))
    total_flops = counted(lambda: step(False))
    step(False)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(parts["forward"]) < 3:
        step(True)
    precision = runtime.precision if not runtime.int8 else ("bf16" if runtime.bf16 else "fp32")
    per_image = {name: float(np.median(values)) / BATCH for name, values in parts.items()}
    if cut == "block5":
        return [rate("head step", total_flops / BATCH, sum(per_image.values()), precision)]
    return [rate("block5 fwd", forward_flops / BATCH, per_image["forward"], precision),
            rate("block5 bwd", (total_flops - forward_flops) / BATCH, per_image["backward"], precision),
            {"stage": "optimiser", "ms_per_image": round(per_image["optimiser"] * 1000, 2),
             "parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1)},
            rate("fine-tune step", total_flops / BATCH, sum(per_image.values()), precision)]


def test_stage(model, runtime, seconds: float) -> dict:
    """The whole network, clean view and mirror, as the test pass scores an image."""
    model.eval()
    policy = ScoringPolicy.of(tta=True)
    images = runtime.to_input(torch.randn(BATCH, 3, 224, 224))
    with torch.inference_mode(), runtime.autocast():
        flops = 2 * counted(lambda: model.head(model.backbone.run(images)))
        per_batch = timed(lambda: policy.classify(model, images, model.head_spec), seconds)
    main = "int8" if runtime.int8 else runtime.precision      # the frozen blocks' unit: most of the work
    return rate("test pass (2 views)", flops / BATCH, per_batch / BATCH, main)


def stages(precision: str, folder: Path, seconds: float) -> list[dict]:
    runtime = choose_runtime("cpu", precision)
    model = classifier(runtime)
    rows = [frozen_stage(model, runtime, seconds)]
    # OpenVINO runs every precision (int8: the blocks quantize.py calibrated); ONNX Runtime fp32 only.
    rows += [frozen_stage(model, runtime, seconds, name) for name in ("openvino", "onnxruntime")
             if installed(name) and (name == "openvino" or precision == "fp32")]
    rows.append(cache_read_stage(runtime, folder, seconds))
    rows += train_step_stages(model, runtime, "block4", seconds)
    rows += train_step_stages(model, runtime, "block5", seconds)
    rows.append(test_stage(model, runtime, seconds))
    return [dict(row, precision=precision) for row in rows]


def int8_available() -> bool:
    try:
        quantize.check_available()
    except Exception:
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent measuring each stage")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "int8"], default=None,
                        help="default: each one this CPU runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = processor.peaks()
    auto = choose_runtime("cpu", "auto").precision
    flags = processor.cpu_flags()
    precisions = args.precisions or ["fp32", *(["bf16"] if "avx512_bf16" in flags or "amx_bf16" in flags else []),
                                     *(["int8"] if int8_available() else [])]
    rows = [dict(decode_stage(64, args.seconds), precision="-")]
    with tempfile.TemporaryDirectory() as folder:
        for precision in precisions:
            rows += stages(precision, Path(folder), args.seconds)
    peak = processor.higher(peak, processor.peaks())        # measured again after the stages; the higher kept
    rows = [with_fractions(row, peak) for row in rows]
    evidence, kernels = processor.amx_evidence(), processor.onednn_kernels()
    print_tables(peak, rows, auto, evidence, kernels)
    save("roofline", {"peak": peak, "auto_precision": auto, "stages": rows, "amx": evidence,
                      "onednn_kernels": kernels})


def print_tables(peak, rows, auto, evidence, kernels) -> None:
    print(f"clock {peak.get('clock_ghz')} GHz (all {peak.get('cores')} cores under load); --precision auto picks {auto}\n")
    print(table([{"precision": name, **entry} for name, entry in peak.get("precisions", {}).items()],
                ["precision", "instruction", "ops_per_cycle_per_core", "vector_gops", "amx_gops",
                 "amx_ops_per_cycle_per_core", "amx_nominal_gops"]))
    print()
    print(table(rows, ["precision", "stage", "ms_per_image", "gflop_per_image", "achieved_gops", "peak_gops",
                       "of_peak", "of_best_peak", "unit", "gb_per_s"]))
    print()
    print("AMX:", ", ".join(f"{key} {value}" for key, value in evidence.items()))
    print("oneDNN:", ", ".join(f"{key}: {value}" for key, value in kernels.items()))


if __name__ == "__main__":
    main()
