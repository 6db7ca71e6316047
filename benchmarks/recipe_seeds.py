"""Test accuracy of vggtune and the Keras peer on recipe.py's images with other seeds.

recipe.py compares the two with one seed (1337), and both are deterministic, so its accuracy
figures are one draw of everything a seed decides. Here each seed draws, for both recipes
alike, the peer's train/validation split of the same 300 images, the head's initial weights
and the order of the batches (and, for the peer, its online augmentation; vggtune's cached
views depend on the image alone). Same 1,100 test images, 10 + 10 epochs, no early stopping,
vggtune at its defaults; the two ways one after the other, vggtune with a cold feature cache,
as in recipe.py. For accuracy: the wall times are recorded too, but the speed comparison is
recipe.py's (the peer takes 20-30 minutes a seed here). Prints a row a seed as it ends, writes
results/recipe-seeds.json after each one.
"""
import shutil
import tempfile
from pathlib import Path

from common import save, table
from recipe import keras_run, prepare, recipe_arguments, split_folders, vggtune_run


def main():
    parser = recipe_arguments(__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vggtune-seeds-"))
    train, test = prepare(work, args.per_class)
    test_images = len(list(test.rglob("*.jpg")))
    rows = []
    for seed in args.seeds:
        args.seed = seed
        fit, val, _ = split_folders(train, work, seed)
        ours, peer = vggtune_run(f"seed-{seed}", fit, val, test, work, [], args), keras_run(train, test, args)
        shutil.rmtree(work / f"home-seed-{seed}")                 # its feature cache, 0.4 GB
        rows.append({"seed": seed, "vggtune_correct": round(ours["accuracy"] * test_images),
                     "keras_correct": round(peer["accuracy"] * test_images),
                     "vggtune_wall_s": ours["wall_s"], "keras_wall_s": peer["wall_s"]})
        print(table(rows[-1:], list(rows[-1])), flush=True)
        save("recipe-seeds", {"test_images": test_images, "train_images": 2 * args.per_class,
                              "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "rows": rows})
    print(f"\n{test_images} test images; correct answers per seed")
    print(table(rows, list(rows[0])))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
