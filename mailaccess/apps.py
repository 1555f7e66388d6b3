from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MailaccessConfig(AppConfig):
    name = "mailaccess"
    verbose_name = _("External mail access")

    def ready(self) -> None:
        from mailaccess import actions
        from mailaccess.mailserver import state

        # The auth policy's cached state must follow every access change at once.
        if state.invalidate not in actions.access_changed_hooks:
            actions.access_changed_hooks.append(state.invalidate)
