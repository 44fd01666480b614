"""The write engine shared by ``FieldDataCache``, ``DjangoXBlockUserStateClient`` and ``set_score``.

user_state rows are written losslessly, without a lock unless a race was lost. A missing row
is created with insert-or-ignore; an existing one is updated with a compare-and-swap on the
exact text that was read (``UPDATE ... WHERE id = %s AND state = <what we read>``). When a swap
misses, another writer got there first: re-read the row locked (``SELECT ... FOR UPDATE``, in
a transaction), re-merge in Python, swap again, so the losers of a race queue on the row
instead of racing again in a herd. The stored text is always exactly what Python's ``json``
wrote, so every JSON value round-trips (SPEC §3), which the databases' own JSON functions do
not guarantee.

Per-field rows (summary, preferences, info) are upserted or deleted in one statement per scope;
on PostgreSQL one statement also writes one block's user_state with them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from django.db import DatabaseError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import CharField, ExpressionWrapper, F, Model, Q
from django.utils import timezone
from opaque_keys import OpaqueKey
from opaque_keys.edx.keys import LearningContextKey, UsageKey

from kvstate import history, signals, sql
from kvstate.conf import settings
from kvstate.exceptions import WriteOutcomeUnknown
from kvstate.models import StudentModule
from kvstate.validation import check_course_run, check_length, check_size

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Give up after this many lost compare-and-swap rounds in a row. Each lost round means another
#: writer committed in between, so the system as a whole keeps making progress.
MAX_SWAP_ROUNDS = 50
#: A deadlock, serialization or (Galera) certification failure rolls back the whole
#: transaction; kvstate runs it again, ``KVSTATE_CONFLICT_RETRIES`` times at most, when it owns
#: it. Like a lost swap, each one means another writer won. Before retry n (from 1) it pauses
#: a random time between 0 and min(CONFLICT_PAUSE_CAP, CONFLICT_PAUSE_BASE * 2 ** (n - 1))
#: seconds ("full jitter"): writers that collided and restart at the same instant tend to
#: collide again, and a cluster under load needs them to spread out more the longer it lasts.
CONFLICT_PAUSE_BASE = 0.005
CONFLICT_PAUSE_CAP = 0.25

#: What kvstate reads of a ``StudentModule`` row (:meth:`ModuleRow.from_values`), behind its
#: two key columns. Text and datetime first: a cache build's union lines them up with a
#: per-field scope's (owner, field name, value, modified) (see :func:`module_selects`).
_MODULE_COLUMNS = (
    "state",
    "modified",
    "id",
    "module_type",
    "grade",
    "max_grade",
)
_KEY_COLUMNS = ("module_id", "course_id")


@dataclass
class Stats:
    """Process-wide tallies of what the engine had to retry (benchmarks and tests read them).

    ``swaps_lost``: compare-and-swap rounds in which another writer changed a row first;
    ``inserts_lost``: rows another writer created first; ``transactions_retried``: whole
    writes run again after a deadlock or serialization failure; ``most_retries``: the most
    retries one write needed (against ``KVSTATE_CONFLICT_RETRIES``).
    """

    swaps_lost: int = 0
    inserts_lost: int = 0
    transactions_retried: int = 0
    most_retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, tally: str, count: int = 1) -> None:
        """Add ``count`` to ``tally`` (writers in several threads share one ``Stats``)."""
        with self._lock:
            setattr(self, tally, getattr(self, tally) + count)

    def at_least(self, tally: str, count: int) -> None:
        """Raise ``tally`` to ``count`` if it is lower."""
        with self._lock:
            setattr(self, tally, max(getattr(self, tally), count))

    def reset(self) -> None:
        with self._lock:
            self.swaps_lost = self.inserts_lost = self.transactions_retried = 0
            self.most_retries = 0


stats = Stats()


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """The row a user_state change goes to: one learner's state of one block in one context.

    Targets are equal when they name the same row, and hash as the strings the row is stored
    under: an opaque key recomputes its hash on every call, and a batch hashes its targets
    thousands of times.
    """

    usage_key: UsageKey
    course_id: LearningContextKey
    #: The ``(module_id, course_id)`` strings the row is stored under.
    stored: tuple[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stored", row_key(self.usage_key, self.course_id))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and self.stored == other.stored

    def __hash__(self) -> int:
        return hash(self.stored)

    @classmethod
    def of(cls, usage_key: UsageKey) -> Target:
        """Return the target of a block's state: rows live in the usage key's own context."""
        return cls(usage_key, check_course_run(usage_key).context_key)

    @property
    def module_type(self) -> str:
        return str(self.usage_key.block_type)

    def check(self) -> Target:
        """Return this target if its key, context and type fit their columns, else raise."""
        module_id, course_id = self.stored
        check_length("usage key", module_id, StudentModule.KEY_MAX_LENGTH)
        check_length("learning context key", course_id, StudentModule.KEY_MAX_LENGTH)
        check_length("block type", self.module_type, StudentModule.MODULE_TYPE_MAX_LENGTH)
        return self


@dataclass(frozen=True, slots=True)
class ModuleRow:
    """What kvstate knows of one ``StudentModule`` row.

    ``state`` is parsed from ``state_text`` when first asked for: a write returns a row for each
    text it stored, mostly never read again, and parsing them all (a problem's state runs to a
    kilobyte) took a quarter of a 50-block batch's Python. Parsed from the text, it shares
    nothing with the values a caller passed in, which the caller may go on changing.
    """

    id: int | None  # None only for rows kept in memory (anonymous users)
    state_text: str | None
    grade: float | None
    max_grade: float | None
    modified: datetime
    module_type: str
    _state: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> ModuleRow:
        """Build from the values of ``_MODULE_COLUMNS``, in that order."""
        text, modified, row_id, module_type, grade, max_grade = values[:6]
        return cls(row_id, text, grade, max_grade, modified, module_type)

    @property
    def state(self) -> dict[str, Any]:
        """The fields ``state_text`` holds (``{}`` for NULL)."""
        if self._state is None:
            object.__setattr__(self, "_state", parse_state(self.state_text))
        return self._state  # type: ignore[return-value]

    @property
    def visible(self) -> bool:
        """Whether reads see this row: NULL (never stored) and ``{}`` (deleted) are invisible."""
        return bool(self.state)

    def with_state(self, text: str, modified: datetime) -> ModuleRow:
        """Return this row after its state became ``text`` at ``modified``."""
        # Not dataclasses.replace, which costs as much as the rest of a batch's bookkeeping.
        return ModuleRow(self.id, text, self.grade, self.max_grade, modified, self.module_type)


def parse_state(text: str | None) -> dict[str, Any]:
    """Return the fields a state text holds (``{}`` for NULL or a non-object)."""
    if not text:
        return {}
    state = json.loads(text)
    return state if isinstance(state, dict) else {}


def dump_state(state: Mapping[str, Any]) -> str:
    """Serialise a whole user_state, enforcing the size limit."""
    return check_size("the block's user_state", json.dumps(state, allow_nan=False))


@dataclass(frozen=True, slots=True)
class StateChange:
    """Fields to set in, and to delete from, one block's user_state (``clear``: delete all).

    ``set_if_present`` sets fields only where the state already holds them (a reset of
    ``attempts`` must not add the field to blocks that never had it). Like the rest of the
    change it is applied to the row as the compare-and-swap finds it, so it never undoes what
    another writer stored meanwhile.
    """

    set_fields: Mapping[str, Any] = field(default_factory=dict)
    delete_fields: frozenset[str] = frozenset()
    clear: bool = False
    set_if_present: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``state`` with this change applied."""
        if self.clear:
            return {}
        merged = {k: v for k, v in state.items() if k not in self.delete_fields}
        merged.update(self.set_fields)
        merged.update({k: v for k, v in self.set_if_present.items() if k in merged})
        return merged

    @property
    def creates(self) -> bool:
        """Whether applying this change to a missing row stores anything."""
        return bool(self.set_fields) and not self.clear

    def needed(self, row: ModuleRow | None) -> bool:
        """Whether this change writes to ``row`` (``None``: the row does not exist)."""
        if row is None:
            return self.creates
        if not self.set_if_present or self.set_fields or self.delete_fields or self.clear:
            # Written even when it changes nothing: every write call leaves its history row.
            return True
        # A conditional change alone writes only what it changes: resetting attempts that are
        # absent, or already exactly 0, leaves the row (and its history) alone.
        return any(
            name in row.state and json.dumps(row.state[name]) != json.dumps(value)
            for name, value in self.set_if_present.items()
        )


