"""The `rextransfer` Typer app: the command group, its one-line error handling, and `main()`.

Every command lives in a module of its own beside this one and registers itself here. Heavy
libraries (torch, timm, torchvision, datasets) are imported inside commands, never at module level
in rextransfer/cli/, so `rextransfer --help` stays instant.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors its own click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from .. import __version__
from ..core.errors import Interrupted, UserError

# What stopped the command, for the one-line message; the training loop installs its own handlers
# (save a checkpoint at the next step boundary) and restores these afterwards.
STOPPED_BY = {"signal": ""}


def _stop(signum, frame) -> None:
    """Ctrl-C and SIGTERM outside the training loop: one line, exit 130 (SIGTERM is not a silent 143)."""
    STOPPED_BY["signal"] = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    raise KeyboardInterrupt


def _quiet_after_stop(args) -> None:
    """Background threads (loader workers' fd sharing) die noisily while a stop shuts workers down:
    after a stop their errors are that shutdown, not news; before one they are shown as usual."""
    if STOPPED_BY["signal"] and not DEBUG["on"]:
        return
    _THREAD_HOOK(args)


_THREAD_HOOK = threading.excepthook


def interrupted() -> Interrupted:
    return Interrupted(f"interrupted by {STOPPED_BY['signal'] or 'Ctrl-C (SIGINT)'}; nothing was lost (files are written whole or "
                       f"not at all): rerun the same command to continue")


def report(e: UserError) -> None:
    """The one-line form of every user error: `error: <message>` on stderr."""
    from rich.markup import escape

    from ..core.console import err

    err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)


class _Group(TyperGroup):
    """Turns a UserError anywhere below into one line on stderr and its documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if DEBUG["on"]:
                raise
            report(e)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the training loop (scan, caching, ...)
            if DEBUG["on"]:
                raise
            report(interrupted())
            ctx.exit(interrupted().exit_code)


app = typer.Typer(
    cls=_Group,
    name="rextransfer",
    help="Fine-tune ImageNet-pretrained ReXNet on fine-grained images and compare it with ResNet50 "
    "and EfficientNet-B0, as in the ReXNet paper (CVPR 2021).",
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

DEBUG = {"on": False}

# Option groups for --help (rich panels).
DATA, MODEL, TRAIN, RUN = "Data", "Model", "Training", "Run"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rextransfer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    DEBUG["on"] = debug or os.environ.get("REXTRANSFER_DEBUG") == "1"


# One module per command (rextransfer/cli/<command>.py); each exposes register(app) and imports
# nothing heavy at module level.
COMMAND_MODULES = ("finetune", "evaluate", "predict", "demo", "data", "models", "weights", "recipes", "compare",
                   "analyze", "scan", "export", "lr_find")
for _module in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_module}").register(app)


def main() -> None:
    """Entry point: run the app, turning UserError into one line and a documented exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    threading.excepthook = _quiet_after_stop
    try:
        code = app(standalone_mode=False)  # click returns the code of ctx.exit() instead of raising
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:  # raised outside a command (e.g. in an option callback)
        if DEBUG["on"]:
            raise
        report(e)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # stopped outside a command (option parsing, start-up)
        report(interrupted())
        sys.exit(interrupted().exit_code)
    except Exception as e:  # click usage errors and genuine bugs
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help was shown, nothing else to say
            sys.exit(e.exit_code)
        if isinstance(e, click_exceptions.UsageError):  # bad flag or value: one line, exit 2
            command = e.ctx.command_path if e.ctx else "rextransfer"
            sys.stderr.write(f"error: {e.format_message()} (see `{command} --help`)\n")
            sys.exit(2)
        if isinstance(e, click_exceptions.ClickException):
            sys.stderr.write(f"error: {e.format_message()}\n")
            sys.exit(e.exit_code)
        if DEBUG["on"]:
            raise
        sys.stderr.write(f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
