"""User-facing errors: one line, a documented exit code, never a traceback (unless --debug).

Exit codes (documented in README):
    0  success
    1  unexpected internal error (a bug: rerun with --debug and report it)
    2  bad command line: unknown option, bad flag value, bad --set, unknown key, a setting out of range
    3  bad data: missing path, empty folder, one class, unknown dataset, bad files under --bad-files fail
    4  model or weights: unknown model or width, offline without weights, incompatible checkpoint
    5  run folder: exists already, cannot resume, incompatible resume, in use, damaged, a file in its place
    6  training fault: NaN/inf loss, CUDA out of memory
    7  environment: disk full, no network for a download, a read-only runs or cache folder, missing package
    130 interrupted by Ctrl-C / SIGTERM (in training a checkpoint was saved; the message says how to resume)
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_RUN = 5
EXIT_TRAIN = 6
EXIT_ENV = 7
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error caused by input or environment, shown to the user as one line."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(UserError):
    exit_code = EXIT_USAGE


class DataError(UserError):
    exit_code = EXIT_DATA


class ModelError(UserError):
    exit_code = EXIT_MODEL


class RunError(UserError):
    exit_code = EXIT_RUN


class TrainingError(UserError):
    exit_code = EXIT_TRAIN


class EnvironmentProblem(UserError):
    exit_code = EXIT_ENV


class Interrupted(UserError):
    exit_code = EXIT_INTERRUPTED
