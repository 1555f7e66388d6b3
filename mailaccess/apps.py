from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MailaccessConfig(AppConfig):
    name = "mailaccess"
    verbose_name = _("External mail access")

    def ready(self) -> None:
        from django.db.models.signals import post_migrate, post_save

        from accounts.models import Mailbox
        from mailaccess import actions, passdb, tasks

        # The passdb view reads the translated server messages from a table: refresh it.
        post_migrate.connect(passdb.sync_after_migrate, sender=self)
        # The mail servers' messages are in the mailbox's language: a new one is made known
        # to the passdb table, Dovecot's auth cache and the auth policy as an access change is.
        post_save.connect(actions.language_changed, sender=Mailbox)

        # The auth policy's cached state must follow every access change at once.
        if tasks.queue_invalidate_states not in actions.access_changed_hooks:
            actions.access_changed_hooks.append(tasks.queue_invalidate_states)
        # Dovecot's auth cache must too: a cached passdb reply would let a switched-off
        # mailbox in while the auth policy is down (tasks.queue_flush_auth_cache).
        if tasks.queue_flush_auth_cache not in actions.access_changed_hooks:
            actions.access_changed_hooks.append(tasks.queue_flush_auth_cache)

        # A block, a switch-off or an ended password ends the sessions already open.
        if tasks.queue_end_sessions not in actions.sessions_ended_hooks:
            actions.sessions_ended_hooks.append(tasks.queue_end_sessions)

        if tasks.queue_notices not in actions.notice_created_hooks:
            actions.notice_created_hooks.append(tasks.queue_notices)
