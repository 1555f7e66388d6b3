"""Compile locale/*/LC_MESSAGES/*.po to .mo without GNU gettext.

`make run` must work on a fresh machine with only Python, where `msgfmt` (and so Django's
compilemessages) may be missing; polib is a pure-Python dependency.
"""

import sys
from pathlib import Path

import polib

root = Path(__file__).resolve().parent.parent / "locale"
count = 0
for po_path in sorted(root.glob("*/LC_MESSAGES/*.po")):
    po = polib.pofile(str(po_path))
    po.save_as_mofile(str(po_path.with_suffix(".mo")))
    count += 1
print(f"compiled {count} message catalogues", file=sys.stderr)