def row_key(usage_key: UsageKey, course_id: LearningContextKey) -> tuple[str, str]:
    """Return the stored strings that identify a row (branch and version stripped)."""
    return stored_key(usage_key), stored_key(course_id)


def stored_key(key: OpaqueKey) -> str:
    """Return ``key`` as opaque-keys' model fields store it: branch and version stripped.

    The fields' ``get_prep_value`` builds a stripped copy of every key; nearly every key has
    neither, and its string costs a tenth of the copy (a cache by key would cost more than the
    string: an opaque key recomputes its hash on every call).
    """
    context = key.context_key if isinstance(key, UsageKey) else key
    if getattr(context, "branch", None) is None and getattr(context, "version_guid", None) is None:
        return str(key)
    return str(key.for_branch(None).version_agnostic())  # type: ignore[attr-defined]


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield ``items`` in slices of at most ``size``."""
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]


def state_alias() -> str:
    """Return the alias StudentModule rows are written to."""
    return router.db_for_write(StudentModule)


# Reading -----------------------------------------------------------------------------------


def column_text(name: str) -> ExpressionWrapper[Any]:
    """Return column ``name`` as the plain string it holds (an opaque-key field unparsed)."""
    return ExpressionWrapper(F(name), output_field=CharField())


def fetch_modules(
    using: str,
    student_id: int,
    targets: Iterable[Target],
    *,
    lock: bool = False,
) -> dict[Target, ModuleRow]:
    """Read the rows of ``targets``: one statement per parameter-limit chunk, no join.

    ``lock`` reads with ``SELECT ... FOR UPDATE``, which sees the newest committed rows even
    under REPEATABLE READ, and holds them until the transaction ends.
    """
    by_key = {t.stored: t for t in targets}
    return {
        by_key[stored]: row
        for stored, row in fetch_stored_modules(using, student_id, by_key, lock=lock).items()
    }


def fetch_stored_modules(
    using: str,
    student_id: int,
    keys: Iterable[tuple[str, str]],
    *,
    lock: bool = False,
) -> dict[tuple[str, str], ModuleRow]:
    """Read the rows stored under ``keys``, ``(module_id, course_id)`` strings (see ``row_key``).

    What :func:`fetch_modules` does for callers that already hold the stored strings.
    """
    found = select_stored(using, student_id, keys, _MODULE_COLUMNS, lock=lock)
    return {stored: ModuleRow.from_values(values) for stored, values in found}


def fetch_states(
    using: str, student_id: int, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[dict[str, Any], datetime]]:
    """Read the states stored under ``keys``, and when each was written (no other column)."""
    found = select_stored(using, student_id, keys, ("state", "modified"))
    return {stored: (parse_state(text), modified) for stored, (text, modified) in found}


def module_selects(
    using: str, student_id: int, keys: Iterable[tuple[str, str]]
) -> list[sql.Select]:
    """Return the statements a cache build reads the rows stored under ``keys`` with.

    For ``sql.select_all`` with the per-field scopes' reads; :func:`modules_found` reads their
    rows.
    """
    connection = connections[using]
    module_ids = sorted({module_id for module_id, _ in keys})
    read = (*_KEY_COLUMNS, *_MODULE_COLUMNS)
    return list(_module_selects(connection, student_id, module_ids, read))


def modules_found(
    keys: Iterable[tuple[str, str]], rows: Iterable[Sequence[Any]]
) -> dict[tuple[str, str], ModuleRow]:
    """Return the rows of :func:`module_selects` that are stored under ``keys``."""
    return {
        stored: ModuleRow.from_values(values) for stored, values in _stored_rows(set(keys), rows)
    }


def _module_selects(
    connection: BaseDatabaseWrapper,
    student_id: int,
    module_ids: Sequence[str],
    columns: Sequence[str],
    *,
    lock: bool = False,
) -> Iterator[sql.Select]:
    table = StudentModule._meta.db_table
    # One parameter per block plus the learner's id.
    for chunk in chunked(module_ids, sql.max_query_params(connection) - 1):
        yield sql.modules_select(connection, table, student_id, chunk, columns, lock=lock)


def select_stored(
    using: str,
    student_id: int,
    keys: Iterable[tuple[str, str]],
    columns: Sequence[str],
    *,
    lock: bool = False,
) -> Iterator[tuple[tuple[str, str], list[Any]]]:
    """Yield each row stored under ``keys`` as its key and its ``columns``.

    One statement per parameter-limit chunk, by learner and block (see ``sql.modules_select``).
    """
    wanted = set(keys)
    connection = connections[using]
    # Sorted, so that lockers lock in one order.
    module_ids = sorted({module_id for module_id, _ in wanted})
    read = (*_KEY_COLUMNS, *columns)
    for select in _module_selects(connection, student_id, module_ids, read, lock=lock):
        yield from _stored_rows(wanted, sql.run_select(connection, select))


def _stored_rows(
    wanted: set[tuple[str, str]], rows: Iterable[Sequence[Any]]
) -> Iterator[tuple[tuple[str, str], list[Any]]]:
    """Yield the rows (key columns first) stored under a key of ``wanted``, as key and values."""
    for module_id, course_id, *values in rows:
        # The statements do not filter on the course (see sql.modules_select): an old i4x://
        # key names a block in every run of its course.
        if (module_id, course_id) in wanted:
            yield (module_id, course_id), values


# Writing user_state ------------------------------------------------------------------------


def write_user_states(
    student_id: int,
    changes: Mapping[Target, StateChange],
    known: Mapping[Target, ModuleRow],
    *,
    using: str | None = None,
) -> dict[Target, ModuleRow]:
    """Apply ``changes`` to one learner's user_state rows; return the rows as written.

    ``known`` holds what the caller read; a target it lacks is assumed missing, which is always
    safe (insert-or-ignore falls back to a swap). A pure delete on a missing row does nothing.
    The call is all-or-nothing: when it may take more than one writing statement it runs in
    one transaction (joining the caller's, as Django's own multi-statement writes do).
    History for the rows written follows (SPEC §5): in the same transaction when it shares the
    alias, after the commit when it lives on its own; then ``state_changed`` (SPEC §9).
    """
    using = using or state_alias()
    connection = connections[using]
    for target in changes:
        target.check()
    recorded = [t for t in changes if history.records(t.module_type)]
    history_inline = bool(recorded) and history.alias() == using
    one_statement = len(changes) == 1 and not history_inline

    def attempt() -> dict[Target, ModuleRow]:
        with committing(using, atomic=not one_statement):
            rows = _merge(using, student_id, changes, dict(known))
            history.record([rows[t] for t in recorded if t in rows], state_using=using)
        return rows

    rows = attempt() if connection.in_atomic_block else retrying_conflicts(using, attempt)
    signals.send_state_changed(student_id, [t.usage_key for t in rows], using)
    return rows


def retrying_conflicts(using: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (which owns its transaction), retrying it whole after a deadlock.

    Serialization failures (REPEATABLE READ and stricter) and Galera certification failures
    (reported as deadlocks) are retried likewise, up to ``KVSTATE_CONFLICT_RETRIES`` times with
    exponential backoff and full jitter (:func:`conflict_pause`). Lock wait timeouts are not
    retried: they surface (SPEC §4); nor is a write whose outcome is unknown.
    """
    connection = connections[using]
    retries = settings.CONFLICT_RETRIES
    for attempt in range(retries + 1):
        try:
            return fn()
        except WriteOutcomeUnknown:
            raise
        except DatabaseError as exc:
            if attempt == retries or not sql.is_retryable_conflict(connection, exc):
                raise
            stats.add("transactions_retried")
            stats.at_least("most_retries", attempt + 1)
            log.info("kvstate: transaction conflict writing learner state, retrying: %s", exc)
            time.sleep(conflict_pause(attempt + 1))
    raise AssertionError("unreachable")


