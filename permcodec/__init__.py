"""permcodec: store networks trained by reconnection as seeded init rules + permutations.

    import permcodec
    permcodec.init.apply_(model, seed=0)          # portable seeded initial values
    ...train with LaPerm (trainers/)...
    permcodec.save(model, "model.perm")           # rules + per-vector permutations
    state = permcodec.load("model.perm")          # the exact weights, bit for bit
"""
__version__ = "0.1.0"

from . import init  # noqa: E402
from .errors import (FormatError, IntegrityError, NotAPermutationError, PermcodecError,  # noqa: E402
                     RuleError, VersionError)
from .rules import Rule  # noqa: E402
from .api import File, export, load, load_into, read_header, save, verify  # noqa: E402
from .api import open_file as open  # noqa: E402,A001

__all__ = ["save", "load", "load_into", "read_header", "open", "export", "verify", "init", "Rule", "File",
           "PermcodecError", "FormatError", "IntegrityError", "VersionError", "NotAPermutationError",
           "RuleError", "__version__"]
