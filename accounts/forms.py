from typing import Any

from django import forms
from django.contrib.auth import authenticate
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from accounts import actions, throttling, two_factor
from accounts.models import Mailbox, normalize_address


def throttled_error() -> forms.ValidationError:
    minutes = throttling.window_minutes()
    return forms.ValidationError(
        ngettext(
            "Too many failed attempts. Please wait %(minutes)d minute and try again.",
            "Too many failed attempts. Please wait %(minutes)d minutes and try again.",
            minutes,
        ),
        code="throttled",
        params={"minutes": minutes},
    )


class SignInForm(forms.Form):
    address = forms.CharField(
        label=_("Mailbox address"),
        max_length=254,
        widget=forms.TextInput(
            attrs={"autocomplete": "username", "autofocus": True, "inputmode": "email"}
        ),
    )
    password = forms.CharField(
        label=_("Password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    # One message for an unknown mailbox and a wrong password: no address probing.
    error_messages = {
        "invalid_login": _("The mailbox address or the password is wrong."),
    }

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        self.request = request
        self.mailbox: Mailbox | None = None
        super().__init__(*args, **kwargs)

    def clean_address(self) -> str:
        return normalize_address(self.cleaned_data["address"])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        address, password = cleaned.get("address"), cleaned.get("password")
        if address and password:
            # Counted before the password is checked: beyond a limit, it never is.
            attempt = throttling.attempt(
                address,
                throttling.client_ip(self.request),
                throttling.known_device(self.request, address),
            )
            if attempt.refused:
                raise throttled_error()
            user = authenticate(self.request, username=address, password=password)
            if user is None:
                raise forms.ValidationError(
                    self.error_messages["invalid_login"], code="invalid_login"
                )
            assert isinstance(user, Mailbox)
            attempt.succeeded()
            self.mailbox = user
        return cleaned


def code_field() -> forms.CharField:
    """A code from the authenticator app, or a recovery code (letters and dashes)."""
    return forms.CharField(
        label=_("Code from the authenticator app or a recovery code"),
        max_length=32,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autocapitalize": "none",
                "spellcheck": "false",
                "autofocus": True,
            }
        ),
    )


class CodeForm(forms.Form):
    code = code_field()


class SetupCodeForm(forms.Form):
    code = forms.CharField(
        label=_("Six-digit code from the app"),
        max_length=16,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


class SudoForm(forms.Form):
    """Proof for sudo mode: the web password, or a code when two-factor sign-in is on."""

    # Its fields are told apart from the original form's that the confirmation page carries.
    prefix = "sudo"

    error_messages = {
        "wrong_password": _("The password is wrong."),
        "wrong_code": _("The code is wrong or has already been used."),
    }

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        self.request = request
        mailbox = request.user
        assert isinstance(mailbox, Mailbox)
        self.mailbox = mailbox
        self.uses_code = two_factor.is_enabled(mailbox)
        super().__init__(*args, **kwargs)
        if self.uses_code:
            self.fields["code"] = code_field()
        else:
            self.fields["password"] = forms.CharField(
                label=_("Web password"),
                strip=False,
                widget=forms.PasswordInput(
                    attrs={"autocomplete": "current-password", "autofocus": True}
                ),
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        ip = throttling.client_ip(self.request)
        address = self.mailbox.address
        proof = cleaned.get("code" if self.uses_code else "password")
        if not proof:
            return cleaned
        attempt = throttling.attempt(
            address, ip, throttling.known_device(self.request, address, self.mailbox)
        )
        if attempt.refused:
            raise throttled_error()
        if self.uses_code:
            ok = bool(actions.check_code(self.mailbox, proof, ip=ip))
            error = "wrong_code"
        else:
            ok = self.mailbox.check_password(proof)
            error = "wrong_password"
        if not ok:
            raise forms.ValidationError(self.error_messages[error], code=error)
        attempt.succeeded()
        return cleaned


class WebPasswordChangeForm(PasswordChangeForm):
    """Django's form; its labels are already translated into Latvian."""
