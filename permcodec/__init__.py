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
import importlib.util

from .errors import (FormatError, IntegrityError, NotAPermutationError, PermcodecError, RuleError,
                     TensorNotFoundError, VersionError)

__version__ = "0.1.0"

# public name -> (submodule, attribute); any submodule is also reachable as permcodec.<name>
_LAZY = {
    "save": ("api", "save"), "load": ("api", "load"), "load_into": ("api", "load_into"),
    "read_header": ("api", "read_header"), "open": ("api", "open_file"), "export": ("api", "export"),
    "verify": ("api", "verify"), "File": ("api", "File"), "Rule": ("rules", "Rule"),
    "rules_of": ("api", "rules_of"),
    "save_file": ("safe", "save_file"), "load_file": ("safe", "load_file"), "safe_open": ("safe", "safe_open"),
}

__all__ = ["save", "load", "load_into", "read_header", "open", "export", "verify", "rules_of", "init", "Rule", "File",
           "save_file", "load_file", "safe_open",
           "PermcodecError", "FormatError", "IntegrityError", "VersionError", "NotAPermutationError",
           "RuleError", "TensorNotFoundError", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # a submodule: permcodec.init, ...
    else:
        raise AttributeError(f"module 'permcodec' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    import pkgutil
    return sorted(set(globals()) | set(_LAZY) | {m.name for m in pkgutil.iter_modules(__path__)})
