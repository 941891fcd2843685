"""Turns what a source sent into one OCSF-shaped login event record (schemas/login_audit.avsc).

Every input is hostile until checked here: anything we cannot use raises an InputError that names
the field, and nothing from the SFTPGo user object reaches the record unless the allow-list
(:func:`bridge.sftpgo.project_user`) kept it. Free text is never a reason to refuse a login,
though: an attacker chooses the user name of a failed login, the request id and the user agent,
and a refused event is a trace erased. Text too long for its field is cut to size and text that
cannot be stored as is is cleaned; the event names such fields in ``unmapped["truncated"]`` and
``unmapped["sanitized"]`` (comma-separated paths in the event, e.g. ``user.name``).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import msgspec

from bridge.errors import InvalidField, MalformedInput
from bridge.event import STATUS_FAILURE, STATUS_SUCCESS, UNKNOWN_USER, LoginEvent
from bridge.mediawiki import MediaWikiLogin
from bridge.pam import LOGON_NETWORK, pam_event
from bridge.sftpgo import ALWAYS_KEPT, EVENT_ID_HEADER, GROUP_TYPES, HOOK_FIELDS, project_user

log = logging.getLogger(__name__)

OCSF_VERSION = "1.3.0"
LOG_NAME = "login-audit"
NO_AUTH_TRIED = "no_auth_tried"
# SFTPGo spelled it this way up to 2.5.0.
LEGACY_NO_AUTH_TRIED = "no_auth_tryed"

AUTH_PROTOCOL_UNKNOWN = 0
AUTH_PROTOCOL_OPENID = 4
AUTH_PROTOCOL_OTHER = 99
# OCSF's captions of the auth_protocol_id values we use; for 99 (Other) auth_protocol is the
# source's own word.
_AUTH_PROTOCOL_CAPTIONS = {AUTH_PROTOCOL_UNKNOWN: "Unknown", AUTH_PROTOCOL_OPENID: "OpenID"}
# UNKNOWN_USER is user.name when the source gave none (SFTPGo no_auth_tried, an unknown web
# client user): OCSF requires a user to carry a name, uid or account. No SFTPGo or MediaWiki
# user name can be it; one typed by an attacker is still told apart, as a source-given name is
# listed in observables and this one is not.
USER_TYPE_UNKNOWN = (0, "Unknown")
USER_TYPE_USER = (1, "User")
OBSERVABLE_IP = (2, "IP Address")
OBSERVABLE_USER_NAME = (4, "User Name")
# SFTPGo's methods with a "+" combine two factors (a key or certificate and a password, or a
# key and keyboard-interactive); these are one. keyboard-interactive alone may or may not have
# asked a TOTP code, and IDP's factors are the identity provider's: the hook cannot tell.
_SFTPGO_SINGLE_FACTOR = frozenset(("password", "publickey", "TLSCertificate", NO_AUTH_TRIED))
# MediaWiki refuses "@" in user names ($wgInvalidUsernameCharacters): a name with one is the
# "User@app" form of a bot password (BotPassword::getSeparator()).
_BOT_PASSWORD_SEPARATOR = "@"  # noqa: S105 (a separator, not a password)

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# A source's event id: a random (version 4) UUID in canonical form, as the shim and the MediaWiki
# extension make them. Nothing else is taken: a constant id (say, a static header set by hand)
# would make consumers drop real logins as duplicates of each other.
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MAX_NAME_CHARS = 256
MAX_EXTRA_PARAMS = 16
MAX_PARAM_CHARS = 256
MAX_GROUPS = 64
MAX_REQUEST_ID_CHARS = 128
MAX_TEXT_CHARS = 1024  # user agent, message parameters
MAX_VERSION_CHARS = 64
MAX_ZONE_CHARS = 64  # an IPv6 scope id: an interface name or number
OCSF_IP_MAX_CHARS = 40  # OCSF 1.3.0 ip_t max_len
# Kept in a scope id: printable ASCII but "%" (Python's ipaddress refuses a second one).
_ZONE_UNSAFE = re.compile(r"[^\x21-\x24\x26-\x7e]")
# A host name as OCSF's hostname_t takes it: dot-separated labels of letters, digits and inner "-".
_DNS_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
TRUNCATED = "truncated"
SANITIZED = "sanitized"

# Every field of a record, in the schema's order (the JSON rendering keeps it), with what no login
# changes: OCSF's class, category, activity and type. Each source derives its templates from it
# (:func:`_templates`); an event copies one and sets only its own fields. A copy is cheaper than
# building 32 fields anew, and the order lives in one place.
_RECORD: dict[str, Any] = {
    "class_uid": 3002,
    "class_name": "Authentication",
    "category_uid": 3,
    "category_name": "Identity & Access Management",
    "activity_id": 1,
    "activity_name": "Logon",
    "type_uid": 300201,
    "type_name": "Authentication: Logon",
    "timezone_offset": 0,
    "time": None,
    "severity_id": None,
    "severity": None,
    "status_id": None,
    "status": None,
    "status_detail": None,
    "message": None,
    "user": None,
    "src_endpoint": None,
    "dst_endpoint": None,
    "service": None,
    "auth_protocol_id": None,
    "auth_protocol": None,
    # Every login but a local PAM one (bridge.pam sets its own) comes over the network.
    "logon_type_id": LOGON_NETWORK[0],
    "logon_type": LOGON_NETWORK[1],
    "is_remote": True,
    "http_request": None,
    "metadata": None,
    "unmapped": None,
    "is_mfa": None,
    "status_code": None,
    "observables": None,
    "actor": None,  # who asked for the login, when not the user (PAM's sudo and su)
}
_OUTCOME = {
    True: {
        "severity_id": 1,
        "severity": "Informational",
        "status_id": STATUS_SUCCESS,
        "status": "Success",
    },
    False: {"severity_id": 2, "severity": "Low", "status_id": STATUS_FAILURE, "status": "Failure"},
}
# What a template may hold: values no event can change in place. A dict or a list in a template
# would be one object shared by every event made from it.
_IMMUTABLE = (int, str, type(None))


def _templates(**constant: Any) -> dict[bool, MappingProxyType[str, Any]]:
    """A source's record templates by outcome (True: success), with its ``constant`` fields.

    Read-only: an event's record is ``template.copy()``, a dict of its own.
    """
    unknown = constant.keys() - _RECORD.keys()
    if unknown:
        raise ValueError(f"not a record field: {sorted(unknown)}")
    if not all(isinstance(value, _IMMUTABLE) for value in constant.values()):
        raise ValueError("a template holds only immutable values")
    return {ok: MappingProxyType({**_RECORD, **_OUTCOME[ok], **constant}) for ok in (True, False)}


_MEDIAWIKI_RECORDS = _templates(auth_protocol_id=AUTH_PROTOCOL_OTHER)
# PAM's events are built by bridge.pam, on this layout.
_PAM_RECORDS = _templates()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# uuid.uuid4() reads 16 bytes with a getrandom() syscall per event: read them 256 ids at a time.
_IDS_PER_READ = 256


def _repeated(width: int, value: int) -> int:
    """``value`` as ``width`` bytes, once per id of a read, as one integer."""
    return int.from_bytes(value.to_bytes(width) * _IDS_PER_READ)


# The masks of a UUID's third group (the version: 4) and fourth (the RFC 4122 variant), over
# the groups of a whole read: one big-integer operation marks all 256 ids.
_VERSION_CLEAR, _VERSION_SET = _repeated(2, 0x0FFF), _repeated(2, 0x4000)
_VARIANT_CLEAR, _VARIANT_SET = _repeated(2, 0x3FFF), _repeated(2, 0x8000)


class RandomIds:
    """Random (version 4) UUIDs in canonical form, as ``str(uuid.uuid4())`` gives them, from
    the same OS randomness, read and formatted in bulk. A forked child starts from fresh bytes."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._ids = []

    def __call__(self) -> str:
        try:
            return self._ids.pop()
        except IndexError:  # once every _IDS_PER_READ ids
            self._ids = _read_ids()
            return self._ids.pop()