def conflict_pause(retry: int) -> float:
    """Return how long to wait before conflict retry number ``retry`` (1, 2, ...), in seconds.

    Exponential backoff with full jitter: uniform between 0 and a ceiling that doubles with
    each retry, from ``CONFLICT_PAUSE_BASE`` up to ``CONFLICT_PAUSE_CAP``.
    """
    ceiling = min(CONFLICT_PAUSE_CAP, CONFLICT_PAUSE_BASE * 2 ** min(retry - 1, 32))
    return random.uniform(0, ceiling)


@contextlib.contextmanager
def committing(using: str, *, atomic: bool) -> Iterator[None]:
    """Run a write in one transaction (``atomic``), or statement by statement in autocommit.

    Inside the caller's transaction this only joins it: the caller commits, and learns the
    outcome. Otherwise a commit is kvstate's: at the end of the block, or at every write
    statement in autocommit. A connection lost there leaves the outcome unknown (the server
    may have committed just before), which raises :class:`WriteOutcomeUnknown`; the broken
    connection is closed so the next query opens a new one. A connection lost inside kvstate's
    transaction before its COMMIT is not unknown: the server rolls such a transaction back.
    """
    connection = connections[using]
    if connection.in_atomic_block:
        with transaction.atomic(using, savepoint=False) if atomic else nullcontext():
            yield
        return
    at_commit = not atomic
    try:
        with transaction.atomic(using, savepoint=False) if atomic else nullcontext():
            yield
            at_commit = True
    except DatabaseError as exc:
        if not (at_commit and sql.connection_lost(connection, exc)):
            raise
        with contextlib.suppress(DatabaseError):
            connection.close()
        raise WriteOutcomeUnknown(using) from exc


