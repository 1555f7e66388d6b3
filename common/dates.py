"""How long ago something happened, in words that agree in all five languages.

Each phrase is whole ("pirms 2 minūtēm", "2 минуты назад", "prieš 2 minutes"): the number,
the unit and the word for "ago" agree with each other, and which form they take depends on the
language (Latvian "pirms" takes the genitive singular and the dative plural, Russian "назад"
and Lithuanian "prieš" the accusative). So every unit has its own ``ngettext`` phrase, with
the plural forms of our own catalogues. Django's ``timesince`` gives a bare nominative to be
put after "pirms" ("pirms 2 minūte"), and its Latvian catalogue lists the plural forms in an
order other than its own Plural-Forms rule.

One unit only, rounded down ("pirms 7 nedēļām", not "1 mēnesis, 3 nedēļas"): the exact time
is never more than a click or a column away.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from dateutil.relativedelta import relativedelta
from django.utils import timezone
from django.utils.translation import gettext, ngettext

MINUTE, HOUR, DAY, WEEK, MONTH, YEAR = "minute", "hour", "day", "week", "month", "year"


def _minutes(n: int) -> str:
    return ngettext("%(count)d minute ago", "%(count)d minutes ago", n) % {"count": n}


def _hours(n: int) -> str:
    return ngettext("%(count)d hour ago", "%(count)d hours ago", n) % {"count": n}


def _days(n: int) -> str:
    return ngettext("%(count)d day ago", "%(count)d days ago", n) % {"count": n}


def _weeks(n: int) -> str:
    return ngettext("%(count)d week ago", "%(count)d weeks ago", n) % {"count": n}


def _months(n: int) -> str:
    return ngettext("%(count)d month ago", "%(count)d months ago", n) % {"count": n}


def _years(n: int) -> str:
    return ngettext("%(count)d year ago", "%(count)d years ago", n) % {"count": n}


PHRASES: dict[str, Callable[[int], str]] = {
    MINUTE: _minutes,
    HOUR: _hours,
    DAY: _days,
    WEEK: _weeks,
    MONTH: _months,
    YEAR: _years,
}


def ago(unit: str, count: int) -> str:
    """The phrase for ``count`` whole ``unit``s ago, in the active language."""
    return PHRASES[unit](count)


def time_ago(moment: datetime, now: datetime | None = None) -> str:
    """``moment`` as "2 minutes ago" in the active language, in its largest whole unit.

    Days up to two weeks, then weeks up to nine (the two-month idle expiry reads better as
    "7 weeks" than as "1 month"), then calendar months and years. A moment in the future (a
    server clock a little ahead) is "just now".
    """
    now = now or timezone.now()
    elapsed = now - moment
    if elapsed < timedelta(minutes=1):
        return gettext("just now")
    if elapsed < timedelta(hours=1):
        return ago(MINUTE, elapsed // timedelta(minutes=1))
    if elapsed < timedelta(days=1):
        return ago(HOUR, elapsed // timedelta(hours=1))
    if elapsed < timedelta(weeks=2):
        return ago(DAY, elapsed.days)
    if elapsed < timedelta(weeks=9):
        return ago(WEEK, elapsed.days // 7)
    span = relativedelta(timezone.localtime(now), timezone.localtime(moment))
    if span.years:
        return ago(YEAR, span.years)
    return ago(MONTH, max(span.months, 2))
