"""Which batch size runs fastest? Images/s of each kind of work vggtune does, per batch size.

Frozen-block extraction (blocks 1-4, inference), a fine-tune step (block5 + flatten head,
forward, backward, Adam, on block4 features) and a head step (on block5 features), in the
runtime chosen for this machine. Random-init weights and random inputs: throughput does
not depend on the values. Sizes are measured in turn, round after round, and medians
reported, because this machine's speed drifts within minutes. Writes results/batch-size.json.
"""
import argparse
import statistics

import torch

from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.model.runtime import choose_runtime
from vggtune.training.schedule import make_optimizer

from common import images_per_second, save, table


def extraction_step(model, runtime, batch_size):
    x = torch.randn(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), runtime.autocast():
            model.features(x, "block4")
    return step


def training_step(model, runtime, batch_size, cut, trainable):
    model.set_trainable(trainable)
    channels, grid = (512, 14) if cut == "block4" else (512, 7)
    x = torch.randn(batch_size, channels, grid, grid).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,)).float()
    optimizer = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-5}])

    def step():
        with runtime.autocast():
            logits = model.from_features(x, cut)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0].float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args()
    runtime = choose_runtime()
    model = Classifier(HeadSpec("flatten", 2)).to(memory_format=torch.channels_last)
    kinds = {"extraction (blocks 1-4)": lambda b: extraction_step(model.eval(), runtime, b),
             "fine-tune step (block5 + head)": lambda b: training_step(model.train(), runtime, b, "block4", ("block5",)),
             "head step": lambda b: training_step(model.train(), runtime, b, "block5", ())}
    rates = {(kind, b): [] for kind in kinds for b in args.sizes}
    for round_number in range(args.rounds):
        order = args.sizes if round_number % 2 == 0 else args.sizes[::-1]     # no size always last
        for kind, make_step in kinds.items():
            for b in order:
                rates[kind, b].append(images_per_second(make_step(b), b, args.seconds, runtime.device))
    rows = [{"work": kind, **{f"batch {b}": round(statistics.median(rates[kind, b]), 1) for b in args.sizes},
             "spread": f"{min(min(rates[kind, b]) for b in args.sizes):.1f}-{max(max(rates[kind, b]) for b in args.sizes):.1f}"}
            for kind in kinds]
    print(f"\n{runtime.describe()}, images/s, median of {args.rounds} rounds of {args.seconds} s")
    print(table(rows, ["work", *(f"batch {b}" for b in args.sizes), "spread"]))
    save("batch-size", {"runtime": runtime.describe(), "rounds": args.rounds, "rows": rows,
                        "all_rates": {f"{kind} @ {b}": [round(r, 1) for r in rs] for (kind, b), rs in rates.items()}})


if __name__ == "__main__":
    main()
