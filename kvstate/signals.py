"""Signals kvstate sends, so code can follow learners' writes that never call ``save()``.

``state_changed`` is sent with ``sender=StudentModule`` and the keyword arguments ``user_id``
(the learner), ``usage_keys`` (a list of the blocks whose rows the call wrote, as the caller
named them) and ``using`` (the database alias of the rows), once per kvstate write call that
wrote ``StudentModule`` rows: ``FieldDataCache``/``DjangoKeyValueStore`` writes of user_state,
the client's ``set_many``/``delete_many`` (``set``, ``delete``) and ``set_score``. It is sent
after the write commits (at once in autocommit, at the end of the caller's transaction
otherwise), never for a write that rolls back, and through ``send_robust``: a receiver that
raises is logged by Django (logger ``django.dispatch``) and cannot turn a saved write into an
error. A ``StudentModule`` saved through the ORM sends Django's own ``post_save`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from django.db import transaction
from django.dispatch import Signal
from opaque_keys.edx.keys import UsageKey

from kvstate.models import StudentModule

__all__ = ["state_changed"]

#: Sent once per kvstate write call that wrote user_state rows, after it commits.
state_changed = Signal()


def send_state_changed(user_id: int, usage_keys: Iterable[UsageKey], using: str) -> None:
    """Send :data:`state_changed` for ``usage_keys`` once the write on ``using`` commits."""
    keys = list(usage_keys)
    if keys:
        transaction.on_commit(partial(_send, user_id, keys, using), using=using)


def _send(user_id: int, usage_keys: list[UsageKey], using: str) -> None:
    state_changed.send_robust(
        sender=StudentModule, user_id=user_id, usage_keys=usage_keys, using=using
    )
