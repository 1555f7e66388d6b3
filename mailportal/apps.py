from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """Django's admin app, with ``admin.site`` being the site of mailportal/admin.py.

    Every ``admin.register`` (ours, django-otp's, django.contrib.auth's) lands on that site, so
    no model is ever reachable through an admin without the second factor.
    """

    default_site = "mailportal.admin.AdminSite"
