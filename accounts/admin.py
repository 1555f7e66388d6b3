"""The admin's building blocks for tables of a million rows: no full count, read-only pages.

The mailbox admin, which support works in, is mailaccess/admin.py: it shows and changes the
mailbox's access.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.http import HttpRequest

from accounts.models import normalize_address

# The changelist counts at most this many rows: beyond it the page says "more than".
COUNT_LIMIT = 1000


class CappedCountPaginator(Paginator):
    """Counts at most ``COUNT_LIMIT + 1`` rows instead of a full COUNT(*).

    ``COUNT(*)`` over a million mailboxes reads the whole table on every changelist load;
    ``SELECT COUNT(*) FROM (... LIMIT 1001)`` stops early, even under a filter that matches
    one row in a hundred. The price: pages beyond the cap
    cannot be reached by number; support narrows the search instead.
    """

    @cached_property
    def count(self) -> int:
        # Only the primary key, in no order: the page's annotations and joins for display
        # would otherwise run for all the counted rows.
        rows = self.object_list.order_by().values("pk")  # type: ignore[attr-defined]
        return rows[: COUNT_LIMIT + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > COUNT_LIMIT


class ReadOnlyAdmin(admin.ModelAdmin):
    """The access models and the audit log: nobody adds, edits or deletes a row here."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    # Sorting by a column without an index would sort the whole table for one page.
    sortable_by: ClassVar[tuple[str, ...]] = ()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: Any, search_term: str
    ) -> tuple[Any, bool]:
        # The whole address, matched exactly through the mailbox's unique index: a
        # "contains" search would read every row of a table this size.
        term = normalize_address(search_term)
        if not term:
            return queryset, False
        return queryset.filter(mailbox__address=term), False
