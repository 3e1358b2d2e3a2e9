"""The error every reader and transform raises for bad input, and the counter for skipped records.

A `DataError` names where the problem is (file, record index, field) and what was expected, so a
user can find the record; the pipeline either raises it or, when its config allows skipping, counts
it and logs a warning (never a silent substitution).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data: `str(error)` reads `<file>: record <index>: field '<field>': <message>`."""

    def __init__(self, message: str, *, file: str | None = None, index: int | None = None,
                 field: str | None = None):
        self.message, self.file, self.index, self.field = message, file, index, field
        super().__init__(self._text())

    def _text(self) -> str:
        where = [part for part in (
            self.file,
            None if self.index is None else f"record {self.index}",
            None if self.field is None else f"field {self.field!r}") if part is not None]
        return ": ".join([*where, self.message])

    def located(self, *, file: str | None = None, index: int | None = None,
                field: str | None = None) -> DataError:
        """The same error with the location filled in where it was unknown."""
        return DataError(self.message, file=self.file or file,
                         index=self.index if self.index is not None else index,
                         field=self.field or field)


class SkipCounter:
    """Counts records skipped for bad input and logs each one as a warning with the running count."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0

    def skip(self, error: DataError) -> None:
        self.count += 1
        log.warning("skipped bad record #%d in %s: %s", self.count, self.what, error)
