"""Writing, reading, pruning and deleting StudentModule history: the one place that knows about it.

One history row per StudentModule per write call, for the block types in
``KVSTATE_HISTORY_BLOCK_TYPES``. When history shares the state's database it is written in the
state's transaction, so a rolled-back write leaves none. On its own database it is written once
the state has committed (there is no two-phase commit across databases), and a failure there is
logged with the module ids, never raised: the learner's write stands.

kvstate's own writes are SQL statements and call :func:`record`. Code that saves a
``StudentModule`` through the ORM (Open edX's instructor tools do) is recorded by a
``post_save`` receiver under the same rules, as Open edX records it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import Error, connections, router, transaction
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.db.models.signals import post_delete, post_save

from kvstate import sql
from kvstate.models import StudentModule, StudentModuleHistory

if TYPE_CHECKING:
    from kvstate.storage import ModuleRow

log = logging.getLogger(__name__)


def alias() -> str:
    """Return the database alias history is read from and written to (the router decides)."""
    return router.db_for_write(StudentModuleHistory)


def records(module_type: str) -> bool:
    """Return whether writes to blocks of ``module_type`` leave history rows.

    Asks ``StudentModuleHistory.HISTORY_SAVING_TYPES`` (the setting, read live), so code that
    replaces that attribute, as Open edX tests do, changes what is recorded here too.
    """
    return module_type in StudentModuleHistory.HISTORY_SAVING_TYPES


# Writing -----------------------------------------------------------------------------------


#: The columns of a history row kvstate writes (``version`` stays NULL, as Open edX leaves it).
_COLUMNS = ("student_module_id", "created", "state", "grade", "max_grade")

#: One history row: the values of ``_COLUMNS``.
Entry = tuple[int, datetime, str | None, float | None, float | None]


def record(rows: Sequence[ModuleRow], *, state_using: str) -> None:
    """Write one history row per StudentModule row in ``rows``, in one statement.

    Each row is the module as the write call left it: full state, grade and max_grade, and its
    ``modified`` as the entry's ``created``. Same database as the state: now, inside the
    caller's transaction. Another database: after the state's transaction commits (at once
    when none is open), and never at all when it rolls back.
    """
    entries = [
        (row.id, row.modified, row.state_text, row.grade, row.max_grade)
        for row in rows
        if row.id is not None
    ]
    _write(entries, state_using)


def _record_save(
    sender: type[StudentModule], instance: StudentModule, using: str, **kwargs: Any
) -> None:
    """Record a ``StudentModule`` saved through the ORM, as Open edX's ``post_save`` receiver."""
    if not records(instance.module_type):
        return
    entry = (instance.pk, instance.modified, instance.state, instance.grade, instance.max_grade)
    _write([entry], using)


def saving(module: StudentModule, using: str | None) -> AbstractContextManager[Any]:
    """Return the context an ORM save of ``module`` runs in, so its history goes with it.

    When history shares the row's database, the save and its history row (written by the
    ``post_save`` receiver) form one transaction, as a kvstate write and its history do: in
    autocommit too, a failed history insert leaves no lone state row. Otherwise nothing.
    """
    using = using or router.db_for_write(StudentModule, instance=module)
    if records(module.module_type) and alias() == using:
        return transaction.atomic(using, savepoint=False)
    return nullcontext()


def _write(entries: list[Entry], state_using: str) -> None:
    """Insert ``entries``: now on the state's database, after its commit on another."""
    if not entries:
        return
    history_using = alias()
    if history_using == state_using:
        _insert(history_using, entries)
    else:
        # robust: whatever _write_detached does not catch is logged by Django, not raised into
        # the caller, whose write has committed by then.
        transaction.on_commit(
            partial(_write_detached, history_using, entries), using=state_using, robust=True
        )


def _write_detached(using: str, entries: list[Entry]) -> None:
    """Write history on its own database; log a failure (with the module ids) and go on."""
    with _logged_failure(
        "could not write history for StudentModule ids %s on database %r; "
        "the state itself was saved",
        [entry[0] for entry in entries],
        using,
    ):
        _insert(using, entries)


