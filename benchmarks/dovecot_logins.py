"""The whole login path through real Dovecot 2.3: what this product costs an IMAP login (issue 23).

Real Dovecot (the installed 2.3) is started from deploy/dovecot, rendered with
deploy/render.py as the end-to-end tests render it (tests/mailservers.py), plus a local.conf
of the benchmark's own: a **plaintext IMAP listener on loopback** (so that TLS does not hide
the login path) and the login processes in high-performance mode (``service_count = 0``,
``process_min_avail`` = cores). An asyncio load client opens connections on 127.0.0.1 only,
each one: greeting, ``LOGIN``, ``LOGOUT``, for a fixed time, rotating over the working set.

Configurations, each run ``--rounds`` times, alternating, every run on a fresh Dovecot start:

- A: a passwd-file passdb with the same ``{SSHA512}`` hashes: Dovecot alone, the ceiling;
- B: the project's SQL passdb (deploy/dovecot/dovecot-sql.conf.ext) on PostgreSQL;
- C: B + the auth policy server (``manage.py auth_policy_server``), every state cached;
- C cold: as C, over mailboxes no run has logged in before (state loaded from PostgreSQL,
  last use written);
- Ccache (``--configs A,B,C,Ccold,Ccache``): C with Dovecot's auth cache as deploy/dovecot ships
  it (the other configs switch it off, to show what each part costs);
- Cnull: C with a policy server that answers "allow" at once and does nothing else: what
  Dovecot's side of the policy requests costs, whatever the policy server does;
- Cperiodic: real traffic, time-compressed. Another working set's mailboxes each log in once
  every ``--period`` seconds (open loop), standing for a program checking every five minutes;
  the policy server's state TTL and use-record interval are divided by the same factor, so
  the share of logins that find their state cached, or record a use, is production's. The
  compaction job (which writes the recorded uses) is run after each run and its CPU per login
  printed.

Then C once more, paced at 70% of its saturation rate, for the latency a provider runs at.

The data: ``--mailboxes`` (1,000,000) mailboxes with access on and one app password each,
bulk-inserted with generate_series into the benchmark's own database (``--database``,
created and migrated if missing, refilled when the count differs). Redis is a private
``redis-server`` started on a free port, so its CPU is this benchmark's alone.

CPU per login is read from /proc: user + system time of Dovecot's master and every process
below it (children that ended are in the master's cutime/cstime), of the PostgreSQL
backends connected to the benchmark's database, of the policy server's processes, of the
private Redis, and of this load client; divided by the logins of the run. On a busy machine
compare the ratios within one run, not absolute throughput.

    DATABASE_URL is not used: give --database.
    .venv/bin/python benchmarks/dovecot_logins.py [--mailboxes 1000000] [--working-set 10000] \
        [--seconds 10] [--rounds 2] [--connections 16] [--configs A,B,C,Ccold] [--explain]

Ports come from E2E_PORT_RANGE (as the tests'). Runs as root (Dovecot drops privileges).

Targets (issue 23): C at least 0.85 of A, cold C at least 0.60 of A, and a login's p99
under 20 ms at 70% of C's saturation rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psycopg  # noqa: E402
import redis as redis_client  # noqa: E402
from periodic import (  # noqa: E402
    DOMAIN,
    FILL_SQL,
    Periodic,
    address_of,
    password_of,
    policy_intervals,
)

from tests import mailservers  # noqa: E402

DEFAULT_DATABASE = "postgres://postgres:postgres@127.0.0.1:5432/mailportal_dovecot_bench"
CLOCK = os.sysconf("SC_CLK_TCK")
REUSE_IMAP = "--imap-per-login" not in sys.argv


# --- the database ----------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "DATABASE_URL": url, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": ""}
    env.pop("DJANGO_SETTINGS_MODULE")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )


def passdb_sql() -> str:
    """The SQL that fills the passdb table from the view (mailaccess/passdb.py), when the
    migrations have it."""
    os.environ.update(DEBUG="1", DJANGO_SETTINGS_MODULE="mailportal.settings")
    import django

    django.setup()
    from mailaccess import passdb

    return str(getattr(passdb, "REBUILD_SQL", ""))


def fill(url: str, count: int) -> None:
    rebuild = passdb_sql()
    with psycopg.connect(url, autocommit=True) as connection:
        have = connection.execute(
            "SELECT count(*) FROM mailaccess_apppassword WHERE revoked_at IS NULL"
        ).fetchone()
        rows = (
            connection.execute("SELECT count(*) FROM mailaccess_passdb").fetchone()
            if rebuild
            else (3 * count,)
        )
        if have and have[0] == count and rows and rows[0] == 3 * count:
            # As autovacuum would have by now: statistics, and the visibility map that lets
            # PostgreSQL answer from the index alone.
            connection.execute("VACUUM ANALYZE")
            print(f"database: {count:,} mailboxes already there")
            return
        started = time.monotonic()
        with connection.transaction():
            for statement in (FILL_SQL.format(domain=DOMAIN, count=count) + rebuild).split(";\n"):
                if statement.strip():
                    connection.execute(statement)  # type: ignore[arg-type]
        connection.execute("VACUUM ANALYZE")
        print(f"database: filled {count:,} mailboxes in {time.monotonic() - started:.0f} s")


def passdb_query(conf: Path) -> str:
    match = re.search(r"^password_query = (.*)$", conf.read_text(), re.MULTILINE)
    assert match, "no password_query in the SQL config"
    return match.group(1)


def explain(url: str, conf: Path, number: int) -> bool:
    """EXPLAIN (ANALYZE, BUFFERS) of the passdb query as Dovecot sends it (plain text, planned
    every time); True when it reads one index only and plans + runs in under 0.3 ms."""
    import hashlib

    query = (
        passdb_query(conf)
        .replace("%{sha256:password}", hashlib.sha256(password_of(number).encode()).hexdigest())
        .replace("%u", address_of(number))
        .replace("%s", "imap")
    )
    with psycopg.connect(url, autocommit=True) as connection:
        for _ in range(20):  # warm the caches and the connection, as Dovecot's is
            connection.execute(f"EXPLAIN ANALYZE {query}")  # type: ignore[arg-type]
        rows = connection.execute(
            f"EXPLAIN (ANALYZE, BUFFERS) {query}"  # type: ignore[arg-type]
        ).fetchall()
    plan = "\n".join(row[0] for row in rows)
    print(f"\nEXPLAIN (ANALYZE, BUFFERS) of the passdb query for {address_of(number)}:\n{query}\n")
    print(plan)
    planning = float(re.search(r"Planning Time: ([\d.]+)", plan).group(1))  # type: ignore[union-attr]
    execution = float(re.search(r"Execution Time: ([\d.]+)", plan).group(1))  # type: ignore[union-attr]
    nodes = [line for line in plan.splitlines() if "->" in line or line[:1].isalpha()]
    scans = [line for line in nodes if "Scan" in line]
    index_only = (
        len(scans) == 1
        and "Index Only Scan" in scans[0]
        and not any(
            word in plan for word in ("Join", "Nested Loop", "Hash", "Subquery", "Seq Scan")
        )
    )
    total = planning + execution
    verdict = "MET" if index_only and total < 0.3 else "NOT MET"
    print(
        f"\npassdb query: planning {planning:.3f} ms + execution {execution:.3f} ms = "
        f"{total:.3f} ms; {'one index scan, nothing else' if index_only else 'more than one index'}"
        f" -> target (index only, under 0.3 ms): {verdict}"
    )
    return verdict == "MET"


# --- processes and their CPU -----------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def cpu_of(pid: int, *, reaped: bool = False) -> float:
    """utime + stime (and, with ``reaped``, the children it waited for) in seconds."""
    fields = stat_fields(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK


def tree(pid: int) -> list[int]:
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for child in (task / "children").read_text().split():
                    pids += tree(int(child))
    return pids


def tree_cpu(pid: int) -> float:
    """A process tree's CPU, the ended children's included (in their parents' cutime)."""
    return sum(cpu_of(member, reaped=True) for member in tree(pid))


def load_client_cpu() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Services:
    database_url: str
    redis: subprocess.Popen[bytes]
    redis_url: str = ""
    policy: subprocess.Popen[bytes] | None = None

    def redis_commands(self) -> int:
        """Commands the private Redis has processed (``INFO stats``)."""
        client = redis_client.Redis.from_url(self.redis_url)
        try:
            return int(cast(dict[str, Any], client.info("stats"))["total_commands_processed"])
        finally:
            client.close()

    def backends(self) -> list[int]:
        name = urlparse(self.database_url).path.lstrip("/")
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            ).fetchall()
        return [row[0] for row in rows]


