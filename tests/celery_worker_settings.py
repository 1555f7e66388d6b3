"""Settings for the real Celery worker and beat that tests/test_celery_worker.py starts.

The production settings, with the beat schedule's idle-expiry entry firing every two seconds
instead of hourly, a queue of the test's own, and e-mail written to files the test reads.
"""

import os

from mailportal.settings import *  # noqa: F403
from mailportal.settings import CELERY_BEAT_SCHEDULE as PRODUCTION_SCHEDULE

CELERY_BEAT_SCHEDULE = {
    "block-idle-access": {**PRODUCTION_SCHEDULE["block-idle-access"], "schedule": 2.0}
}
CELERY_TASK_DEFAULT_QUEUE = os.environ["E2E_CELERY_QUEUE"]
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ["E2E_EMAIL_DIR"]
