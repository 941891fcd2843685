"""What the hook routes tell their clients: who answered, whether a refusal is final, the id.

The hook shim and the MediaWiki extension retry everything but a 2xx or a final 4xx from a
bridge that named itself, and they fix each event's id at the source; these are the bridge's
halves of that agreement, on a real bridge process.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from bridge import __version__
from bridge.app import TokenCheck, create_app
from bridge.errors import SinkUnavailable
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sftpgo import EVENT_ID_HEADER, IDENTITY_HEADER
from bridge.sinks.file import read_events
from bridge.sinks.memory import MemorySink

from conftest import BridgeProcess, mediawiki_observations, mediawiki_payload, post
from support import free_port, serve_in_thread

SFTPGO_QUERY = "ip=198.51.100.7&login_method=password&protocol=FTP&status=0"
BOB = b'{"username":"bob","id":7}'
MEDIAWIKI = json.dumps(mediawiki_payload(mediawiki_observations()[0])).encode()


def sftpgo(bridge: BridgeProcess, query: str = SFTPGO_QUERY) -> str:
    return f"{bridge.url}/v1/hooks/sftpgo?{query}"


def mediawiki(bridge: BridgeProcess) -> str:
    return f"{bridge.url}/v1/hooks/mediawiki"


def answer_of(url: str, body: bytes, **kwargs: Any) -> tuple[int, str | None, Any]:
    """(status, X-Login-Audit-Bridge, the body's "final" or None for a 2xx)."""
    status, document, headers = post(url, body, **kwargs)
    return status, headers.get(IDENTITY_HEADER), document.get("final")


# -- who answered, and whether it is final


@pytest.fixture
def bridge(bridge_factory: Callable[..., BridgeProcess]) -> BridgeProcess:
    return bridge_factory(auth_tokens="test-token", max_body_bytes="1024")


def test_every_hook_answer_names_the_bridge_and_says_whether_it_is_final(
    bridge: BridgeProcess,
) -> None:
    """final is true only where the same body would be refused again: 400, 413, 415."""
    big = b'{"username":"%s"}' % (b"x" * 2000)
    cases: dict[str, tuple[str, bytes, dict[str, Any]]] = {
        "stored": (sftpgo(bridge), BOB, {}),
        "stored mediawiki": (mediawiki(bridge), MEDIAWIKI, {}),
        "malformed": (sftpgo(bridge), b'{"username": ', {}),
        "invalid field": (
            sftpgo(bridge, "ip=nope&login_method=password&protocol=FTP&status=0"),
            BOB,
            {},
        ),
        "invalid mediawiki": (mediawiki(bridge), b'{"format":"other"}', {}),
        "too large": (sftpgo(bridge), big, {}),
        "media type": (sftpgo(bridge), BOB, {"headers": {"Content-Type": "text/plain"}}),
        "no token": (sftpgo(bridge), BOB, {"token": None}),
        "wrong token": (mediawiki(bridge), MEDIAWIKI, {"token": "not-it"}),
    }

    answers = {name: answer_of(url, body, **kw) for name, (url, body, kw) in cases.items()}

    assert answers == {
        "stored": (200, __version__, None),
        "stored mediawiki": (200, __version__, None),
        "malformed": (400, __version__, True),
        "invalid field": (400, __version__, True),
        "invalid mediawiki": (400, __version__, True),
        "too large": (413, __version__, True),
        "media type": (415, __version__, True),
        "no token": (401, __version__, False),
        "wrong token": (401, __version__, False),
    }


def test_a_hook_asked_with_get_is_a_405_that_is_not_final(bridge: BridgeProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(sftpgo(bridge), timeout=10)
    with refused.value as reply:
        document = json.loads(reply.read())
        assert (reply.code, reply.headers[IDENTITY_HEADER], document["final"]) == (
            405,
            __version__,
            False,
        )


def test_a_503_names_the_bridge_and_is_not_final() -> None:
    """The sink down and no spool: come back later, with the same body."""
    sink, metrics = MemorySink(), Metrics()
    asyncio.run(sink.start())
    sink.fail_with = SinkUnavailable("broker down")
    app = create_app(
        pipeline=Pipeline(sink=sink, metrics=metrics, publish_timeout=5),
        normalizer=Normalizer(),
        metrics=metrics,
        tokens=TokenCheck([], header="Authorization"),
        max_body_bytes=4096,
    )
    port = free_port()
    with serve_in_thread(app, port):
        url = f"http://127.0.0.1:{port}/v1/hooks/sftpgo?{SFTPGO_QUERY}"
        assert answer_of(url, BOB, token=None) == (503, __version__, False)


# -- the event id the source fixed


def uids(bridge: BridgeProcess) -> list[str]:
    return [r["metadata"]["uid"] for r in read_events(bridge.events_dir)]


@pytest.mark.parametrize("route", ["sftpgo", "mediawiki"])
def test_the_sources_event_id_becomes_the_events_uid_in_canonical_form(
    route: str, bridge: BridgeProcess
) -> None:
    url, body = (sftpgo(bridge), BOB) if route == "sftpgo" else (mediawiki(bridge), MEDIAWIKI)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    answers = [
        post(url, body, headers={EVENT_ID_HEADER: first})[1]["event_id"],
        post(url, body, headers={EVENT_ID_HEADER: second.upper()})[1]["event_id"],
        post(url, body, headers={EVENT_ID_HEADER: first})[1]["event_id"],  # a retry
    ]

    assert answers == [first, second, first]
    assert uids(bridge) == [first, second, first]


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # version 1: not random, may repeat
        "00000000-0000-0000-0000-000000000000",  # a constant would merge every login
        "{3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f}",
        "3f1c2d4e5a6b4c7d8e9f0a1b2c3d4e5f",
        "x" * 4000,
    ],
    ids=["text", "uuid1", "nil", "braces", "no-hyphens", "4000-chars"],
)
def test_a_malformed_event_id_gets_a_fresh_uid_and_a_warning_never_a_400(
    bad: str, bridge: BridgeProcess
) -> None:
    status, document, _ = post(sftpgo(bridge), BOB, headers={EVENT_ID_HEADER: bad})

    assert status == 200
    [uid] = uids(bridge)
    assert document["event_id"] == uid != bad
    assert uuid.UUID(uid).version == 4
    assert f"ignored {EVENT_ID_HEADER}" in bridge.logs()
