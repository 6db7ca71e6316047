"""The registries of engines and export formats: one shape each, and every entry honours its Protocol."""

import importlib
import inspect

from vggtune.cliapi import EXPORT_FORMATS
from vggtune.deploy.exporting import FORMATS, FormatWriter
from vggtune.features import engine
from vggtune.features.settings import ENGINES


def test_every_engine_name_has_one_entry_of_the_registrys_shape():
    assert list(engine.KINDS) == [name for name in ENGINES if name != "auto"]
    assert all(isinstance(kind, engine.EngineKind) and kind.name == name for name, kind in engine.KINDS.items())
    assert [kind.package for kind in engine.KINDS.values()] == [None, "openvino", "onnxruntime"]


def test_every_export_format_names_a_module_that_writes_and_runs_it():
    assert tuple(FORMATS) == EXPORT_FORMATS
    for name, kind in FORMATS.items():
        assert kind.name == name and "{}" in kind.file_name and set(kind.precisions) <= {"fp32", "int8"}
        module = importlib.import_module(kind.module)
        for verb in ("write", "runner"):
            wanted = [p for p in inspect.signature(getattr(FormatWriter, verb)).parameters if p != "self"]
            assert list(inspect.signature(getattr(module, verb)).parameters) == wanted, (kind.module, verb)


def test_the_packages_names_are_the_apis_and_every_one_resolves():
    import vggtune
    from vggtune import api

    assert set(vggtune.__all__) <= set(api.__all__)
    assert all(getattr(api, name) is not None for name in api.__all__)
    assert vggtune.TrainResult is api.TrainResult and vggtune.Metrics.__name__ == "Metrics"
