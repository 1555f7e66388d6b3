from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from mailaccess import fences
from mailaccess.actions import fence_error_message
from mailaccess.models import Protocol


class AccessSwitchForm(forms.Form):
    """The switch: a checkbox (sent as "on" when ticked, absent when not).

    Anything but "on" or nothing is an error, never read as a wish to switch on or off.
    """

    external_access = forms.BooleanField(
        label=_("Allow external POP3\\IMAP and SMTP access"), required=False
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        raw = self.data.get(self.add_prefix("external_access"))
        if raw not in (None, "on"):
            raise forms.ValidationError(
                _("The form was not understood. Nothing has been changed; please try again."),
                code="bad_value",
            )
        return cleaned


class DevicePasswordForm(forms.Form):
    """ "Add a password for another device": a name, and the protocols it may use."""

    label = forms.CharField(
        label=_("Device or program"),
        max_length=64,
        help_text=_("For example: iPhone, work laptop, Thunderbird at home."),
    )
    protocols = forms.MultipleChoiceField(
        label=_("May be used for"),
        choices=Protocol.choices,
        initial=[protocol.value for protocol in Protocol],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one protocol.")},
    )
    networks = forms.CharField(
        label=_("May be used only from these networks"),
        required=False,
        max_length=2000,
        help_text=_(
            "Optional. IP addresses or ranges, separated by commas or spaces, e.g. "
            "192.0.2.10, 198.51.100.0/24, 2001:db8::/64. Empty: from anywhere."
        ),
    )

    def clean_label(self) -> str:
        # Shown in lists and the admin: one line of printable text.
        label = " ".join(str(self.cleaned_data["label"]).split())
        if not label.isprintable():
            raise forms.ValidationError(_("Use letters, digits and spaces."), code="label")
        return label

    def clean_networks(self) -> tuple[str, ...]:
        try:
            return fences.parse_networks(str(self.cleaned_data["networks"]))
        except fences.FenceError as error:
            raise forms.ValidationError(fence_error_message(error), code="networks") from None
