"""`netcompress <verb>`: the command line, a thin layer that maps flags onto the library's configs and verbs.

One module per verb family; importing them registers their commands on the shared app.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
import warnings

from ..errors import NetcompressError
from ..files import why_not_written

# importing the verb families registers their commands, listed in this order by --help
from . import (  # noqa: F401
    auto,
    compress,
    deploy,
    formats,
    measure,
    pipeline,
    train,  # noqa: F401, I001
)
from .common import app

ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def main() -> None:
    from ..process import tune_allocator

    tune_allocator()
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    try:
        app()
    except NetcompressError as exc:
        message = str(exc) if sys.stderr.isatty() else ANSI_CODES.sub("", str(exc))
        print(f"error: {message}", file=sys.stderr)  # one message, no traceback
        sys.exit(2)
    except OSError as exc:  # a disk that filled up or turned read-only midway: one line, the file named
        if exc.errno is None:
            raise
        path = Path(exc.filename) if exc.filename else Path(".")
        print(f"error: cannot use {exc.filename or 'a file'}: {why_not_written(exc, path)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        sys.exit(130)