def _read_ids() -> list[str]:
    """_IDS_PER_READ fresh ids, from one read of OS randomness.

    Formatted a group at a time rather than an id at a time: each of the five groups
    (8-4-4-4-12 hex digits) of all the ids is one slice of the read, hexed and split in C.
    """
    n = _IDS_PER_READ
    raw = os.urandom(16 * n)
    version = int.from_bytes(raw[6 * n : 8 * n]) & _VERSION_CLEAR | _VERSION_SET
    variant = int.from_bytes(raw[8 * n : 10 * n]) & _VARIANT_CLEAR | _VARIANT_SET
    groups = (
        raw[: 4 * n].hex(" ", 4),
        raw[4 * n : 6 * n].hex(" ", 2),
        version.to_bytes(2 * n).hex(" ", 2),
        variant.to_bytes(2 * n).hex(" ", 2),
        raw[10 * n :].hex(" ", 6),
    )
    return list(map("-".join, zip(*(group.split() for group in groups), strict=True)))


class _Flags:
    """The fields of one event that were cut to size or cleaned, by their path in the event."""

    __slots__ = ("sanitized", "truncated")

    def __init__(self) -> None:
        self.truncated: list[str] = []
        self.sanitized: list[str] = []

    def fit(self, path: str, value: str, limit: int) -> str:
        """``value`` cut to ``limit`` characters, lone surrogates replaced; noted if changed."""
        if value.isascii() and len(value) <= limit:  # most text; isascii() reads a flag
            return value
        if len(value) > limit:
            self.truncated.append(path)
            value = value[:limit]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # "\ud800" in JSON: valid there, not storable as UTF-8
            self.sanitized.append(path)
            value = _LONE_SURROGATE.sub("\ufffd", value)
        return value

    def fit_optional(self, path: str, value: str | None, limit: int) -> str | None:
        return None if value is None else self.fit(path, value, limit)

    def note(self, unmapped: dict[str, str]) -> None:
        if self.truncated:
            unmapped[TRUNCATED] = ",".join(dict.fromkeys(self.truncated))
        if self.sanitized:
            unmapped[SANITIZED] = ",".join(dict.fromkeys(self.sanitized))


