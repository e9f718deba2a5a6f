"""Errors a user can cause and fix; the CLI prints them as one line without a traceback."""


class RecsysError(Exception):
    """Base class for user-facing errors (bad input, missing files, unmigrated database)."""


class DataFileError(RecsysError):
    """An input file is missing, unreadable, truncated or of an unrecognised layout."""


class RejectedRowsError(RecsysError):
    """Raised under ``--strict`` when an import rejected at least one row; nothing was written."""


class SchemaNotReadyError(RecsysError):
    """The database has not been migrated to the schema this code expects."""
