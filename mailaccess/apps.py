from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MailaccessConfig(AppConfig):
    name = "mailaccess"
    verbose_name = _("External mail access")

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from mailaccess import actions, passdb, tasks
        from mailaccess.mailserver import state

        # The passdb view reads the translated server messages from a table: refresh it.
        post_migrate.connect(passdb.sync_after_migrate, sender=self)

        # The auth policy's cached state must follow every access change at once.
        if state.invalidate not in actions.access_changed_hooks:
            actions.access_changed_hooks.append(state.invalidate)

        # A block, a switch-off or an ended password ends the sessions already open.
        if tasks.queue_end_sessions not in actions.sessions_ended_hooks:
            actions.sessions_ended_hooks.append(tasks.queue_end_sessions)

        if tasks.queue_notices not in actions.notice_created_hooks:
            actions.notice_created_hooks.append(tasks.queue_notices)
