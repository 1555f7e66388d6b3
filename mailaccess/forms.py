from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _


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
