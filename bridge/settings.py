"""Every setting of the bridge, read once from ``BRIDGE_*`` variables and an optional TOML file.

Precedence, highest first: keyword arguments (tests, the CLI), ``BRIDGE_*`` environment
variables, the TOML file named by ``BRIDGE_CONFIG`` (flat keys, the variable names without the
prefix, lower case), the defaults below. Secrets are :class:`pydantic.SecretStr`, so their
``repr`` and any log line show ``**********``. This is the only module that reads the
environment (the hook shim reads its own; that is its job).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bridge.errors import ConfigError
from bridge.sftpgo import secret_fields

ENV_PREFIX = "BRIDGE_"
CONFIG_VARIABLE = "BRIDGE_CONFIG"
TEST_PREFIX = "BRIDGE_TEST_"

SinkName = Literal["file", "kafka", "rabbitmq", "memory"]
CommaList = Annotated[tuple[str, ...], NoDecode]
SecretList = Annotated[tuple[SecretStr, ...], NoDecode]


# Request headers reach the token check decoded as latin-1 (HTTP's own header encoding), and a
# token is compared as UTF-8: a token outside printable ASCII could never match any request.
UNSENDABLE_CHARACTERS = (
    "holds a token with a character outside printable ASCII, which no request header can match; "
    "use letters, digits and punctuation only (e.g. the output of `openssl rand -hex 32`)"
)


def printable_ascii(token: str) -> bool:
    return token.isascii() and token.isprintable()


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """The bridge's configuration; frozen once built. Field docs are the settings reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # -- serving
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on (0: any free).")
    reuse_port: bool = Field(
        False,
        description="Set SO_REUSEPORT so several bridge processes share one port (one "
        "worker per process; give each its own data_dir).",
    )
    uds: Path | None = Field(
        None, description="Also listen on this Unix socket (for the hook shim on the same host)."
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Worker processes serving the one port (SO_REUSEPORT), each with its own "
        "data directory: the first uses data_dir and takes in the hook spool, the admin port "
        "and the Unix socket; worker N uses data_dir/workers/N. /readyz and /metrics answer "
        "for all of them. 0: one per CPU the process may use (CPU affinity and cgroup quota), "
        "or one when port is 0.",
    )
    max_body_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body accepted (413)."
    )
    publish_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a sink may take to acknowledge one event before the "
        "send counts as failed (Kafka's message.timeout.ms, RabbitMQ's confirm wait).",
    )
    spool_after_seconds: float = Field(
        2.0,
        gt=0,
        description="How long a request waits for the sink before its event goes to "
        "the bridge's spool instead (and is answered once fsync'd there).",
    )
    shutdown_timeout_seconds: float = Field(
        20.0, gt=0, description="On SIGTERM, how long to wait for in-flight requests to finish."
    )
    shutdown_drain_seconds: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, once the hooks stopped, how long to keep sending the spool's "
        "backlog to the sink before exiting (0: leave it for the next start or "
        "`login-audit-bridge drain`); what is left is logged. Keep shutdown_timeout_seconds plus "
        "this under the pod's terminationGracePeriodSeconds.",
    )
    max_in_flight: int = Field(
        4096,
        ge=1,
        description="Hook events being made durable at once (counted once a request is "
        "authenticated and its body read); past it: 503 with Retry-After.",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Client connections one listener of a worker holds open at once. Past it, "
        "the least active connection with no request being served is closed to make room; "
        "with none, the new connection is answered 503 with Retry-After and closed before "
        "anything is read. Bounds the memory connections take (about 6 KiB each, 17 KiB with "
        "a request waiting for the sink: at 2048, a worker peaks near 92 MiB). Over HTTPS a "
        "connection counts from its accept, and one still in its TLS handshake (about 53 KiB) "
        "is the first closed to make room (docs/deployment.md).",
    )
    max_header_bytes: int = Field(
        16384,
        ge=4096,
        le=1024 * 1024,
        description="Largest request line plus headers accepted; past it the connection is "
        "answered 431 and closed, before the headers are complete.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a client may take to send a request's line and headers (from "
        "connecting, or from the request's first byte); then 408 and the connection is closed. "
        "Over HTTPS the TLS handshake has as long again, then the connection is closed.",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a client may take to send a request's body once its headers are "
        "in; then 408 and the connection is closed.",
    )
    keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        description="How long a connection may stay open idle after an answer, waiting for its "
        "next request; then it is closed. Keep it above the idle timeout of any proxy that "
        "reuses connections to the bridge (ingress-nginx and AWS load balancers: 60 s; Google "
        "Cloud's: 600 s), or the proxy sends a request on a connection the bridge is closing "
        "and its client gets a 502. Idle connections count against max_connections, and the "
        "least active is closed to make room for a new one.",
    )
    gc_interval_seconds: float = Field(
        1.0,
        ge=0,
        description="How often a worker runs Python's garbage collector: its young objects "
        "every interval, the older ones every 10th and 100th. Python's own trigger (so many "
        "objects allocated) fires when requests pile up, and then holds the worker while it "
        "walks them all. 0: Python's trigger.",
    )
    access_log: bool = Field(False, description="Log every HTTP request (uvicorn access log).")
    admin_host: str = Field(
        "127.0.0.1",
        description="Address of the admin port (plain HTTP, no token, no client certificate: "
        "/healthz, /readyz, /metrics). Keep it on loopback or a cluster-only network.",
    )
    admin_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the admin listener (0: any free); unset: no admin listener. The "
        "main port serves /healthz, /readyz and /metrics too.",
    )

    # -- authentication and TLS
    auth_tokens: SecretList = Field(
        (),
        description="Accepted bearer tokens (printable ASCII), comma-separated (several allow "
        "rotation). Empty: no authentication, which serve refuses on a non-loopback host "
        "unless allow_unauthenticated is set or tls_client_ca authenticates clients.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve hooks without tokens on a non-loopback host (anyone who reaches "
        "the port can then write login events).",
    )
    auth_header: str = Field(
        "Authorization",
        description="Header carrying the token. 'Authorization' expects 'Bearer <token>'; any "
        "other header (e.g. X-Sftpgo-Hook-Token, set through SFTPGo's http.headers) holds the "
        "bare token.",
    )
    tls_certfile: Path | None = Field(None, description="Server certificate (PEM): enables HTTPS.")
    tls_keyfile: Path | None = Field(None, description="Private key of tls_certfile (PEM).")
    tls_client_ca: Path | None = Field(
        None, description="CA bundle (PEM): when set, clients must present a certificate (mTLS)."
    )
    tls_renewal_check_seconds: float = Field(
        10.0,
        gt=0,
        description="How often, at most, the bridge looks at its TLS files for a change: "
        "tls_certfile, tls_keyfile and tls_client_ca when a connection arrives, the "
        "kafka_ssl_* files with the producer's statistics (every 5 s), the rabbitmq_ssl_* "
        "files on a timer. A renewed certificate is used without a restart: by new HTTPS "
        "connections, a new Kafka producer, new RabbitMQ connections. Files that do not load "
        "leave those loaded before in use.",
    )

    # -- where events go
    sink: SinkName = Field("file", description="file, kafka or rabbitmq (memory: tests only).")
    data_dir: Path = Field(
        Path("login-audit-data"), description="Base directory for the file sink and the spools."
    )
    file_dir: Path | None = Field(
        None, description="File sink directory (default data_dir/events)."
    )
    file_rotate_bytes: int = Field(
        64 * 1024 * 1024, ge=65536, description="Start a new Avro file past this size."
    )
    file_rotate_seconds: float = Field(
        3600.0, gt=0, description="Start a new Avro file past this age."
    )
    file_retain_bytes: int = Field(
        0,
        ge=0,
        description="Delete the oldest closed event files once all files together pass this "
        "size (0: keep every file). Set it below the volume's size, or a full volume stops "
        "the sink (and on an emptyDir the pod is evicted with every file).",
    )
    file_retain_seconds: float = Field(
        0, ge=0, description="Delete closed event files older than this (0: keep every file)."
    )

    # -- the hook shim's spool, taken in by the bridge
    hook_spool_dir: Path | None = Field(
        None,
        description="Where the hook shim spools events when the bridge is down "
        "(default data_dir/hook-spool); the bridge takes them in at start and periodically.",
    )
    hook_spool_interval_seconds: float = Field(
        5.0, gt=0, description="How often the bridge looks into hook_spool_dir."
    )

    # -- normalization
    sftpgo_user_fields: CommaList = Field(
        ("username", "id"),
        description="Allow-list of top-level SFTPGo user fields copied into events. username and "
        "id are always used; add e.g. email, role, groups, description. Only text and number "
        "values are copied (groups: names and types only); nothing nested ever is. Names that "
        "hold secrets (password, filesystem, filters, ...) are refused.",
    )

    # -- Kafka
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_topic_success: str = Field("login-audit.success", description="Topic for successes.")
    kafka_topic_failure: str = Field("login-audit.failure", description="Topic for failures.")
    kafka_key: Literal["event_id", "user"] = Field(
        "event_id", description="Message key: event_id (dedupe) or user (per-user ordering)."
    )
    kafka_create_topics: bool = Field(True, description="Create missing topics at start.")
    kafka_topic_partitions: int = Field(
        -1,
        description="Partitions of created topics (-1: the broker's default, num.partitions, "
        "1 unless the cluster sets it). librdkafka sends each partition its own produce "
        "request, so at a given rate every partition adds requests and broker CPU.",
    )
    kafka_topic_replication: int = Field(
        -1, description="Replication factor of created topics (-1: the broker's default)."
    )
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="Producer compression codec."
    )
    kafka_linger_ms: float = Field(
        2.0,
        ge=0,
        description="Producer linger: batches for this long; low, since each request waits.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None
    ) = Field(None, description="SASL mechanism.")
    kafka_sasl_username: str | None = Field(None, description="SASL user (PLAIN, SCRAM).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (PLAIN, SCRAM).")
    kafka_oauth_token_endpoint_url: str | None = Field(
        None, description="OAUTHBEARER (OIDC) token endpoint."
    )
    kafka_oauth_client_id: str | None = Field(None, description="OAUTHBEARER client id.")
    kafka_oauth_client_secret: SecretStr | None = Field(None, description="OAUTHBEARER secret.")
    kafka_oauth_scope: str | None = Field(None, description="OAUTHBEARER scope.")
    kafka_ssl_ca_location: Path | None = Field(None, description="CA bundle for the brokers.")
    kafka_ssl_certificate_location: Path | None = Field(None, description="Client certificate.")
    kafka_ssl_key_location: Path | None = Field(None, description="Client key.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Client key password.")
    kafka_statistics_interval_ms: int = Field(
        15000, ge=0, description="librdkafka statistics interval for metrics (0: off)."
    )

    # -- RabbitMQ
    rabbitmq_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="AMQP URL with credentials; amqps:// for TLS.",
    )
    rabbitmq_exchange: str = Field("login-audit", description="Durable topic exchange.")
    rabbitmq_declare_queues: bool = Field(
        False, description="Also declare durable queues per status bound to success.# / failure.#."
    )
    rabbitmq_queue_success: str = Field("login-audit.success", description="Success queue name.")
    rabbitmq_queue_failure: str = Field("login-audit.failure", description="Failure queue name.")
    rabbitmq_ssl_ca_file: Path | None = Field(None, description="CA bundle for amqps://.")
    rabbitmq_ssl_certfile: Path | None = Field(None, description="Client certificate (amqps).")
    rabbitmq_ssl_keyfile: Path | None = Field(None, description="Client key (amqps).")

    # -- Schema Registry
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible Schema Registry: switches to its wire format."
    )
    schema_registry_username: str | None = Field(None, description="Registry basic-auth user.")
    schema_registry_password: SecretStr | None = Field(None, description="Registry password.")
    schema_registry_ssl_ca_location: Path | None = Field(
        None,
        description="CA bundle for an https:// registry (default: the system's CA bundle).",
    )
    schema_registry_ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) for a registry that asks for one (mTLS)."
    )
    schema_registry_ssl_key_location: Path | None = Field(
        None,
        description="Key of schema_registry_ssl_certificate_location (PEM; default: the key "
        "in the certificate's file).",
    )

    # -- the bridge's own spool, used when the broker is down or slow
    spool_enabled: bool = Field(
        True, description="Spool events the sink cannot take now; off: answer 503 instead."
    )
    spool_max_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Disk space the spool may use (its SQLite file with the write-ahead log, "
        "dead letters included); past it: 503.",
    )
    spool_max_events: int = Field(
        2_000_000,
        ge=1,
        description="Events the spool may hold, dead letters included; past it: 503.",
    )
    # -- logs
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="Log level. Below debug, a line of librdkafka's or the RabbitMQ client's "
        "that repeats is logged once a minute, with the count of those left out.",
    )
    log_format: Literal["json", "text"] = Field("json", description="json lines or plain text.")

    _split = field_validator("auth_tokens", "sftpgo_user_fields", mode="before")(_split_commas)

    @field_validator("sftpgo_user_fields")
    @classmethod
    def _no_secret_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        secrets = secret_fields(value)
        if secrets:
            raise ValueError(
                f"names {', '.join(secrets)}, where SFTPGo's user JSON keeps secrets: "
                "remove it (only plain fields such as email, role, groups may be listed)"
            )
        return value

    @field_validator("auth_tokens", mode="after")
    @classmethod
    def _no_empty_token(cls, tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        # A TOML list can hold "" or "  "; such a token would match a missing one.
        if any(not t.get_secret_value().strip() for t in tokens):
            raise ValueError("holds an empty token; remove it")
        stripped = tuple(t.get_secret_value().strip() for t in tokens)
        if not all(map(printable_ascii, stripped)):
            raise ValueError(UNSENDABLE_CHARACTERS)
        return tuple(map(SecretStr, stripped))

    @field_validator("kafka_topic_partitions", "kafka_topic_replication")
    @classmethod
    def _count_or_broker_default(cls, value: int) -> int:
        # Kafka takes -1 for "the broker's default" (KIP-464). The cluster refuses 0 and
        # anything under -1 only when the sink creates its topics: refused here, at start-up.
        if value == 0 or value < -1:
            raise ValueError("must be 1 or more, or -1 for the broker's default")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if self.tls_client_ca is not None and self.tls_certfile is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_certfile and tls_keyfile")
        if self.kafka_sasl_mechanism is not None and "SASL" not in self.kafka_security_protocol:
            raise ValueError("kafka_sasl_mechanism needs kafka_security_protocol SASL_*")
        if self.admin_port is not None and self.admin_port == self.port != 0:
            raise ValueError("admin_port must differ from port: the admin port serves no hooks")
        return self

    @property
    def events_dir(self) -> Path:
        return self.file_dir if self.file_dir is not None else self.data_dir / "events"

    @property
    def hook_spool_path(self) -> Path:
        return (
            self.hook_spool_dir if self.hook_spool_dir is not None else self.data_dir / "hook-spool"
        )

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool.sqlite3"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_VARIABLE)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_VARIABLE}
    # BRIDGE_TEST_* point the test suite at brokers (scripts/brokers env); not settings.
    return sorted(
        k
        for k in environ
        if k.startswith(ENV_PREFIX) and not k.startswith(TEST_PREFIX) and k not in known
    )


def _describe(loc: tuple[int | str, ...], msg: str) -> str:
    key = str(loc[0]) if loc else "?"
    return f"{key} ({ENV_PREFIX}{key.upper()}): {msg}"


def load_settings(*, config_file: Path | None = None, **overrides: Any) -> Settings:
    """Builds the settings or raises ConfigError naming every bad key and why.

    ``config_file`` (the CLI's --config) takes the place of BRIDGE_CONFIG.
    """
    if config_file is not None:
        os.environ[CONFIG_VARIABLE] = str(config_file)
    unknown = _unknown_variables(os.environ)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)} (see --help for the list)")
    config_path = os.environ.get(CONFIG_VARIABLE)
    if config_path and not Path(config_path).is_file():
        raise ConfigError(f"{CONFIG_VARIABLE}={config_path}: no such file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc
    except ValueError as exc:  # the TOML file itself does not parse
        raise ConfigError(f"{CONFIG_VARIABLE}={config_path}: {exc}") from exc


def check_can_serve(settings: Settings) -> None:
    """Refuses settings that ``serve`` must not run with; other commands accept them.

    Raises ConfigError: the memory sink keeps nothing, and hooks without authentication on
    an address others can reach would let anyone write into the audit trail.
    """
    if settings.sink == "memory":
        raise ConfigError("sink memory (BRIDGE_SINK) keeps nothing: it is for tests, not serve")
    if settings.workers > 1 and settings.port == 0:
        raise ConfigError("workers (BRIDGE_WORKERS) share one port: set a port other than 0")
    authenticated = bool(settings.auth_tokens) or settings.tls_client_ca is not None
    if not authenticated and not is_loopback(settings.host) and not settings.allow_unauthenticated:
        raise ConfigError(
            f"host {settings.host!r} (BRIDGE_HOST) is reachable from other machines but no "
            "token is set: set BRIDGE_AUTH_TOKENS (or BRIDGE_TLS_CLIENT_CA for client "
            "certificates), listen on 127.0.0.1, or set BRIDGE_ALLOW_UNAUTHENTICATED=true"
        )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; any other name or address counts as open."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
