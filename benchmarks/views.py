"""How many cached views per training image? Validation accuracy and cost for --views 1..5.

Trains on 500+500 PetImages (petimages-180-10k), measures on 200+200 others as the
validation set (never the demo's test images). Views share one cache: --views 5 holds
views 0-4, so --views 1..4 reuse its entries. Prints a table, writes results/views.json.
"""
import argparse
import tempfile
import time
from pathlib import Path

import vggtune

from common import DATA, save, table, train_and_held_out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vggtune-views-"))
    train, val = train_and_held_out(DATA / "petimages-180-10k", work, args.train_per_class, args.val_per_class, "val")
    rows = []
    for views in sorted(args.views, reverse=True):      # the largest first fills the shared cache
        started = time.perf_counter()
        results = vggtune.train(str(train), out=str(work / f"run-{views}"), val_data=str(val), test_split=0.0,
                                views=views, finetune_epochs=args.finetune_epochs, quiet=True)
        rows.append({"views": views, "val_accuracy": results.val.accuracy,
                     "val_log_loss": results.val.log_loss, "wall_s": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
    rows.sort(key=lambda r: r["views"])
    print(table(rows, ["views", "val_accuracy", "val_log_loss", "wall_s"]))
    save(f"views-{2 * args.train_per_class}", {"train_per_class": args.train_per_class, "val_per_class": args.val_per_class, "rows": rows})


if __name__ == "__main__":
    main()
