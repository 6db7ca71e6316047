"""ONNX Runtime (fp32, int8) against PyTorch (fp32, bf16) on this CPU: images/s of the whole
classifier at batch 1 and batch 32, measured side by side in one run (rounds interleaved, the
median kept). Uses a finished run (default runs/demo; `make demo` makes it). Prints a table,
writes results/export.json."""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, images_per_second, save, table

sys.path.insert(0, str(ROOT / "src"))
import vggtune  # noqa: E402
from vggtune.deploy import onnxexport# noqa: E402
from vggtune.features.extract import decode_clean# noqa: E402


def engines(run: Path, work: Path, views: np.ndarray) -> dict:
    """name -> function(batch of uint8 NHWC views) for every engine compared."""
    found = {}
    for precision in ("fp32", "int8"):
        started = time.perf_counter()
        exported = vggtune.export(str(run), out=str(work / f"model-{precision}.onnx"), precision=precision)
        print(f"exported {precision} in {time.perf_counter() - started:.0f} s: largest difference "
              f"{exported.max_difference:.2e}, labels agree {exported.label_agreement:.1%}", flush=True)
        session = onnxexport.session(exported.path)
        found[f"onnxruntime {precision}"] = lambda batch, s=session: s.run(None, {"images": batch})[0]
    for precision in ("fp32", "bf16"):
        predictor = vggtune.load(run, device="cpu", precision=precision)
        found[f"pytorch {precision}"] = lambda batch, p=predictor: p.probabilities(torch.from_numpy(batch).permute(0, 3, 1, 2))
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per engine, batch size and round")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "model.json").is_file():
        raise SystemExit(f"{run} is not a finished run; `make demo` makes runs/demo, or pass --run RUN")
    spec = vggtune.load(run).spec
    paths = [row["path"] for row in __import__("json").loads((run / "splits.json").read_text())["test"][:32]]
    views = np.stack([decode_clean(p, spec.preprocessing)[0].permute(1, 2, 0).numpy() for p in paths])
    work = Path(__import__("tempfile").mkdtemp(prefix="vggtune-export-"))
    found = engines(run, work, views)
    rates = {(name, batch): [] for name in found for batch in (1, 32)}
    for _ in range(args.rounds):
        for batch in (1, 32):
            for name, classify in found.items():
                rates[(name, batch)].append(images_per_second(lambda: classify(views[:batch]), batch, args.seconds))
    rows = []
    for (name, batch), values in rates.items():
        rows.append({"engine": name, "batch": batch, "images_per_s": round(statistics.median(values), 2),
                     "rounds": [round(v, 2) for v in values]})
    for row in rows:
        same_batch = {r["engine"]: r["images_per_s"] for r in rows if r["batch"] == row["batch"]}
        row["vs_pytorch_bf16"] = round(row["images_per_s"] / same_batch["pytorch bf16"], 2)
        row["vs_pytorch_fp32"] = round(row["images_per_s"] / same_batch["pytorch fp32"], 2)
    print(f"\nwhole classifier ({spec.preprocessing.size} px), images/s, median of {args.rounds} interleaved rounds:")
    print(table(rows, ["engine", "batch", "images_per_s", "vs_pytorch_bf16", "vs_pytorch_fp32"]))
    save("export", {"run": str(run), "rows": rows,
                    "onnx_mb": {p.name: round(p.stat().st_size / 1e6, 1) for p in work.glob("*.onnx")}})


if __name__ == "__main__":
    main()