def _merge(
    using: str,
    student_id: int,
    changes: Mapping[Target, StateChange],
    known: dict[Target, ModuleRow],
) -> dict[Target, ModuleRow]:
    """Insert the missing rows, swap the present ones, and merge again where a race was lost.

    The first swap is optimistic: no lock, one statement. A row whose swap was lost is read
    again with a lock (``SELECT ... FOR UPDATE``) inside a transaction, so its next swap cannot
    miss: under contention the losers queue on the row lock instead of re-reading and racing
    again, where every round one writer would win and all the others retry.
    """
    connection = connections[using]
    done: dict[Target, ModuleRow] = {}
    todo = dict(sorted(changes.items(), key=lambda item: item[0].stored))
    for _round in range(MAX_SWAP_ROUNDS):
        # Taken after the rows were (re-)read, so a row's ``modified`` (and its history's
        # ``created``) never goes back in time: whoever wrote what we read stamped it earlier.
        now = timezone.now()
        for target in [t for t in todo if not todo[t].needed(known.get(t))]:
            del todo[target]  # e.g. a delete on a row that does not exist: nothing to do
        if not todo:
            return done
        # Every text of the round is built (and size-checked) before its first statement.
        inserts = {t: dump_state(c.apply({})) for t, c in todo.items() if t not in known}
        swaps = {t: dump_state(c.apply(known[t].state)) for t, c in todo.items() if t in known}
        stale: list[Target] = []
        if inserts:
            created = _insert(connection, student_id, inserts, now)
            done.update(created)
            lost = [t for t in inserts if t not in created]
            if lost:
                # Another writer created these rows between our read and our insert.
                stats.add("inserts_lost", len(lost))
                known.update(fetch_modules(using, student_id, lost, lock=_lock_reads(using)))
        if swaps:
            swapped, stale = _swap(connection, student_id, swaps, known, now)
            done.update(swapped)
            if len(swapped) < len(swaps):
                stats.add("swaps_lost")
                log.debug(
                    "kvstate: %d of %d swaps lost a race; merging again",
                    len(swaps) - len(swapped),
                    len(swaps),
                )
        todo = {t: c for t, c in todo.items() if t not in done}
        if not todo:
            return done
        if not connection.in_atomic_block:
            table = StudentModule._meta.db_table
            with sql.read_then_write(connection, table), transaction.atomic(using, savepoint=False):
                _lock_rows(connection, stale, known)
                return done | _merge(using, student_id, todo, known)
        _lock_rows(connection, stale, known)
    raise DatabaseError(
        f"kvstate gave up writing user state after {MAX_SWAP_ROUNDS} lost compare-and-swap "
        "rounds (extreme write contention on one row)"
    )


