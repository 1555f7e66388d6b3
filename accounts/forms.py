from typing import Any

from django import forms
from django.contrib.auth import authenticate
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from accounts.models import Mailbox, normalize_address


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
            user = authenticate(self.request, username=address, password=password)
            if user is None:
                raise forms.ValidationError(
                    self.error_messages["invalid_login"], code="invalid_login"
                )
            assert isinstance(user, Mailbox)
            self.mailbox = user
        return cleaned


class WebPasswordChangeForm(PasswordChangeForm):
    """Django's form; its labels are already translated into Latvian."""
