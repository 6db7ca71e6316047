"""Where the frozen blocks' forward time goes, layer by layer: ms per image of every convolution,
ReLU and max-pool of blocks 1-4 (the default recipe's cut), bf16 channels-last as the runs use it,
and the same blocks in int8 (`--precision int8`). Random-init weights and inputs (the cost does
not depend on them); median of --rounds passes after one warm-up. Prints a table, writes
results/layers.json."""
import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from vggtune.model import quantize
from vggtune.model.classifier import Backbone
from vggtune.model.runtime import choose_runtime

from common import save, table


def layer_times(layers, x: torch.Tensor, autocast, rounds: int) -> dict[str, float]:
    """Median ms per image of each named layer, timed one layer at a time."""
    samples: dict[str, list[float]] = {}
    with torch.inference_mode(), autocast():
        for round_index in range(rounds + 1):
            out = x
            for name, layer in layers:
                started = time.perf_counter()
                out = layer(out)
                if round_index:                      # the first pass is the warm-up
                    samples.setdefault(name, []).append((time.perf_counter() - started) * 1000 / len(x))
    return {name: statistics.median(values) for name, values in samples.items()}


def named_layers(blocks):
    return [(f"{block}.{name}", layer) for block, sequential in blocks for name, layer in sequential.named_children()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upto", default="block4")
    args = parser.parse_args()
    runtime = choose_runtime("cpu", "auto")
    backbone = Backbone().eval().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    names = backbone.arch.between(upto=args.upto)
    float_layers = named_layers((name, getattr(backbone, name)) for name in names)
    int8 = quantize.calibrate(backbone, args.upto, x[:quantize.CALIBRATION_IMAGES], runtime.autocast)
    int8_layers = [("quant", int8.net.quant)] + named_layers((name, getattr(int8.net, name)) for name in names)
    int8_layers.append(("dequant", int8.net.dequant))
    float_ms = layer_times(float_layers, x, runtime.autocast, args.rounds)
    int8_ms = layer_times(int8_layers, x, nullcontext, args.rounds)
    rows = []
    for name in dict.fromkeys([*int8_ms, *float_ms]):      # int8's ReLUs are fused into its convolutions
        rows.append({"layer": name, f"{runtime.precision}_ms": round(float_ms.get(name, 0.0), 2),
                     "int8_ms": round(int8_ms.get(name, 0.0), 2)})
    rows.append({"layer": "total", f"{runtime.precision}_ms": round(sum(float_ms.values()), 1),
                 "int8_ms": round(sum(int8_ms.values()), 1)})
    print(f"\nms per image, batch {args.batch_size}, blocks 1-{len(names)} at 224 x 224 ({runtime.describe()} vs int8)")
    print(table(rows, ["layer", f"{runtime.precision}_ms", "int8_ms"]))
    save("layers", {"batch_size": args.batch_size, "rounds": args.rounds, "runtime": runtime.describe(), "rows": rows})


if __name__ == "__main__":
    main()
