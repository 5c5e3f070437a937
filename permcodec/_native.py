"""The compiled core ``permcodec._core``, loaded in one place.

There is no runtime fallback: the numpy references are the spec the tests compare against, not
a second implementation to run. A missing or broken build is reported with the fix.
"""
from __future__ import annotations

from importlib import import_module

from .errors import PermcodecError


def core():
    """The ``permcodec._core`` module, or PermcodecError saying how to build it."""
    try:
        return import_module(f"{__package__}._core")
    except ImportError as e:
        raise PermcodecError(
            f"permcodec's compiled core (permcodec._core) is missing or does not load ({e}): reinstall "
            f"with `pip install -e .` (it compiles the extension; a C++17 compiler is needed)") from None
