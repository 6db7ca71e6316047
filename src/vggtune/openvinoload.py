"""OpenVINO, imported without its telemetry: no network call, no child process, no file in the home folder.

`import openvino` imports its model converter (`openvino.tools.ovc`), which sends a usage event to Google
Analytics on import and on every `convert_model`, unless `CI=true` or a consent file in `~/intel` says
no. Each send runs in a process forked from a worker thread (`openvino_telemetry`'s GA4 backend); a fork
from a threaded process can block for ever (seen here: a predict waiting at exit on a child stuck in
`getaddrinfo`, deaf to SIGTERM). The converter falls back to its own no-op stub
(`openvino.tools.ovc.telemetry_stub`) where the `openvino_telemetry` package cannot be imported, so that
is what this module arranges before OpenVINO is first imported: the package is marked absent in
`sys.modules` for this process. Nothing is written to the user's consent file; their choice for other
programs stays theirs.

Every vggtune module that needs OpenVINO calls `openvino()` here instead of importing it.
"""

from __future__ import annotations

import sys
from types import ModuleType

TELEMETRY = "openvino_telemetry"


def openvino() -> ModuleType:
    """The `openvino` module, its converter's telemetry replaced by the converter's own no-op stub."""
    silence_telemetry()
    import openvino as module

    return module


def silence_telemetry() -> None:
    """Marks `openvino_telemetry` absent for this process (an `import` of it then raises ImportError). Where
    the caller's own code imported it first, its instance is told the user declined instead."""
    loaded = sys.modules.get(TELEMETRY)
    if loaded is None:
        sys.modules[TELEMETRY] = None  # type: ignore[assignment]  # the import system's "not installed"
        return
    _decline(loaded)


def _decline(telemetry: ModuleType) -> None:
    """An already imported `openvino_telemetry`: its one instance (a singleton) sends only with consent."""
    instance = getattr(telemetry, "Telemetry", None)
    if instance is None:
        return
    checker = getattr(getattr(telemetry, "utils", None), "opt_in_checker", None)
    if checker is not None and hasattr(checker, "OptInChecker"):
        declined = checker.ConsentCheckResult.DECLINED
        checker.OptInChecker.check = lambda self, *args, **kwargs: declined
    try:
        instance().consent = False  # the singleton, if the converter made it already
    except RuntimeError:  # not made yet: the patched check declines when it is
        pass


def silenced() -> bool:
    """True where `openvino_telemetry` cannot be imported in this process."""
    return sys.modules.get(TELEMETRY, "absent") is None
