"""Every failure a user can cause and fix, as one exception family.

The CLI prints ``str(error)`` as a single line and exits with status 2, so each message
names the problem and says what to do about it. Internal invariants use ``assert``.
"""


class ScratchLMError(Exception):
    """Base class of all user-facing scratchlm errors."""


class ConfigError(ScratchLMError):
    """An invalid setting: a value out of range, an unknown option, a bad config file."""


class DataError(ScratchLMError):
    """Unusable input data: a missing or unreadable path, an empty corpus, invalid text."""


class TokenizerError(ScratchLMError):
    """A tokenizer cannot be built, loaded, or applied to the given input."""


class OutputExistsError(ScratchLMError):
    """The output path exists and overwriting it was not asked for."""


class CheckpointError(ScratchLMError):
    """A checkpoint that is missing, damaged, of an unknown format, or does not fit the model."""


class WriteError(ScratchLMError):
    """A file or folder could not be written: a full disk, no permission, an I/O error.
    The message names the file and the cause; what was there before is left intact."""
