from django.urls import path

from mailaccess import autoconfig_views, views

app_name = "mailaccess"
urlpatterns = [
    path("", views.settings_index, name="settings"),
    path("mail-programs/", views.mail_programs, name="mail_programs"),
    path("mail-programs/passwords/", views.add_app_password, name="add_app_password"),
    path(
        "mail-programs/passwords/<int:pk>/revoke/",
        views.revoke_app_password,
        name="revoke_app_password",
    ),
    path("notices/<int:notice_id>/read/", views.mark_notice_read, name="mark_notice_read"),
    path("mail-programs/not-me/<str:token>/", views.not_me, name="not_me"),
    path(
        "mail-programs/apple-profile/",
        autoconfig_views.apple_profile,
        name="apple_profile",
    ),
    path(
        "mail-programs/apple-profile/once/",
        autoconfig_views.apple_profile_with_password,
        name="apple_profile_with_password",
    ),
    path(
        "mail-programs/<slug:slug>/",
        views.program_instructions,
        name="program",
    ),
]
