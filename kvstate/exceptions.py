"""Errors kvstate raises itself (everything else is Django's, XBlock's or the database's)."""

from __future__ import annotations

from django.db import OperationalError


class WriteOutcomeUnknown(OperationalError):
    """The connection was lost while a write was being committed: it may or may not be saved.

    Raised when the connection to the database is lost during COMMIT, or during a write
    statement that committed by itself (autocommit). The server may have committed before the
    connection went, so neither "saved" nor "not saved" would be true. kvstate's writes are
    idempotent (they set fields to values, or delete them), so retrying the same write is safe.

    A subclass of Django's ``OperationalError``, so existing handlers still catch it. The
    original error is its ``__cause__``.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        super().__init__(
            f"the connection to database {using!r} was lost while a kvstate write was being "
            "committed: it may or may not have been saved. Retrying the same write is safe "
            "(kvstate's writes are idempotent)."
        )
