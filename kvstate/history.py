"""Writing, reading and deleting StudentModule history: the one place that knows about it.

One history row per StudentModule per write call, for the block types in
``KVSTATE_HISTORY_BLOCK_TYPES``. When history shares the state's database it is written in the
state's transaction; on its own database it is written once the state has committed, and a
failure there is logged, never raised: the learner's write stands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, router, transaction
from django.db.models.signals import post_delete

from kvstate.conf import settings
from kvstate.models import StudentModule, StudentModuleHistory

if TYPE_CHECKING:
    from kvstate.storage import ModuleRow

log = logging.getLogger(__name__)


def alias() -> str:
    """Return the database alias history is written to."""
    return router.db_for_write(StudentModuleHistory)


def records(module_type: str) -> bool:
    """Return whether writes to blocks of ``module_type`` leave history rows."""
    block_types = settings.HISTORY_BLOCK_TYPES
    return block_types is None or module_type in block_types


def record(rows: Sequence[ModuleRow], *, state_using: str) -> None:
    """Write one history row per StudentModule row in ``rows``, in one statement.

    Same database as the state: now, inside the caller's transaction. Another database: after
    the state's transaction commits (at once when there is none).
    """
    entries = [
        StudentModuleHistory(
            student_module_id=row.id,
            created=row.modified,
            state=row.state_text,
            grade=row.grade,
            max_grade=row.max_grade,
        )
        for row in rows
    ]
    if not entries:
        return
    history_using = alias()
    if history_using == state_using:
        StudentModuleHistory.objects.using(history_using).bulk_create(entries)
    else:
        transaction.on_commit(lambda: _write_detached(history_using, entries), using=state_using)


def _write_detached(using: str, entries: list[StudentModuleHistory]) -> None:
    try:
        StudentModuleHistory.objects.using(using).bulk_create(entries)
    except DatabaseError:
        module_ids = [entry.student_module_id for entry in entries]
        log.exception(
            "kvstate: could not write history for StudentModule ids %s on database %r; "
            "the state itself was saved",
            module_ids,
            using,
        )
        if connections[using].in_atomic_block:
            # The statement failed inside someone's transaction on the history database:
            # make sure it is rolled back rather than committed half-done.
            transaction.set_rollback(True, using=using)


def for_module(module_id: int) -> list[StudentModuleHistory]:
    """Return one module's history, newest first, in one statement."""
    return list(StudentModuleHistory.objects.using(alias()).for_module(module_id))


def _delete_with_module(sender: type[StudentModule], instance: StudentModule,
                        using: str, **kwargs: Any) -> None:
    """Delete a deleted module's history, after the deletion commits (it may be elsewhere)."""
    module_id = instance.pk
    delete: Callable[[], Any] = (
        StudentModuleHistory.objects.using(alias()).filter(student_module_id=module_id).delete
    )
    if alias() == using:
        delete()
    else:
        transaction.on_commit(delete, using=using)


def connect_signals() -> None:
    """Connect the receiver that deletes history with its module."""
    post_delete.connect(
        _delete_with_module, sender=StudentModule, dispatch_uid="kvstate.history.delete"
    )
