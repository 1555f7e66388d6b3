"""Dates and relative times read right in all five languages (issue 20).

A date never stands inside a sentence (its case would depend on the sentence), so what is
tested here is the form a date takes after a label, and the whole "N units ago" phrases.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import formats, timezone, translation

from common import dates

# 08:44 in Riga on 3 December 2026.
MOMENT = datetime(2026, 12, 3, 6, 44, tzinfo=UTC)


@pytest.mark.parametrize(
    ("language", "date", "date_and_time"),
    [
        ("lv", "03.12.2026.", "03.12.2026. 08:44"),
        ("en", "3 December 2026", "3 December 2026, 08:44"),
        ("ru", "03.12.2026", "03.12.2026 08:44"),
        ("lt", "2026-12-03", "2026-12-03 08:44"),
        ("et", "03.12.2026", "03.12.2026 08:44"),
    ],
)
def test_dates_are_numeric_and_the_clock_has_24_hours(
    language: str, date: str, date_and_time: str
) -> None:
    local = timezone.localtime(MOMENT)
    with translation.override(language):
        assert formats.date_format(local, "DATE_FORMAT") == date
        assert formats.date_format(local, "DATETIME_FORMAT") == date_and_time
        assert formats.date_format(local, "SHORT_DATETIME_FORMAT") == date_and_time.replace(
            "December", "Dec"
        )


def test_an_english_time_never_ends_in_a_period() -> None:
    """ "8:44 a.m." at the end of a sentence printed "a.m.."."""
    with translation.override("en"):
        for name in ("DATETIME_FORMAT", "SHORT_DATETIME_FORMAT", "TIME_FORMAT"):
            assert not formats.date_format(timezone.localtime(MOMENT), name).endswith(".")


COUNTS = (0, 1, 2, 10, 11, 21)

# Which form each count takes, written out per language rather than computed.
FORM_OF_COUNT = {
    "lv": {0: 1, 1: 0, 2: 1, 10: 1, 11: 1, 21: 0},  # pirms 1/21 minūtes, pirms 0/2/10/11 minūtēm
    "ru": {0: 2, 1: 0, 2: 1, 10: 2, 11: 2, 21: 0},  # 1/21 минуту, 2 минуты, 0/10/11 минут
    "lt": {0: 2, 1: 0, 2: 1, 10: 2, 11: 2, 21: 0},  # 1/21 minutę, 2 minutes, 0/10/11 minučių
    "et": {0: 1, 1: 0, 2: 1, 10: 1, 11: 1, 21: 1},
    "en": {0: 1, 1: 0, 2: 1, 10: 1, 11: 1, 21: 1},
}

PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "lv": {
        dates.MINUTE: ("pirms {n} minūtes", "pirms {n} minūtēm"),
        dates.HOUR: ("pirms {n} stundas", "pirms {n} stundām"),
        dates.DAY: ("pirms {n} dienas", "pirms {n} dienām"),
        dates.WEEK: ("pirms {n} nedēļas", "pirms {n} nedēļām"),
        dates.MONTH: ("pirms {n} mēneša", "pirms {n} mēnešiem"),
        dates.YEAR: ("pirms {n} gada", "pirms {n} gadiem"),
    },
    "ru": {
        dates.MINUTE: ("{n} минуту назад", "{n} минуты назад", "{n} минут назад"),
        dates.HOUR: ("{n} час назад", "{n} часа назад", "{n} часов назад"),
        dates.DAY: ("{n} день назад", "{n} дня назад", "{n} дней назад"),
        dates.WEEK: ("{n} неделю назад", "{n} недели назад", "{n} недель назад"),
        dates.MONTH: ("{n} месяц назад", "{n} месяца назад", "{n} месяцев назад"),
        dates.YEAR: ("{n} год назад", "{n} года назад", "{n} лет назад"),
    },
    "lt": {
        dates.MINUTE: ("prieš {n} minutę", "prieš {n} minutes", "prieš {n} minučių"),
        dates.HOUR: ("prieš {n} valandą", "prieš {n} valandas", "prieš {n} valandų"),
        dates.DAY: ("prieš {n} dieną", "prieš {n} dienas", "prieš {n} dienų"),
        dates.WEEK: ("prieš {n} savaitę", "prieš {n} savaites", "prieš {n} savaičių"),
        dates.MONTH: ("prieš {n} mėnesį", "prieš {n} mėnesius", "prieš {n} mėnesių"),
        dates.YEAR: ("prieš {n} metus", "prieš {n} metus", "prieš {n} metų"),
    },
    "et": {
        dates.MINUTE: ("{n} minut tagasi", "{n} minutit tagasi"),
        dates.HOUR: ("{n} tund tagasi", "{n} tundi tagasi"),
        dates.DAY: ("{n} päev tagasi", "{n} päeva tagasi"),
        dates.WEEK: ("{n} nädal tagasi", "{n} nädalat tagasi"),
        dates.MONTH: ("{n} kuu tagasi", "{n} kuud tagasi"),
        dates.YEAR: ("{n} aasta tagasi", "{n} aastat tagasi"),
    },
    "en": {
        dates.MINUTE: ("{n} minute ago", "{n} minutes ago"),
        dates.HOUR: ("{n} hour ago", "{n} hours ago"),
        dates.DAY: ("{n} day ago", "{n} days ago"),
        dates.WEEK: ("{n} week ago", "{n} weeks ago"),
        dates.MONTH: ("{n} month ago", "{n} months ago"),
        dates.YEAR: ("{n} year ago", "{n} years ago"),
    },
}


@pytest.mark.parametrize("language", list(PHRASES))
@pytest.mark.parametrize("unit", list(dates.PHRASES))
def test_every_unit_agrees_with_its_number(language: str, unit: str) -> None:
    forms = PHRASES[language][unit]
    with translation.override(language):
        for n in COUNTS:
            assert dates.ago(unit, n) == forms[FORM_OF_COUNT[language][n]].format(n=n)


def test_latvian_uses_the_dative_after_pirms_where_django_does_not() -> None:
    """The issue's own examples: "pirms 2 minūte" and "pirms 1 mēnešu, 3 nedēļa"."""
    with translation.override("lv"):
        assert dates.time_ago(MOMENT - timedelta(minutes=2), MOMENT) == "pirms 2 minūtēm"
        assert dates.time_ago(MOMENT - timedelta(days=70), MOMENT) == "pirms 2 mēnešiem"
        assert dates.time_ago(MOMENT - timedelta(days=52), MOMENT) == "pirms 7 nedēļām"


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (timedelta(seconds=-30), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(minutes=1), "1 minute ago"),
        (timedelta(minutes=59, seconds=59), "59 minutes ago"),
        (timedelta(hours=1), "1 hour ago"),
        (timedelta(hours=23, minutes=59), "23 hours ago"),
        (timedelta(days=1), "1 day ago"),
        (timedelta(days=13), "13 days ago"),
        (timedelta(days=14), "2 weeks ago"),
        (timedelta(days=62), "8 weeks ago"),
        (timedelta(days=63), "2 months ago"),
        (timedelta(days=200), "6 months ago"),
        (timedelta(days=366), "1 year ago"),
        (timedelta(days=800), "2 years ago"),
    ],
)
def test_the_largest_whole_unit_is_named(elapsed: timedelta, expected: str) -> None:
    with translation.override("en"):
        assert dates.time_ago(MOMENT - elapsed, MOMENT) == expected


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("lv", "tikko"),
        ("en", "just now"),
        ("ru", "только что"),
        ("lt", "ką tik"),
        ("et", "just praegu"),
    ],
)
def test_just_now_in_every_language(language: str, expected: str) -> None:
    with translation.override(language):
        assert dates.time_ago(MOMENT, MOMENT) == expected
