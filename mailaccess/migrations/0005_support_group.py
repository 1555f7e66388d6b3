from django.contrib.auth.management import create_permissions
from django.db import migrations

# Exactly what support staff may do: look at mailboxes, their access, passwords, notices,
# limits and the audit log, and change access only through the support actions. No add,
# change or delete permission on any model: no audit row deleted, no hash edited, nobody made
# staff or superuser.
SUPPORT_PERMISSIONS = [
    ("accounts", "mailbox", "view_mailbox"),
    ("mailaccess", "externalaccess", "view_externalaccess"),
    ("mailaccess", "apppassword", "view_apppassword"),
    ("mailaccess", "auditevent", "view_auditevent"),
    ("mailaccess", "notice", "view_notice"),
    ("mailaccess", "sendinglimit", "view_sendinglimit"),
    ("mailaccess", "externalaccess", "block_access"),
    ("mailaccess", "externalaccess", "unblock_access"),
    ("mailaccess", "externalaccess", "disable_access"),
    ("mailaccess", "externalaccess", "change_plan"),
    ("mailaccess", "externalaccess", "view_support_dashboard"),
]


def create_support_group(apps, schema_editor):
    # Permissions are normally created after migrate (post_migrate); create them now so the
    # group can hold them on a fresh database.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="support")
    group.permissions.set(
        [
            Permission.objects.get(
                content_type__app_label=app_label,
                content_type__model=model,
                codename=codename,
            )
            for app_label, model, codename in SUPPORT_PERMISSIONS
        ]
    )


def delete_support_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="support").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_mailbox_address_prefix_idx"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("mailaccess", "0004_support_permissions_and_indexes"),
    ]

    operations = [migrations.RunPython(create_support_group, delete_support_group)]