def _insert(using: str, entries: list[Entry]) -> None:
    # From tuples, not model instances: a batch of 50 entries would build 50 models and
    # prepare 300 values through their fields for what is a plain INSERT.
    sql.insert_values(connections[using], StudentModuleHistory._meta.db_table, _COLUMNS, entries)


@contextmanager
def _logged_failure(message: str, module_ids: list[int], using: str) -> Iterator[None]:
    """Log (not raise) a database error from history work that follows a committed write."""
    try:
        yield
    except Error:
        log.exception("kvstate: " + message, module_ids, using)
        if connections[using].in_atomic_block:
            # The statement failed inside someone else's transaction on the history database
            # (PostgreSQL has aborted it already). Roll that back rather than commit it half
            # done; the learner's state is on the other database and not affected.
            transaction.set_rollback(True, using=using)


# Reading -----------------------------------------------------------------------------------


def for_module(module_id: int) -> list[tuple[str | None, datetime]]:
    """Return one module's history as ``(state, created)``, newest first, in one statement.

    Plain values, not model instances: building those cost more than the statement.
    """
    entries = StudentModuleHistory.objects.using(alias()).for_module(module_id)
    return list(entries.values_list("state", "created"))


def page_for_module(
    module_id: int, size: int, before: tuple[datetime, int] | None = None
) -> list[StudentModuleHistory]:
    """Return up to ``size`` + 1 entries of one module's history, newest first, in one statement.

    ``before`` is the ``(created, id)`` of the last entry of the previous page (a keyset, so
    a page costs its own rows however deep it is). The entry past ``size``, when there is one,
    tells that an older page exists and what the page's oldest entry changed.
    """
    entries = StudentModuleHistory.objects.using(alias()).for_module(module_id)
    if before is not None:
        entries = entries.before(("created", "id"), before)
    return list(entries[: size + 1])


#: What :func:`for_modules` yields per history row, in this order.
ENTRY_COLUMNS = ("student_module_id", "created", "state", "grade", "max_grade", "version")


def for_modules(module_ids: Collection[int]) -> Iterator[tuple[Any, ...]]:
    """Yield the ``ENTRY_COLUMNS`` of the modules' history, each module's newest first.

    One statement per parameter-limit chunk of ids (one for up to 32,766 modules).
    """
    using = alias()
    ids = sorted(module_ids)
    size = sql.max_query_params(connections[using])
    for start in range(0, len(ids), size):
        rows = StudentModuleHistory.objects.using(using).filter(
            student_module_id__in=ids[start : start + size]
        )
        ordered = rows.order_by("student_module_id", "-created", "-id")
        yield from ordered.values_list(*ENTRY_COLUMNS)


# Pruning -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneBatch:
    """What one batch of :func:`prune` looked at and deleted."""

    #: Rows older than the cutoff this batch looked at (at most the batch size).
    examined: int
    #: Rows it deleted (in a dry run: would have deleted). The others are among the newest
    #: ``keep`` of their module.
    deleted: int
    #: ``(created, id)`` of the last row examined: the batch after starts past it.
    last: tuple[datetime, int]


