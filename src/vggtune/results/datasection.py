"""The report's sections on the data: images per class and split, what was left out of each folder, the
images enlarged by the resize, label conflicts, near-duplicates; and, where a test set disagrees with
validation, how many of its images look unlike every training image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vggtune.data import balance
from vggtune.data.items import LABEL_CONFLICT, Rejected
from vggtune.fsutil import display_path
from vggtune.results import auditscores
from vggtune.results.evaluated import VAL_SPLIT, Evaluated, validation_gap
from vggtune.results.html import escape as _e
from vggtune.results.html import table as _table
from vggtune.training.rundir import RunDir

if TYPE_CHECKING:  # annotations only
    from vggtune.deploy.predict import Predictor


SHIFT_SAMPLE = 400  # images of each set embedded to compare them: seconds, not minutes


def shift(evaluated: Evaluated, folder: RunDir, predictor: Predictor) -> str:
    """Where the evaluated images disagree with validation: how many of them look unlike every training
    image (their embeddings far out from the training images', by the audit's out-of-distribution score)."""
    metrics = evaluated.metrics
    splits = folder.splits()
    if evaluated.data == VAL_SPLIT or not splits or not validation_gap(folder, metrics, evaluated.data):
        return ""
    rng = np.random.default_rng(0)
    train = [item.path for item in splits.train]
    train = [train[i] for i in sorted(rng.choice(len(train), min(SHIFT_SAMPLE, len(train)), replace=False))]
    tested = [row.path for row in evaluated.rows]
    tested = [tested[i] for i in sorted(rng.choice(len(tested), min(SHIFT_SAMPLE, len(tested)), replace=False))]
    far, baseline = auditscores.unlike(
        auditscores.embed(predictor, train, "report: training embeddings"),
        auditscores.embed(predictor, tested, "report: test embeddings"),
    )
    if np.isnan(far):
        return ""
    return (
        f"<section id='shift'><h2>Test images against training images</h2><p>{far:.0%} of {len(tested)} "
        f"images of {_e(evaluated.data)} look unlike every training image (their embeddings lie beyond the "
        f"far-out fence of {len(train)} training images' out-of-distribution scores, which {baseline:.0%} of "
        "the training images themselves pass). A share well above the training images' own says the test "
        "images come from elsewhere: another source, device or population; the top losses below show "
        "which.</p></section>"
    )


def data_section(folder: RunDir, evaluated: Evaluated | None) -> str:
    splits = folder.splits()
    classes = splits.classes if splits else []
    names = ("train", "val", "test") if splits else ()
    counts = {name: splits.counts(name) for name in names} if splits else {}
    body = "".join(
        f"<tr><td>{_e(c)}</td>"
        + "".join(f"<td class='n'>{counts[n][i]}</td>" for n in names)
        + f"<td class='n'>{sum(counts[n][i] for n in names)}</td></tr>"
        for i, c in enumerate(classes)
    )
    parts = [
        "<h3>Images per class and split</h3><table><tr><th>class</th>"
        + "".join(f"<th>{n}</th>" for n in names)
        + f"<th>total</th></tr>{body}</table>"
    ]
    trained_on = balance.imbalance(dict(zip(classes, counts["train"]))) if splits else None
    if trained_on:
        parts.append(f"<p class='warn'>In training, {_e(trained_on)}.</p>")
    if evaluated and not evaluated.own:
        parts.append(
            f"<h3>Evaluated: {_e(evaluated.data)}</h3>" + _table(["class", "images"], evaluated.counts().items())
        )
        parts.append(_rejected(f"Unreadable in {evaluated.data}", evaluated.rejected))
    rejected = folder.rejected()
    config = folder.config()
    parts.append(_small_images(splits, spec_preprocessing(folder), config.size_from_images))
    given = {"test": config.test_data, "val": config.val_data}
    parts.append(
        _rejected(
            f"Left out of the training data ({display_path(config.data)})",
            [row for row in rejected if row.where == "data"],
        )
    )
    for where, path in given.items():
        if path:
            parts.append(
                _rejected(
                    f"Left out of the {where} folder ({display_path(path)})",
                    [row for row in rejected if row.where == where],
                )
            )
    conflicts = [(row.path, row.reason) for row in rejected if row.kind == LABEL_CONFLICT]
    pairs = folder.near_duplicates()
    conflicts += [
        (pair.path, f"alike in pixels to {display_path(pair.other)}, filed under another class")
        for pair in pairs
        if pair.label_conflict
    ]
    parts.append(
        "<h3>Label conflicts</h3>"
        + (
            _table(["file", "why"], conflicts)
            if conflicts
            else "<p>None: no image content is filed under two classes.</p>"
        )
    )
    across = sum(1 for pair in pairs if pair.across)
    parts.append(
        f"<h3>Near-duplicates</h3><p>{len(pairs)} pairs by perceptual hash, {across} of them across "
        "splits (those let a split see its own images).</p>"
        + (
            _table(
                ["file", "split", "near-duplicate of", "its split", "distance"],
                [(p.path, p.split, p.other, p.other_split, p.distance) for p in pairs],
            )
            if pairs
            else ""
        )
    )
    return f"<section id='data'><h2>Data</h2>{''.join(parts)}</section>"


def spec_preprocessing(folder: RunDir):
    from vggtune.model.spec import ModelSpec

    return ModelSpec.load(folder.path).preprocessing


def _small_images(splits, preprocessing, size_from_images: bool) -> str:
    """The images whose side that is resized (the shorter one for a crop, the longer one for a pad) is below
    the resize, so that they are enlarged: counted and named. A 128 px photo enlarged to 256 px shows the
    network blur it never saw in ImageNet; `--size` can match it."""
    resize = preprocessing.resize
    padded = preprocessing.fit == "pad"
    which = "longer" if padded else "shorter"
    from PIL import Image

    sizes = []
    for item in (splits.train + splits.val + splits.test) if splits else []:
        try:
            with Image.open(item.path) as image:  # the header only: nothing is decoded
                sizes.append((item.path, max(image.size) if padded else min(image.size)))
        except OSError:
            continue
    small = [(path, side) for path, side in sizes if side < resize]
    title = f"<h3>Images smaller than the resize ({resize} px {which} side)</h3>"
    if not small:
        return title + f"<p>None of {len(sizes)}: no image is enlarged.</p>"
    sides = sorted(side for _, side in small)
    return (
        title + f"<p class='warn'>{len(small)} of {len(sizes)} images are enlarged to {resize} px (their {which} "
        f"sides from {sides[0]} to {sides[-1]} px, median {sides[len(sides) // 2]}): enlarged images are blurred "
        f"in a way ImageNet's were not; "
        + (
            f"<code>--size auto</code> chose the input side, {preprocessing.size} px, from the training images' "
            "median shorter side (near it where that is 112 to 223 px).</p>"
            if size_from_images
            else "<code>--size</code> near their own size may serve them better (<code>--size auto</code> picks "
            "it).</p>"
        )
        + f"<details><summary>the images</summary>{_table(['file', f'{which} side (px)'], small)}</details>"
    )


def _rejected(title: str, rejected: list[tuple[str, str]]) -> str:
    if not rejected:
        return f"<h3>{_e(title)}</h3><p>None.</p>"
    kinds: dict[str, int] = {}
    for row in map(Rejected.of, rejected):
        kinds[row.kind] = kinds.get(row.kind, 0) + 1
    return (
        f"<h3>{_e(title)}: {len(rejected)}</h3>"
        + _table(["kind", "files"], sorted(kinds.items()))
        + f"<details><summary>every file and why</summary>{_table(['file', 'reason'], rejected)}</details>"
    )
