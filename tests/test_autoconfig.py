"""Mail programs set themselves up from an address: Thunderbird autoconfig, Outlook
Autodiscover, and the DNS records that lead them here."""

import json
from io import StringIO
from xml.etree.ElementTree import Element

import pytest
from defusedxml import ElementTree as SafeET
from django.core.management import CommandError, call_command
from django.test import Client
from pytest_django.fixtures import Settings

AUTOCONFIG_PATHS = ["/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"]
DOMAINS = [("inbox.lv", "mail.inbox.lv"), ("mail.ee", "mail.ee")]
AD_NS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OUTLOOK_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"

# What Outlook 2016-2021 posts (captured from a real client, address changed).
OUTLOOK_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request><EMailAddress>&lol9;@inbox.lv</EMailAddress>
  <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


def servers(config: Element, kind: str) -> list[tuple[str, str, str, str, str]]:
    return [
        (
            server.get("type", ""),
            server.findtext("hostname", ""),
            server.findtext("port", ""),
            server.findtext("socketType", ""),
            server.findtext("username", ""),
        )
        for server in config.iter(kind)
    ]


# --- Thunderbird ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", AUTOCONFIG_PATHS)
@pytest.mark.parametrize(("domain", "host"), DOMAINS)
def test_thunderbird_gets_the_servers_of_the_address_domain(
    client: Client, path: str, domain: str, host: str
) -> None:
    response = client.get(path, {"emailaddress": f"someone@{domain}"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/xml; charset=utf-8"
    config = SafeET.fromstring(response.content)
    provider = config.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == domain
    assert provider.findtext("domain") == domain
    assert servers(config, "incomingServer") == [
        ("imap", host, "993", "SSL", "%EMAILADDRESS%"),
        ("pop3", host, "995", "SSL", "%EMAILADDRESS%"),
    ]
    assert servers(config, "outgoingServer") == [
        ("smtp", host, "465", "SSL", "%EMAILADDRESS%"),
        ("smtp", host, "587", "STARTTLS", "%EMAILADDRESS%"),
    ]


def test_thunderbird_leaves_pop3_messages_on_the_server(client: Client) -> None:
    config = SafeET.fromstring(
        client.get(AUTOCONFIG_PATHS[0], {"emailaddress": "a@inbox.lv"}).content
    )
    assert config.findtext(".//incomingServer[@type='pop3']/pop3/leaveMessagesOnServer") == "true"
    assert config.find(".//pop3/checkInterval").get("minutes") == "5"


def test_thunderbird_is_sent_to_the_switch_first(client: Client, settings: Settings) -> None:
    settings.PORTAL_URL = "https://settings.inbox.lv"
    config = SafeET.fromstring(
        client.get(AUTOCONFIG_PATHS[0], {"emailaddress": "a@inbox.lv"}).content
    )
    enable = config.find(".//enable")
    assert enable is not None
    assert enable.get("visiturl") == "https://settings.inbox.lv/settings/mail-programs/"
    instructions = {i.get("lang"): i.text for i in enable.findall("instruction")}
    assert set(instructions) == {"lv", "en", "ru", "lt", "et"}
    assert "Allow external POP3/IMAP and SMTP access" in instructions["en"]


@pytest.mark.parametrize(("domain", "host"), DOMAINS)
def test_the_autoconfig_host_answers_without_an_address(
    client: Client, settings: Settings, domain: str, host: str
) -> None:
    settings.ALLOWED_HOSTS = [f"autoconfig.{domain}"]
    response = client.get(AUTOCONFIG_PATHS[1], HTTP_HOST=f"autoconfig.{domain}")
    assert response.status_code == 200
    config = SafeET.fromstring(response.content)
    assert config.find("emailProvider").get("id") == domain
    assert {server[1] for server in servers(config, "incomingServer")} == {host}


def test_an_unknown_address_gets_its_domain_settings_all_the_same(client: Client, db: None) -> None:
    # No probing: the answer never depends on whether the mailbox exists.
    known = client.get(AUTOCONFIG_PATHS[0], {"emailaddress": "alice@inbox.lv"}).content
    unknown = client.get(AUTOCONFIG_PATHS[0], {"emailaddress": "nobody-here@inbox.lv"}).content
    assert known == unknown


@pytest.mark.parametrize(
    "query", [{"emailaddress": "x@gmail.com"}, {"emailaddress": "nonsense"}, {}]
)
def test_a_domain_we_do_not_host_is_not_found(client: Client, query: dict[str, str]) -> None:
    response = client.get(AUTOCONFIG_PATHS[0], query)
    assert response.status_code == 404


# --- Outlook Autodiscover -------------------------------------------------------------------


def post_autodiscover(client: Client, body: str, path: str = "/autodiscover/autodiscover.xml"):  # type: ignore[no-untyped-def]
    return client.post(path, body.encode(), content_type="text/xml")


def error_code(response) -> str:  # type: ignore[no-untyped-def]
    root = SafeET.fromstring(response.content)
    return str(root.findtext(f"{AD_NS}Response/{AD_NS}Error/{AD_NS}ErrorCode", ""))


@pytest.mark.parametrize(("domain", "host"), DOMAINS)
@pytest.mark.parametrize(
    "path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"]
)
def test_outlook_gets_imap_pop3_and_smtp_settings(domain: str, host: str, path: str) -> None:
    client = Client(enforce_csrf_checks=True)
    response = post_autodiscover(client, OUTLOOK_REQUEST.format(address=f"Someone@{domain}"), path)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/xml; charset=utf-8"
    root = SafeET.fromstring(response.content)
    assert root.tag == f"{AD_NS}Autodiscover"
    account = root.find(f"{OUTLOOK_NS}Response/{OUTLOOK_NS}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK_NS}AccountType") == "email"
    assert account.findtext(f"{OUTLOOK_NS}Action") == "settings"
    protocols = [
        (
            p.findtext(f"{OUTLOOK_NS}Type"),
            p.findtext(f"{OUTLOOK_NS}Server"),
            p.findtext(f"{OUTLOOK_NS}Port"),
            p.findtext(f"{OUTLOOK_NS}Encryption"),
            p.findtext(f"{OUTLOOK_NS}LoginName"),
        )
        for p in account.findall(f"{OUTLOOK_NS}Protocol")
    ]
    address = f"someone@{domain}"
    assert protocols == [
        ("IMAP", host, "993", "SSL", address),
        ("POP3", host, "995", "SSL", address),
        ("SMTP", host, "465", "SSL", address),
    ]


def test_an_xml_bomb_gets_an_invalid_request_error_not_a_crash(client: Client) -> None:
    response = post_autodiscover(client, BILLION_LAUGHS)
    assert response.status_code == 200
    assert error_code(response) == "600"


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not xml at all",
        "<Autodiscover><Request></Request></Autodiscover>",
        OUTLOOK_REQUEST.format(address="no-at-sign"),
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    ],
)
def test_a_malformed_request_gets_error_600(client: Client, body: str) -> None:
    assert error_code(post_autodiscover(client, body)) == "600"