def _lock_rows(connection: Any, targets: Sequence[Target], known: dict[Target, ModuleRow]) -> None:
    """Read ``targets``' rows again, locked until the commit, into ``known``."""
    if not targets:
        return
    table = StudentModule._meta.db_table
    found = sql.lock_module_states(connection, table, [known[t].id for t in targets])  # type: ignore[misc]
    for target in targets:
        row = known[target]
        values = found.get(row.id)  # type: ignore[arg-type]
        if values is None:
            del known[target]  # deleted meanwhile: create it again
            continue
        text, grade, max_grade = values
        known[target] = replace(row, state_text=text, grade=grade, max_grade=max_grade, _state=None)


def _insert(
    connection: Any,
    student_id: int,
    texts: Mapping[Target, str],
    now: datetime,
) -> dict[Target, ModuleRow]:
    """Insert a row for each target of ``texts``; return those this statement created."""
    columns = (
        "module_type",
        "module_id",
        "student_id",
        "course_id",
        "state",
        "done",
        "created",
        "modified",
    )
    table = StudentModule._meta.db_table
    targets = list(texts)
    inserted: dict[tuple[Any, ...], int] = {}
    for chunk in chunked(targets, sql.max_query_params(connection) // len(columns)):
        rows = [
            (t.module_type, t.stored[0], student_id, t.stored[1], texts[t], "na", now, now)
            for t in chunk
        ]
        ids = sql.insert_modules(connection, table, columns, rows, ("module_id", "course_id"))
        if ids is None:
            ids = _created_by_us(connection.alias, student_id, chunk, texts, now)
        inserted.update(ids)
    return {
        t: ModuleRow(inserted[t.stored], texts[t], None, None, now, t.module_type)
        for t in targets
        if t.stored in inserted
    }


def _swap(
    connection: Any,
    student_id: int,
    texts: Mapping[Target, str],
    known: dict[Target, ModuleRow],
    now: datetime,
) -> tuple[dict[Target, ModuleRow], list[Target]]:
    """Compare-and-swap the rows of ``texts``; return those swapped and those ``known`` has stale.

    When some but not all rows matched, re-read them all to tell which (ours hold our text and
    our timestamp) and refresh ``known`` with the others; when none matched, all are stale.
    """
    table = StudentModule._meta.db_table
    targets = list(texts)
    swaps = [(known[t].id, known[t].state_text, texts[t]) for t in targets]
    matched = 0
    for chunk in chunked(swaps, sql.max_query_params(connection) // sql.SWAP_PARAMS - 1):
        matched += sql.compare_and_swap_states(connection, table, chunk, now)  # type: ignore[arg-type]
    if matched == len(swaps):
        return {t: known[t].with_state(texts[t], now) for t in targets}, []
    if matched == 0:
        return {}, targets
    swapped = {}
    fresh = fetch_modules(connection.alias, student_id, targets, lock=_lock_reads(connection.alias))
    for target in targets:
        row = fresh.get(target)
        if row is None:
            known.pop(target, None)  # deleted meanwhile: create it again
        elif row.state_text == texts[target] and row.modified == now:
            swapped[target] = row
        else:
            known[target] = row
    return swapped, []


def _created_by_us(
    using: str,
    student_id: int,
    targets: Sequence[Target],
    texts: Mapping[Target, str],
    now: datetime,
) -> dict[tuple[Any, ...], int]:
    # Without RETURNING (MySQL 8) read the rows back: ours carry our text and our timestamp
    # (a row another writer swapped since is taken for theirs: merged again, nothing lost).
    rows = fetch_modules(using, student_id, targets, lock=_lock_reads(using))
    return {
        t.stored: row.id
        for t, row in rows.items()
        if row.id is not None and row.state_text == texts[t] and row.modified == now
    }


def _lock_reads(using: str) -> bool:
    # Inside a transaction a plain re-read may return the same stale snapshot (REPEATABLE READ);
    # a locking read sees the newest committed row and keeps it until we swap.
    return connections[using].in_atomic_block


def write_state_and_fields(
    student_id: int,
    target: Target,
    change: StateChange,
    row: ModuleRow,
    fields: Sequence[tuple[type[Model], Sequence[Model]]],
) -> ModuleRow | None:
    """Apply ``change`` to one existing row and upsert per-field rows in one statement.

    All or nothing, without a transaction (BEGIN and COMMIT would be two of the write's three
    round trips): the per-field rows (``fields``: each model with its objects) are written only
    if the swap matches. Returns the row as written, then history and ``state_changed`` follow
    as in :func:`write_user_states`. Returns ``None``, having written nothing, when the swap
    lost a race, or where one statement cannot do it (the database, a caller's transaction,
    other aliases, history in the same transaction, more values than one statement may carry):
    the caller then writes in a transaction.
    """
    using = state_alias()
    connection = connections[using]
    recorded = history.records(target.module_type)
    # The swap's four parameters, and a value per column of each per-field row.
    values = 4 + sum(len(objs) * len(model._meta.concrete_fields) for model, objs in fields)
    if (
        not sql.swaps_with_upserts(connection)
        or connection.in_atomic_block
        or (recorded and history.alias() == using)
        or any(router.db_for_write(model) != using for model, _objs in fields)
        or values > sql.max_query_params(connection)
    ):
        return None
    target.check()
    text = dump_state(change.apply(row.state))
    table = StudentModule._meta.db_table
    swap = (row.id, row.state_text, text)
    upserts = [_in_key_order(model, objs) for model, objs in fields]

    def attempt() -> ModuleRow | None:
        with committing(using, atomic=False):
            now = timezone.now()
            if not sql.swap_state_and_upsert(
                connection,
                table,
                swap,  # type: ignore[arg-type]  # rows kvstate read have an id
                now,
                upserts,
                PER_FIELD_UPDATED,
            ):
                return None
        return row.with_state(text, now)

    written = retrying_conflicts(using, attempt)
    if written is None:
        stats.add("swaps_lost")
        return None
    if recorded:
        history.record([written], state_using=using)
    signals.send_state_changed(student_id, [target.usage_key], using)
    return written


# Scores ------------------------------------------------------------------------------------


def write_score(
    student_id: int,
    target: Target,
    grade: float | None,
    max_grade: float | None,
    *,
    using: str | None = None,
) -> ModuleRow:
    """Set a row's grade and max_grade, creating the row (state NULL) if it is missing.

    One upsert keeps whatever state the row has, so concurrent callers neither raise nor lose
    state. History, when kept for the block type, needs the state too: one more read. The row
    returned carries the id only when it was read. Then ``state_changed`` (SPEC §9).
    """
    using = using or state_alias()
    target.check()
    connection = connections[using]
    recorded = history.records(target.module_type)
    history_inline = recorded and history.alias() == using

    def attempt() -> ModuleRow:
        with committing(using, atomic=history_inline):
            module = StudentModule(
                student_id=student_id,
                module_state_key=target.usage_key,
                course_id=target.course_id,
                module_type=target.module_type,
                state=None,
                grade=grade,
                max_grade=max_grade,
            )
            sql.insert_rows(
                connection, [module], update_on_conflict=["grade", "max_grade", "modified"]
            )
            if not recorded:
                return ModuleRow(None, None, grade, max_grade, module.modified, target.module_type)
            row = fetch_modules(using, student_id, [target])[target]
            history.record([row], state_using=using)
        return row

    row = attempt() if connection.in_atomic_block else retrying_conflicts(using, attempt)
    signals.send_state_changed(student_id, [target.usage_key], using)
    return row


# Per-field scopes --------------------------------------------------------------------------

#: What an upsert of a per-field row changes when the row exists.
PER_FIELD_UPDATED = ("value", "modified")


def upsert_fields(using: str, model: type[Model], objs: Sequence[Model]) -> None:
    """Insert or update per-field rows in one statement.

    Rows go in the order of their unique key, so two writers lock them in the same order.
    Retried whole after a deadlock or serialization failure when kvstate owns the transaction
    (concurrent upserts of new rows can deadlock on MariaDB, and fail to serialize on
    PostgreSQL under REPEATABLE READ).
    """
    if not objs:
        return
    connection = connections[using]
    ordered = _in_key_order(model, objs)

    def upsert() -> None:
        sql.insert_rows(connection, ordered, update_on_conflict=PER_FIELD_UPDATED)

    _retrying_unless_atomic(using, upsert)


def delete_fields(using: str, model: type[Model], condition: Q) -> None:
    """Delete the per-field rows matching ``condition`` in one statement."""

    def delete() -> None:
        # QuerySet.delete() would wrap this one statement in a transaction (two more round
        # trips in autocommit) for cascades and signals these tables do not have.
        model._default_manager.using(using).filter(condition)._raw_delete(using)

    _retrying_unless_atomic(using, delete)


def _in_key_order(model: type[Model], objs: Sequence[Model]) -> list[Model]:
    # Two writers lock the rows they share in the same order.
    unique = next(c for c in model._meta.constraints if hasattr(c, "fields"))
    names = [model._meta.get_field(name).attname for name in unique.fields]  # type: ignore[union-attr]
    return sorted(objs, key=lambda obj: tuple(str(getattr(obj, name)) for name in names))


def _retrying_unless_atomic(using: str, fn: Callable[[], None]) -> None:
    # Inside the caller's transaction a conflict has already rolled back more than ``fn``
    # did: only the transaction's owner can retry.
    if connections[using].in_atomic_block:
        fn()
        return

    def autocommitted() -> None:
        with committing(using, atomic=False):
            fn()

    retrying_conflicts(using, autocommitted)