@dataclass
class Sample:
    dovecot: float
    postgres: dict[int, float]
    policy: float
    redis: float
    client: float
    redis_commands: int


def sample(dovecot: subprocess.Popen[bytes], services: Services) -> Sample:
    return Sample(
        dovecot=tree_cpu(dovecot.pid),
        postgres={pid: cpu_of(pid) for pid in services.backends()},
        policy=tree_cpu(services.policy.pid) if services.policy else 0.0,
        redis=cpu_of(services.redis.pid),
        client=load_client_cpu(),
        redis_commands=services.redis_commands(),
    )


def cpu_split(before: Sample, after: Sample) -> dict[str, float]:
    postgres = sum(
        seconds - before.postgres.get(pid, 0.0) for pid, seconds in after.postgres.items()
    )
    return {
        "dovecot": after.dovecot - before.dovecot,
        "postgres": postgres,
        "policy": after.policy - before.policy,
        "redis": after.redis - before.redis,
        "client": after.client - before.client,
    }


# --- Dovecot ---------------------------------------------------------------------------------

# The benchmark's own settings on top of deploy's: plaintext IMAP on loopback only, POP3 and
# IMAPS off, login processes reused (high-performance mode, as a provider runs them).
LOCAL_CONF = """\
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = {cores}
  vsz_limit = 1G
}}
service pop3-login {{
  inet_listener pop3s {{
    port = 0
  }}
}}
{imap_service}{auth_cache}"""

