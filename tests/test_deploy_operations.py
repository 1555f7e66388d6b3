"""What deploy/ ships for operations: the units' health probes, multi-process metrics, alerts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.mailservers import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
WAIT_HEALTHY = DEPLOY / "wait-healthy"


def defined_metrics() -> set[str]:
    names = set()
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else []:
            names.add(family.name)
    return names


def test_every_alert_and_dashboard_name_is_a_metric_the_services_export() -> None:
    text = (DEPLOY / "prometheus" / "mailportal-alerts.yml").read_text()
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for name in re.findall(r"\bmailportal_[a-z_]+", text)
    }
    exported = {re.sub(r"_total$", "", name) for name in defined_metrics()}
    assert used, "no mailportal metric in the alerts"
    assert used <= exported, f"alerts name unknown metrics: {sorted(used - exported)}"


def test_every_service_unit_waits_for_its_own_health_port_and_the_watchdog_knows_it() -> None:
    watchdog = (DEPLOY / "watchdog").read_text()
    port_option = (
        r"(?:--port |auth_policy_server[\s\\]+--listen 127\.0\.0\.1:"
        r"|--health-listen 127\.0\.0\.1:|CELERY_METRICS_LISTEN=127\.0\.0\.1:)(\d+)"
    )
    for unit in (
        "mailportal-web",
        "mailportal-auth-policy",
        "mailportal-smtp-policy",
        "mailportal-celery-worker",
    ):
        text = (DEPLOY / "systemd" / f"{unit}.service").read_text()
        port = re.search(port_option, text)
        assert port, unit
        health = f"http://127.0.0.1:{port.group(1)}/healthz"
        assert f"wait-healthy {health}" in text, unit
        assert f"check {unit} {health}" in watchdog, unit
    for unit in ("mailportal-web", "mailportal-auth-policy", "mailportal-celery-worker"):
        # The servers that fork: one metrics folder each, emptied at every start.
        text = (DEPLOY / "systemd" / f"{unit}.service").read_text()
        assert f"RuntimeDirectory={unit}\n" in text, unit
        assert f"PROMETHEUS_MULTIPROC_DIR=/run/{unit}\n" in text, unit
    assert os.access(WAIT_HEALTHY, os.X_OK)
    assert os.access(DEPLOY / "watchdog", os.X_OK)


def test_wait_healthy_fails_on_a_port_nobody_answers() -> None:
    result = subprocess.run(
        [str(WAIT_HEALTHY), f"http://127.0.0.1:{free_port()}/healthz", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "did not answer" in result.stderr


@pytest.fixture
def policy_server(tmp_path: Path) -> Iterator[str]:
    """The auth policy as its unit runs it: two server processes, one metrics folder."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TOKEN": "scrape-token-123",
        "AUTH_POLICY_API_KEY": "key-123",
        "DEBUG": "0",
        "SECRET_KEY": "tests-only",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "auth_policy_server",
            "--listen",
            f"127.0.0.1:{port}",
            "--processes",
            "2",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = subprocess.run([str(WAIT_HEALTHY), f"{url}/healthz", "60"], check=False)
        assert ready.returncode == 0, "the auth policy did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.e2e
def test_metrics_add_up_across_server_processes(policy_server: str) -> None:
    """Requests land on either process; /metrics from either counts them all."""
    requests = 40
    with httpx.Client(base_url=policy_server, timeout=10) as http:
        for _ in range(requests):
            # A fresh connection each time, so the kernel spreads them over both workers.
            response = httpx.post(
                f"{policy_server}/auth-policy?command=allow",
                content=b"{not json",
                headers={"X-API-Key": "key-123"},
            )
            assert response.status_code == 200
        time.sleep(0.2)
        counts = set()
        for _ in range(6):
            scrape = http.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
            assert scrape.status_code == 200
            match = re.search(
                r'mailportal_auth_policy_decisions_total\{command="unknown",protocol="other",'
                r'result="bad_request"\} ([0-9.e+]+)',
                scrape.text,
            )
            assert match, scrape.text[:2000]
            counts.add(float(match.group(1)))
    assert counts == {float(requests)}
