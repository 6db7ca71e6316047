import json
import pytest
import torch

from vggtune.features.cache import FeatureCache, FeatureKey, ShardWriter, entry_name
from vggtune.training.config import AugmentConfig
from vggtune.features.extract import ImageJob
from vggtune.features.pipeline import FeaturePipeline
from vggtune.data.images import open_rgb
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.model.runtime import Runtime
from vggtune.features.transforms import make_view, normalise
from vggtune.model.weights import VGG16_IMAGENET1K_V1

from conftest import TINY, jobs_for, make_dataset, tiny_state_dict

PREP = VGG16_IMAGENET1K_V1.preprocessing.at_size(32)
AUG = AugmentConfig()
FP32 = Runtime(torch.device("cpu"), bf16=False)


def tiny_model():
    model = Classifier(HeadSpec("flatten", 2, hidden=8), size=32, arch=TINY)
    model.backbone.load_state_dict(tiny_state_dict())
    return model.eval()


def cache_key(weights_id, prep, cut, model):
    return FeatureKey(weights_id, prep.to_dict(), model.arch).at(cut)


def fill(tmp_path, model, jobs, cut="block4"):
    pipeline = FeaturePipeline(model, PREP, AUG, FP32, batch_size=4, weights_id="tiny", cache_root=tmp_path / "cache")
    cache = pipeline.cache(cut)
    return cache, pipeline.fill(cache, jobs, cut)[0]


def test_logits_through_cache_equal_logits_through_whole_model(tmp_path):
    model = tiny_model()
    jobs = jobs_for(make_dataset(tmp_path / "d", n_per_class=3))
    cache, rejected = fill(tmp_path, model, jobs)
    assert rejected == []
    for job in jobs:
        image = open_rgb(job.path, short_side=PREP.resize)
        for view in job.views:
            features = cache.open([entry_name(job.sha256, view, AUG)]).gather([0]).float()
            with torch.no_grad():
                through_cache = model.from_features(features, "block4")
                whole = model(normalise(make_view(image, PREP, AUG, job.sha256, view)[None], PREP))
            torch.testing.assert_close(through_cache, whole, rtol=1e-2, atol=1e-2)


