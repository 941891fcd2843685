"""The routing facts a login event carries for the sinks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.normalize import Normalizer

NORMALIZER = Normalizer(sftpgo_user_fields=("username", "id"))
# Every value the normalizer accepts as an SFTPGo protocol (bridge/normalize.py _TOKEN).
protocols = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", fullmatch=True)


def sftpgo_event(protocol: str, status: str = "0") -> str:
    query = {"ip": "192.0.2.1", "login_method": "password", "protocol": protocol, "status": status}
    return NORMALIZER.sftpgo(query, {"username": "alice"}).routing_key


def test_a_dot_in_the_protocol_does_not_add_a_word_to_the_routing_key() -> None:
    assert sftpgo_event("SSH.v2") == "failure.sftpgo.ssh_v2"
    assert sftpgo_event("a.b.c", status="1") == "success.sftpgo.a_b_c"


def test_the_known_protocols_keep_their_lower_case_names() -> None:
    assert [sftpgo_event(p) for p in ("SSH", "FTP", "DAV", "HTTP", "OIDC")] == [
        "failure.sftpgo.ssh",
        "failure.sftpgo.ftp",
        "failure.sftpgo.dav",
        "failure.sftpgo.http",
        "failure.sftpgo.oidc",
    ]


@settings(max_examples=300, deadline=None)
@given(protocols)
def test_every_accepted_protocol_gives_a_routing_key_of_exactly_three_words(protocol: str) -> None:
    words = sftpgo_event(protocol).split(".")
    assert len(words) == 3
    assert all(words)
