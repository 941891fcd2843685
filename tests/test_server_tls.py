"""The HTTPS listener's context made again from its files when a certificate is renewed on disk."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trustme

from bridge.tls import RenewableServerContext


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issue(ca: trustme.CA, cert: Path, key: Path) -> None:
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))


class Files:
    """A server certificate and key on disk, and how many times a context was made from them."""

    def __init__(self, directory: Path) -> None:
        self.cert, self.key = directory / "tls.crt", directory / "tls.key"
        self.made = 0

    def make(self) -> ssl.SSLContext:
        self.made += 1
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def renewable(self, clock: Clock) -> RenewableServerContext:
        return RenewableServerContext(
            self.make, [self.cert, self.key], first=self.make(), every=10.0, clock=clock
        )


@pytest.fixture
def files(tmp_path: Path) -> Files:
    made = Files(tmp_path)
    issue(trustme.CA(), made.cert, made.key)
    return made


def test_unchanged_files_are_not_loaded_again(files: Files) -> None:
    clock = Clock()
    renewable = files.renewable(clock)
    first = renewable.context
    for _ in range(5):
        clock.now += 11
        assert renewable.current() == (first, None)
    assert files.made == 1


def test_a_renewed_certificate_is_loaded_at_the_first_look_after_the_interval(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    renewable = files.renewable(clock)
    first = renewable.context
    issue(trustme.CA(), files.cert, files.key)

    clock.now += 9  # not yet time to look
    assert renewable.current() == (first, None)
    clock.now += 2
    with caplog.at_level(logging.INFO, logger="bridge.tls"):
        renewed, outcome = renewable.current()

    assert outcome == "renewed"
    assert renewed is not first and renewable.context is renewed
    assert f"TLS: {files.cert}, {files.key} changed: new connections get the renewed" in caplog.text
    clock.now += 11
    assert renewable.current() == (renewed, None)  # loaded once


def test_files_that_do_not_load_leave_the_certificate_loaded_before_until_they_do(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    renewable = files.renewable(clock)
    first = renewable.context
    # The certificate renewed, its key not written yet: a pair that does not match.
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(files.cert))

    clock.now += 11
    with caplog.at_level(logging.WARNING, logger="bridge.tls"):
        assert renewable.current() == (first, "failed")
    assert "do not load" in caplog.text and "still serving" in caplog.text
    clock.now += 11
    assert renewable.current() == (first, "failed")  # looked at again, not given up on

    issue(trustme.CA(), files.cert, files.key)
    clock.now += 11
    renewed, outcome = renewable.current()
    assert outcome == "renewed" and renewed is not first


def test_a_file_that_disappears_is_a_change_that_does_not_load(files: Files) -> None:
    clock = Clock()
    renewable = files.renewable(clock)
    files.key.unlink()
    clock.now += 11
    assert renewable.current() == (renewable.context, "failed")