def test_views_are_reproducible_and_distinct(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=1)
    job = jobs_for(tmp_path / "d")[0]
    image = open_rgb(job.path, short_side=PREP.resize)
    first = [make_view(image, PREP, AUG, job.sha256, v) for v in range(3)]
    again = [make_view(image, PREP, AUG, job.sha256, v) for v in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


def test_key_covers_weights_preprocessing_and_cut(tmp_path):
    model = tiny_model()
    base = FeatureCache(tmp_path, cache_key("tiny", PREP, "block4", model)).dir
    assert FeatureCache(tmp_path, cache_key("tiny", PREP, "block4", model)).dir == base
    others = [cache_key("other", PREP, "block4", model), cache_key("tiny", PREP.at_size(64), "block4", model),
              cache_key("tiny", PREP, "block5", model)]
    assert len({FeatureCache(tmp_path, key).dir for key in others} | {base}) == 4
    assert entry_name("abc", 1, AUG) != entry_name("abc", 1, AugmentConfig(rotation=5))
    assert entry_name("abc", 0, AUG) == entry_name("abc", 0, AugmentConfig(rotation=5))


def test_second_fill_computes_nothing(tmp_path, monkeypatch):
    model = tiny_model()
    jobs = jobs_for(make_dataset(tmp_path / "d", n_per_class=2))
    cache, _ = fill(tmp_path, model, jobs)
    monkeypatch.setattr(model, "features", lambda *a: pytest.fail("recomputed a cached view"))
    fill(tmp_path, model, jobs)


def test_damaged_shard_is_detected_and_rebuilt(tmp_path):
    model = tiny_model()
    jobs = jobs_for(make_dataset(tmp_path / "d", n_per_class=2))
    cache, _ = fill(tmp_path, model, jobs)
    entries = [entry_name(j.sha256, v, AUG) for j in jobs for v in j.views]
    before = cache.open(entries).gather(list(range(len(entries))))
    shard = sorted(cache.dir.glob("shard-*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-40:] = b"\x7f" * 40
    shard.write_bytes(bytes(raw))
    reopened = FeatureCache(tmp_path / "cache", cache_key("tiny", PREP, "block4", model))
    assert reopened.missing(entries) and reopened.damaged == [shard.stem]
    cache, _ = fill(tmp_path, model, jobs)
    assert cache.missing(entries) == []
    torch.testing.assert_close(cache.open(entries).gather(list(range(len(entries)))), before)


def test_a_shard_without_manifest_does_not_count(tmp_path):
    folder = FeatureCache(tmp_path, cache_key("tiny", PREP, "block4", tiny_model())).dir
    writer = ShardWriter(folder, rows_per_shard=100)
    writer.add(["a", "b"], torch.ones(2, 3))
    assert not list(folder.glob("shard-*"))          # nothing is visible before flush
    writer.close()
    assert set(FeatureCache.existing(folder).index()) == {"a", "b"}
    next(folder.glob("shard-*.json")).unlink()        # as if killed before the manifest rename
    assert FeatureCache.existing(folder).index() == {}


def test_interrupted_fill_resumes_where_it_stopped(tmp_path, monkeypatch):
    model = tiny_model()
    jobs = jobs_for(make_dataset(tmp_path / "d", n_per_class=4))
    monkeypatch.setattr("vggtune.features.cache.SHARD_ROWS", 4)
    original = ShardWriter.flush
    calls = {"n": 0}

    def crash_after_two(self):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(ShardWriter, "flush", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        fill(tmp_path, model, jobs)
    monkeypatch.setattr(ShardWriter, "flush", original)
    cache = FeatureCache(tmp_path / "cache", cache_key("tiny", PREP, "block4", model))
    entries = [entry_name(j.sha256, v, AUG) for j in jobs for v in j.views]
    assert len(cache.missing(entries)) == len(entries) - 8
    computed = []
    real_features = model.features
    monkeypatch.setattr(model, "features", lambda x, cut: computed.append(len(x)) or real_features(x, cut))
    fill(tmp_path, model, jobs)
    assert sum(computed) == len(entries) - 8


def test_stale_half_written_shards_are_removed_fresh_ones_kept(tmp_path):
    import os
    import time
    model = tiny_model()
    folder = FeatureCache(tmp_path, cache_key("tiny", PREP, "block4", model)).dir
    stale, fresh = folder / ".shard-old.npy.tmp", folder / ".shard-new.npy.tmp"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"x" * 100)
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    FeatureCache(tmp_path, cache_key("tiny", PREP, "block4", model))
    assert not stale.exists() and fresh.exists()


def test_channels_last_bf16_features_are_stored_in_logical_order(tmp_path):
    features = torch.randn(5, 8, 3, 2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    cache = FeatureCache(tmp_path, cache_key("tiny", PREP, "block4", tiny_model()))
    writer = ShardWriter(cache.dir, rows_per_shard=100)
    writer.add([f"e{i}" for i in range(3)], features[:3])
    writer.add(["e3", "e4"], features[3:])
    writer.close()
    stored = cache.open([f"e{i}" for i in range(5)]).gather(range(5))
    assert stored.dtype == torch.float16 and stored.shape == (5, 8, 3, 2)
    assert torch.equal(stored, features.to(torch.float16))


def test_a_view_is_the_same_inside_a_bf16_autocast_region(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=1)
    job = jobs_for(tmp_path / "d")[0]
    image = open_rgb(job.path, short_side=PREP.resize)
    plain = [make_view(image, PREP, AUG, job.sha256, v) for v in range(3)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = [make_view(image, PREP, AUG, job.sha256, v) for v in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(plain, under_autocast))


def test_uint8_storage_restores_each_view_within_half_a_step_in_half_the_bytes(tmp_path):
    features = torch.relu(torch.randn(6, 16, 7, 7) * 3).contiguous(memory_format=torch.channels_last)
    features[2] = 0.0                                       # a view with one value only
    key = {"cut": "block5", "weights": "w"}
    stored = {}
    for storage in ("float16", "uint8"):
        cache = FeatureCache(tmp_path, key, storage)
        writer = cache.writer()
        writer.add([f"e{i}" for i in range(6)], features)
        writer.close()
        stored[storage] = (cache, FeatureCache(tmp_path, key, storage).open([f"e{i}" for i in (5, 0, 2)]).gather([0, 1, 2]))
    assert stored["float16"][0].dir != stored["uint8"][0].dir            # the storage is part of the key
    restored, original = stored["uint8"][1].float(), features[[5, 0, 2]]
    step = (original.flatten(1).max(1).values - original.flatten(1).min(1).values) / 255
    error = (restored - original).abs().flatten(1).max(1).values
    assert torch.all(error <= step / 2 + 2e-3 * original.flatten(1).abs().max(1).values)   # + float16 rounding
    assert torch.equal(restored[2], torch.zeros_like(restored[2]))
    assert stored["uint8"][0].size_bytes() < 0.55 * stored["float16"][0].size_bytes()
    assert FeatureCache.existing(stored["uint8"][0].dir).storage == "uint8"


def test_views_computed_before_ctrl_c_are_in_the_cache(tmp_path, monkeypatch):
    """A shard holds 256 rows; an extraction interrupted before the first is full keeps what it computed."""
    model = tiny_model()
    jobs = jobs_for(make_dataset(tmp_path / "d", n_per_class=6), views=(0,))
    pipeline = FeaturePipeline(model, PREP, AUG, FP32, batch_size=4, weights_id="tiny", cache_root=tmp_path / "cache")
    cache = pipeline.cache("block4")
    real_add, added = ShardWriter.add, []

    def add_then_interrupt(self, entries, features):
        real_add(self, entries, features)
        added.extend(entries)
        if len(added) == 8:                         # two batches of 4 computed, then Ctrl-C
            raise KeyboardInterrupt
    monkeypatch.setattr(ShardWriter, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pipeline.fill(cache, jobs, "block4")
    cache.refresh()
    assert set(cache.index()) == set(added) and len(added) == 8
    monkeypatch.setattr(ShardWriter, "add", real_add)
    assert pipeline.fill(cache, jobs, "block4") == ([], 4)        # the resumed fill computes the other 4 only
