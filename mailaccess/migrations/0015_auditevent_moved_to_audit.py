"""The audit log now lives in the audit app (its 0001): dropped from this app's state only.

The table ``mailaccess_auditevent`` stays, with every row: the audit app's model names it.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("mailaccess", "0014_password_activity"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent")],
            database_operations=[],
        ),
    ]
