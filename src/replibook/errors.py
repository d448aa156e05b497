"""Exceptions with messages written for the person running the book.

Every error the CLI reports as a one-line message derives from
`ReplibookError`; anything else is a bug and keeps its traceback.
"""


class ReplibookError(Exception):
    """An expected failure whose message alone tells the user what to do."""


class DatasetMissing(ReplibookError):
    """A dataset is not on disk where `REPLIBOOK_DATA` says it should be."""


class LedgerInvalid(ReplibookError):
    """A ledger record does not match the schema of BOOK_DESIGN.md."""


class UnknownName(ReplibookError):
    """A chapter, size, parameter, registry key or zoo entry that does not exist."""
