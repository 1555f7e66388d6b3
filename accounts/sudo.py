"""Sudo mode: sensitive changes need fresh proof that the owner is at the keyboard.

Switching external access on, creating a mail-program password and downloading a profile
with one hand out a working secret, so a stolen or forgotten-open session must not be enough.
The proof is the web password or, when two-factor sign-in is on, a code; it lasts
``SUDO_MODE_SECONDS`` (signing in counts as proof too).

How it works without JavaScript: when a POST needs proof, ``require_sudo_mode`` answers with a
confirmation page whose form posts back to the *same URL*, carrying the original form fields
as hidden inputs next to the password (or code) field. When the proof is right, the decorator
takes the proof fields out and calls the view with the original fields, so the original action
completes in that one response: for switching access on, the new password is shown right there,
never stored to be replayed later. A GET that needs proof gets the same page posting to
``accounts:sudo``, which redirects back to the page afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, Concatenate, ParamSpec, overload

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.http import urlencode

from accounts.forms import SudoForm

SESSION_KEY = "sudo_mode_at"
# The hidden field that marks a POST as the confirmation page's answer.
CONFIRM_FIELD = "sudo-confirm"
PROOF_PREFIX = SudoForm.prefix

P = ParamSpec("P")
# A view: the request, then whatever the URL gives it. Typed through the decorator, so the
# views that hand out secrets stay checked.
View = Callable[Concatenate[HttpRequest, P], HttpResponse]


def is_active(request: HttpRequest) -> bool:
    started = request.session.get(SESSION_KEY)
    if not isinstance(started, int | float):
        return False
    return time.time() - started < settings.SUDO_MODE_SECONDS


def start(request: HttpRequest) -> None:
    grant(request.session)


def grant(session: SessionBase) -> None:
    session[SESSION_KEY] = int(time.time())


def _original_fields(request: HttpRequest) -> list[tuple[str, str]]:
    """The POSTed fields to carry through the confirmation page: not the proof, not CSRF."""
    return [
        (name, value)
        for name, values in request.POST.lists()
        if name != "csrfmiddlewaretoken" and not name.startswith(f"{PROOF_PREFIX}-")
        for value in values
    ]


def challenge(
    request: HttpRequest,
    form: Any = None,
    status: int = 200,
    *,
    cancel: str = "mailaccess:settings",
    action: str | None = None,
) -> HttpResponse:
    """The confirmation page, for a request that needs proof and did not bring a good one."""
    form = form or SudoForm(request)
    fields: list[tuple[str, str]] = []
    if action is None and request.method == "POST":
        action = request.get_full_path()
        fields = _original_fields(request)
    elif action is None:
        action = f"{reverse('accounts:sudo')}?{urlencode({'next': request.get_full_path()})}"
    context = {
        "form": form,
        "action": action,
        "fields": fields,
        "cancel_url": reverse(cancel),
        "confirm_field": CONFIRM_FIELD,
        "minutes": max(1, settings.SUDO_MODE_SECONDS // 60),
    }
    response = render(request, "accounts/sudo.html", context, status=status)
    add_never_cache_headers(response)
    return response


def check_proof(request: HttpRequest) -> tuple[bool, Any, int]:
    """Verify the confirmation form of this POST: (ok, form to show again, status)."""
    form = SudoForm(request, data=request.POST)
    if form.is_valid():
        start(request)
        return True, form, 200
    return False, form, 429 if form.has_error("__all__", "throttled") else 400


def _hide_proof_from_error_reports(request: HttpRequest) -> None:
    hidden = getattr(request, "sensitive_post_parameters", [])
    if hidden != "__ALL__":
        proof = [f"{PROOF_PREFIX}-password", f"{PROOF_PREFIX}-code"]
        # Django's error reporter reads this attribute, which HttpRequest does not declare.
        request.sensitive_post_parameters = [*hidden, *proof]  # type: ignore[attr-defined]


@overload
def require_sudo_mode(view: View[P], /) -> View[P]: ...


@overload
def require_sudo_mode(
    view: None = None,
    /,
    *,
    when: Callable[[HttpRequest], bool] | None = None,
    cancel: str = "mailaccess:settings",
) -> Callable[[View[P]], View[P]]: ...


def require_sudo_mode(
    view: View[P] | None = None,
    /,
    *,
    when: Callable[[HttpRequest], bool] | None = None,
    cancel: str = "mailaccess:settings",
) -> View[P] | Callable[[View[P]], View[P]]:
    """Ask for fresh proof before running ``view`` (for requests where ``when`` is true).

    Put it inside ``login_required``. Use bare (``@require_sudo_mode``) or with a condition,
    e.g. ``@require_sudo_mode(when=lambda request: request.method == "POST")``. ``cancel`` is
    the URL name the confirmation page's "Cancel" link leads to.
    """

    def decorator(view: View[P]) -> View[P]:
        @wraps(view)
        def wrapped(request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponse:
            if (when is not None and not when(request)) or is_active(request):
                return view(request, *args, **kwargs)
            if request.method == "POST" and CONFIRM_FIELD in request.POST:
                _hide_proof_from_error_reports(request)
                ok, form, status = check_proof(request)
                if not ok:
                    return challenge(request, form, status, cancel=cancel)
                # The view sees exactly the fields of the original form: never the password.
                original = request.POST.copy()
                for name in list(original):
                    if name == CONFIRM_FIELD or name.startswith(f"{PROOF_PREFIX}-"):
                        del original[name]
                # The stubs declare POST a QueryDict to read; Django lets a view replace it.
                request.POST = original  # type: ignore[assignment]
                return view(request, *args, **kwargs)
            return challenge(request, cancel=cancel)

        return wrapped

    if view is not None:
        return decorator(view)
    return decorator
