"""``ScoresClient``: one learner's raw scores in one course, fetched in bulk, read from memory.

Open edX's grading code builds one with :meth:`ScoresClient.create_for_locations` for the
scorable blocks of a course (``FieldDataCache.scorable_locations``) and asks it for each block.
``kvstate.model_data`` exports it under Open edX's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import ClassVar, NamedTuple

from opaque_keys.edx.keys import LearningContextKey, UsageKey

from kvstate import storage
from kvstate.validation import check_usage_key

__all__ = ["Score", "ScoresClient"]


class Score(NamedTuple):
    """A learner's raw score for a block: its row's grade, max_grade and creation time."""

    correct: float | None
    total: float | None
    created: datetime


# Inside ScoresClient, ``Score`` names its class attribute (Open edX's ``ScoresClient.Score``).
_Score = Score


class ScoresClient:
    """Read one learner's scores in one course: fetch them for many blocks, then ``get`` each."""

    Score: ClassVar[type[Score]] = Score

    def __init__(self, course_key: LearningContextKey, user_id: int) -> None:
        self.course_key = course_key
        self.user_id = user_id
        # Keyed by the usage key as stored: branch and version are not part of it.
        self._scores: dict[str, _Score] = {}
        self._has_fetched = False

    def __repr__(self) -> str:
        return f"<ScoresClient user={self.user_id!r} course={self.course_key}>"

    def __contains__(self, location: UsageKey) -> bool:
        """Return whether a score was fetched for ``location``."""
        return self._stored(location) in self._scores

    def fetch_scores(self, locations: Iterable[UsageKey]) -> None:
        """Read the scores of ``locations``: one statement per parameter-limit chunk.

        Read from the alias writes go to (SPEC §10): grading writes what it computes from
        these, so a lagging replica must not answer.
        """
        wanted = {self._row_key(location) for location in locations}
        columns = ("grade", "max_grade", "created")
        for (module_id, _course_id), values in storage.select_stored(
            storage.state_alias(), self.user_id, wanted, columns
        ):
            self._scores[module_id] = _Score(*values)
        self._has_fetched = True

    def get(self, location: UsageKey) -> _Score | None:
        """Return the score of ``location`` (branch and version ignored), or ``None``.

        Raises ``ValueError`` before :meth:`fetch_scores` has run.
        """
        if not self._has_fetched:
            raise ValueError(
                f"ScoresClient.get({location}) before fetch_scores(): fetch the scores first, "
                "or build the client with ScoresClient.create_for_locations()"
            )
        return self._scores.get(self._stored(location))

    @classmethod
    def create_for_locations(
        cls, course_id: LearningContextKey, user_id: int, scorable_locations: Iterable[UsageKey]
    ) -> ScoresClient:
        """Return a client with the scores of ``scorable_locations`` fetched."""
        client = cls(course_id, user_id)
        client.fetch_scores(scorable_locations)
        return client

    def _stored(self, location: UsageKey) -> str:
        """Return ``location`` as the module_id column holds it (branch and version stripped)."""
        return self._row_key(location)[0]

    def _row_key(self, location: UsageKey) -> tuple[str, str]:
        """Return the ``(module_id, course_id)`` strings of ``location``'s row in this course."""
        return storage.row_key(check_usage_key(location), self.course_key)
