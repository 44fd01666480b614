"""Measure erasing one learner: rows per second of ``erase_user`` and of its command.

    python -m benchmarks.erase                     # SQLite, 100,000 rows
    python -m benchmarks.erase --db postgres       # or mariadb; --rows, --batch-size, --repeat

Creates its own databases (as ``benchmarks.run`` does), gives a learner ``--rows`` rows spread
as a long-time learner's (a fifth user_state, three history rows per module on the history
alias, a tenth preferences, a tenth user_info) next to a bystander with a tenth as many, and
erases them ``--repeat`` times with ``erase_user``, then once with ``manage.py
kvstate_erase_user`` (whose progress lines it prints). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from io import StringIO

from benchmarks.run import configure, describe_database, own_databases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "mariadb"), default="sqlite")
    parser.add_argument("--rows", type=int, default=100_000, help="the learner's rows (x10)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="erase_user runs")
    args = parser.parse_args(argv)

    configure(args.db)
    import django
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from kvstate import operations
    from tests.bulk import LearnerRows, fill_learner

    rows = LearnerRows.totalling(args.rows)
    with own_databases():
        print(
            f"# erase one learner: {describe_database()}, Django {django.get_version()}, "
            f"Python {platform.python_version()}"
        )
        print(
            f"{rows.total} rows: {rows.modules} user_state, {rows.history} history (own "
            f"alias), {rows.prefs} preferences, {rows.info} user_info; batches of "
            f"{args.batch_size}"
        )
        users = get_user_model()._default_manager
        learner = users.create(username="erased").pk
        bystander = users.create(username="bystander").pk
        fill_learner(bystander, LearnerRows.totalling(args.rows // 10), first_id=50_000_000)
        rates = []
        for run in range(1, args.repeat + 1):
            fill_learner(learner, rows, first_id=10_000_000)
            started = time.perf_counter()
            counts = operations.erase_user(learner, batch_size=args.batch_size)
            seconds = time.perf_counter() - started
            assert sum(counts.values()) == rows.total, counts
            rates.append(rows.total / seconds)
            print(f"erase_user run {run}: {seconds:.2f} s, {rates[-1]:,.0f} rows/s")
        print(f"erase_user median: {statistics.median(rates):,.0f} rows/s")
        fill_learner(learner, rows, first_id=10_000_000)
        out = StringIO()
        call_command(
            "kvstate_erase_user", "--user-id", str(learner), "--batch-size", str(args.batch_size),
            stdout=out,
        )  # fmt: skip
        lines = out.getvalue().splitlines()
        print("kvstate_erase_user (first, middle and last lines):")
        for line in [lines[0], lines[1], lines[len(lines) // 2], *lines[-2:]]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
