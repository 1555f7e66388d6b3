"""Prometheus metrics move when the services decide and act (read from the registry)."""

from __future__ import annotations

import bisect
from typing import Any

import pytest
from django.db import transaction
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from accounts.models import Mailbox
from audit.models import Actor
from common.metrics import BatchedHistogram
from mailaccess import actions
from mailaccess.models import BlockReason
from tests.policy_client import login
from tests.policy_daemon import RunningDaemon


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def decisions(command: str, protocol: str, result: str) -> float:
    return sample(
        "mailportal_auth_policy_decisions_total", command=command, protocol=protocol, result=result
    )


def smtp_checks(stage: str, result: str) -> float:
    return sample("mailportal_smtp_policy_checks_total", stage=stage, result=result)


def blocks(reason: str) -> float:
    return sample("mailportal_access_blocks_total", reason=reason)


@pytest.mark.e2e
def test_each_auth_policy_answer_is_counted_by_protocol_and_result(
    policy: str, alice: Mailbox
) -> None:
    before = {
        "off": decisions("allow", "imap", "access_off"),
        "allow": decisions("allow", "imap", "allow"),
        "success": decisions("report", "imap", "success"),
        "failure": decisions("report", "pop3", "failure"),
        "timed": sample("mailportal_auth_policy_decision_seconds_count", command="allow"),
    }
    assert login(policy, "alice@inbox.lv")["status"] == -1
    assert decisions("allow", "imap", "access_off") == before["off"] + 1

    actions.enable_access(alice, actor=Actor.user(alice))
    assert login(policy, "alice@inbox.lv")["status"] == 0
    login(policy, "alice@inbox.lv", protocol="pop3", pwhash="bad1", right=False)

    # A right password asks "allow" twice, then reports success; a wrong one reports failure.
    assert decisions("allow", "imap", "allow") == before["allow"] + 2
    assert decisions("report", "imap", "success") == before["success"] + 1
    assert decisions("report", "pop3", "failure") == before["failure"] + 1
    # The switched-off mailbox's login asked twice too: it is refused only once its password
    # was verified.
    timed = sample("mailportal_auth_policy_decision_seconds_count", command="allow")
    assert timed == before["timed"] + 5


@pytest.mark.e2e
def test_a_faulty_program_block_from_the_policy_is_counted_by_its_reason(
    policy: str, alice: Mailbox, settings: Any
) -> None:
    settings.AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR = 2
    settings.AUTH_POLICY_CHECK_BURST = 10
    actions.enable_access(alice, actor=Actor.user(alice))
    before = blocks("faulty_program")
    for _ in range(3):
        login(policy, "alice@inbox.lv")
    assert blocks("faulty_program") == before + 1


def test_a_block_is_counted_once_when_it_commits(
    alice: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    before = blocks("hourly_limit")
    with django_capture_on_commit_callbacks(execute=True):
        actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))
    with django_capture_on_commit_callbacks(execute=True):
        # Already blocked for this reason: no new block, no new count.
        actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))
    assert blocks("hourly_limit") == before + 1


def test_a_block_that_rolls_back_is_not_counted(
    alice: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    before = blocks("support")
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        actions.block_access(alice, BlockReason.SUPPORT, actor=Actor.system("test"))
        raise RuntimeError("the caller failed after blocking")
    assert blocks("support") == before


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_each_smtp_policy_answer_is_counted_by_stage_and_result_and_timed(
    alice: Mailbox, test_redis: str
) -> None:
    # The daemon counts in the process and publishes once a second and when it stops (it
    # writes the histogram's buckets itself): what Prometheus reads must still add up.
    before = {
        "data": smtp_checks("data", "dunno"),
        "end": smtp_checks("end-of-message", "dunno"),
        "timed": sample("mailportal_smtp_policy_check_seconds_count"),
        "fast": sample("mailportal_smtp_policy_check_seconds_bucket", le="+Inf"),
        "seconds": sample("mailportal_smtp_policy_check_seconds_sum"),
    }
    actions.enable_access(alice, actor=Actor.user(alice))  # a sender has access on
    with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
        for number in range(3):
            assert client.send_message("alice@inbox.lv", f"m{number}") == "DUNNO"
    assert smtp_checks("data", "dunno") == before["data"] + 3
    assert smtp_checks("end-of-message", "dunno") == before["end"] + 3
    assert sample("mailportal_smtp_policy_check_seconds_count") == before["timed"] + 6
    assert sample("mailportal_smtp_policy_check_seconds_bucket", le="+Inf") == before["fast"] + 6
    assert sample("mailportal_smtp_policy_check_seconds_sum") > before["seconds"]


def test_a_batched_histogram_reads_exactly_like_one_observed_one_value_at_a_time() -> None:
    # The SMTP daemon adds a second's checks at once: Prometheus must see what it would
    # have seen had each been observed (bucket bounds inclusive, cumulative, sum, count).
    values = [0.0001, 0.0005, 0.0007, 0.002, 0.002, 0.04, 0.9, 1.0, 3.5]
    observed_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    observed = Histogram(
        "check_seconds", "t", buckets=(0.0005, 0.002, 1.0), registry=observed_registry
    )
    batched = BatchedHistogram("check_seconds", "t", (0.0005, 0.002, 1.0), batched_registry)
    for batch in (values[:4], [], values[4:]):
        counts = [0] * len(batched.upper_bounds)
        for value in batch:
            observed.observe(value)
            counts[bisect.bisect_left(batched.upper_bounds, value)] += 1
        batched.add(counts, sum(batch))

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("le", "")): sample.value
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    assert samples(batched_registry) == pytest.approx(samples(observed_registry))
    assert samples(batched_registry)[("check_seconds_bucket", "0.002")] == 5
    assert samples(batched_registry)[("check_seconds_count", "")] == len(values)