def prune(
    cutoff: datetime,
    *,
    keep: int = 0,
    batch_size: int = 1000,
    dry_run: bool = False,
    using: str | None = None,
) -> Iterator[PruneBatch]:
    """Delete history rows created before ``cutoff``, keeping the newest ``keep`` per module.

    Yields after each batch. A batch reads at most ``batch_size`` old rows in ``(created, id)``
    order (one statement), reads which of them are among their module's newest ``keep`` (one
    statement, only when ``keep``), and deletes the rest (one statement). Each statement
    commits on its own, so batches are independent: stopping between (or inside) them loses
    no work but the current batch, and running again carries on, since deleted rows are gone
    and kept ones are kept again. ``dry_run`` deletes nothing and counts the same rows.
    """
    if keep < 0:
        raise ValueError(f"keep={keep}: the number of rows to keep per module cannot be negative")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: a batch needs at least one row")
    using = using or alias()
    old = StudentModuleHistory.objects.using(using).filter(created__lt=cutoff)
    order = ("created", "id")
    last: tuple[datetime, int] | None = None
    while True:
        page = old if last is None else old.after(order, last)
        rows = list(
            page.order_by(*order).values_list("created", "id", "student_module_id")[:batch_size]
        )
        if not rows:
            return
        doomed = [row_id for _created, row_id, _module in rows]
        if keep:
            kept = _newest_ids(using, {module for _c, _i, module in rows}, keep)
            doomed = [row_id for row_id in doomed if row_id not in kept]
        if doomed and not dry_run:
            StudentModuleHistory.objects.using(using).filter(id__in=doomed).delete()
        last = (rows[-1][0], rows[-1][1])
        yield PruneBatch(examined=len(rows), deleted=len(doomed), last=last)
        if len(rows) < batch_size:
            return


def _newest_ids(using: str, module_ids: Collection[int], keep: int) -> set[int]:
    """Return the ids of the newest ``keep`` history rows of each module, in one statement."""
    ranked = (
        StudentModuleHistory.objects.using(using)
        .filter(student_module_id__in=module_ids)
        .annotate(
            newness=Window(
                RowNumber(),
                partition_by=[F("student_module_id")],
                order_by=[F("created").desc(), F("id").desc()],
            )
        )
        .filter(newness__lte=keep)
    )
    return set(ranked.values_list("id", flat=True))


# Deleting with the module ------------------------------------------------------------------


def _delete_with_module(
    sender: type[StudentModule], instance: StudentModule, using: str, **kwargs: Any
) -> None:
    """Delete a deleted module's history: at once on a shared database, else after commit."""
    history_using = alias()
    if history_using == using:
        _delete_for_modules(history_using, [instance.pk])
    else:
        transaction.on_commit(
            partial(_delete_detached, history_using, [instance.pk]), using=using, robust=True
        )


def erase_for_modules(module_ids: Sequence[int], *, batch_size: int) -> int:
    """Delete the history of ``module_ids``, at most ``batch_size`` rows per statement.

    Returns how many rows went. Each statement commits on its own outside a transaction, so
    an interruption keeps what was deleted. Callers delete the modules only once this has
    returned: a history row is then never left without its module, and rerunning finds the
    rest through the modules. ``module_ids`` must fit one statement's parameters.
    """
    using = alias()
    connection = connections[using]
    table = StudentModuleHistory._meta.db_table
    total = 0
    while True:
        deleted = sql.delete_limited(connection, table, "student_module_id", module_ids, batch_size)
        total += deleted
        if deleted < batch_size:
            return total


def count_for_modules(module_ids: Sequence[int]) -> int:
    """Return how many history rows ``module_ids`` have, in one statement."""
    rows = StudentModuleHistory.objects.using(alias()).filter(student_module_id__in=module_ids)
    return rows.count()


def _delete_for_modules(using: str, module_ids: Sequence[int]) -> None:
    StudentModuleHistory.objects.using(using).filter(student_module_id__in=module_ids).delete()


def _delete_detached(using: str, module_ids: list[int]) -> None:
    # The module is gone (committed); say exactly which history is left over.
    with _logged_failure(
        "could not delete the history of deleted StudentModule ids %s on database %r; "
        "delete those rows by hand (they hold learner data)",
        module_ids,
        using,
    ):
        _delete_for_modules(using, module_ids)


def connect_signals() -> None:
    """Connect the receivers that record ORM saves and delete history with its module."""
    post_save.connect(_record_save, sender=StudentModule, dispatch_uid="kvstate.history.save")
    post_delete.connect(
        _delete_with_module, sender=StudentModule, dispatch_uid="kvstate.history.delete"
    )
