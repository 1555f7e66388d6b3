import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser, OutputWrapper

from mailaccess import jobs


class Progress:
    """A one-line progress bar on a terminal: rows done of those due when the run began.

    The total is a COUNT taken before the run; rows that fall due meanwhile can push the count
    past it, so the bar stops at 100% rather than overflowing.
    """

    WIDTH = 30

    def __init__(self, name: str, total: int, stream: OutputWrapper) -> None:
        self.name, self.total, self.stream = name, total, stream
        self.done = 0
        self.started = time.monotonic()
        self.draw()

    def __call__(self, rows: int) -> None:
        self.done += rows
        self.draw()

    def draw(self) -> None:
        share = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(share * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        seconds = time.monotonic() - self.started
        rate = f" {self.done / seconds:,.0f}/s" if seconds > 0.5 and self.done else ""
        self.stream.write(
            f"\r{self.name} [{bar}] {share:4.0%} {self.done:,}/{self.total:,}{rate}", ending=""
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("")


class Command(BaseCommand):
    help = (
        "Run a periodic job once, here and now, without Celery (the embedded default has no "
        "worker). Celery beat runs the same jobs on a schedule. --dry-run only counts what "
        "the job would change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", choices=[*jobs.JOBS, "all"])
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="count the rows each job would change, and change nothing",
        )
        progress = parser.add_mutually_exclusive_group()
        progress.add_argument(
            "--progress",
            action="store_true",
            default=None,
            help="draw a progress bar (default: only when stderr is a terminal)",
        )
        progress.add_argument("--no-progress", dest="progress", action="store_false")

    def handle(self, *args: Any, **options: Any) -> None:
        names = list(jobs.JOBS) if options["job"] == "all" else [options["job"]]
        if options["dry_run"]:
            for name in names:
                self.stdout.write(f"{name}: would change {jobs.count_due(name)} (dry run)")
            return
        show = options["progress"]
        if show is None:
            show = sys.stderr.isatty()
        for name in names:
            progress = Progress(name, jobs.count_due(name), self.stderr) if show else None
            try:
                done = jobs.run(name, batch_size=options["batch_size"], on_batch=progress)
            finally:
                if progress is not None:
                    progress.close()
            self.stdout.write(f"{name}: {done}")