# deploy/dovecot turns Dovecot's auth cache on (the portal flushes it on every access change);
# every config but "Ccache" switches it off, so that A, B and C measure what they did before.
# Only the passdb answer is cached; the auth policy is still asked on every login.
NO_AUTH_CACHE = """\
auth_cache_size = 0
"""

# The post-login imap processes reused too (unless ``--imap-per-login``), so a login does not
# pay for starting one: on this machine that costs 4-5 ms of CPU and would hide the login
# path proper, which is what the product adds to.
IMAP_REUSE = """\
service imap {{
  service_count = 0
  process_min_avail = {cores}
}}
"""

FILE_PASSDB = """passdb {{
  driver = passwd-file
  args = scheme=SSHA512 {path}
}}"""


@dataclass
class Dovecot:
    root: Path
    process: subprocess.Popen[bytes]
    imap_port: int


def render_dovecot(
    root: Path, tls: mailservers.TlsFiles, sql_connect: str, policy: tuple[str, str] | None
) -> mailservers.MailServers:
    servers = mailservers.MailServers(
        root=root,
        tls=tls,
        imaps_port=mailservers.free_port(),
        pop3s_port=mailservers.free_port(),
        submission_port=9,
        submissions_port=9,
        policy=None,
        doveadm_port=mailservers.free_port(),
    )
    values = mailservers._values(servers, sql_connect)
    if policy:
        values["AUTH_POLICY_URL"], values["AUTH_POLICY_API_KEY"] = policy
    mailservers._render_module().render(values, root)
    (root / "postfix-queue" / "private").mkdir(parents=True, exist_ok=True)
    mail = root / "mail"
    mail.mkdir(exist_ok=True)
    os.chown(mail, mailservers.MAIL_UID, mailservers.MAIL_UID)
    return servers


def start_dovecot(
    config: str,
    tls: mailservers.TlsFiles,
    database_url: str,
    policy: tuple[str, str] | None,
    passwd_file: Path,
) -> Dovecot:
    root = Path(tempfile.mkdtemp(prefix="mailportal-bench-dovecot-"))
    root.chmod(0o755)
    parsed = urlparse(database_url)
    sql_connect = (
        f"host={parsed.hostname} port={parsed.port or 5432} dbname={parsed.path.lstrip('/')} "
        f"user={parsed.username} password={parsed.password}"
    )
    render_dovecot(root, tls, sql_connect, policy)
    conf = root / "dovecot" / "dovecot.conf"
    if config == "A":
        text = conf.read_text()
        sql_block = re.search(r"passdb \{\n  driver = sql\n  args = [^\n]*\n\}", text)
        assert sql_block, "the SQL passdb block of deploy/dovecot/dovecot.conf moved"
        conf.write_text(text.replace(sql_block.group(0), FILE_PASSDB.format(path=passwd_file)))
    imap_port = mailservers.free_port()
    (root / "dovecot" / "local.conf").write_text(
        LOCAL_CONF.format(
            imap_port=imap_port,
            cores=os.cpu_count() or 1,
            imap_service=IMAP_REUSE.format(cores=os.cpu_count() or 1) if REUSE_IMAP else "",
            auth_cache="" if config == "Ccache" else NO_AUTH_CACHE,
        )
    )
    log = root / "dovecot.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["dovecot", "-F", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    mailservers.wait_for_port(imap_port, process, lambda: mailservers.tail(log))
    return Dovecot(root, process, imap_port)


