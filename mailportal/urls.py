import re

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from accounts.language import change_language
from mailaccess import autoconfig_views


def any_case(path: str) -> str:
    """A regex matching ``path`` in any letter case.

    Django's resolver refuses the ``(?i)`` flag ("Non-reversible reg-exp portion"), so each
    letter becomes a class of both its cases.
    """
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in path)


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="mailaccess:settings", permanent=False)),
    path("accounts/", include("accounts.urls")),
    path("settings/", include("mailaccess.urls")),
    path("admin/", admin.site.urls),
    path("language/", change_language, name="set_language"),
    # Mail-program discovery; these also answer on autoconfig.<domain> and
    # autodiscover.<domain>, which ALLOWED_HOSTS must then list (see .env.example).
    path(
        ".well-known/autoconfig/mail/config-v1.1.xml",
        autoconfig_views.thunderbird_config,
        name="autoconfig",
    ),
    path("mail/config-v1.1.xml", autoconfig_views.thunderbird_config),
    # Outlook spells the path in any case (Autodiscover/Autodiscover.xml).
    re_path(
        "^" + any_case("autodiscover/autodiscover.xml") + "$",
        autoconfig_views.autodiscover_xml,
        name="autodiscover",
    ),
    re_path(
        "^" + any_case("autodiscover/autodiscover.json") + r"(?:/v1\.0/(?P<address>[^/]+))?$",
        autoconfig_views.autodiscover_json,
        name="autodiscover_json",
    ),
]