def test_an_activesync_request_gets_error_601(client: Client) -> None:
    body = OUTLOOK_REQUEST.format(address="a@inbox.lv").replace(
        "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a",
        "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006",
    )
    assert error_code(post_autodiscover(client, body)) == "601"


def test_a_browser_looking_at_autodiscover_gets_error_600(client: Client) -> None:
    assert error_code(client.get("/autodiscover/autodiscover.xml")) == "600"


def test_autodiscover_for_a_domain_we_do_not_host_is_not_found(client: Client) -> None:
    response = post_autodiscover(client, OUTLOOK_REQUEST.format(address="a@gmail.com"))
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/autodiscover/autodiscover.json?Email=a%40inbox.lv&Protocol=AutodiscoverV1",
        "/autodiscover/autodiscover.json/v1.0/a@mail.ee?Protocol=AutodiscoverV1",
    ],
)
def test_new_outlook_is_pointed_to_the_pox_endpoint(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {
        "Protocol": "AutodiscoverV1",
        "Url": "http://testserver/autodiscover/autodiscover.xml",
    }


def test_new_outlook_asking_for_activesync_is_told_what_we_offer(client: Client) -> None:
    response = client.get("/autodiscover/autodiscover.json?Email=a%40inbox.lv&Protocol=ActiveSync")
    assert response.status_code == 400
    assert json.loads(response.content)["ErrorCode"] == "InvalidProtocol"


# --- DNS records ----------------------------------------------------------------------------


def test_the_dns_records_name_the_servers_of_the_domain() -> None:
    out = StringIO()
    call_command("mail_dns_records", "inbox.lv", "--portal-host", "settings.inbox.lv", stdout=out)
    records = {
        line.split("\t")[0]: line.split("\t")[-1]
        for line in out.getvalue().splitlines()
        if not line.startswith(";")
    }
    assert records == {
        "_imaps._tcp.inbox.lv.": "0 1 993 mail.inbox.lv.",
        "_pop3s._tcp.inbox.lv.": "10 1 995 mail.inbox.lv.",
        "_submissions._tcp.inbox.lv.": "0 1 465 mail.inbox.lv.",
        "_submission._tcp.inbox.lv.": "10 1 587 mail.inbox.lv.",
        "_imap._tcp.inbox.lv.": "0 0 0 .",
        "_pop3._tcp.inbox.lv.": "0 0 0 .",
        "autoconfig.inbox.lv.": "settings.inbox.lv.",
        "autodiscover.inbox.lv.": "settings.inbox.lv.",
        "_autodiscover._tcp.inbox.lv.": "0 1 443 settings.inbox.lv.",
    }


def test_the_dns_records_use_the_host_of_mail_ee(settings: Settings) -> None:
    settings.PORTAL_URL = "https://settings.mail.ee/"
    out = StringIO()
    call_command("mail_dns_records", "mail.ee", stdout=out)
    assert "_imaps._tcp.mail.ee.\t3600\tIN\tSRV\t0 1 993 mail.ee." in out.getvalue()
    assert "autoconfig.mail.ee.\t3600\tIN\tCNAME\tsettings.mail.ee." in out.getvalue()


def test_the_dns_records_refuse_a_domain_we_do_not_host() -> None:
    with pytest.raises(CommandError, match="not in MAIL_DOMAINS"):
        call_command("mail_dns_records", "gmail.com", "--portal-host", "x.example")


@pytest.mark.parametrize(
    ("portal_url", "kind", "address"),
    [
        ("http://127.0.0.1:8000/", "A", "127.0.0.1"),
        ("https://[2001:db8::5]/", "AAAA", "2001:db8::5"),
    ],
)
def test_the_dns_records_give_an_address_record_when_the_site_has_no_host_name(
    settings: Settings, portal_url: str, kind: str, address: str
) -> None:
    # A CNAME or SRV target naming an address ("CNAME 127.0.0.1.") is not a valid record.
    settings.PORTAL_URL = portal_url
    out = StringIO()
    call_command("mail_dns_records", "inbox.lv", stdout=out)
    records = [line.split("\t") for line in out.getvalue().splitlines() if not line.startswith(";")]
    assert ["autoconfig.inbox.lv.", "3600", "IN", kind, address] in records
    assert ["autodiscover.inbox.lv.", "3600", "IN", kind, address] in records
    assert [
        "_autodiscover._tcp.inbox.lv.",
        "3600",
        "IN",
        "SRV",
        "0 1 443 autodiscover.inbox.lv.",
    ] in records
    assert not any(record[3] == "CNAME" for record in records)
