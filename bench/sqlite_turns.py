"""Two SQLite writers: taking turns through `webapp.services.turns.write_turn` against SQLite's own
waiting.

    python bench/sqlite_turns.py [--seconds 6] [--rounds 3] [--outside 30] [--inside 40]

Each worker process repeats what an ingest job does, with the work replaced by busy loops of
fixed length: `--outside` ms of work before it writes (the parse), then its first write,
`--inside` ms of work while it holds the write lock (the batch), and the commit. With one
worker that is one batch every outside + inside ms; two workers can reach one batch every
inside ms at most, since only one writes at a time. Prints batches per second for one and two
workers, with and without the turns, and the gain of the second worker (median of the rounds).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import use_throwaway_instance  # noqa: E402


def busy(milliseconds: float) -> None:
    end = time.perf_counter() + milliseconds / 1000
    while time.perf_counter() < end:
        pass


def worker(turns: bool, args: argparse.Namespace, done: multiprocessing.Queue[int]) -> None:
    from sqlalchemy import text

    from webapp import create_app
    from webapp.extensions import db
    from webapp.services.turns import write_turn

    batches = 0
    with create_app().app_context():
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            busy(args.outside)
            with write_turn() as take_turn:
                if turns:
                    take_turn()
                db.session.execute(text("UPDATE bench_counter SET n = n + 1"))
                busy(args.inside)
                db.session.commit()
            batches += 1
    done.put(batches)


def rate(turns: bool, workers: int, args: argparse.Namespace) -> float:
    done: multiprocessing.Queue[int] = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=worker, args=(turns, args, done)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    total = sum(done.get() for _ in processes)
    for process in processes:
        process.join()
    return total / args.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--outside", type=float, default=30.0, help="ms of work before writing")
    parser.add_argument("--inside", type=float, default=40.0, help="ms of work while writing")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="casemail-bench-turns-"))
    use_throwaway_instance(folder, DATABASE_URL=f"sqlite:///{folder / 'bench.db'}")
    from sqlalchemy import text

    from webapp import create_app
    from webapp.extensions import db

    with create_app().app_context():
        db.session.execute(text("CREATE TABLE bench_counter (n INTEGER)"))
        db.session.execute(text("INSERT INTO bench_counter VALUES (0)"))
        db.session.commit()
    results: dict[tuple[bool, int], list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        for turns in (False, True):
            for workers in (1, 2):
                results.setdefault((turns, workers), []).append(rate(turns, workers, args))
        print(
            f"round {round_number}: "
            + "; ".join(
                f"{'turns' if turns else 'SQLite waiting'} {workers} worker(s) "
                f"{results[(turns, workers)][-1]:.1f}/s"
                for turns in (False, True)
                for workers in (1, 2)
            ),
            flush=True,
        )
    ceiling = 1000 / args.inside
    for turns in (False, True):
        one = statistics.median(results[(turns, 1)])
        two = statistics.median(results[(turns, 2)])
        print(
            f"{'with turns' if turns else 'SQLite waiting'}: 1 worker {one:.1f} batches/s, "
            f"2 workers {two:.1f} batches/s (x{two / one:.2f}; at most {ceiling:.1f}/s, "
            f"x{ceiling / one:.2f})"
        )


if __name__ == "__main__":
    main()
