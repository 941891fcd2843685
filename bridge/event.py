"""The normalized login event: one Avro record plus the routing facts sinks need."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

Status = Literal["success", "failure"]
Source = Literal["sftpgo", "mediawiki", "pam"]
SOURCES: tuple[Source, ...] = get_args(Source)

STATUS_SUCCESS = 1
STATUS_FAILURE = 2
# user.name when the source gave no name (OCSF requires a user to carry a name, uid or account).
UNKNOWN_USER = "<unknown>"

# A routing key's words are split on "."; anything but these characters becomes "_" in the
# protocol word, so a protocol such as "SSH.v2" cannot add a word and escape `*` bindings.
_NOT_IN_A_WORD = re.compile(r"[^a-z0-9_+-]")


@dataclass(frozen=True, slots=True)
class LoginEvent:
    """A record that validates against ``schemas/login_audit.avsc``, and where it came from."""

    record: dict[str, Any]
    source: Source

    @property
    def event_id(self) -> str:
        uid: str = self.record["metadata"]["uid"]
        return uid

    @property
    def status(self) -> Status:
        return "success" if self.record["status_id"] == STATUS_SUCCESS else "failure"

    @property
    def protocol(self) -> str:
        """The service logged in to, lower-cased for routing keys: ssh, ftp, …, mediawiki, sshd."""
        svc: str = self.record["dst_endpoint"]["svc_name"]
        return svc.lower()

    @property
    def user_name(self) -> str | None:
        """The name the source gave, or None when it gave none (the record says UNKNOWN_USER)."""
        name: str | None = self.record["user"]["name"]
        if name != UNKNOWN_USER:
            return name
        # A typed "<unknown>" is a real (attacker's) name: the source-given one is an observable.
        named = any(o["name"] == "user.name" for o in self.record.get("observables", ()))
        return name if named else None

    @property
    def routing_key(self) -> str:
        """``<status>.<source>.<protocol>``, e.g. ``failure.sftpgo.ssh``: always three words."""
        word = _NOT_IN_A_WORD.sub("_", self.protocol)
        return f"{self.status}.{self.source}.{word}"


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A login event and its Avro body: what the encode stage hands to sinks and the spool.

    ``datum`` is the record in Avro binary encoding with the current schema and no header;
    each sink frames it (single-object or the registry's wire format) or writes it as is.
    """

    event: LoginEvent
    datum: bytes
