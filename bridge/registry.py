"""Confluent Schema Registry wire format: schema registered per topic, messages framed by its id.

A message is ``00`` + the schema id (4 bytes, big-endian) + the Avro binary body, and the
schema lives under the subject ``<topic>-value`` (TopicNameStrategy). The registry is asked
once per topic in ``prepare()``; ``encode()`` only looks the id up, so the hot path never
touches the network. HTTP goes through ``urllib`` in a worker thread: it happens at start-up
only, and the bridge takes on no HTTP client dependency for it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastavro.read import SchemaResolutionError
from fastavro.schema import parse_schema

from bridge.codec import AvroCodec
from bridge.errors import BridgeError, ConfigError, MalformedInput, SinkUnavailable
from bridge.tls import client_context, peer_refused_certificate

if TYPE_CHECKING:
    from bridge.settings import Settings

MAGIC = b"\x00"
HEADER = struct.Struct(">bI")  # magic byte, schema id
# Not a registered media type: the payload is Avro binary behind a 5-byte Confluent frame, so
# it must not claim to be plain `application/vnd.apache.avro+binary`.
CONTENT_TYPE = "application/vnd.confluent.avro"
REGISTRY_MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
# Confluent's error codes for "no such subject" and "schema not under this subject": a lookup
# that gets either simply means "not registered yet".
NOT_REGISTERED = frozenset({40401, 40403})
# A reader takes writer schemas from the registry, i.e. from whoever could register one. Ours is
# 7.5 KB of JSON nested 11 deep; these bounds leave room for growth and keep a hostile one cheap.
MAX_WRITER_SCHEMA_CHARS = 256 * 1024
MAX_WRITER_SCHEMA_DEPTH = 64
# Avro types that can take no byte at all on the wire.
_PRIMITIVE_MIN_BYTES = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8}


def subject_for(topic: str) -> str:
    """TopicNameStrategy: the value schema of ``topic`` lives under ``<topic>-value``."""
    return f"{topic}-value"


def frame(schema_id: int, body: bytes) -> bytes:
    return HEADER.pack(0, schema_id) + body


def unframe(data: bytes) -> tuple[int, bytes]:
    """The schema id and the Avro body of a Confluent-framed message."""
    if len(data) < HEADER.size or data[:1] != MAGIC:
        raise MalformedInput("not the Confluent wire format (no magic byte 0 + 4-byte schema id)")
    _, schema_id = HEADER.unpack_from(data)
    return schema_id, data[HEADER.size :]


def decode_confluent(
    data: bytes, fetch_schema_by_id: Callable[[int], Any], *, codec: AvroCodec | None = None
) -> dict[str, Any]:
    """Decodes one message written with the schema the registry holds under its id.

    ``fetch_schema_by_id`` returns that writer schema, parsed (``AvroCodec(...).parsed``); pass
    a cached one, as ``registry_decoder`` does, so each id is fetched once. The record comes
    out in the shape of ``codec``'s schema (default: the shipped one), so events written by an
    older bridge read like new ones.
    """
    schema_id, body = unframe(data)
    reader = codec if codec is not None else _shipped_codec()
    writer = fetch_schema_by_id(schema_id)
    try:
        return reader.decode_datum(body, writer_schema=writer)
    except SchemaResolutionError as exc:  # its text is both schemas in full: not for a log line
        raise MalformedInput(
            f"written with schema id {schema_id}, which does not resolve to the login event schema"
        ) from exc
    except Exception as exc:  # foreign bytes can make fastavro raise almost anything
        raise MalformedInput(
            f"written with schema id {schema_id}, which does not read as a login event: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from exc


@cache
def _shipped_codec() -> AvroCodec:
    return AvroCodec()


# -- talking to the registry


def registry_message(body: bytes) -> str:
    """The registry's own explanation from an error body, or the body itself, shortened."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(parsed, dict) and "message" in parsed:
        return str(parsed["message"])
    return json.dumps(parsed)[:300]


