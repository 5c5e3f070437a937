"""Load from a stream: a file object being read (an HTTP response, a pipe) or an iterator of chunks.

    state = permcodec.stream.load_stream(response.iter_content(1 << 20))
    state = permcodec.stream.load_stream(sys.stdin.buffer)

A permcodec file ends with its header (formats/SPEC.md §2): a section's SHA-256, and a tensor's
shape, rule and codec, are known only once the last bytes have arrived, so no section can be
verified (or even delimited) earlier. The stream is therefore spooled, one chunk at a time, to an
unlinked temporary file; once it has ended, the ordinary reader (api.File: format.py's checks of
the whole container, then each section's SHA-256 right before that tensor is decoded) maps the
spool and decodes one tensor at a time. Memory holds one chunk while receiving, then one section
plus the output; the spool takes the file's size on disk.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from . import api
from .errors import FormatError, PermcodecError

CHUNK = 1 << 20


def _chunks(source, chunk_size: int) -> Iterator:
    if isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise PermcodecError(f"a stream is a file object or an iterator of byte chunks, not {type(source).__name__}: "
                             f"use permcodec.load(path) for a path, or wrap bytes in io.BytesIO")
    if hasattr(source, "read"):
        return iter(lambda: source.read(chunk_size), b"")
    try:
        return iter(source)
    except TypeError:
        raise PermcodecError(f"cannot stream from a {type(source).__name__}: give a file object (with read()) "
                             f"or an iterable of bytes") from None


@contextlib.contextmanager
def _spooled(source, chunk_size: int, max_bytes: int | None, spool_dir):
    """The path of a temporary file holding the whole stream, removed afterwards."""
    fd, path = tempfile.mkstemp(prefix=".permcodec-stream-", suffix=".tmp", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            size = 0
            for chunk in _chunks(source, chunk_size):
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise PermcodecError(f"the stream gave a {type(chunk).__name__}, not bytes: open it in binary mode")
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FormatError(f"the stream is longer than max_bytes={max_bytes}: not the file you expected "
                                      f"(raise max_bytes to read it)")
                f.write(chunk)
        if size == 0:
            raise FormatError("the stream is empty: not a permcodec file")
        yield path
    finally:
        os.unlink(path)


def load_stream(source, device="cpu", *, check_digests: bool = False, rules: bool = False, chunk_size: int = CHUNK,
                max_bytes: int | None = None, spool_dir=None):
    """Every tensor of the streamed file, bit for bit, as permcodec.load gives it for a path.

    ``max_bytes`` bounds what is accepted from the stream (its length is declared only at its
    end); ``spool_dir`` is where the temporary file goes (default: the system's temp folder);
    ``rules=True`` returns (state, {name: Rule}) as permcodec.load does.
    """
    with _spooled(source, chunk_size, max_bytes, spool_dir) as path:
        return api.load(path, device, check_digests=check_digests, rules=rules)