def stop_dovecot(dovecot: Dovecot) -> None:
    mailservers.stop_process(dovecot.process)
    shutil.rmtree(dovecot.root, ignore_errors=True)


# --- the load client -------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, connect to LOGIN's OK
    failures: int = 0
    first_failure: str = ""


async def login(port: int, number: int, result: Result) -> None:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        result.failures += 1
        result.first_failure = result.first_failure or f"connect: {error}"
        return
    try:
        await reader.readline()  # the greeting
        writer.write(f'a LOGIN "{address_of(number)}" "{password_of(number)}"\r\n'.encode())
        while True:
            line = await reader.readline()
            if not line or line.startswith(b"a "):
                break
        if line.startswith(b"a OK"):
            result.latencies.append(time.perf_counter() - started)
        else:
            result.failures += 1
            result.first_failure = result.first_failure or line.decode(errors="replace")
        writer.write(b"b LOGOUT\r\n")
        while True:
            line = await reader.readline()
            if not line or line.startswith(b"b "):
                break
    except OSError as error:
        result.failures += 1
        result.first_failure = result.first_failure or str(error)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def saturate(
    port: int, numbers: Callable[[], int], connections: int, seconds: float
) -> Result:
    """``connections`` clients, each logging in again as soon as its last login ended."""
    result = Result()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            await login(port, numbers(), result)

    await asyncio.gather(*(client() for _ in range(connections)))
    return result


async def paced(port: int, numbers: Callable[[], int], rate: float, seconds: float) -> Result:
    """Logins started at a fixed rate, whatever the answers do (an open loop, as many mail
    programs checking on their own clocks)."""
    result = Result()
    tasks = []
    started = time.perf_counter()
    count = int(rate * seconds)
    for index in range(count):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(login(port, numbers(), result)))
    await asyncio.gather(*tasks)
    return result


async def warm_up(port: int, count: int, connections: int) -> Result:
    """Log every mailbox of the working set in once."""
    result = Result()
    queue = list(range(count))

    async def client() -> None:
        while queue:
            await login(port, queue.pop(), result)

    await asyncio.gather(*(client() for _ in range(connections)))
    return result


def rotation(first: int, size: int) -> Callable[[], int]:
    state = {"next": 0}

    def take() -> int:
        number = first + state["next"] % size
        state["next"] += 1
        return number

    return take


def run_load(coroutine: object) -> Result:
    try:
        import uvloop

        return uvloop.run(coroutine)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]


# --- the runs --------------------------------------------------------------------------------


@dataclass
class Row:
    config: str
    rate: float
    p50: float
    p99: float
    failures: int
    cpu_ms: dict[str, float]
    redis_commands: float = 0.0


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def measure(
    config: str,
    dovecot: Dovecot,
    services: Services,
    load: Coroutine[Any, Any, Result],
) -> Row:
    before = sample(dovecot.process, services)
    started = time.perf_counter()
    result = run_load(load)
    elapsed = time.perf_counter() - started
    after = sample(dovecot.process, services)
    logins = len(result.latencies)
    split = cpu_split(before, after)
    if result.failures:
        print(f"   {config}: {result.failures} failed logins, first: {result.first_failure!r}")
    return Row(
        config,
        logins / elapsed,
        percentile(result.latencies, 0.50),
        percentile(result.latencies, 0.99),
        result.failures,
        {name: seconds * 1000 / max(logins, 1) for name, seconds in split.items()},
        # Less the first sample's INFO, counted once it was answered.
        (after.redis_commands - before.redis_commands - 1) / max(logins, 1),
    )