class Normalizer:
    """Builds event records; one instance holds the allow-list and the clock."""

    def __init__(
        self,
        *,
        sftpgo_user_fields: Iterable[str] = (),
        clock: Callable[[], int] = now_ms,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.sftpgo_user_fields = tuple(sftpgo_user_fields)
        self._user_reader = UserFieldsReader((*ALWAYS_KEPT, *self.sftpgo_user_fields))
        # Whether an allow-listed field goes to unmapped (see _user_extras).
        self._user_extras = any(f not in _USER_FIELDS_HOMED for f in self.sftpgo_user_fields)
        self._clock = clock
        self._new_id = new_id if new_id is not None else RandomIds()

    # -- SFTPGo

    def sftpgo_from_http(
        self, query: Mapping[str, str], body: bytes, *, event_id: str | None = None
    ) -> LoginEvent:
        """HTTP mode (and the shim, which speaks it): query facts, user JSON body."""
        return self.sftpgo(query, self._user_reader.read(body), event_id=event_id)

    def sftpgo(
        self,
        query: Mapping[str, str],
        user: Mapping[str, Any],
        *,
        received_ms: int | None = None,
        event_id: str | None = None,
    ) -> LoginEvent:
        """``event_id``: the id the source fixed (the shim), kept as ``metadata.uid``."""
        received = self._clock() if received_ms is None else received_ms
        flags = _Flags()
        ip, zone = _ip(query.get("ip"), flags)
        method = _sftpgo_method(_token("login_method", query.get("login_method")))
        protocol = _token("protocol", query.get("protocol"))
        status = query.get("status")
        # A client that never tried to authenticate cannot have logged in.
        ok = _sftpgo_status(status) and not method.no_attempt
        kept = project_user(user, self.sftpgo_user_fields)
        name = _optional_text("username", kept.get("username"), flags, "user.name")
        uid = _positive_id(kept.get("id"))
        type_id, type_caption = USER_TYPE_USER if uid is not None else USER_TYPE_UNKNOWN
        user_record = {
            "uid": uid,
            "email_addr": _optional_text("email", kept.get("email"), flags, "user.email_addr"),
            "groups": _groups(kept["groups"], flags) if "groups" in kept else [],
            "type_id": type_id,
            "type": type_caption,
            "name": UNKNOWN_USER if name is None else name,
        }
        unmapped = {"sftpgo.login_method": method.name}
        if len(query) > len(HOOK_FIELDS):  # all four are there (checked above): more are extras
            unmapped.update(_extra_params(query, flags))
        if self._user_extras:
            unmapped.update(_user_extras(kept, flags))
        flags.note(unmapped)
        if method.no_attempt:
            message = (
                f"SFTPGo {protocol} connection from {ip} closed before any authentication attempt"
            )
        else:
            outcome = "succeeded" if ok else "failed"
            message = (
                f"SFTPGo {protocol} login {outcome} for {_who(name)} from {ip} ({method.name})"
            )
        record = method.records[ok].copy()
        record["time"] = received
        record["message"] = message
        record["user"] = user_record
        record["src_endpoint"] = {"ip": ip, "interface_name": zone}
        record["dst_endpoint"] = {"svc_name": protocol, "hostname": None, "ip": None, "port": None}
        record["service"] = {"name": "SFTPGo", "uid": None, "version": None}
        record["metadata"] = _metadata(
            self._event_id(event_id),
            received,
            None,
            {"name": "SFTPGo", "vendor_name": "SFTPGo", "version": None},
            None,
        )
        record["unmapped"] = unmapped
        record["status_code"] = status
        record["observables"] = _observables(ip, name)
        return LoginEvent(record, "sftpgo")

    # -- MediaWiki

    def mediawiki(self, login: MediaWikiLogin, *, event_id: str | None = None) -> LoginEvent:
        """``event_id``: the id the extension fixed, kept as ``metadata.uid``."""
        ok = login.status == "PASS"
        flags = _Flags()
        fit = flags.fit
        ip, zone = _ip(login.ip, flags) if login.ip else (None, None)
        raw_name = fit("unmapped.mediawiki.raw_username", login.username, MAX_NAME_CHARS)
        name = _optional_text(
            "username",
            login.canonical_username if ok and login.canonical_username else login.username,
            flags,
            "user.name",
        )
        uid = str(login.user.id) if login.user is not None and login.user.id > 0 else None
        type_id, type_caption = USER_TYPE_USER if uid is not None else USER_TYPE_UNKNOWN
        # X-Request-Id when the wiki accepts it from clients: any text, even "".
        request_id = fit("http_request.uid", login.request_id, MAX_REQUEST_ID_CHARS) or None
        user_agent = flags.fit_optional("http_request.user_agent", login.user_agent, MAX_TEXT_CHARS)
        version = fit("service.version", login.mw_version, MAX_VERSION_CHARS)
        unmapped = {
            "mediawiki.raw_username": raw_name,
            "mediawiki.invocation": str(login.invocation),
        }
        optional = (
            ("mediawiki.app_id", login.app_id),
            ("mediawiki.performer", login.performer),
            ("mediawiki.entry_point", login.entry_point),
        )
        for key, value in optional:
            if value is not None:
                unmapped[key] = fit(f"unmapped.{key}", value, MAX_NAME_CHARS)
        if login.message_params:
            params = _COMPACT_JSON.encode(login.message_params)
            unmapped["mediawiki.message_params"] = fit(
                "unmapped.mediawiki.message_params", params, MAX_TEXT_CHARS
            )
        message_key = flags.fit_optional("status_detail", login.message_key, MAX_NAME_CHARS)
        wiki_id = fit("service.uid", login.wiki_id, MAX_NAME_CHARS)
        dst_endpoint = _mediawiki_server(login.server, flags)
        if login.server and dst_endpoint["hostname"] is None and dst_endpoint["ip"] is None:
            unmapped["mediawiki.server"] = fit(
                "unmapped.mediawiki.server", login.server, MAX_NAME_CHARS
            )
        flags.note(unmapped)
        record = _MEDIAWIKI_RECORDS[ok].copy()
        record["time"] = login.time
        record["status_detail"] = message_key
        record["message"] = (
            f"MediaWiki login {'succeeded' if ok else 'failed'} for {_who(name)}"
            f" from {ip or 'an unknown address'}"
            + ("" if ok or not message_key else f" ({message_key})")
        )
        record["user"] = {
            "uid": uid,
            "email_addr": None,
            "groups": [],
            "type_id": type_id,
            "type": type_caption,
            "name": UNKNOWN_USER if name is None else name,
        }
        record["src_endpoint"] = {"ip": ip, "interface_name": zone}
        record["dst_endpoint"] = dst_endpoint
        record["service"] = {"name": "MediaWiki", "uid": wiki_id, "version": version}
        bot = login.app_id or _BOT_PASSWORD_SEPARATOR in login.username
        record["auth_protocol"] = "bot-password" if bot else "password"
        record["http_request"] = {"user_agent": user_agent, "uid": request_id}
        record["metadata"] = _metadata(
            self._event_id(event_id),
            self._clock(),
            request_id,
            {"name": "MediaWiki", "vendor_name": "Wikimedia Foundation", "version": version},
            str(login.time),
        )
        record["unmapped"] = unmapped
        # is_mfa stays None: the hook does not say whether a second factor (OATHAuth) was asked.
        record["status_code"] = login.status
        record["observables"] = _observables(ip, name)
        return LoginEvent(record, "mediawiki")

    # -- PAM (the hook's --pam mode; the mapping is bridge.pam's)

    def pam_from_http(self, body: bytes, *, event_id: str | None = None) -> LoginEvent:
        return self.pam(parse_json_object(body), event_id=event_id)

    def pam(
        self,
        facts: Mapping[str, Any],
        *,
        received_ms: int | None = None,
        event_id: str | None = None,
    ) -> LoginEvent:
        received = self._clock() if received_ms is None else received_ms
        return pam_event(facts, received_ms=received, event_id=self._event_id(event_id))

    def _event_id(self, candidate: object) -> str:
        """The source's id when it is a canonical UUID4 (any case), else a fresh one.

        A malformed id never costs the event: it is logged and replaced, not refused.
        """
        if candidate is None:
            return self._new_id()
        if isinstance(candidate, str):
            canonical = candidate.lower()
            if _EVENT_ID.fullmatch(canonical):
                return canonical
        log.warning(
            "ignored %s %s: not a canonical UUID4; the event gets a fresh id",
            EVENT_ID_HEADER,
            repr(candidate)[:80],
        )
        return self._new_id()


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parses a JSON object strictly: UTF-8 only, no NaN, no lone surrogates."""
    try:
        text = body.decode("utf-8")
        value = _JSON.decode(text)
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"body is not UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedInput(f"body is not valid JSON: {_short(exc)}") from None
    if not isinstance(value, dict):
        raise MalformedInput("body must be a JSON object")
    return value


class UserFieldsReader:
    """Reads the top-level fields an allow-list may keep from SFTPGo's user JSON, and no more.

    SFTPGo's user object is mostly what the allow-list drops (filesystem, filters, permissions),
    and ``json.loads`` of all of it was about a tenth of the CPU per event (issue 11). msgspec
    decodes the listed fields and skips the others without building them. It is used only where
    it reads exactly what :func:`parse_json_object` would: the body is decoded as UTF-8 first (so
    a skipped string cannot hide a bad byte), and anything msgspec refuses (a lone surrogate
    escape, a number out of its range, nesting, malformed JSON, an array) is read again by
    :func:`parse_json_object`, whose result or error is then the answer, as before.
    """

    def __init__(self, fields: Iterable[str]) -> None:
        # Attribute names of our own: a field's JSON name need not be a Python identifier.
        self._names = {f"f{n}": name for n, name in enumerate(dict.fromkeys(fields))}
        self._decoder: msgspec.json.Decoder[Any] | None = None
        if any(_NOT_RENAMABLE.search(name) for name in self._names.values()):
            return  # a name msgspec cannot match (no SFTPGo field is one): the stdlib reads all
        user = msgspec.defstruct(
            "SftpgoUserFields",
            [(attr, Any, msgspec.UNSET) for attr in self._names],
            rename=self._names,
        )
        self._decoder = msgspec.json.Decoder(user)

    def read(self, body: bytes) -> dict[str, Any]:
        """The listed fields that are present, by name; MalformedInput as parse_json_object."""
        if self._decoder is not None and not _may_nest_deeply(body):
            try:
                user = self._decoder.decode(body.decode("utf-8"))
            except (
                UnicodeDecodeError,
                msgspec.DecodeError,
                msgspec.ValidationError,
                RecursionError,
            ):
                pass
            else:
                fields = {}
                for attr, name in self._names.items():
                    value = getattr(user, attr)
                    if value is not msgspec.UNSET:
                        fields[name] = value
                return fields
        parsed = parse_json_object(body)
        return {name: parsed[name] for name in self._names.values() if name in parsed}


# Far below Python's recursion limit (1,000) at any depth the bridge parses from.
_SAFE_DEPTH = 500


def _may_nest_deeply(body: bytes) -> bool:
    """Whether ``body`` could nest objects or arrays more than _SAFE_DEPTH levels deep.

    msgspec and the stdlib both give up at Python's recursion limit, but a few levels apart
    (each counts its own frames), so a body nested right there was read by one and refused by
    the other. Such a body is left to the stdlib alone. A level takes two bytes at least, so
    the bodies hooks send (about 1 KiB) are not even counted.
    """
    return len(body) > 2 * _SAFE_DEPTH and body.count(b"{") + body.count(b"[") > _SAFE_DEPTH


# What msgspec refuses in a renamed field's name.
_NOT_RENAMABLE = re.compile(r'[\\"\x00-\x1f]')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# json.dumps() with any option builds a new encoder per call (a quarter of a MediaWiki event).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# One decoder for every body: json.loads() with any option builds a new decoder and scanner per
# call (1 % of a worker's CPU).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _short(exc: BaseException) -> str:
    return str(exc)[:200] if not isinstance(exc, RecursionError) else "nested too deeply"


def _metadata(
    event_id: str,
    logged_ms: int,
    correlation_uid: str | None,
    product: dict[str, Any],
    original_time: str | None,
) -> dict[str, Any]:
    return {
        "uid": event_id,
        "version": OCSF_VERSION,
        "log_name": LOG_NAME,
        "logged_time": logged_ms,
        "correlation_uid": correlation_uid,
        "product": product,
        "profiles": [],
        "original_time": original_time,
    }


def _observables(ip: str | None, user_name: str | None) -> list[dict[str, Any]]:
    """The address and the source-given user name (never UNKNOWN_USER), as OCSF observables."""
    observables = []
    if ip is not None:
        observables.append(
            {
                "name": "src_endpoint.ip",
                "type_id": OBSERVABLE_IP[0],
                "type": OBSERVABLE_IP[1],
                "value": ip,
            }
        )
    if user_name is not None:
        observables.append(
            {
                "name": "user.name",
                "type_id": OBSERVABLE_USER_NAME[0],
                "type": OBSERVABLE_USER_NAME[1],
                "value": user_name,
            }
        )
    return observables


def _sftpgo_status(value: str | None) -> bool:
    if value == "1":
        return True
    if value == "0":
        return False
    raise InvalidField("status", "must be '1' (success) or '0' (failure)")


def _ip(value: str | None, flags: _Flags) -> tuple[str, str | None]:
    """Checks that the value is an IP address and returns it as sent, but for a hostile zone.

    An IPv6 scope id ("fe80::1%eth0") may be any text to Python and to the sender: one too long
    is cut to MAX_ZONE_CHARS, and characters that are not printable ASCII (newlines) become "_".
    OCSF's ip type holds at most 40 characters: an address with a zone longer than that keeps
    the bare address there and returns the zone apart (``src_endpoint.interface_name``).
    """
    if not value:
        raise InvalidField("ip", "is missing")
    address, percent, zone = value.partition("%")
    version = _address_version(address)
    if version is None:
        raise InvalidField("ip", "is not an IPv4 or IPv6 address")
    if not percent:
        return value, None
    if version != 6:
        raise InvalidField("ip", "is not an IPv4 or IPv6 address")
    kept = flags.fit("src_endpoint.ip", zone, MAX_ZONE_CHARS)
    clean = _ZONE_UNSAFE.sub("_", kept)
    if clean != kept or not clean:
        flags.sanitized.append("src_endpoint.ip")
    if not clean:
        return address, None
    if len(address) + 1 + len(clean) > OCSF_IP_MAX_CHARS:
        return address, clean
    return f"{address}%{clean}", None


def _address_version(address: str) -> int | None:
    """4 or 6; None if not an address."""
    # Longer text is no address and is not kept in the cache: the sender chooses its length.
    return _parsed_address_version(address) if len(address) <= _MAX_ADDRESS_CHARS else None


# The longest address ipaddress takes: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
_MAX_ADDRESS_CHARS = 45


@functools.lru_cache(maxsize=4096)
def _parsed_address_version(address: str) -> int | None:
    """Cached: the same clients log in again and again, and ipaddress parses in Python (4 % of a
    worker's CPU). A miss (an address never seen) costs what it did before."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None  # kept too: PAM asks about host names (PAM_RHOST) at every login


def _token(field: str, value: str | None) -> str:
    if not value:
        raise InvalidField(field, "is missing")
    if not _is_token(value):
        raise InvalidField(field, "must be 1-64 letters, digits or _.+-")
    return value


_MAX_TOKEN_CHARS = 64  # as _TOKEN says


def _is_token(value: str) -> bool:
    # Longer text is no token and is not kept in the cache: the sender chooses its length.
    return len(value) <= _MAX_TOKEN_CHARS and _is_short_token(value)


# Few distinct values (protocols, methods) on every event: a cached answer beats the regex.
@functools.lru_cache(maxsize=256)
def _is_short_token(value: str) -> bool:
    return _TOKEN.fullmatch(value) is not None


def _optional_text(field: str, value: Any, flags: _Flags, path: str) -> str | None:
    """A text field, or None for absent or empty; any other type is refused."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    return flags.fit(path, value, MAX_NAME_CHARS)


def _positive_id(value: Any) -> str | None:
    # bool is an int in Python; an id of true is nonsense, not 1.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    return None


def _groups(groups: list[dict[str, Any]], flags: _Flags) -> list[dict[str, Any]]:
    if len(groups) > MAX_GROUPS:
        flags.truncated.append("user.groups")
    return [
        {
            "name": _optional_text("groups.name", g["name"], flags, "user.groups.name") or "",
            "type": GROUP_TYPES.get(g["type"]),
        }
        for g in groups[:MAX_GROUPS]
    ]


def _extra_params(query: Mapping[str, str], flags: _Flags) -> dict[str, str]:
    """Parameters the operator put in the hook URL (e.g. ?source=eu1), kept as sftpgo.param.*."""
    extras = {k: v for k, v in query.items() if k not in HOOK_FIELDS}
    if len(extras) > MAX_EXTRA_PARAMS:
        raise InvalidField("query", f"has more than {MAX_EXTRA_PARAMS} extra parameters")
    kept: dict[str, str] = {}
    for key, value in extras.items():
        if not _PARAM_NAME.fullmatch(key):
            raise InvalidField("query", "has a parameter name that is not 1-64 of A-Za-z0-9_.-")
        name = f"sftpgo.param.{key}"
        kept[name] = flags.fit(f"unmapped.{name}", value, MAX_PARAM_CHARS)
    return kept


# The user fields with a home in the record (user.name, uid, email_addr, groups).
_USER_FIELDS_HOMED = frozenset(("username", "id", "email", "groups"))


def _user_extras(kept: Mapping[str, Any], flags: _Flags) -> dict[str, str]:
    """Allow-listed user fields without an OCSF home go to unmapped as sftpgo.user.<field>."""
    extras: dict[str, str] = {}
    for field, value in kept.items():
        if field in _USER_FIELDS_HOMED:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        name = f"sftpgo.user.{field}"
        extras[name] = flags.fit(f"unmapped.{name}", text, MAX_PARAM_CHARS)
    return extras


@dataclass(frozen=True, slots=True)
class _SftpgoMethod:
    """What an SFTPGo login method says about every login made with it."""

    name: str  # the method as recorded: today's spelling
    no_attempt: bool  # the client never tried to authenticate
    records: dict[bool, MappingProxyType[str, Any]]  # record templates by outcome


# A handful of methods in practice; bounded all the same, as the sender chooses the text.
@functools.lru_cache(maxsize=64)
def _sftpgo_method(method: str) -> _SftpgoMethod:
    """The method's facts and record templates, once per method (``method`` is a token)."""
    if method == LEGACY_NO_AUTH_TRIED:
        method = NO_AUTH_TRIED
    no_attempt = method == NO_AUTH_TRIED
    if no_attempt:
        auth_protocol_id = AUTH_PROTOCOL_UNKNOWN
    elif method == "IDP":
        auth_protocol_id = AUTH_PROTOCOL_OPENID
    else:
        auth_protocol_id = AUTH_PROTOCOL_OTHER
    if "+" in method:
        is_mfa: bool | None = True
    elif method in _SFTPGO_SINGLE_FACTOR:
        is_mfa = False
    else:
        is_mfa = None  # keyboard-interactive, IDP, or a method SFTPGo adds later
    records = _templates(
        status_detail=NO_AUTH_TRIED if no_attempt else None,
        auth_protocol_id=auth_protocol_id,
        auth_protocol=_AUTH_PROTOCOL_CAPTIONS.get(auth_protocol_id, method),
        is_mfa=is_mfa,
    )
    return _SftpgoMethod(method, no_attempt, records)


def _who(name: str | None) -> str:
    return repr(name) if name is not None else "an unnamed user"


def _mediawiki_server(server: str | None, flags: _Flags) -> dict[str, Any]:
    """The wiki as ``dst_endpoint``: $wgServer's host name, or its address, and its port."""
    host, ip, port = _parse_server(server) if server else (None, None, None)
    if host is not None:
        host = flags.fit("dst_endpoint.hostname", host, MAX_NAME_CHARS)
        # OCSF's hostname type is a DNS name; anything else (an IDN in Unicode, "_") has no
        # OCSF home and stays in unmapped["mediawiki.server"].
        host = host if _DNS_NAME.fullmatch(host) else None
    return {"svc_name": "MediaWiki", "hostname": host, "ip": ip, "port": port}


@functools.lru_cache(maxsize=64)
def _parse_server(server: str) -> tuple[str | None, str | None, int | None]:
    """(host name, address, port) of $wgServer; one wiki sends the same one on every login."""
    # $wgServer may be protocol-relative ("//wiki.example.org").
    try:
        parts = urlsplit(server if "//" in server else f"//{server}")
        host = parts.hostname
    except ValueError:
        return None, None, None  # not a URL ("//[", NFKC tricks): the login counts, without a host
    port = None
    with contextlib.suppress(ValueError):  # a port out of range is no port
        port = parts.port
    if host is None:
        return None, None, port
    try:
        return None, str(ipaddress.ip_address(host)), port
    except ValueError:
        return host, None, port
