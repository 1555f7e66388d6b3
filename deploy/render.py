#!/usr/bin/env python3
"""Render the Dovecot and Postfix templates of deploy/ with a site's values, and install them.

    python3 deploy/render.py [--cores N] [--install [--postfix-dir DIR]] SITE_ENV OUT_DIR

writes OUT_DIR/dovecot/* and OUT_DIR/postfix/*. SITE_ENV holds NAME=value lines (see
site.env.example). Every @NAME@ in a template must have a value, and every value must be used:
a typo fails loudly here instead of as a half-configured mail server.

--cores N       the cores Dovecot's login processes are sized to (default: this machine's,
                os.cpu_count()); it fills @LOGIN_PROCESSES@, which the site file must not set.
--install       also installs what the submission host needs: dovecot.conf and
                dovecot-sql.conf.ext into DOVECOT_CONF_DIR (the latter readable by root and the
                dovecot group only: it holds the SQL password), main.cf, master.cf and
                sender_login.regexp into Postfix's config directory, then checks both with
                `doveconf -n` and `postfix check` (which also creates a missing queue folder).
--postfix-dir   Postfix's config directory for --install (default /etc/postfix, Debian's).

deploy/README.md ("Render and install") runs exactly this, and tests/test_deploy_readme_e2e.py
runs the README's command, with only the paths and ports of a test site, and boots Dovecot and
Postfix from what it installed. Standard library only: it runs on a mail server without the
portal installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE_DIRS = ("dovecot", "postfix")
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
# Values render.py works out itself rather than reading from the site file.
COMPUTED = ("LOGIN_PROCESSES",)
# Dovecot compares uids and gids as numbers (first_valid_uid ... last_valid_gid), so a user
# name would fail every login ("Mail access for users with UID 110 not permitted").
NUMERIC = ("MAIL_UID", "MAIL_GID")
# (file, mode, group) installed by --install; None: root's group.
Installed = tuple[tuple[str, int, str | None], ...]
DOVECOT_FILES: Installed = (
    ("dovecot.conf", 0o644, None),
    ("dovecot-sql.conf.ext", 0o640, "dovecot"),
)
POSTFIX_FILES: Installed = (
    ("main.cf", 0o644, None),
    ("master.cf", 0o644, None),
    ("sender_login.regexp", 0o644, None),
)


class RenderError(ValueError):
    pass


def read_site(path: Path) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not PLACEHOLDER.fullmatch(f"@{name.strip()}@"):
            raise RenderError(f"{path}:{number}: expected NAME=value")
        values[name.strip()] = value.strip()
    return values


def render_text(text: str, values: Mapping[str, str], used: set[str], origin: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise RenderError(f"{origin}: no value for @{name}@")
        used.add(name)
        return values[name]

    return PLACEHOLDER.sub(replace, text)


def check_values(values: Mapping[str, str]) -> None:
    for name in COMPUTED:
        if name in values:
            raise RenderError(f"{name} is not a site value: render.py sets it (--cores)")
    for name in NUMERIC:
        if name in values and not values[name].isdigit():
            raise RenderError(
                f"{name} must be a number (id -u vmail, id -g vmail), not {values[name]!r}"
            )


def render(values: Mapping[str, str], out_dir: Path, cores: int | None = None) -> list[Path]:
    """Write every template with ``values`` under ``out_dir``; returns the files written.

    ``cores`` sizes Dovecot's login processes (dovecot.conf, "Login processes"); None: this
    machine's cores.
    """
    check_values(values)
    if cores is not None and cores < 1:
        raise RenderError(f"--cores must be at least 1, not {cores}")
    values = {**values, "LOGIN_PROCESSES": str(cores or os.cpu_count() or 1)}
    used: set[str] = set()
    written = []
    for folder in TEMPLATE_DIRS:
        for template in sorted((HERE / folder).iterdir()):
            if not template.is_file():
                continue
            target = out_dir / folder / template.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render_text(template.read_text(), values, used, str(template)))
            written.append(target)
    unused = sorted(set(values) - used)
    if unused:
        raise RenderError(f"values no template uses: {', '.join(unused)}")
    return written


def _install_file(source: Path, target: Path, mode: int, group: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed over it: a server reading its configuration never
    # sees half a file, nor the SQL password under the old file's wider mode.
    temporary = target.with_name(f".{target.name}.render-tmp")
    shutil.copyfile(source, temporary)
    temporary.chmod(mode)
    shutil.chown(temporary, "root", group or 0)
    temporary.replace(target)
    print(f"installed {target}")


def install(values: Mapping[str, str], out_dir: Path, postfix_dir: Path) -> None:
    """Install the rendered files and have Dovecot and Postfix check them."""
    dovecot_dir = Path(values["DOVECOT_CONF_DIR"])
    for name, mode, group in DOVECOT_FILES:
        _install_file(out_dir / "dovecot" / name, dovecot_dir / name, mode, group)
    for name, mode, group in POSTFIX_FILES:
        _install_file(out_dir / "postfix" / name, postfix_dir / name, mode, group)
    # `postfix check` creates the queue's subfolders and the data directory, but must enter
    # the queue directory first (Debian's package made /var/spool/postfix; a new one is not).
    queue = Path(values["POSTFIX_QUEUE_DIR"])
    if not queue.exists():
        queue.mkdir(mode=0o755, parents=True)
    checks = (
        ["doveconf", "-c", str(dovecot_dir / "dovecot.conf"), "-n"],
        ["postfix", "-c", str(postfix_dir), "check"],
    )
    for command in checks:
        # Fixed programs; the only variable parts are paths from the operator's own site file.
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise RenderError(f"{' '.join(command)} failed:\n{output}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="render.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--install", action="store_true")
    parser.add_argument("--postfix-dir", type=Path, default=Path("/etc/postfix"))
    parser.add_argument("site_env", type=Path)
    parser.add_argument("out_dir", type=Path)
    arguments = parser.parse_args(argv[1:])
    try:
        values = read_site(arguments.site_env)
        for path in render(values, arguments.out_dir, arguments.cores):
            print(path)
        if arguments.install:
            install(values, arguments.out_dir, arguments.postfix_dir)
    except RenderError as error:
        print(f"render.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
