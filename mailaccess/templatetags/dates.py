"""``{{ moment|ago }}``: "pirms 2 minūtēm", in the active language (see common/dates.py)."""

from datetime import datetime

from django import template

from common.dates import time_ago

register = template.Library()


@register.filter
def ago(moment: datetime | None) -> str:
    return time_ago(moment) if moment else ""
