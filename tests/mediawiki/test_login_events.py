"""Real logins on a real MediaWiki become the exact login events the bridge writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import Wiki, WikiClient

pytestmark = [pytest.mark.mediawiki, pytest.mark.slow]

EventsOf = Callable[[Any, int], list[dict[str, Any]]]


def test_clientlogin_success_is_a_success_event_with_the_account_id(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    answer = client.clientlogin(wiki.env["MW_ADMIN"], wiki.env["MW_ADMIN_PASSWORD"])
    assert answer["status"] == "PASS"

    [event] = events_of(wired, 1)
    assert event["status_id"] == 1
    assert event["status_detail"] is None
    assert event["user"]["name"] == "Alice"
    assert event["user"]["uid"] == str(client.user_id("Alice"))
    assert event["src_endpoint"]["ip"] == "127.0.0.1"
    assert event["http_request"]["user_agent"] == (
        "login-audit-test/test_clientlogin_success_is_a_success_event_with_the_account_id"
    )
    assert event["metadata"]["correlation_uid"] == event["http_request"]["uid"]
    assert event["service"] == {"name": "MediaWiki", "uid": "wiki", "version": "1.39.17"}
    # $wgServer is http://127.0.0.1:<port>: an address (OCSF's hostname is a DNS name) and a port
    assert (event["dst_endpoint"]["ip"], event["dst_endpoint"]["hostname"]) == ("127.0.0.1", None)
    assert event["dst_endpoint"]["port"] == urlsplit(wiki.url).port
    assert event["auth_protocol"] == "password"
    assert event["unmapped"] == {
        "mediawiki.raw_username": "Alice",
        "mediawiki.invocation": "1",
        "mediawiki.entry_point": "api",
    }


def test_clientlogin_through_php_fpm_is_reported_the_same_way(
    wiki: Wiki, wired: Any, fpm_client: WikiClient, events_of: EventsOf
) -> None:
    assert fpm_client.clientlogin("Alice", wiki.env["MW_ADMIN_PASSWORD"])["status"] == "PASS"

    [event] = events_of(wired, 1)
    assert (event["status_id"], event["user"]["name"]) == (1, "Alice")
    assert event["src_endpoint"]["ip"] == "127.0.0.1"


def test_wrong_password_is_a_failure_named_by_the_raw_input(
    wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    assert client.clientlogin("alice_", "not-her-password")["status"] == "FAIL"

    [event] = events_of(wired, 1)
    assert (event["status_id"], event["status_detail"]) == (2, "wrongpassword")
    assert event["user"] == {
        "name": "alice_",
        "uid": None,
        "email_addr": None,
        "groups": [],
        "type_id": 0,
        "type": "Unknown",
    }
    assert event["unmapped"]["mediawiki.raw_username"] == "alice_"


def test_unknown_user_looks_exactly_like_a_wrong_password(
    wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    assert client.clientlogin("Nobody Here", "whatever-password")["messagecode"] == "wrongpassword"

    [event] = events_of(wired, 1)
    assert (event["status_id"], event["status_detail"]) == (2, "wrongpassword")
    assert (event["user"]["name"], event["user"]["uid"]) == ("Nobody Here", None)


def test_sixth_try_is_reported_as_throttled_with_its_duration(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    answers = [client.clientlogin("Throttle Target", f"guess-{n}") for n in range(6)]
    assert [a.get("messagecode") for a in answers] == ["wrongpassword"] * 5 + ["login-throttled"]
    # A success afterwards marks the end: `php -S` serves one request at a time.
    client.clientlogin("Alice", wiki.env["MW_ADMIN_PASSWORD"])

    events = events_of(wired, 7)
    assert [e["status_detail"] for e in events] == ["wrongpassword"] * 5 + ["login-throttled", None]
    throttled = events[5]
    assert throttled["user"]["name"] == "Throttle Target"
    assert throttled["unmapped"]["mediawiki.message_params"] == '[{"duration":300}]'


def test_blocked_user_fails_with_login_userblocked_and_keeps_the_account_id(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    assert client.clientlogin("Blocky", wiki.env["MW_BLOCKED_PASSWORD"])["messagecode"] == (
        "login-userblocked"
    )

    [event] = events_of(wired, 1)
    assert (event["status_id"], event["status_detail"]) == (2, "login-userblocked")
    assert event["user"]["name"] == "Blocky"
    assert event["user"]["uid"] == str(client.user_id("Blocky"))
    assert event["unmapped"]["mediawiki.message_params"] == '["Blocky"]'


def test_bot_password_login_carries_the_app_id(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    assert client.botlogin("Alice@harness", wiki.env["MW_BOT_PASSWORD"])["result"] == "Success"

    [event] = events_of(wired, 1)
    assert (event["status_id"], event["user"]["name"]) == (1, "Alice")
    assert event["user"]["uid"] == str(client.user_id("Alice"))
    assert event["auth_protocol"] == "bot-password"
    assert event["unmapped"]["mediawiki.app_id"] == "Alice@harness"


def test_failed_bot_password_login_is_two_events_linked_by_the_request_id(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    # A wrong password of a bot password's shape (32+ of [0-9a-w]), or MediaWiki skips that path.
    assert client.botlogin("Alice@harness", "0" * 32)["result"] == "Failed"
    client.clientlogin("Alice", wiki.env["MW_ADMIN_PASSWORD"])

    first, second, sentinel = events_of(wired, 3)
    assert sentinel["status_id"] == 1
    assert first["metadata"]["correlation_uid"] == second["metadata"]["correlation_uid"]
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert (first["status_detail"], second["status_detail"]) == ("wrongpassword", "wrongpassword")
    assert first["unmapped"]["mediawiki.invocation"] == "1"
    assert first["unmapped"]["mediawiki.app_id"] == "Alice@harness"
    assert (first["user"]["name"], first["user"]["uid"]) == ("Alice", str(client.user_id("Alice")))
    assert second["unmapped"]["mediawiki.invocation"] == "2"
    assert "mediawiki.app_id" not in second["unmapped"]
    assert (second["user"]["name"], second["user"]["uid"]) == ("Alice@harness", None)
    # No app id on the second call, yet the User@app name says it was a bot password too.
    assert (first["auth_protocol"], second["auth_protocol"]) == ("bot-password", "bot-password")


def test_web_form_login_is_reported_from_the_index_entry_point(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    reply = client.web_login("Alice", wiki.env["MW_ADMIN_PASSWORD"])
    assert reply.status_code == 302  # the form redirects once the login is done

    [event] = events_of(wired, 1)
    assert (event["status_id"], event["user"]["name"]) == (1, "Alice")
    assert event["unmapped"]["mediawiki.entry_point"] == "index"


def test_empty_password_never_reaches_the_hook(
    wiki: Wiki, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    client.clientlogin("Alice", "")
    client.clientlogin("Alice", wiki.env["MW_ADMIN_PASSWORD"])

    [event] = events_of(wired, 1)
    assert event["status_id"] == 1


@pytest.mark.parametrize(
    ("sent", "reported"), [("r" * 300, "r" * 128), ("", "-")], ids=["300-chars", "empty"]
)
def test_an_overlong_or_empty_external_request_id_still_delivers_the_event(
    sent: str, reported: str, wired: Any, client: WikiClient, events_of: EventsOf
) -> None:
    """The test wiki sets $wgAllowExternalReqID: the client's X-Request-Id is the request id.

    The bridge takes 1 to 128 characters; anything else was a 400 and the event was dropped.
    The extension cuts it (an empty one becomes "-"), as it cuts names and the User-Agent.
    """
    client.http.headers["X-Request-Id"] = sent

    assert client.clientlogin("Request Id Probe", "wrong-password")["status"] == "FAIL"

    [event] = events_of(wired, 1)
    assert event["metadata"]["correlation_uid"] == reported
    assert event["http_request"]["uid"] == reported
