"""The audit log moved from mailaccess to the audit app without touching its table or rows.

Run on SQLite and on PostgreSQL (with DATABASE_URL): a database migrated before the move, with
audit rows, is migrated across it; the rows, their mailbox links and support's permission to
read them come along, and the way back works too.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

import accounts.models
from audit.models import AuditEvent
from mailaccess.models import BlockReason

BEFORE = [("mailaccess", "0014_password_activity"), ("audit", None)]
AFTER = [
    ("mailaccess", "0015_auditevent_moved_to_audit"),
    ("audit", "0002_alter_auditevent_action"),
]


def migrate(targets: list[tuple[str, Any]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    # The state of the nodes named (audit's "none at all" names no node).
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


@pytest.fixture
def latest_schema_afterwards() -> Iterator[None]:
    """The tests after this one need every migration (the test stops at the move's own,
    which would leave later columns out): put the schema back to the latest, however it ends."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_audit_rows_survive_the_move_and_back(latest_schema_afterwards: None) -> None:
    old = migrate(BEFORE)
    # The support group comes from a data migration, which an earlier transactional test's
    # flush may have emptied: give it back its permission as that migration did.
    group, _ = old.get_model("auth", "Group").objects.get_or_create(name="support")
    group.permissions.add(
        old.get_model("auth", "Permission").objects.get(
            content_type__app_label="mailaccess", codename="view_auditevent"
        )
    )
    Mailbox = old.get_model("accounts", "Mailbox")
    OldEvent = old.get_model("mailaccess", "AuditEvent")
    alice = Mailbox.objects.create(address="alice@inbox.lv", password="!")
    staff = Mailbox.objects.create(address="staff@inbox.lv", password="!")
    OldEvent.objects.create(
        mailbox=alice,
        address=alice.address,
        action="access_blocked",
        reason="compromised",
        actor_kind="support",
        actor=staff,
        actor_label=staff.address,
        justification="Spam reported by three recipients",
    )

    migrate(AFTER)
    # The real model, as the code now uses it: same table, same row, same links.
    event = AuditEvent.objects.get()
    assert (event.mailbox_id, event.actor_id) == (alice.pk, staff.pk)
    assert event.get_reason_display() == str(BlockReason.COMPROMISED.label)
    assert AuditEvent._meta.db_table == "mailaccess_auditevent"
    # The mailbox's link still holds the row back: deleting it empties the link, not the row.
    accounts.models.Mailbox.objects.filter(pk=alice.pk).delete()
    assert AuditEvent.objects.get().mailbox_id is None
    # Support's read permission moved with the model's content type.
    support = Group.objects.get(name="support")
    assert support.permissions.filter(
        content_type__app_label="audit", codename="view_auditevent"
    ).exists()

    back = migrate(BEFORE)
    assert back.get_model("mailaccess", "AuditEvent").objects.count() == 1
    assert support.permissions.filter(
        content_type__app_label="mailaccess", codename="view_auditevent"
    ).exists()
    migrate(AFTER)