def registry_error(status: int, body: bytes, *, url: str) -> BridgeError:
    """Our error for a registry's non-2xx answer: retriable only when the registry is at fault."""
    message = registry_message(body)
    if status >= 500:
        return SinkUnavailable(f"schema registry {url} failed ({status}): {message}")
    if status in (401, 403):
        return ConfigError(
            f"schema registry {url} refused the credentials ({status}): {message}; "
            "check BRIDGE_SCHEMA_REGISTRY_USERNAME / BRIDGE_SCHEMA_REGISTRY_PASSWORD"
        )
    if status == 409:
        return ConfigError(
            f"schema registry {url} rejected the event schema as incompatible with the "
            f"versions already registered (409): {message}"
        )
    if status == 422:
        return ConfigError(f"schema registry {url} rejected the event schema (422): {message}")
    if status == 404:
        return ConfigError(
            f"schema registry {url} answered 404 ({message}); is the URL the registry's "
            "Confluent-compatible API (e.g. http://host:8080/apis/ccompat/v7 for Apicurio)?"
        )
    return ConfigError(f"schema registry {url} refused the request ({status}): {message}")


class RegistryClient:
    """The few calls of the Confluent Schema Registry API the bridge needs; blocking."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        ca_location: Path | None = None,
        certificate_location: Path | None = None,
        key_location: Path | None = None,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"schema registry URL must be http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self._timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
        given = {
            "schema_registry_ssl_ca_location": ca_location,
            "schema_registry_ssl_certificate_location": certificate_location,
            "schema_registry_ssl_key_location": key_location,
        }
        named = {name: path for name, path in given.items() if path is not None}
        if key_location is not None and certificate_location is None:
            raise ConfigError(
                "schema_registry_ssl_key_location needs schema_registry_ssl_certificate_location"
            )
        if named:
            if scheme != "https":
                raise ConfigError(f"{', '.join(named)} needs an https:// registry URL")
            files = ", ".join(f"{name} {path}" for name, path in named.items())
            context = client_context(ca_location, certificate_location, key_location, files=files)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)
        self._headers = {"Accept": f"{REGISTRY_MEDIA_TYPE}, application/json"}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryClient:
        if not settings.schema_registry_url:
            raise ConfigError("no schema registry configured (BRIDGE_SCHEMA_REGISTRY_URL)")
        password = settings.schema_registry_password
        return cls(
            settings.schema_registry_url,
            username=settings.schema_registry_username,
            password=password.get_secret_value() if password is not None else None,
            timeout=settings.publish_timeout_seconds,
            ca_location=settings.schema_registry_ssl_ca_location,
            certificate_location=settings.schema_registry_ssl_certificate_location,
            key_location=settings.schema_registry_ssl_key_location,
        )

    def __repr__(self) -> str:
        # The Authorization header stays out of logs and tracebacks.
        return f"RegistryClient({self.url!r})"

    def lookup(self, subject: str, schema: str) -> int | None:
        """The id of ``schema`` under ``subject``, or None when it is not registered there."""
        try:
            answer = self._call("POST", f"/subjects/{_quote(subject)}", _schema_body(schema))
        except _NotRegistered:
            return None
        return _schema_id(answer, self.url)

    def register(self, subject: str, schema: str) -> int:
        """Registers ``schema`` under ``subject`` (a no-op when it is already there)."""
        path = f"/subjects/{_quote(subject)}/versions"
        return _schema_id(self._call("POST", path, _schema_body(schema)), self.url)

    def schema_by_id(self, schema_id: int) -> str:
        schema = self._call("GET", f"/schemas/ids/{schema_id}", None).get("schema")
        if not isinstance(schema, str):
            raise ConfigError(f"schema registry {self.url} sent no schema for id {schema_id}")
        return schema

    def _call(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        """The JSON answer, or one of our errors (``_NotRegistered`` for an unknown subject)."""
        request = urllib.request.Request(  # noqa: S310  (scheme checked in __init__)
            self.url + path, data=body, method=method, headers=self._headers
        )
        if body is not None:
            request.add_header("Content-Type", REGISTRY_MEDIA_TYPE)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return _json_object(response.read(), self.url)
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            if 300 <= exc.code < 400:
                raise _redirect_error(exc.code, exc.headers.get("Location"), url=self.url) from exc
            if exc.code == 404 and _error_code(payload) in NOT_REGISTERED:
                raise _NotRegistered(registry_message(payload)) from exc
            raise registry_error(exc.code, payload, url=self.url) from exc
        except (urllib.error.URLError, OSError) as exc:
            # An SSLError has a reason too: OpenSSL's, a string.
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise SinkUnavailable(
                    f"schema registry {self.url}: TLS certificate check failed: {reason} "
                    "(BRIDGE_SCHEMA_REGISTRY_SSL_CA_LOCATION names the CA to check it with)"
                ) from exc
            if peer_refused_certificate(reason):
                raise SinkUnavailable(
                    f"schema registry {self.url} did not accept the bridge's client "
                    f"certificate: {reason} (BRIDGE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION)"
                ) from exc
            raise SinkUnavailable(f"schema registry {self.url} unreachable: {reason}") from exc


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follows a redirect: urllib would resend the Authorization header to the new host
    (and turn a POST into a GET), then trust whatever schema id that host answers."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


def _redirect_error(status: int, location: str | None, *, url: str) -> ConfigError:
    target = location or "(no Location)"
    return ConfigError(
        f"schema registry {url} answered with a redirect ({status}) to {target}; "
        "the bridge does not follow redirects, which would carry its credentials elsewhere: "
        "set BRIDGE_SCHEMA_REGISTRY_URL to the registry's own URL"
    )


class _NotRegistered(ConfigError):
    """The subject, or this schema under it, is unknown; a lookup turns it into None."""


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _schema_body(schema: str) -> bytes:
    return json.dumps({"schema": schema, "schemaType": "AVRO"}).encode()


def _json_object(payload: bytes, url: str) -> dict[str, Any]:
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(f"schema registry {url} did not answer with a JSON object")
    return parsed


def _error_code(payload: bytes) -> object:
    try:
        parsed = json.loads(payload)
    except ValueError:
        return None
    return parsed.get("error_code") if isinstance(parsed, dict) else None


def _schema_id(answer: dict[str, Any], url: str) -> int:
    schema_id = answer.get("id")
    if not isinstance(schema_id, int) or not 0 <= schema_id <= 0xFFFFFFFF:
        raise ConfigError(f"schema registry {url} answered without a schema id: {answer}")
    return schema_id


# -- the WireEncoder


class ConfluentRegistryEncoder:
    """``WireEncoder`` for the Confluent wire format; ``prepare()`` must run before ``encode()``."""

    content_type = CONTENT_TYPE

    def __init__(self, codec: AvroCodec, client: RegistryClient) -> None:
        self.codec = codec
        self.client = client
        # The schema as written in the .avsc, compact: not the Parsing Canonical Form, which
        # drops defaults and logical types that the registry's compatibility checks and
        # consumers need.
        self.schema_json = json.dumps(codec.schema, separators=(",", ":"))
        self._ids: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, codec: AvroCodec) -> ConfluentRegistryEncoder:
        return cls(codec, RegistryClient.from_settings(settings))

    async def prepare(self, topics: Sequence[str]) -> None:
        for topic in topics:
            if topic not in self._ids:
                self._ids[topic] = await asyncio.to_thread(self._resolve, subject_for(topic))

    def _resolve(self, subject: str) -> int:
        """Looks up first, so a registry that forbids registration still works once the
        schema has been registered by someone allowed to."""
        known = self.client.lookup(subject, self.schema_json)
        return known if known is not None else self.client.register(subject, self.schema_json)

    def schema_id(self, topic: str) -> int:
        try:
            return self._ids[topic]
        except KeyError:
            raise ConfigError(
                f"no schema id for topic {topic!r}: prepare() was not called with it"
            ) from None

    def schema_ref(self, topic: str) -> str:
        return f"registry-id:{self.schema_id(topic)}"

    def frame(self, datum: bytes, topic: str) -> bytes:
        return frame(self.schema_id(topic), datum)

    def encode(self, record: dict[str, Any], topic: str) -> bytes:
        return frame(self.schema_id(topic), self.codec.encode_datum(record))


def registry_decoder(settings: Settings) -> Callable[[bytes], dict[str, Any]]:
    """A ``bytes -> record`` decoder for readers (``tail``): fetches each writer schema once."""
    schemas = WriterSchemas(RegistryClient.from_settings(settings))
    return lambda data: decode_confluent(data, schemas.get)


class WriterSchemas:
    """Writer schemas by registry id, checked and parsed once; refusals are remembered too, so a
    stream of messages framed with a bad id does not ask the registry again for each."""

    def __init__(self, client: RegistryClient, *, size: int = 64) -> None:
        self._client = client
        self._size = size
        self._known: dict[int, Any] = {}

    def get(self, schema_id: int) -> Any:
        if schema_id not in self._known:
            if len(self._known) >= self._size:
                self._known.pop(next(iter(self._known)))
            self._known[schema_id] = self._load(schema_id)
        found = self._known[schema_id]
        if isinstance(found, BridgeError):
            raise found
        return found

    def _load(self, schema_id: int) -> Any:
        try:
            return bounded_writer_schema(self._client.schema_by_id(schema_id))
        except BridgeError as exc:
            return MalformedInput(f"schema id {schema_id}: {exc.message}")


def bounded_writer_schema(text: str) -> Any:
    """The parsed writer schema, if decoding with it costs work bounded by the message's bytes.

    Refused (``MalformedInput``): a schema text over MAX_WRITER_SCHEMA_CHARS or nested deeper
    than MAX_WRITER_SCHEMA_DEPTH; a recursive type (decoding could recurse as deep as the
    message is long); an array whose items take no bytes (``null``, an empty record): its
    block count, read from the message, would be a loop that consumes no input.
    """
    if len(text) > MAX_WRITER_SCHEMA_CHARS:
        raise MalformedInput(f"writer schema of {len(text)} characters is too large")
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedInput("writer schema is not JSON") from exc
    _check_depth(schema)
    try:
        parsed = parse_schema(schema)
    except Exception as exc:  # fastavro's SchemaParseException, but also KeyError, TypeError…
        raise MalformedInput(f"writer schema does not parse: {str(exc)[:200]}") from exc
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    _min_bytes(parsed, named, ())
    return parsed


def _check_depth(schema: Any) -> None:
    pending = [(schema, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_WRITER_SCHEMA_DEPTH:
            raise MalformedInput(f"writer schema nests deeper than {MAX_WRITER_SCHEMA_DEPTH}")
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        pending.extend((child, depth + 1) for child in children)


def _min_bytes(schema: Any, named: dict[str, Any], seen: tuple[str, ...]) -> int:
    """The fewest bytes a value of ``schema`` takes on the wire; refuses unbounded types."""
    if isinstance(schema, list):  # a union: its branch index takes a byte
        for branch in schema:
            _min_bytes(branch, named, seen)
        return 1
    if isinstance(schema, str):
        if schema in _PRIMITIVE_MIN_BYTES:
            return _PRIMITIVE_MIN_BYTES[schema]
        if schema in ("bytes", "string"):
            return 1
        if schema in seen:
            raise MalformedInput(f"writer schema type {schema} is recursive")
        return _min_bytes(named[schema], named, (*seen, schema))
    kind = schema["type"]
    if kind == "record" or kind == "error":
        inner = (*seen, schema["name"])
        return sum(_min_bytes(field["type"], named, inner) for field in schema["fields"])
    if kind == "array":
        if _min_bytes(schema["items"], named, seen) == 0:
            raise MalformedInput("writer schema has an array of items that take no bytes")
        return 1
    if kind == "map":
        _min_bytes(schema["values"], named, seen)
        return 1  # each entry's key takes at least its length byte
    if kind == "fixed":
        return int(schema["size"])
    if kind == "enum":
        return 1
    return _min_bytes(kind, named, seen)  # {"type": "long", "logicalType": ...}
