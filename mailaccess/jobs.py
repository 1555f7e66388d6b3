"""The periodic jobs: set-based, in keyset-paginated batches of bounded size.

Each job takes the first page of due rows after the last key it finished (``pk > last ORDER
BY pk LIMIT n``), hands the page to a bulk action that locks and changes it all in one
transaction with a constant number of queries, and moves on past the page. A job stopped
halfway has committed whole batches only; run again, it finds the rows it changed no longer
due and finishes the rest, so nothing is done twice. Two runs at once (a slow run overlapping
the next beat tick) skip each other's locked rows.

Celery tasks (``mailaccess.tasks``) and ``manage.py run_job`` call these functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Mailbox, Status
from audit.models import Actor, AuditEvent
from common import metrics
from common.logging import log_event
from mailaccess import actions, activity, sending_limits
from mailaccess.models import BlockReason, ExternalAccess, Notice

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=models.Model)
# Called after each batch with the number of rows it changed (progress, benchmarks).
OnBatch = Callable[[int], None] | None

# A notice whose e-mail has not gone out this long after it was created lost its task (the
# broker was down at commit, or its retries ran out): the sweep queues it again, for a while.
NOTICE_SWEEP_AFTER = timedelta(minutes=10)
NOTICE_SWEEP_FOR = timedelta(days=2)


def _in_batches(
    due: QuerySet[ModelT],
    act: Callable[[QuerySet[ModelT]], list[Any]],
    *,
    batch_size: int | None,
    on_batch: OnBatch,
) -> int:
    """Run ``act`` on successive pages of ``due`` until a page comes back empty.

    ``act`` returns the keys it changed; ``due`` must select only rows ``act`` changes, or a
    page it leaves whole would end the run early.
    """
    size = batch_size or settings.JOB_BATCH_SIZE
    done = 0
    last_key = None
    while True:
        page = due if last_key is None else due.filter(pk__gt=last_key)
        changed = act(page.order_by("pk")[:size])
        if not changed:
            return done
        done += len(changed)
        last_key = max(changed)
        if on_batch is not None:
            on_batch(len(changed))


def block_inactive_access(*, batch_size: int | None = None, on_batch: OnBatch = None) -> int:
    """Switch access off for mailboxes whose status became inactive."""
    actor = Actor.system("job: inactive mailboxes")
    [due] = _due_inactive_access(timezone.now())
    return _in_batches(
        due,
        lambda page: actions.block_access_many(
            page, BlockReason.INACTIVE, actor=actor, skip_locked=True
        ),
        batch_size=batch_size,
        on_batch=on_batch,
    )


def block_idle_access(
    *, now: datetime | None = None, batch_size: int | None = None, on_batch: OnBatch = None
) -> int:
    """Switch access off where no mail program used it for two months (or since switching on)."""
    actor = Actor.system("job: idle two months")
    [due] = _due_idle_access(now or timezone.now())
    return _in_batches(
        due,
        lambda page: actions.block_access_many(
            page, BlockReason.IDLE, actor=actor, skip_locked=True
        ),
        batch_size=batch_size,
        on_batch=on_batch,
    )


def warn_expiring_access(
    *, now: datetime | None = None, batch_size: int | None = None, on_batch: OnBatch = None
) -> int:
    """Warn, once, the owners of access that the idle job will switch off within a week."""
    actor = Actor.system("job: expiry warning")
    [due] = _due_expiry_warnings(now or timezone.now())
    return _in_batches(
        due,
        lambda page: actions.warn_expiry_many(page, actor=actor, skip_locked=True),
        batch_size=batch_size,
        on_batch=on_batch,
    )


def mark_inactive_mailboxes(
    *, now: datetime | None = None, batch_size: int | None = None, on_batch: OnBatch = None
) -> int:
    """Mark mailboxes inactive after MAILBOX_INACTIVE_AFTER_MONTHS without a web sign-in.

    Counted from the last sign-in, or from creation for a mailbox never signed in to. Their
    access is then blocked by ``block_inactive_access``, like any other status change.
    """
    dues = _due_inactive_mailboxes(now or timezone.now())
    if not dues:
        return 0
    actor = Actor.system("job: no web sign-in")
    return _in_batches(
        dues[0],
        lambda page: actions.mark_inactive_many(page, actor=actor, skip_locked=True),
        batch_size=batch_size,
        on_batch=on_batch,
    )


def _delete_page(model: type[models.Model]) -> Callable[[QuerySet[Any]], list[Any]]:
    def delete(page: QuerySet[Any]) -> list[Any]:
        keys = list(page.values_list("pk", flat=True))
        if keys:
            # QuerySet.delete is the one way out of the append-only audit log.
            model._default_manager.filter(pk__in=keys).delete()
        return keys

    return delete


def prune_old_records(
    *, now: datetime | None = None, batch_size: int | None = None, on_batch: OnBatch = None
) -> int:
    """Delete audit rows and notices older than their retention (0 days keeps them forever).

    The mail servers' counters live in Redis with their own expiry; nothing to prune here.
    """
    deleted = 0
    for due in _due_old_records(now or timezone.now()):
        deleted += _in_batches(
            due, _delete_page(due.model), batch_size=batch_size, on_batch=on_batch
        )
    return deleted


def send_pending_notices(
    *, now: datetime | None = None, batch_size: int | None = None, on_batch: OnBatch = None
) -> int:
    """Queue again the notices whose e-mail did not go out (the guard stops any double)."""
    now = now or timezone.now()

    def queue(page: QuerySet[Notice]) -> list[int]:
        ids = list(page.values_list("pk", flat=True))
        if ids:
            # Through the hook the notices mailer registered (tasks.queue_notices), as for a
            # new notice: the tasks run these jobs, so this module does not import them.
            for hook in actions.notice_created_hooks:
                hook(ids)
        return ids

    [due] = _due_pending_notices(now)
    return _in_batches(
        due,
        queue,
        batch_size=batch_size,
        on_batch=on_batch,
    )


def lift_due_sending_limits(
    *, now: datetime | None = None, batch_size: int | None = None, on_batch: OnBatch = None
) -> int:
    """Mail+ mailboxes whose two working days have passed send without the free limits.

    One UPDATE touches only the few mailboxes with a due date, so it needs no batches.
    """
    return sending_limits.lift_due_sending_limits(now)


# In the order `run_job all` runs them: a mailbox marked inactive is blocked in the same run.
def compact_activity(*, batch_size: int | None = None, on_batch: OnBatch = None) -> int:
    """Take in the sign-ins and refusals the auth policy buffered in Redis (activity.py)."""
    done = activity.compact(page_size=batch_size or activity.PAGE_SIZE)
    if on_batch is not None and done:
        on_batch(done)
    return done


JOBS: dict[str, Callable[..., int]] = {
    "mark_inactive_mailboxes": mark_inactive_mailboxes,
    "block_inactive_access": block_inactive_access,
    "block_idle_access": block_idle_access,
    "warn_expiring_access": warn_expiring_access,
    "lift_due_sending_limits": lift_due_sending_limits,
    "prune_old_records": prune_old_records,
    "send_pending_notices": send_pending_notices,
    "compact_activity": compact_activity,
}


# What each job would change, for ``run_job --dry-run`` and the progress bar's total. The job
# functions take their rows from these same QuerySets (the sending-limits lift runs the same
# filter in sending_limits.py), so a count and a run do not disagree.


def _due_inactive_access(now: datetime) -> list[QuerySet[Any]]:
    return [ExternalAccess.objects.of_inactive_mailboxes()]


def _due_idle_access(now: datetime) -> list[QuerySet[Any]]:
    return [ExternalAccess.objects.idle_at(now)]


def _due_expiry_warnings(now: datetime) -> list[QuerySet[Any]]:
    return [ExternalAccess.objects.due_expiry_warning(now)]


def _due_inactive_mailboxes(now: datetime) -> list[QuerySet[Any]]:
    months = settings.MAILBOX_INACTIVE_AFTER_MONTHS
    if months <= 0:
        return []
    cutoff = now - relativedelta(months=months)
    return [
        Mailbox.objects.filter(status=Status.ACTIVE).filter(
            Q(last_login__lt=cutoff) | Q(last_login__isnull=True, date_joined__lt=cutoff)
        )
    ]


def _due_old_records(now: datetime) -> list[QuerySet[Any]]:
    return [
        model._default_manager.filter(created_at__lt=now - timedelta(days=days))
        for model, days in (
            (AuditEvent, settings.AUDIT_RETENTION_DAYS),
            (Notice, settings.NOTICE_RETENTION_DAYS),
        )
        if days > 0
    ]


def _due_pending_notices(now: datetime) -> list[QuerySet[Any]]:
    return [
        Notice.objects.filter(
            emailed_at__isnull=True,
            created_at__lt=now - NOTICE_SWEEP_AFTER,
            created_at__gte=now - NOTICE_SWEEP_FOR,
        )
    ]


def _due_sending_limits(now: datetime) -> list[QuerySet[Any]]:
    return [Mailbox.objects.filter(sending_limits_lift_at__lte=now)]


DUE: dict[str, Callable[[datetime], list[QuerySet[Any]]]] = {
    "mark_inactive_mailboxes": _due_inactive_mailboxes,
    "block_inactive_access": _due_inactive_access,
    "block_idle_access": _due_idle_access,
    "warn_expiring_access": _due_expiry_warnings,
    "lift_due_sending_limits": _due_sending_limits,
    "prune_old_records": _due_old_records,
    "send_pending_notices": _due_pending_notices,
    # Events in a Redis stream, not rows: a dry run counts nothing.
    "compact_activity": lambda now: [],
}


def count_due(name: str, now: datetime | None = None) -> int:
    """How many rows the job would change now: COUNT queries only, nothing written."""
    return sum(due.count() for due in DUE[name](now or timezone.now()))


def run(name: str, **options: Any) -> int:
    """Run a job and account for it: metrics and one log line, whoever runs it."""
    started = time.monotonic()
    try:
        done = JOBS[name](**options)
    except Exception:
        metrics.JOB_RUNS.labels(job_name=name, outcome="failed").inc()
        log_event(
            logger,
            "job.failed",
            logging.ERROR,
            exc_info=True,
            job=name,
            seconds=round(time.monotonic() - started, 3),
        )
        raise
    seconds = time.monotonic() - started
    metrics.JOB_RUNS.labels(job_name=name, outcome="ok").inc()
    metrics.JOB_ROWS.labels(job_name=name).inc(done)
    metrics.JOB_SECONDS.labels(job_name=name).observe(seconds)
    metrics.JOB_LAST_SUCCESS.labels(job_name=name).set(time.time())
    log_event(logger, "job.finished", job=name, rows=done, seconds=round(seconds, 3))
    return done
