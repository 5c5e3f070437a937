"""The one exception family permcodec raises.

Every problem with a file, a rule or an argument ends in a :class:`PermcodecError` whose message
names the problem and, where there is one, the fix. Subclasses let callers tell the broad causes
apart without parsing messages.
"""


class PermcodecError(Exception):
    """Base class of every error permcodec raises on bad input."""


class FormatError(PermcodecError):
    """The bytes are not a valid permcodec file (bad magic, truncated, hostile or corrupt)."""


class IntegrityError(FormatError):
    """A checksum or digest does not match: the file was changed after it was written."""


class VersionError(FormatError):
    """The file's major format version is not one this reader understands."""


class NotAPermutationError(PermcodecError):
    """A tensor is not a rearrangement of its seeded initial values."""


class RuleError(PermcodecError):
    """An initializer rule is malformed or does not fit the tensor it is applied to."""


class TensorNotFoundError(PermcodecError, KeyError):
    """A tensor name that the file does not hold; a KeyError too, as for a dict or safe_open."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
