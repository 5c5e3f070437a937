"""Progress bars for long saves and loads: tqdm on stderr, shown once a job has run ``DELAY`` s.

``progress=None`` (the default everywhere) shows a bar only when stderr is a terminal;
``progress=True`` asks for one even in non-interactive use (logs, CI), ``False`` never shows one.
``PERMCODEC_PROGRESS=1`` (or 0) sets the default from outside. Bars count weights, one update per
tensor, so a bar costs nothing measurable.
"""
from __future__ import annotations

import contextlib
import os
import sys

from .errors import PermcodecError

DELAY = 1.0


class _Off:
    def update(self, n: int = 1) -> None:
        pass


def _wanted(progress) -> bool:
    if progress is None:
        env = os.environ.get("PERMCODEC_PROGRESS", "").strip().lower()
        if env in ("1", "true", "yes", "on"):
            return True
        if env in ("0", "false", "no", "off"):
            return False
        return sys.stderr is not None and sys.stderr.isatty()
    if not isinstance(progress, bool):
        raise PermcodecError(f"progress must be True, False or None (only on a terminal), not {progress!r}")
    return progress


@contextlib.contextmanager
def bar(total: int, desc: str, progress=None, delay: float = DELAY):
    """A context yielding an object with ``update(weights)``: a tqdm bar of ``total`` weights when
    wanted (see the module docstring), drawn only after ``delay`` seconds, else a no-op."""
    if not _wanted(progress):
        yield _Off()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        if progress:
            raise PermcodecError("progress=True needs tqdm: pip install 'permcodec[progress]'") from None
        yield _Off()
        return
    with tqdm(total=total, desc=desc, unit="w", unit_scale=True, delay=delay, file=sys.stderr, leave=False) as t:
        yield t
