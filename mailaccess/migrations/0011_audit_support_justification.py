"""Audit rows keep why support acted: the justification every support action now asks for.

Blank on older rows and on rows of the owner or the system, who act without one.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailaccess", "0010_audit_sending_limits_lifted"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="justification",
            field=models.CharField(blank=True, max_length=500, verbose_name="justification"),
        ),
    ]
