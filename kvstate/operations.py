"""Operations on one learner's data: reset attempts, delete state, export, erase (SPEC §11).

Functions of plain ids and keys, for course staff tools, privacy requests and user retirement;
the ``kvstate_*`` management commands and the admin wrap them. Every argument is checked
before any SQL. Writes to user_state go through the write engine (:mod:`kvstate.storage`):
compare-and-swap on the stored text, so a reset or delete racing a learner's submission loses
neither, and each write leaves history as any kvstate write does. Erasure deletes rows in
bounded batches that commit one by one, so it can stop anywhere and be run again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.db import connections, router
from django.db.models import QuerySet
from django.utils import timezone
from opaque_keys.edx.keys import LearningContextKey, UsageKey

from kvstate import history, sql, storage
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.storage import ModuleRow, StateChange, Target
from kvstate.validation import check_length, check_usage_key

__all__ = [
    "MAX_BATCH_SIZE",
    "TABLES",
    "ErasureBatch",
    "delete_course_state",
    "delete_state",
    "erase_user",
    "erase_user_batches",
    "export_user",
    "reset_attempts",
    "retire_user_receiver",
]

log = logging.getLogger(__name__)

#: The largest batch accepted: a batch's ids must fit one statement's parameters on every
#: backend (SQLite allows 32,766), and short statements hold their locks briefly.
MAX_BATCH_SIZE = 10_000

MODULES = StudentModule._meta.db_table
HISTORY = StudentModuleHistory._meta.db_table
SUMMARY = XModuleUserStateSummaryField._meta.db_table
PREFS = XModuleStudentPrefsField._meta.db_table
INFO = XModuleStudentInfoField._meta.db_table
#: The tables :func:`erase_user` reports on. Summary rows belong to a block and are shared
#: by every learner: erasing a learner deletes none, and the count says so.
TABLES = (MODULES, HISTORY, SUMMARY, PREFS, INFO)

_RESET = StateChange(set_if_present={"attempts": 0})
_CLEAR = StateChange(clear=True)
#: A state deleted before; NULL is one never stored. Neither has anything left to delete.
_DELETED = "{}"


# Checking arguments ------------------------------------------------------------------------


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass, and True is never meant as a user id or a batch size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    return value


def _check_user_id(user_id: object) -> int:
    return _check_int("user_id (the user's primary key)", user_id)


def _check_batch_size(batch_size: object) -> int:
    size = _check_int("batch_size", batch_size)
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size={size}: a batch holds 1 to {MAX_BATCH_SIZE} rows")
    return size


def _check_course_key(course_key: object) -> LearningContextKey:
    if not isinstance(course_key, LearningContextKey):
        raise TypeError(
            f"expected a course key (a LearningContextKey, e.g. CourseKey.from_string(...)), "
            f"got {type(course_key).__name__} {course_key!r}"
        )
    stored = storage.stored_key(course_key)  # as the column holds it: branch stripped
    check_length("learning context key", stored, StudentModule.KEY_MAX_LENGTH)
    return course_key


def _targets(usage_keys: object) -> list[Target]:
    """Return the checked targets of ``usage_keys``, each once, in order."""
    if isinstance(usage_keys, str | UsageKey) or not isinstance(usage_keys, Iterable):
        raise TypeError(
            f"usage_keys must be a list of usage keys, not {type(usage_keys).__name__} "
            f"{usage_keys!r}"
        )
    return list(dict.fromkeys(Target.of(check_usage_key(key)).check() for key in usage_keys))


# Course staff: reset and delete ------------------------------------------------------------


def _holds_state(row: ModuleRow) -> bool:
    """Whether ``row`` has a state to delete (NULL was never stored, ``{}`` is deleted)."""
    return row.state_text not in (None, _DELETED)


def reset_attempts(user_id: int, usage_key: UsageKey, *, dry_run: bool = False) -> bool:
    """Set the learner's ``attempts`` in the block's state to 0, keeping every other field.

    Returns whether the state changed. Nothing is written (and ``False`` returned) when the
    learner has no row for the block, its state holds no ``attempts``, or they already are
    exactly 0. A submission racing the reset keeps its fields: the reset is applied to the row
    as the compare-and-swap finds it. Statements: 1 read and 1 UPDATE (a lost race adds a
    re-read and an UPDATE), 1 history INSERT for a recorded block type. ``dry_run`` only
    reads, and says whether the reset would change the state.
    """
    _check_user_id(user_id)
    target = Target.of(check_usage_key(usage_key)).check()
    using = storage.state_alias()
    known = storage.fetch_modules(using, user_id, [target])
    needed = _RESET.needed(known.get(target))
    if dry_run or not needed:
        return needed
    changed = target in storage.write_user_states(user_id, {target: _RESET}, known, using=using)
    log.info(
        "kvstate: reset attempts of user %s in %s: %s",
        user_id,
        usage_key,
        "done" if changed else "nothing to reset",
    )
    return changed


def delete_state(user_id: int, usage_keys: Iterable[UsageKey], *, dry_run: bool = False) -> int:
    """Delete the learner's state of each block: the rows' state becomes ``{}``.

    Returns how many rows were emptied (in a dry run: would be). Rows without state (missing,
    NULL, already ``{}``) are left alone, and grades stay: they belong to grading. History
    records each emptied row of a recorded block type. A submission committed before the call
    is deleted with the rest, even when it lands between this call's read and its write (the
    compare-and-swap misses, re-reads and deletes again). Statements: 1 read and 1 UPDATE for
    any number of blocks (per parameter-limit chunk), 1 history INSERT; all or nothing.
    """
    _check_user_id(user_id)
    targets = _targets(usage_keys)
    if not targets:
        return 0
    using = storage.state_alias()
    known = storage.fetch_modules(using, user_id, targets)
    doomed = {t: _CLEAR for t, row in known.items() if _holds_state(row)}
    if dry_run or not doomed:
        return len(doomed)
    deleted = len(storage.write_user_states(user_id, doomed, known, using=using))
    log.info(
        "kvstate: deleted the state of user %s in %d of the %d blocks asked",
        user_id,
        deleted,
        len(targets),
    )
    return deleted


def delete_course_state(
    user_id: int,
    course_key: LearningContextKey,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
) -> int:
    """Delete the learner's state of every block of one course (or other learning context).

    As :func:`delete_state`, for each of the learner's rows in the course that holds state,
    walked in keyset pages of ``batch_size`` rows. Each page is written all or nothing and
    commits on its own (unless the caller's transaction holds them all): interrupted, the
    pages done stay done and running again deletes the rest. Returns how many rows were
    emptied. Statements per page: 2 SELECTs (the page's keys, then its rows as the write
    engine reads them), 1 UPDATE, 1 history INSERT; a full last page costs one more SELECT.
    ``dry_run`` counts the rows in one statement.
    """
    _check_user_id(user_id)
    _check_course_key(course_key)
    _check_batch_size(batch_size)
    using = storage.state_alias()
    with_state = (
        StudentModule.objects.using(using)
        .for_user(user_id)
        .filter(course_id=course_key)
        .exclude(state__isnull=True)
        .exclude(state=_DELETED)
    )
    if dry_run:
        return with_state.count()
    deleted = 0
    last: int | None = None
    while True:
        page = with_state if last is None else with_state.filter(id__gt=last)
        keys = page.order_by("id").values_list("id", "module_state_key", "course_id")
        # NOT NULL columns: django-stubs cannot know that opaque-keys' fields never give None.
        rows = cast("list[tuple[int, UsageKey, LearningContextKey]]", list(keys[:batch_size]))
        # Read again as the write engine reads rows (the stored texts the swap compares).
        targets = [Target(usage_key, course) for _id, usage_key, course in rows]
        known = storage.fetch_modules(using, user_id, targets)
        changes = {t: _CLEAR for t, row in known.items() if _holds_state(row)}
        if changes:
            deleted += len(storage.write_user_states(user_id, changes, known, using=using))
        if len(rows) < batch_size:
            break
        last = rows[-1][0]
    log.info(
        "kvstate: deleted the state of user %s in %d blocks of %s", user_id, deleted, course_key
    )
    return deleted


# Privacy: export and erase -----------------------------------------------------------------


def export_user(user_id: int) -> dict[str, Any]:
    """Return everything kvstate holds about the learner, as a JSON-serialisable dict.

    ``{"user_id", "user_state", "preferences", "user_info"}``, lists oldest row first:

    - ``user_state``: per ``StudentModule`` row ``id``, ``usage_key``, ``course_id``,
      ``module_type``, ``state``, ``grade``, ``max_grade``, ``done``, ``created``,
      ``modified``, and ``history``: the row's entries newest first (``created``, ``state``,
      ``grade``, ``max_grade``, ``version``), read from the history alias;
    - ``preferences``: ``block_type``, ``field_name``, ``value``, ``created``, ``modified``;
    - ``user_info``: ``field_name``, ``value``, ``created``, ``modified``.

    Values are exactly as stored: keys as the strings their columns hold; JSON text parsed
    with ``json.loads``, so ``-0.0``, ``1e16``, huge integers, NUL characters and lone
    surrogates come back as they were written (``json.dumps`` with its default
    ``ensure_ascii=True`` writes them out again); a NULL state as ``None``, a deleted one as
    ``{}``. A text that is not JSON (neither kvstate nor Open edX writes one) comes as the
    string itself, under ``state_text`` or ``value_text`` instead. Timestamps are ISO 8601
    with microseconds and UTC offset.

    ``user_state_summary`` rows are not exported: they belong to a block and are shared by
    every learner (a poll's tally), so they are not the learner's. Reads go to the write
    aliases, so the export is complete up to the moment it runs. Statements: 3 on the state's
    alias, and on history's 1 per 32,766 modules (none without modules).
    """
    _check_user_id(user_id)
    modules = StudentModule.objects.using(storage.state_alias()).for_user(user_id)
    user_state = _exported(
        modules,
        id="id",
        usage_key=storage.column_text("module_state_key"),
        course_id=storage.column_text("course_id"),
        module_type="module_type",
        state="state",
        grade="grade",
        max_grade="max_grade",
        done="done",
        created="created",
        modified="modified",
    )
    by_id: dict[int, dict[str, Any]] = {}
    for entry in user_state:
        entry["history"] = []
        by_id[entry["id"]] = entry
    history_rows = 0
    for module_id, *values in history.for_modules(by_id):
        by_id[module_id]["history"].append(_exported_row(history.ENTRY_COLUMNS[1:], values))
        history_rows += 1
    per_field = ("field_name", "value", "created", "modified")
    preferences = _exported(
        _of_learner(XModuleStudentPrefsField, user_id),
        block_type=storage.column_text("module_type"),
        **{name: name for name in per_field},
    )
    user_info = _exported(
        _of_learner(XModuleStudentInfoField, user_id), **{name: name for name in per_field}
    )
    log.info(
        "kvstate: exported the data of user %s: %d user_state rows, %d history rows, "
        "%d preferences, %d user_info",
        user_id,
        len(user_state),
        history_rows,
        len(preferences),
        len(user_info),
    )
    return {
        "user_id": user_id,
        "user_state": user_state,
        "preferences": preferences,
        "user_info": user_info,
    }


def _of_learner(model: type[Any], user_id: int) -> QuerySet[Any]:
    rows: QuerySet[Any] = model.objects.using(router.db_for_write(model))
    return rows.filter(student_id=user_id)


def _exported(rows: QuerySet[Any], **columns: Any) -> list[dict[str, Any]]:
    """Return ``rows`` oldest first, each as ``{name: value}`` of the ``columns`` given."""
    names = list(columns)
    ordered = rows.order_by("id").values_list(*columns.values())
    return [_exported_row(names, values) for values in ordered]


def _exported_row(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """Return ``values`` under ``names``: JSON text parsed, timestamps in ISO 8601."""
    row: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if name in ("state", "value"):
            row.update(_json_field(name, value))
        elif isinstance(value, datetime):
            row[name] = _timestamp(value)
        else:
            row[name] = value
    return row


def _json_field(name: str, text: str | None) -> dict[str, Any]:
    """Return ``{name: the JSON text parsed}``, or ``{name_text: text}`` if it is not JSON."""
    if text is None:
        return {name: None}
    try:
        return {name: json.loads(text)}
    except ValueError:
        return {f"{name}_text": text}


def _timestamp(moment: datetime) -> str:
    if timezone.is_naive(moment):  # USE_TZ = False: the database holds the default zone's time
        moment = timezone.make_aware(moment)
    return moment.isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class ErasureBatch:
    """What one batch of :func:`erase_user_batches` deleted: rows per table."""

    deleted: Mapping[str, int]

    @property
    def rows(self) -> int:
        """Rows this batch deleted, in all tables."""
        return sum(self.deleted.values())


def erase_user(user_id: int, *, batch_size: int = 1000, dry_run: bool = False) -> dict[str, int]:
    """Delete every row of the learner in kvstate's tables; return how many went, per table.

    Keys are the table names of :data:`TABLES`. The learner's ``StudentModule`` rows go in
    batches of ``batch_size``, each batch's history first (on its own alias when configured),
    then the modules: an interruption never leaves history whose module is gone, so running
    again finds and deletes the rest. Then their preferences and user_info rows. Every
    statement deletes at most ``batch_size`` rows and commits on its own (unless the caller's
    transaction holds them), so memory and locks stay bounded however many rows the learner
    has. Summary rows are shared by every learner and stay. ``dry_run`` deletes nothing and
    returns the counts that would go. Rows the learner writes while this runs may survive:
    erase learners who can no longer sign in. :func:`erase_user_batches` yields progress.
    """
    if dry_run:
        _check_user_id(user_id)
        _check_batch_size(batch_size)
        return _count(user_id, batch_size)
    counts = dict.fromkeys(TABLES, 0)
    for batch in erase_user_batches(user_id, batch_size=batch_size):
        for table, deleted in batch.deleted.items():
            counts[table] += deleted
    return counts


def erase_user_batches(user_id: int, *, batch_size: int = 1000) -> Iterator[ErasureBatch]:
    """Erase the learner as :func:`erase_user` does, yielding after each batch.

    A batch is a module batch (the modules and their history) or one DELETE of per-field
    rows. Stopping the iteration stops the erasure between batches; a later call finishes it.
    Statements per module batch: 1 SELECT of ids and 1 DELETE on the state's alias, and on
    history's one DELETE per ``batch_size`` history rows plus one that finds fewer.
    """
    _check_user_id(user_id)
    _check_batch_size(batch_size)
    return _erase(user_id, batch_size)


def _erase(user_id: int, batch_size: int) -> Iterator[ErasureBatch]:
    counts = dict.fromkeys(TABLES, 0)

    def batch(**deleted: int) -> ErasureBatch:
        for table, count in deleted.items():
            counts[table] += count
        return ErasureBatch(deleted)

    log.info("kvstate: erasing the data of user %s, in batches of %d rows", user_id, batch_size)
    finished = False
    try:
        using = storage.state_alias()
        # In the unique index's order (no sort): a rerun starts with the batch that was
        # interrupted, whose history may be gone already.
        modules = (
            StudentModule.objects.using(using)
            .for_user(user_id)
            .order_by("module_state_key", "course_id")
        )
        while True:
            ids = list(modules.values_list("id", flat=True)[:batch_size])
            if ids:
                # History first: stopped in between, the modules remain to find the rest by.
                erased = history.erase_for_modules(ids, batch_size=batch_size)
                gone = StudentModule.objects.using(using).filter(id__in=ids)._raw_delete(using)
                yield batch(**{MODULES: gone, HISTORY: erased})
            if len(ids) < batch_size:
                break
        for model in (XModuleStudentPrefsField, XModuleStudentInfoField):
            connection = connections[router.db_for_write(model)]
            table = model._meta.db_table
            while True:
                gone = sql.delete_limited(connection, table, "student_id", [user_id], batch_size)
                if gone:
                    yield batch(**{table: gone})
                if gone < batch_size:
                    break
        finished = True
    finally:
        if finished:
            log.info("kvstate: erased the data of user %s: %s", user_id, counts)
        else:
            log.warning(
                "kvstate: erasing the data of user %s stopped after deleting %s; "
                "erase the user again to finish",
                user_id,
                counts,
            )


def _count(user_id: int, batch_size: int) -> dict[str, int]:
    """Return how many rows :func:`erase_user` would delete, walking module ids by keyset."""
    counts = dict.fromkeys(TABLES, 0)
    modules = StudentModule.objects.using(storage.state_alias()).for_user(user_id).order_by("id")
    last: int | None = None
    while True:
        page = modules if last is None else modules.filter(id__gt=last)
        ids = list(page.values_list("id", flat=True)[:batch_size])
        if ids:
            counts[MODULES] += len(ids)
            counts[HISTORY] += history.count_for_modules(ids)
        if len(ids) < batch_size:
            break
        last = ids[-1]
    for model in (XModuleStudentPrefsField, XModuleStudentInfoField):
        counts[model._meta.db_table] = _of_learner(model, user_id).count()
    return counts


# Retirement --------------------------------------------------------------------------------


def retire_user_receiver(sender: Any, user: Any = None, **kwargs: Any) -> None:
    """Erase a retired user's learner data; connect it to your user-retirement signal.

    Not connected by default: kvstate cannot import the platform that sends the signal. In
    Open edX, whose retirement signals send ``user``::

        from openedx.core.djangoapps.user_api.accounts.signals import USER_RETIRE_LMS_MISC
        from kvstate.operations import retire_user_receiver

        USER_RETIRE_LMS_MISC.connect(retire_user_receiver, dispatch_uid="kvstate.retire")

    It calls :func:`erase_user` with the user's primary key, in the sender's transaction if
    one is open, and raises whatever that raises, so the retirement step fails and is retried.
    """
    if user is None or getattr(user, "pk", None) is None:
        raise TypeError(
            "retire_user_receiver needs the user being retired: send the signal with "
            f"user=<a saved user> (got {user!r})"
        )
    erase_user(user.pk)
