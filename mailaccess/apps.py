from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MailaccessConfig(AppConfig):
    name = "mailaccess"
    verbose_name = _("External mail access")

    def ready(self) -> None:
        from mailaccess import actions, notices

        if notices.queue not in actions.notice_created_hooks:
            actions.notice_created_hooks.append(notices.queue)
