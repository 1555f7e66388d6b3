"""The admin site: one way in for everybody, the site's own sign-in with its second step.

Django's admin has a sign-in of its own, which knows neither the throttling nor two-factor
sign-in: a support member's password alone would open every mailbox. Here the admin's login
URL is the panel's sign-in (accounts.views.admin_sign_in), and every admin page needs a
session verified with a confirmed authenticator (django-otp's ``is_verified``), as
django-otp's ``OTPAdminSite`` does. Staff without one are sent to set it up first; a
superuser made with ``createsuperuser`` is staff like any other.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.shortcuts import redirect

from accounts.two_factor import session_verified
from accounts.views import admin_sign_in


class AdminSite(admin.AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and session_verified(request)

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        return admin_sign_in(request)

    def password_change(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        # The panel's own form: audited, and it keeps the session and its verification.
        return redirect("accounts:change_password")
