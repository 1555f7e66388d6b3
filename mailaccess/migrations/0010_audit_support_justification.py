"""Audit rows keep why support acted: the justification every support action now asks for.

Blank on older rows and on rows of the owner or the system, who act without one.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailaccess", "0009_dovecot_passdb_app_password"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="justification",
            field=models.CharField(blank=True, max_length=500, verbose_name="justification"),
        ),
    ]