def print_row(row: Row, reference: float | None = None) -> None:
    share = f"{row.rate / reference:5.2f}" if reference else "    -"
    cpu = row.cpu_ms
    print(
        f"{row.config:<10} {row.rate:9,.0f} {share} {row.p50:7.2f} {row.p99:7.2f} "
        f"{cpu['dovecot']:8.2f} {cpu['postgres']:8.2f} {cpu['policy']:8.2f} "
        f"{cpu['redis']:6.2f} {cpu['client']:7.2f} {row.failures:6} {row.redis_commands:8.1f}"
    )


HEADER = (
    f"{'config':<10} {'logins/s':>9} {'of A':>5} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'Dovecot':>8} {'Postgres':>8} {'policy':>8} {'Redis':>6} {'client':>7} {'failed':>6} "
    f"{'Redis':>8}\n"
    f"{'':<10} {'':>9} {'':>5} {'':>7} {'':>7} {'(CPU ms per login)':^41} {'':>6} "
    f"{'cmds/login':>8}"
)


def portal_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "MAILSERVER_REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": "benchmark-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        # A mailbox of the working set comes back every few seconds here, not every five
        # minutes: every login takes the full path instead of being refused as too frequent.
        "AUTH_POLICY_CHECK_BURST": "1000000",
        "AUTH_POLICY_PROGRAM_CHECK_BURST": "1000000",
        "AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR": "1000000",
        **extra,
    }


