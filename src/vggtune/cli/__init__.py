"""The `vggtune` command: flags in, the Python API (vggtune.api) called, results printed; no logic of its own.

The API imports torch only when a command runs, so `vggtune`, `--version` and every `--help`
answer at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from vggtune import cliapi
from vggtune.api import UserError
from vggtune.cli.commands import COMMANDS
from vggtune.cli.parser import build_parser, train_options


def launch(args, argv: list[str]) -> int:
    """`--nproc N`: this same command as N processes, after the checks that read no image: a mistake found
    there is one line before any process starts; one the processes find is one line after."""
    cliapi.check_processes(args.nproc)
    if args.command == "train":
        options = {} if args.resume else train_options(args)
        options.pop("out", None)
        args.out = args.out or cliapi.default_run(args.resume)
        cliapi.check_train(args.data, out=args.out, resume=args.resume, **options)
        if "--out" not in argv and not any(arg.startswith("--out=") for arg in argv):
            argv = [*argv, "--out", args.out]  # every process writes where the check was made
    else:
        cliapi.check_run(args.run, getattr(args, "data", None))
    status, lines = cliapi.launch(_without_nproc(argv), args.nproc)
    for line in lines:
        print(line if status == 2 else f"vggtune {args.command}: {line}", file=sys.stderr)
    return status


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


@contextlib.contextmanager
def _one_voice(world):
    """Under torchrun only rank 0 speaks: the other ranks' output would repeat it. Their errors are
    printed after this, on the real streams."""
    if world.main:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def run_command(args) -> int:
    """The command, as one rank of torchrun's job when torchrun started this process."""
    with cliapi.as_rank(getattr(args, "device", None) or "auto") as world:
        try:
            with _one_voice(world):
                return COMMANDS[args.command](args)
        except RuntimeError as exc:
            if world.size == 1:
                raise
            # A collective that fails means another rank died, or hung past VGGTUNE_DIST_TIMEOUT.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"vggtune {args.command}: error: {world.describe()} stopped: another process ended or a "
                f"collective timed out ({reason})",
                file=sys.stderr,
            )
            return 1


def _with_config_file(args) -> None:
    """`--config FILE`: the file's options where the command line gave none (a flag given wins)."""
    if not getattr(args, "config", None):
        return
    for name, value in cliapi.options_file(args.config).items():
        if name == "flip":
            args.no_flip = args.no_flip if args.no_flip is not None else (None if value else True)
        elif not hasattr(args, name):
            raise UserError(f"--config: {args.config} sets {name}, which vggtune {args.command} does not take")
        elif getattr(args, name) is None:
            setattr(args, name, value)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's stop), ended like Ctrl-C: what was computed is saved first."""


def _terminate(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Inside, SIGTERM ends the command as Ctrl-C does. Not under torchrun, which stops its ranks itself,
    nor where the process already handles it (or outside the main thread, where no handler can be set)."""
    import threading

    mine = (
        "LOCAL_RANK" not in os.environ
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    if mine:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if mine:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _sigterm_as_interrupt(), cliapi.command_line():
            _with_config_file(args)
            if getattr(args, "nproc", None) is not None:
                return launch(args, arguments)
            return run_command(args)
    except (ImportError, RuntimeError, OSError):
        mismatch = cliapi.torch_pair_problem()  # torch and torchvision that do not work together fail everywhere
        if mismatch is None:
            raise
        print(f"vggtune {args.command}: error: {mismatch}", file=sys.stderr)
        return 2
    except UserError as exc:
        message = f"vggtune {args.command}: error: {exc}"
        if not cliapi.refused(message):  # a rank of `--nproc N` leaves it to the launcher, said once
            print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if os.environ.get("RANK", "0") == "0":
            print(interrupted_line(args), file=sys.stderr)
        if argv is None:  # the program itself, not a caller's main([...])
            _ignore_further_signals()
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def _ignore_further_signals() -> None:
    """What was computed is saved and the line said: a second Ctrl-C while the interpreter shuts down
    would land in torch's or a runtime's clean-up (a native abort, seen here), so it ends the process at
    once instead, with the status the first one gave; it is never ignored (a shut-down that hangs must
    still end on SIGTERM)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda got, frame: os._exit(128 + got))


def interrupted_line(args) -> str:
    """What an interrupt kept, and the command that continues from it, with the run's real folder."""
    import shlex

    if args.command == "train":
        out = shlex.quote(getattr(args, "out", None) or cliapi.default_run(resume=True))
        return f"vggtune train: interrupted; `vggtune train --resume --out {out}` continues this run"
    if args.command == "cv" or getattr(args, "data_command", None) == "audit":
        command = "vggtune cv" if args.command == "cv" else "vggtune data audit"
        return f"{command}: interrupted; the same `{command}` command again continues: finished folds are kept"
    return f"vggtune {args.command}: interrupted"
