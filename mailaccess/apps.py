from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MailaccessConfig(AppConfig):
    name = "mailaccess"
    verbose_name = _("External mail access")