def start_policy(
    database_url: str, redis_url: str, processes: int, log: Path, **extra: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    port = mailservers.free_port()
    api_key = secrets.token_urlsafe(24)
    env = portal_env(database_url, redis_url, AUTH_POLICY_API_KEY=api_key, **extra)
    process = mailservers.start_command(
        "auth_policy_server", port, env, log, "--processes", str(processes)
    )
    return process, f"http://127.0.0.1:{port}/auth-policy", api_key


def start_null_policy(processes: int) -> tuple[subprocess.Popen[bytes], str, str]:
    """A policy server that answers every request "allow" at once, with no logic at all
    (benchmarks/auth_policy.py's ceiling server, uvloop): what Dovecot's side of the three
    policy requests costs a login, whatever a policy server does."""
    port = mailservers.free_port()
    script = Path(__file__).resolve().parent / "auth_policy.py"
    # One process group holding every server process, so stop_process ends them all.
    process = subprocess.Popen(
        [
            "sh",
            "-c",
            " & ".join(
                f"{sys.executable} {script} --serve-ceiling {port}" for _ in range(processes)
            )
            + "; wait",
        ],
        start_new_session=True,
    )
    mailservers.wait_for_port(port, process, lambda: "")
    return process, f"http://127.0.0.1:{port}/auth-policy", "unused"


def compaction_cost(database_url: str, redis_url: str) -> tuple[float, float, int]:
    """CPU seconds of the ``compact_activity`` job taking in what the run buffered: its own
    (the job only, not the interpreter's start) and its PostgreSQL backend's; and the events
    it took. (0, 0, 0) where the code has no such job."""
    env = portal_env(database_url, redis_url)
    code = (
        "import django, os, resource, sys; django.setup()\n"
        "try:\n    from mailaccess import activity\n"
        "except ImportError:\n    print(0, 0, 0); sys.exit()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    c.execute('SELECT pg_backend_pid()'); pid = c.fetchone()[0]\n"
        "def backend():\n"
        "    f = open(f'/proc/{pid}/stat').read().rpartition(')')[2].split()\n"
        "    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')\n"
        "def own():\n"
        "    u = resource.getrusage(resource.RUSAGE_SELF); return u.ru_utime + u.ru_stime\n"
        "b, o = backend(), own(); done = activity.compact()\n"
        "print(done, own() - o, backend() - b)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    words = output.stdout.split()[-3:]
    if len(words) < 3:
        return 0.0, 0.0, 0
    return float(words[1]), float(words[2]), int(words[0])


@contextlib.contextmanager
def private_redis(log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = mailservers.free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        mailservers.wait_for_port(port, process, lambda: mailservers.tail(log))
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        mailservers.stop_process(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--mailboxes", type=int, default=1_000_000)
    parser.add_argument("--working-set", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--policy-processes", type=int, default=2)
    parser.add_argument("--configs", default="A,B,C,Ccold")
    parser.add_argument(
        "--period",
        type=float,
        default=20.0,
        help="Cperiodic: seconds between two logins of one mailbox (time-compressed checks)",
    )
    parser.add_argument(
        "--imap-per-login",
        action="store_true",
        help="start a new imap process for every login (Dovecot's default) instead of reusing",
    )
    parser.add_argument("--explain", action="store_true", help="print the passdb query's plan")
    parser.add_argument("--explain-only", action="store_true", help="fill, explain, stop")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: Dovecot's master must start as root", file=sys.stderr)
        return 2
    working = min(args.working_set, args.mailboxes)
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]

    version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout
    print(
        f"Dovecot {version.strip()} on a LOOPBACK PLAINTEXT IMAP listener (127.0.0.1, no TLS, "
        "so that TLS does not hide the login path); login processes reused (service_count = 0)"
        + ("; a new imap process per login" if not REUSE_IMAP else "; imap processes reused")
    )
    print(
        f"{os.cpu_count()} cores, shared with whatever else runs; {args.connections} connections,"
        f" {args.seconds:.0f} s a run, {args.rounds} rounds; {args.mailboxes:,} mailboxes in "
        f"PostgreSQL, working set {working:,}"
    )
    ensure_database(args.database)
    fill(args.database, args.mailboxes)
    sql_conf = ROOT / "deploy" / "dovecot" / "dovecot-sql.conf.ext"
    explain_met = None
    if args.explain or args.explain_only:
        explain_met = explain(args.database, sql_conf, args.mailboxes // 2)
        if args.explain_only:
            return 0 if explain_met else 1

    work = Path(tempfile.mkdtemp(prefix="mailportal-bench-"))
    work.chmod(0o755)
    tls = mailservers._make_certificate(work)
    passwd_file = work / "passwd"
    with psycopg.connect(args.database) as connection:
        rows = connection.execute(
            "SELECT m.address, p.password_hash FROM accounts_mailbox m "
            "JOIN mailaccess_apppassword p ON p.mailbox_id = m.id WHERE m.id <= %s",
            [working],
        ).fetchall()
    passwd_file.write_text("".join(f"{address}:{hashed}::::::\n" for address, hashed in rows))
    passwd_file.chmod(0o644)

    # Cperiodic takes the next working set's worth of mailboxes (C's warm states must not
    # help it); cold runs take fresh mailboxes past those, a slice per run.
    periodic_first = working if "Cperiodic" in configs else 0
    cold_first = periodic_first + working if periodic_first else working
    cold_slice = max(1, (args.mailboxes - cold_first) // max(args.rounds, 1))
    periodic: Periodic | None = None
    compaction: list[tuple[float, float, int]] = []
    rows_by_config: dict[str, list[Row]] = {name: [] for name in configs}
    paced_row: Row | None = None
    try:
        with private_redis(work / "redis.log") as (redis, redis_url):
            services = Services(args.database, redis, redis_url)
            policy_url = api_key = ""
            policies: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
            if any(name in ("C", "Ccold", "Ccache") for name in configs):
                policies["C"] = start_policy(
                    args.database, redis_url, args.policy_processes, work / "policy.log"
                )
                _process, policy_url, api_key = policies["C"]
            if "Cnull" in configs:
                policies["Cnull"] = start_null_policy(args.policy_processes)
            if "Cperiodic" in configs:
                check, ttl, record = policy_intervals(portal_env(args.database, redis_url))
                periodic = Periodic(args.period, check, ttl, record)
                policies["Cperiodic"] = start_policy(
                    args.database,
                    redis_url,
                    args.policy_processes,
                    work / "policy-periodic.log",
                    **periodic.env(),
                )
                print(
                    f"Cperiodic: each of {working:,} mailboxes logs in every {args.period:g} s "
                    f"({working / args.period:,.0f} logins/s, open loop), standing for a check "
                    f"every {check} s: time {periodic.factor:g}x faster, so the policy runs with "
                    f"{periodic.env()} (its defaults: state TTL {ttl} s, last use recorded "
                    f"every {record} s); the compaction job's cost is measured after each run"
                )
            warmed = False
            print(f"\n{HEADER}")
            for round_number in range(args.rounds):
                for config in configs:
                    process, url, key = policies.get(
                        "C" if config in ("C", "Ccold", "Ccache") else config, (None, "", "")
                    )
                    services.policy = process
                    policy = (url, key) if config.startswith("C") else None
                    dovecot = start_dovecot(
                        config if config in ("A", "B", "Ccache") else "C",
                        tls,
                        args.database,
                        policy,
                        passwd_file,
                    )
                    try:
                        if config == "C" and not warmed:
                            # Every mailbox of the working set once: its state cached.
                            run_load(warm_up(dovecot.imap_port, working, args.connections))
                            warmed = True
                        if config == "Ccold":
                            first = cold_first + round_number * cold_slice
                            numbers = rotation(first, cold_slice)
                        elif config == "Cperiodic":
                            numbers = rotation(periodic_first, working)
                        else:
                            numbers = rotation(0, working)
                        if config == "Cperiodic":
                            # One whole period first: every mailbox last seen a period ago.
                            rate = working / args.period
                            run_load(paced(dovecot.imap_port, numbers, rate, args.period))
                            load = paced(dovecot.imap_port, numbers, rate, args.period)
                        else:
                            # A second of load first: login processes and connections started.
                            run_load(
                                saturate(
                                    dovecot.imap_port,
                                    numbers if config != "Ccold" else rotation(0, working),
                                    args.connections,
                                    1.0,
                                )
                            )
                            load = saturate(
                                dovecot.imap_port, numbers, args.connections, args.seconds
                            )
                        row = measure(config, dovecot, services, load)
                        if config == "Cperiodic":
                            logins = row.rate * args.period
                            job, backend, events = compaction_cost(args.database, redis_url)
                            compaction.append(
                                (
                                    job * 1000 / max(logins, 1),
                                    backend * 1000 / max(logins, 1),
                                    events,
                                )
                            )
                        rows_by_config[config].append(row)
                        print_row(row)
                    finally:
                        stop_dovecot(dovecot)
            services.policy = policies["C"][0] if "C" in policies else None
            if "C" in configs:
                rate = 0.7 * statistics.mean(row.rate for row in rows_by_config["C"])
                dovecot = start_dovecot("C", tls, args.database, (policy_url, api_key), passwd_file)
                try:
                    run_load(saturate(dovecot.imap_port, rotation(0, working), 4, 1.0))
                    paced_row = measure(
                        "C paced",
                        dovecot,
                        services,
                        paced(dovecot.imap_port, rotation(0, working), rate, args.seconds),
                    )
                finally:
                    stop_dovecot(dovecot)
            for process, _url, _key in policies.values():
                mailservers.stop_process(process)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\nMeans over the rounds:")
    print(HEADER)
    means: dict[str, Row] = {}
    for config, config_rows in rows_by_config.items():
        if not config_rows:
            continue
        means[config] = Row(
            config,
            statistics.mean(row.rate for row in config_rows),
            statistics.mean(row.p50 for row in config_rows),
            statistics.mean(row.p99 for row in config_rows),
            sum(row.failures for row in config_rows),
            {
                name: statistics.mean(row.cpu_ms[name] for row in config_rows)
                for name in config_rows[0].cpu_ms
            },
            statistics.mean(row.redis_commands for row in config_rows),
        )
    reference = means["A"].rate if "A" in means else None
    for row in means.values():
        print_row(row, reference)
    if paced_row:
        print(f"\nC paced at {paced_row.rate:,.0f} logins/s (70% of C's saturation rate):")
        print_row(paced_row, reference)
    if compaction:
        job = statistics.mean(cost for cost, _backend, _events in compaction)
        backend = statistics.mean(cost for _job, cost, _events in compaction)
        events = sum(count for _job, _backend, count in compaction)
        print(
            f"\nCperiodic: the compaction job then took in {events:,} buffered events (warm-up "
            f"included), CPU per login of the measured runs: job {job:.3f} ms + PostgreSQL "
            f"{backend:.3f} ms"
        )

    print("\nVerdict (targets of issue 23):")
    met = True
    if reference and "C" in means:
        share = means["C"].rate / reference
        met &= share >= 0.85
        print(f"  C / A = {share:.2f} (target >= 0.85): {'MET' if share >= 0.85 else 'NOT MET'}")
    if reference and "Ccold" in means:
        share = means["Ccold"].rate / reference
        met &= share >= 0.60
        print(
            f"  cold C / A = {share:.2f} (target >= 0.60): {'MET' if share >= 0.60 else 'NOT MET'}"
        )
    if paced_row:
        ok = paced_row.p99 < 20 and paced_row.failures == 0
        met &= ok
        print(
            f"  p99 at 70% of C's rate = {paced_row.p99:.2f} ms (target < 20 ms): "
            f"{'MET' if ok else 'NOT MET'}"
        )
    if explain_met is not None:
        met &= explain_met
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
