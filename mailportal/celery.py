"""The Celery app: `celery -A mailportal worker` and `celery -A mailportal beat`.

Its configuration is the CELERY_* settings in mailportal/settings.py, the beat schedule too.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailportal.settings")

app = Celery("mailportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
