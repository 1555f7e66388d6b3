"""What the panel says, read as its Latvian (and English) reader reads it (issue 20).

One message per fact, dates set apart after a label, relative times that agree, and a
warning before switching off ends passwords.
"""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polib  # type: ignore[import-untyped, unused-ignore]  # no type hints; reported at one import only
import pytest
import time_machine
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import translation

from accounts.models import Mailbox, Status
from audit.models import Actor
from mailaccess import actions
from mailaccess.mailserver.postfix_policy import reply_text
from mailaccess.mailserver.smtp_decision import over_hour_reply, over_minute_reply
from mailaccess.models import (
    ACCESS_OFF_SERVER_MESSAGE,
    AppPassword,
    BlockReason,
    ExternalAccess,
    Notice,
    NoticeKind,
    Protocol,
)
from tests.conftest import csrf_post

URL = reverse("mailaccess:mail_programs")
# 08:44 in Riga on 3 December 2026.
MOMENT = datetime(2026, 12, 3, 6, 44, tzinfo=UTC)
LOCALE = Path(settings.BASE_DIR) / "locale"


def text_of(html: str) -> str:
    """What a reader sees: the page without its tags, spaces folded."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def panel(client: Client) -> str:
    return text_of(client.get(URL).content.decode())


def switch_on(mailbox: Mailbox, when: datetime = MOMENT) -> None:
    with time_machine.travel(when, tick=False):
        actions.enable_access(mailbox, actor=Actor.user(mailbox))


# 1. Dates and relative times


def test_the_switch_on_time_stands_after_a_label(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    page = panel(alice_client)
    assert "Pieeja ir ieslēgta. Ieslēgta: 03.12.2026. 08:44" in page
    assert "kopš" not in page and "decembris" not in page


def test_an_english_reader_sees_no_am_with_two_periods(bob: Mailbox, bob_client: Client) -> None:
    switch_on(bob)
    page = panel(bob_client)
    assert "Access is on. Switched on: 3 December 2026, 08:44" in page
    assert "a.m." not in page


def test_the_last_use_says_how_long_ago_in_the_dative(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    actions.record_use(alice.pk, Protocol.IMAP, "192.0.2.7", when=MOMENT)
    with time_machine.travel(MOMENT + timedelta(minutes=2, seconds=5), tick=False):
        page = panel(alice_client)
    assert "IMAP no 192.0.2.7: pirms 2 minūtēm" in page
    assert "pirms 2 minūte " not in page


def test_the_block_time_stands_after_a_label(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    with time_machine.travel(MOMENT + timedelta(hours=1), tick=False):
        actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    page = panel(alice_client)
    assert "Pieeja tika automātiski izslēgta" in page
    assert "Izslēgta: 03.12.2026. 09:44" in page
    assert "Atļauja" not in page


# 1. Words


def catalogue(language: str) -> polib.POFile:
    return polib.pofile(str(LOCALE / language / "LC_MESSAGES" / "django.po"))


def latvian_texts() -> list[str]:
    texts: list[str] = []
    for entry in catalogue("lv").translated_entries():
        texts.extend(entry.msgstr_plural.values() if entry.msgid_plural else [entry.msgstr])
    return texts


def test_latvian_says_uzlauzta_as_the_providers_page_does() -> None:
    assert not [text for text in latvian_texts() if "nozag" in text]


def test_latvian_quotes_are_low_high() -> None:
    assert not [text for text in latvian_texts() if "“" in text]


def test_leave_a_copy_on_the_server_is_one_term(alice_client: Client) -> None:
    page = panel(alice_client)
    assert "atstāt vēstuļu kopiju uz servera" in page
    assert "atstāt vēstules uz servera" not in page
    assert "“" not in page and "„atstāt vēstuļu kopiju uz servera”" in page


def test_the_host_column_is_headed_server(alice_client: Client) -> None:
    page = alice_client.get(URL).content.decode()
    assert '<th scope="col">Serveris</th>' in page
    assert '<td data-label="Serveris"><code>mail.inbox.lv</code></td>' in page
    assert "Adrese" not in page


def test_the_hourly_block_says_the_16th_message_was_refused() -> None:
    with translation.override("lv"):
        explanation = str(BlockReason.HOURLY_LIMIT.explanation)
        server = str(BlockReason.HOURLY_LIMIT.server_message)
    assert "mēģināja vienas stundas laikā nosūtīt 16. vēstuli" in explanation
    assert "vairāk nekā 15" not in explanation
    assert "atteikta 16. vēstule (drīkst 15)" in server
    with translation.override("en"):
        assert "a 16th message within one hour was refused" in str(
            BlockReason.HOURLY_LIMIT.server_message
        )


# SMTP replies are ASCII: the Latvian ones avoid letters whose folded form reads as another
# sound (š, ž, č, ģ, ķ, ļ, ņ); Russian, which folding would erase, is transliterated.


def test_latvian_smtp_replies_read_naturally_without_diacritics() -> None:
    assert over_minute_reply("lv", 5, 30) == (
        "DEFER_IF_PERMIT Sasniegts limits: ne vairak ka 5 vestules minute. "
        "Sutiet velreiz pec 30 sekundem."
    )
    assert over_hour_reply("lv", 15, 1) == (
        "DEFER_IF_PERMIT Sasniegts limits: ne vairak ka 15 vestules stunda. "
        "Sutiet velreiz pec 1 minutes."
    )
    with translation.override("lv"):
        assert reply_text(str(BlockReason.HOURLY_LIMIT.server_message)) == (
            "Areja pieeja izslegta: stundas laika tika atteikta 16. vestule (drikst 15). "
            "Iesledziet pieeju atkartoti iestatijumos."
        )


def test_russian_smtp_replies_keep_their_words() -> None:
    assert over_minute_reply("ru", 5, 2) == (
        "DEFER_IF_PERMIT Dostignut limit: ne bolee 5 pisem v minutu. "
        "Poprobuyte snova cherez 2 sekundy."
    )
    with translation.override("ru"):
        for text in [ACCESS_OFF_SERVER_MESSAGE, *(r.server_message for r in BlockReason)]:
            assert reply_text(str(text)) == str(text), "a letter would be lost"


def test_latvian_smtp_only_replies_avoid_letters_that_fold_into_other_sounds() -> None:
    with translation.override("lv"):
        texts = [
            over_minute_reply("lv", 5, n) + over_hour_reply("lv", 15, n) for n in (1, 2, 10)
        ] + [str(BlockReason.HOURLY_LIMIT.server_message)]
    assert not [text for text in texts if set(text) & set("šžčģķļņŠŽČĢĶĻŅ")]


# 2. One message per fact


def test_a_stolen_password_is_told_once_with_its_button(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    with time_machine.travel(MOMENT + timedelta(hours=1), tick=False):
        actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    html = alice_client.get(URL).content.decode()
    page = text_of(html)
    assert page.count("Izskatās, ka Jūsu parole ir uzlauzta") == 1
    assert page.count("nomainiet web paroli") + page.count("Nomainiet web paroli") == 1
    assert "pieeja ir bloķēta" not in page
    box = re.search(r'<div class="block"[^>]*>(.*?)</div>', html, re.S)
    assert box is not None
    # What happened, when, what to do, and the button that does it: all in the one box.
    assert "Pieeja tika automātiski izslēgta" in box.group(1)
    assert "Izslēgta: 03.12.2026. 09:44" in text_of(box.group(1))
    assert f'href="{reverse("accounts:change_password")}"' in box.group(1)


def test_after_the_new_web_password_the_box_says_access_may_come_back(
    alice: Mailbox, alice_client: Client
) -> None:
    actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    actions.record_web_password_change(alice, actor=Actor.user(alice))
    page = panel(alice_client)
    assert "Jūsu web parole ir nomainīta. Pieeju varat ieslēgt atkārtoti" in page
    assert "Vispirms nomainiet web paroli" not in page


def test_a_block_notice_is_settled_when_access_is_on_again(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    notice = actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))
    assert notice is not None
    actions.enable_access(alice, actor=Actor.user(alice))
    notice.refresh_from_db()
    assert notice.read_at is not None
    page = panel(alice_client)
    assert "bloķēta" not in page and "16. vēstuli" not in page


def test_the_page_is_titled_for_what_it_holds(alice_client: Client) -> None:
    html = alice_client.get(URL).content.decode()
    assert "<title>Pasta programmas: POP3\\IMAP un SMTP pieeja · Inbox</title>" in html
    assert "<h1>Pasta programmas: POP3\\IMAP un SMTP pieeja</h1>" in html
    assert "SMS" not in html and "pārsūtīšana" not in html
    index = alice_client.get(reverse("mailaccess:settings")).content.decode()
    assert "Pasta programmas: POP3\\IMAP un SMTP pieeja" in index


def test_a_signed_in_owner_is_not_told_to_sign_in(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    actions.change_status(alice, Status.INACTIVE, actor=Actor.system("test"))
    actions.block_access(alice, BlockReason.INACTIVE, actor=Actor.system("test"))
    actions.change_status(alice, Status.ACTIVE, actor=Actor.user(alice))  # signing in did this
    page = panel(alice_client)
    assert "Kad pieteicāties, Jūsu pastkastīte atkal kļuva aktīva." in page
    assert "Piesako" not in page and "Piesakie" not in page


# 3. Say what will happen


def add_password(mailbox: Mailbox, label: str) -> None:
    actions.create_app_password(
        mailbox, label=label, protocols={"imap", "smtp"}, actor=Actor.user(mailbox)
    )


def test_switching_off_first_names_the_passwords_that_stop(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    add_password(alice, "iPhone")
    response = csrf_post(alice_client, URL, {"ask_first": "1"})
    assert response.status_code == 200
    page = text_of(response.content.decode())
    assert "Izslēgt ārējo pieeju?" in page
    assert "Pārstās darboties 2 pasta programmu paroles:" in page
    assert "iPhone (IMAP, SMTP)" in page and "Pasta programmas (IMAP, POP3, SMTP)" in page
    assert ExternalAccess.objects.get(mailbox=alice).enabled, "asking changed nothing"
    assert AppPassword.objects.live().filter(mailbox=alice).count() == 2

    done = csrf_post(alice_client, URL, {})
    assert done.status_code == 302
    assert not ExternalAccess.objects.get(mailbox=alice).enabled
    after = panel(alice_client)
    assert "Ārējā pieeja ir izslēgta. 2 pasta programmu paroles vairs nedarbojas." in after


def test_the_switch_off_message_counts_one_password_in_the_singular(
    alice: Mailbox, alice_client: Client, bob: Mailbox, bob_client: Client
) -> None:
    switch_on(alice)
    csrf_post(alice_client, URL, {})
    assert "Ārējā pieeja ir izslēgta. 1 pasta programmas parole vairs nedarbojas." in panel(
        alice_client
    )
    switch_on(bob)
    csrf_post(bob_client, URL, {"ask_first": "1"})
    assert "1 mail-program password will stop working:" in text_of(
        csrf_post(bob_client, URL, {"ask_first": "1"}).content.decode()
    )


def test_switching_off_with_no_password_left_needs_no_confirmation(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    password = AppPassword.objects.get(mailbox=alice)
    actions.revoke_app_password(alice, password.pk, actor=Actor.user(alice))
    response = csrf_post(alice_client, URL, {"ask_first": "1"})
    assert response.status_code == 302
    assert "Ārējā pieeja ir izslēgta." in panel(alice_client)


def test_the_switch_says_what_saving_does_and_why_it_is_off(alice_client: Client) -> None:
    page = panel(alice_client)
    assert "Jūsu drošībai pieeja pēc noklusējuma ir izslēgta" in page
    assert "redzēsiet ģenerētu paroli" in page
    html = alice_client.get(URL).content.decode()
    assert 'aria-describedby="switch-hint"' in html


def test_the_password_card_says_the_dashes_belong_to_it(alice_client: Client) -> None:
    response = csrf_post(alice_client, URL, {"external_access": "on"})
    assert "Svītras ir paroles daļa" in text_of(response.content.decode())


def test_an_old_program_user_learns_there_are_no_plain_ports(alice_client: Client) -> None:
    assert "Portu bez šifrēšanas nav" in panel(alice_client)
    pop3 = text_of(
        alice_client.get(reverse("mailaccess:program", args=["outlook-pop3"])).content.decode()
    )
    assert "Outlook Express nevar pieslēgties: tā neprot TLS 1.2" in pop3
    assert (
        "<h1>POP3 iestatījumi programmai Microsoft Outlook</h1>"
        in alice_client.get(reverse("mailaccess:program", args=["outlook-pop3"])).content.decode()
    )


def test_block_notices_are_never_a_second_banner(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    actions.block_access(alice, BlockReason.FAULTY_PROGRAM, actor=Actor.system("test"))
    assert Notice.objects.filter(mailbox=alice, kind=NoticeKind.BLOCKED, read_at=None).exists()
    html = alice_client.get(URL).content.decode()
    assert 'class="notice"' not in html
    assert text_of(html).count("Pasta programma savienojās ar Jūsu pastkastīti") == 1


# 4. Pictures of the steps


def test_each_server_step_has_a_drawing_with_the_users_own_values(
    alice_client: Client, bob_client: Client
) -> None:
    html = alice_client.get(reverse("mailaccess:program", args=["thunderbird-imap"])).content
    page = html.decode()
    figures = re.findall(r"<svg [^>]*role=\"img\".*?</svg>", page, re.S)
    assert len(figures) == 3, "the new account, the incoming and the outgoing server"
    _, incoming, outgoing = figures
    assert "jauns konts" in figures[0] and "ienākošais pasts" in incoming
    for label, value in [("Protokols", "IMAP"), ("Serveris", "mail.inbox.lv"), ("Ports", "993")]:
        assert f">{label}</text>" in incoming and f">{value}</text>" in incoming
    assert ">alice@inbox.lv</text>" in incoming and ">STARTTLS</text>" in outgoing
    assert "Mozilla Thunderbird, ienākošais pasts: kas jāievada katrā laukā." in incoming
    other = bob_client.get(reverse("mailaccess:program", args=["outlook-pop3"])).content.decode()
    assert ">POP3</text>" in other and ">mail.ee</text>" in other and ">995</text>" in other


@pytest.mark.parametrize(
    ("slug", "fields"),
    [
        ("apple-mail", [("Vārds", "Jūsu vārds"), ("E-pasta adrese", "alice@inbox.lv")]),
        ("ios-mail", [("Vārds", "Jūsu vārds"), ("Parole", "Pasta programmas parole")]),
        ("outlook-imap", [("E-pasta adrese", "alice@inbox.lv")]),
        ("the-bat", [("Protokols", "IMAP"), ("E-pasta adrese", "alice@inbox.lv")]),
    ],
)
def test_the_new_account_step_has_a_drawing_of_its_fields(
    alice_client: Client, slug: str, fields: list[tuple[str, str]]
) -> None:
    page = alice_client.get(reverse("mailaccess:program", args=[slug])).content.decode()
    account = next(
        figure
        for figure in re.findall(r"<svg [^>]*role=\"img\".*?</svg>", page, re.S)
        if "jauns konts" in figure
    )
    for label, value in fields:
        assert f">{label}</text>" in account and f">{value}</text>" in account


@pytest.mark.parametrize("slug", ["apple-mail", "ios-mail"])
def test_apples_server_step_is_drawn_with_the_users_host(alice_client: Client, slug: str) -> None:
    # Apple Mail and iOS Mail ask for one host for both directions and find the ports.
    page = alice_client.get(reverse("mailaccess:program", args=[slug])).content.decode()
    figures = re.findall(r"<svg [^>]*role=\"img\".*?</svg>", page, re.S)
    servers = next(figure for figure in figures if "Konta tips" in figure)
    assert ">Ienākošā pasta serveris</text>" in servers
    assert ">Izejošā pasta serveris</text>" in servers
    assert servers.count(">mail.inbox.lv</text>") == 2
    assert ">alice@inbox.lv</text>" in servers
