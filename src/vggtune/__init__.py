"""vggtune: transfer learning with VGG16, from a folder of labelled images to a trained classifier.

The API's names are imported on first use, so `vggtune --help` does not wait for torch. These are the
names for users; `vggtune.api.__all__` adds the helpers the command line prints with.
"""

from vggtune import openvinoload
from vggtune.version import __version__

# Before anything imports OpenVINO: its converter's telemetry (a usage event sent from a forked process on
# import and on every conversion) stays off in every process that uses vggtune (openvinoload.py says why).
openvinoload.silence_telemetry()

__all__ = [
    "train",
    "tune",
    "cv",
    "audit",
    "runs",
    "evaluate",
    "calibrate",
    "restore_rule",
    "predict",
    "report",
    "explain",
    "export",
    "serve",
    "load",
    "Predictor",
    "check_data",
    "verify_weights",
    "TrainConfig",
    "RunSettings",
    "AugmentConfig",
    "TrainResult",
    "Evaluation",
    "Calibration",
    "Metrics",
    "UserError",
    "__version__",
]


def __getattr__(name: str):
    if name == "UserError":
        from vggtune.errors import UserError

        return UserError
    if name in __all__:
        from vggtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'vggtune' has no attribute {name!r}")
