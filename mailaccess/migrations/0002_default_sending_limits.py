from django.db import migrations

# The provider's published limits: free "Inbox Mail" may send 5 messages a minute and 15 an
# hour through SMTP; "Inbox Mail+" has none. Support can change them in the admin.
DEFAULTS = [("free", 5, 15), ("plus", None, None)]


def create_defaults(apps, schema_editor):
    SendingLimit = apps.get_model("mailaccess", "SendingLimit")
    for plan, per_minute, per_hour in DEFAULTS:
        SendingLimit.objects.get_or_create(
            plan=plan, defaults={"per_minute": per_minute, "per_hour": per_hour}
        )


class Migration(migrations.Migration):
    dependencies = [("mailaccess", "0001_initial")]

    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
