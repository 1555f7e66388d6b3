#!/usr/bin/env python3
"""Render the Dovecot and Postfix templates of deploy/ with a site's values.

    python3 deploy/render.py SITE_ENV OUT_DIR

writes OUT_DIR/dovecot/* and OUT_DIR/postfix/*. SITE_ENV holds NAME=value lines (see
site.env.example). Every @NAME@ in a template must have a value, and every value must be used:
a typo fails loudly here instead of as a half-configured mail server. The end-to-end tests
render the same templates with test values (tests/mailservers.py), so what is tested is what
is deployed. Standard library only: it runs on a mail server without the portal installed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE_DIRS = ("dovecot", "postfix")
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


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


def render(values: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write every template with ``values`` under ``out_dir``; returns the files written."""
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


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        for path in render(read_site(Path(argv[1])), Path(argv[2])):
            print(path)
    except RenderError as error:
        print(f"render.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
