from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mailaccess import jobs


class Command(BaseCommand):
    help = (
        "Run a periodic job once, here and now, without Celery (the embedded default has no "
        "worker). Celery beat runs the same jobs on a schedule."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", choices=[*jobs.JOBS, "all"])
        parser.add_argument("--batch-size", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        names = list(jobs.JOBS) if options["job"] == "all" else [options["job"]]
        for name in names:
            done = jobs.run(name, batch_size=options["batch_size"])
            self.stdout.write(f"{name}: {done}")
