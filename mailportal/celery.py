"""The Celery app: `celery -A mailportal worker` and `celery -A mailportal beat`.

Its configuration is the CELERY_* settings in mailportal/settings.py, the beat schedule too.
"""

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailportal.settings")

app = Celery("mailportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def serve_metrics(**_: object) -> None:
    """The worker's /metrics (job runs, notices sent) on CELERY_METRICS_LISTEN, if set.

    Served by the main process; with the prefork pool the children that run the jobs write
    their figures to PROMETHEUS_MULTIPROC_DIR, which it adds up.
    """
    from django.conf import settings

    from common import health_http

    if settings.CELERY_METRICS_LISTEN:
        health_http.serve_in_thread(settings.CELERY_METRICS_LISTEN)
