"""Images per second of the frozen network on each engine and precision, side by side.

Each (engine, precision) runs in a process of its own (no runtime's threads or caches left over
from another), on VGG16 with the ImageNet weights and real photos decoded beforehand: blocks 1-4
(what extraction runs) and the whole network with the flatten head (what `predict` runs). The
configurations take turns for `--rounds` rounds, so drift on a shared machine reaches all of them;
the median of the rounds is reported, with the time to build each engine. Writes results/engines.json.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, cpu_model, images_per_second, save, table

CONFIGS = [("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("onnxruntime", "fp32"),
           ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]


def child(engine: str, precision: str, batch_size: int, seconds: float, images: str) -> dict:
    """One configuration, measured in this process."""
    import torch
    from vggtune.features.choice import resolve
    from vggtune.features.engine import frozen
    from vggtune.features.transforms import eval_view, normalise
    from vggtune.data.images import open_rgb
    from vggtune.model import quantize, weights
    from vggtune.model.classifier import Classifier
    from vggtune.model.heads import HeadSpec
    from vggtune.model.runtime import choose_runtime
    runtime = choose_runtime("cpu", precision)
    loaded = weights.resolve()
    prep = loaded.record.preprocessing
    model = Classifier(HeadSpec("flatten", 2), size=prep.size)
    model.backbone.load_state_dict(loaded.state_dict)
    model.eval().to(memory_format=torch.channels_last)
    files = sorted(Path(images).rglob("*.jpg"))[:batch_size]
    batch = normalise(torch.stack([eval_view(open_rgb(str(f), short_side=prep.resize), prep) for f in files]), prep)
    if precision == "int8":
        quantize.calibrate_model(model, "block4", batch[:quantize.CALIBRATION_IMAGES], runtime.autocast)
    chosen = resolve(engine, runtime, model)
    rates, build = {}, {}
    for name, upto in (("blocks_1_4", "block4"), ("whole", "block5")):
        started = time.perf_counter()
        network = frozen(model, runtime, chosen, upto=upto)
        build[name] = round(time.perf_counter() - started, 2)

        def step():
            features = network(batch)
            if upto == "block5":
                with torch.inference_mode(), runtime.autocast():
                    model.head(features)
        rates[name] = round(images_per_second(step, len(batch), seconds), 2)
    return {"engine": chosen.describe(), "images_s": rates, "build_s": build}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5, help="each measurement window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(f"{e}:{p}" for e, p in CONFIGS),
                        help="engine:precision pairs, comma-separated")
    parser.add_argument("--images", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--busy", action="store_true",
                        help="a competing process at nice 19 spins on one core throughout (a build, a browser)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, precision = args.child.split(":")
        print(json.dumps(child(engine, precision, args.batch_size, args.seconds, args.images)))
        return
    configs = [tuple(pair.split(":")) for pair in args.configs.split(",")]
    measured = {pair: [] for pair in configs}
    spinner = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"]) if args.busy else None
    for round_number in range(args.rounds):
        for engine, precision in configs:
            done = subprocess.run([sys.executable, __file__, "--child", f"{engine}:{precision}",
                                   "--batch-size", str(args.batch_size), "--seconds", str(args.seconds),
                                   "--images", args.images], capture_output=True, text=True)
            if done.returncode:
                print(f"{engine} {precision}: cannot run here: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            measured[(engine, precision)].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(round_number, measured[(engine, precision)][-1], flush=True)
    if spinner:
        spinner.kill()
    rows = []
    for (engine, precision), runs in measured.items():
        if runs:
            rows.append({"engine": engine, "precision": precision, "runs_as": runs[0]["engine"],
                         **{f"{name}_images_s": statistics.median(r["images_s"][name] for r in runs)
                            for name in ("blocks_1_4", "whole")},
                         "build_s": statistics.median(r["build_s"]["blocks_1_4"] for r in runs)})
    base = next((r for r in rows if (r["engine"], r["precision"]) == ("torch", "bf16")), None) or rows[0]
    for row in rows:
        row["x_blocks_1_4"] = round(row["blocks_1_4_images_s"] / base["blocks_1_4_images_s"], 2)
        row["x_whole"] = round(row["whole_images_s"] / base["whole_images_s"], 2)
    print(f"\n{cpu_model()}; batch {args.batch_size}, median of {args.rounds} rounds, each in its own process; "
          f"x: against {base['engine']} {base['precision']}" + ("; a process at nice 19 spinning beside" if args.busy else ""))
    print(table(rows, ["engine", "precision", "runs_as", "blocks_1_4_images_s", "whole_images_s",
                       "x_blocks_1_4", "x_whole", "build_s"]))
    save("engines-busy" if args.busy else "engines", {"batch_size": args.batch_size, "rounds": args.rounds, "rows": rows,
                     "runs": {f"{e} {p}": r for (e, p), r in measured.items()}})


if __name__ == "__main__":
    main()
