"""permcodec: store networks trained by reconnection as seeded init rules + permutations.

    import permcodec
    permcodec.init.apply_(model, seed=0)          # portable seeded initial values
    ...train with LaPerm (trainers/)...
    permcodec.save(model, "model.perm")           # rules + per-vector permutations
    state = permcodec.load("model.perm")          # the exact weights, bit for bit

Importing the package is cheap: torch and the codecs are imported when a name that needs them
is first used (``permcodec.save``, ``permcodec.init``, ...), so tools that only read headers
(``permcodec info``) never pay for torch.
"""
import importlib

from .errors import (FormatError, IntegrityError, NotAPermutationError, PermcodecError, RuleError,
                     TensorNotFoundError, VersionError)

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the submodule itself
_LAZY = {
    "save": ("api", "save"), "load": ("api", "load"), "load_into": ("api", "load_into"),
    "read_header": ("api", "read_header"), "open": ("api", "open_file"), "export": ("api", "export"),
    "verify": ("api", "verify"), "File": ("api", "File"), "Rule": ("rules", "Rule"),
    "save_file": ("safe", "save_file"), "load_file": ("safe", "load_file"), "safe_open": ("safe", "safe_open"),
}
_SUBMODULES = {"api", "cli", "codecs", "dtypes", "format", "gpu", "init", "integrations", "into", "paths", "perm",
               "philox", "progress", "reader", "rules", "rulespec", "safe", "shards", "tensors", "values"}

__all__ = ["save", "load", "load_into", "read_header", "open", "export", "verify", "init", "Rule", "File",
           "save_file", "load_file", "safe_open",
           "PermcodecError", "FormatError", "IntegrityError", "VersionError", "NotAPermutationError",
           "RuleError", "TensorNotFoundError", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'permcodec' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
