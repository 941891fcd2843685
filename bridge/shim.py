"""login-audit-hook: SFTPGo's post-login hook program (and PAM's, through pam_exec), handing
each login to the bridge.

SFTPGo starts this program once per login, with a cleared environment and stdio on /dev/null,
kills it after 30 s and never retries it. So it must start fast, never hang, and never lose an
event: it posts the login to the running bridge as SFTPGo's HTTP mode would (but with the user
reduced to the allow-list, so no secret of the user JSON leaves the host), and when the bridge
does not take it, it writes the event durably into a spool directory that the bridge takes in
later. Only an answer that names the bridge counts: a 2xx stores the event, a 4xx the bridge
marks final moves it to the spool's ``rejected/``; anything else is spooled.

Start-up cost is paid on every login (thousands a second under a brute-force attack), so the
common path imports nothing beyond what the interpreter has already loaded: ``socket``,
``urllib`` and ``json`` each cost more than the rest of a run (measured with -X importtime),
hence ``_socket``, the few lines of HTTP/1.1 below, and ``_json``'s C scanner and encoder
(``json`` itself imports ``re``). ``ssl`` is loaded for https:// only.

``--pam success|failure`` is the same program run by ``pam_exec`` (docs/pam.md): the facts come
from the ``PAM_*`` variables and go to ``/v1/hooks/pam`` or the same spool, in a shorter time
(``LOGIN_AUDIT_HOOK_PAM_TIMEOUT``) under a hard limit, and it never writes on the terminal: a
login waits for it.
"""

from __future__ import annotations

import _json
import _signal  # type: ignore[import-not-found]  # signal itself imports enum
import _socket
import os
import sys
import time

from bridge import handoff

# One table of SFTPGo's variables for the hook and the bridge; the module costs ~0.3 ms to load.
from bridge.sftpgo import (
    ALWAYS_KEPT,
    ENV_TO_QUERY,
    EVENT_ID_HEADER,
    IDENTITY_HEADER,
    USER_ENV,
    project_user,
    secret_fields,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs more than a run of the hook
    from typing import Any

EXIT_OK = 0  # handed over, spooled, or refused for good by the bridge and kept in rejected/
EXIT_LOST = 1  # neither the bridge nor the spool took the event
EXIT_USAGE = 2  # not started by SFTPGo, a bad flag, or unsafe settings (the login is spooled)
# pam_exec's exit code is ignored on the lines docs/pam.md gives (optional / default=ignore).

DEFAULT_CONFIG = "/etc/login-audit-bridge/hook.env"
DEFAULTS = {
    "LOGIN_AUDIT_HOOK_URL": "http://127.0.0.1:8080",
    "LOGIN_AUDIT_HOOK_TOKEN": "",
    "LOGIN_AUDIT_HOOK_SPOOL_DIR": "/var/lib/login-audit-bridge/hook-spool",
    # Longer than the bridge's BRIDGE_SPOOL_AFTER_SECONDS (2 s): a bridge whose sink is slow
    # answers once it has spooled the event itself, and a hook that gave up before that would
    # spool a second copy of a login the bridge already stored.
    "LOGIN_AUDIT_HOOK_TIMEOUT": "5",
    "LOGIN_AUDIT_HOOK_USER_FIELDS": "",
    "LOGIN_AUDIT_HOOK_CA_FILE": "",
    "LOGIN_AUDIT_HOOK_CLIENT_CERT": "",
    # --pam: a login waits for the hook, so it waits at most this long for the bridge and then
    # spools the event (a bridge that took it meanwhile makes a copy with the same event id).
    "LOGIN_AUDIT_HOOK_PAM_TIMEOUT": "1",
}
HOOK_PATH = "/v1/hooks/sftpgo"
PAM_HOOK_PATH = "/v1/hooks/pam"
# --pam: beyond the timeout, what writing the spool may take before the process is killed.
PAM_SPOOL_SECONDS = 1.0
_PAM_TIMEOUT = "LOGIN_AUDIT_HOOK_PAM_TIMEOUT"
MAX_REPLY_BYTES = 65536  # the bridge's answers are a few hundred bytes; stop reading past this
# After a final 413, what is sent again: username and id, a name cut to this many characters
# (SFTPGo takes a failed login's name from the client; the bridge keeps 256 and flags the cut).
MAX_RESENT_TEXT = 1024
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_IDENTITY = IDENTITY_HEADER.lower().encode()

HELP = """\
usage: login-audit-hook [--help] [--version] [--check] [--pam success|failure] [--drain]

SFTPGo post-login hook: set SFTPGo's common.post_login_hook to this program's absolute path.
SFTPGo passes the login in SFTPGO_LOGIND_* variables; the hook posts it to the bridge (the user
reduced to allow-listed fields: no secret of the user JSON leaves this host) and, unless the
bridge stored it, spools it durably for the bridge to take in later. It always exits quickly
(at most LOGIN_AUDIT_HOOK_TIMEOUT seconds).

settings (SFTPGo's command.env, or KEY=VALUE lines in {config}, or the file
named by LOGIN_AUDIT_HOOK_CONFIG; the environment wins):
  LOGIN_AUDIT_HOOK_URL          the bridge: unix:///path/to.sock (same host, preferred),
                                http://127.0.0.1:port (loopback only: plain HTTP to another
                                host is refused) or https://host:port
                                (default {url})
  LOGIN_AUDIT_HOOK_TOKEN        bearer token, one of the bridge's BRIDGE_AUTH_TOKENS
  LOGIN_AUDIT_HOOK_SPOOL_DIR    spool directory, the bridge's BRIDGE_HOOK_SPOOL_DIR
                                (default {spool})
  LOGIN_AUDIT_HOOK_TIMEOUT      seconds to wait for the bridge, 0.1 to 10 (default {timeout};
                                keep it above the bridge's BRIDGE_SPOOL_AFTER_SECONDS)
  LOGIN_AUDIT_HOOK_USER_FIELDS  extra user fields sent and spooled, comma-separated: set it to
                                the bridge's BRIDGE_SFTPGO_USER_FIELDS (username and id are
                                always kept; nothing nested ever is; secret names are refused)
  LOGIN_AUDIT_HOOK_CA_FILE      https://: CA bundle (PEM) to verify the bridge (default: the
                                system's)
  LOGIN_AUDIT_HOOK_CLIENT_CERT  https://: client certificate and key (one PEM file), for a
                                bridge with BRIDGE_TLS_CLIENT_CA
  LOGIN_AUDIT_HOOK_PAM_TIMEOUT  --pam: seconds to wait for the bridge, 0.1 to 5 (default
                                {pam_timeout}); then the login is spooled

--pam success|failure: run by pam_exec (docs/pam.md), which passes the login in PAM_* variables;
the argument says which outcome the stack line is reached on (a session's open_session is a
success without it; close_session sends nothing). Silent, never reads stdin (so never a
password, even with expose_authtok), killed after the timeout plus {pam_spool}s at most.

--drain sends the PAM logins waiting in the spool to the bridge, oldest first, each with its
event id and time, and deletes each the bridge stored: for a host without a bridge of its own
reading the spool (run it from a timer). Exits 0 when none is left, 1 otherwise.

--check prints whether the settings are usable and exits 0, or 2 with the problem. Unusable
settings at login time: the login is spooled, not sent, and the hook exits 2.

exit codes: 0 handed over, spooled, or refused for good by the bridge (kept in the spool's
rejected/), 1 lost (bridge and spool both failed), 2 usage or unsafe settings
""".format(
    config=DEFAULT_CONFIG,
    url=DEFAULTS["LOGIN_AUDIT_HOOK_URL"],
    spool=DEFAULTS["LOGIN_AUDIT_HOOK_SPOOL_DIR"],
    timeout=DEFAULTS["LOGIN_AUDIT_HOOK_TIMEOUT"],
    pam_timeout=DEFAULTS["LOGIN_AUDIT_HOOK_PAM_TIMEOUT"],
    pam_spool=PAM_SPOOL_SECONDS,
)


class _Answer:
    """What came back from the configured address, and what it means for the event."""

    __slots__ = ("bridge", "detail", "final", "status")

    def __init__(
        self, status: int | None, bridge: str | None = None, final: bool = False, detail: str = ""
    ) -> None:
        self.status = status
        self.bridge = bridge  # the X-Login-Audit-Bridge version; None: not (known to be) a bridge
        self.final = final  # the bridge said it would refuse this exact body again
        self.detail = detail

    @property
    def stored(self) -> bool:
        return self.bridge is not None and self.status is not None and 200 <= self.status < 300


_NO_ANSWER = _Answer(None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--pam":
        return _pam(args[1:])
    if args:
        return _flags(args)
    environ = os.environ
    if "SFTPGO_LOGIND_STATUS" not in environ:
        _say("no SFTPGO_LOGIND_STATUS: run by SFTPGo only (--help)")
        return EXIT_USAGE
    received_ms = time.time_ns() // 1_000_000
    config = _settings(environ)
    fields = _fields(config)
    user = os.environb.get(USER_ENV.encode()) or b"{}"
    document: dict[str, Any] = {
        "format": handoff.FORMAT,
        "received_ms": received_ms,
        "event_id": _new_event_id(),
        "query": {name: _text(environ.get(variable, "")) for variable, name in ENV_TO_QUERY},
        # Only allow-listed fields are sent or written: the full user object carries secrets.
        "user": _projected(user, [f for f in fields if not secret_fields([f])]),
    }
    spool_dir = config["LOGIN_AUDIT_HOOK_SPOOL_DIR"]
    problem = _problem(config, fields)
    if problem is not None:
        _say(f"{problem}; this login was spooled, not sent (login-audit-hook --check)")
        return EXIT_USAGE if _spool(spool_dir, document) else EXIT_LOST
    deadline = time.monotonic() + _number(config, "LOGIN_AUDIT_HOOK_TIMEOUT", 0.1, 10.0)
    answer = _hand_over(config, document, deadline)
    if answer.status == 413 and answer.final:
        # The bridge's body limit is below even the allow-listed fields: username and id are
        # what it needs most, and cut like this they fit any limit it accepts (1 KiB or more).
        document["user"] = _essentials(document["user"])
        answer = _hand_over(config, document, deadline)
    if answer.stored:
        return EXIT_OK
    if answer.final:
        return _keep_rejected(spool_dir, document, answer)
    return EXIT_OK if _spool(spool_dir, document) else EXIT_LOST


def _flags(args: list[str]) -> int:
    if args[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return EXIT_OK
    if args[0] == "--version":
        from bridge import __version__

        sys.stdout.write(f"login-audit-hook {__version__}\n")
        return EXIT_OK
    if args[0] == "--drain":
        return _drain()
    if args[0] == "--check":
        config = _settings(os.environ)
        problem = _problem(config, _fields(config))
        if problem is not None:
            _say(problem)
            return EXIT_USAGE
        url = config["LOGIN_AUDIT_HOOK_URL"]
        sys.stdout.write(f"login-audit-hook: settings usable; the bridge is {url}\n")
        return EXIT_OK
    _say(f"unknown argument {args[0]!r} (--help)")
    return EXIT_USAGE


def _say(text: str) -> None:
    """One line on stderr (SFTPGo sends it to /dev/null; an operator running --check sees it).

    Under pam_exec, the line goes to syslog instead: stderr may be the user's terminal.
    """
    if _quiet:
        _syslog(text)
        return
    try:  # noqa: SIM105 - contextlib would be one more import on every run
        sys.stderr.write(f"login-audit-hook: {text}\n")
    except (AttributeError, OSError, ValueError):
        pass  # no usable stderr: nothing else to tell


_quiet = False  # --pam: nothing on stdout or stderr


def _syslog(text: str) -> None:
    try:
        import syslog  # a problem's path only: one small C module

        syslog.openlog("login-audit-hook", 0, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_WARNING, text)
    except (ImportError, OSError):
        pass


def _settings(environ: os._Environ[str]) -> dict[str, str]:
    config = dict(DEFAULTS)
    path = environ.get("LOGIN_AUDIT_HOOK_CONFIG", DEFAULT_CONFIG)
    try:
        with open(path, encoding="utf-8") as handle:
            config.update(_parse_env_file(handle.read()))
    except OSError:
        pass  # no file: variables and defaults only
    config.update({k: v for k, v in environ.items() if k in DEFAULTS})
    return config


def _parse_env_file(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key in DEFAULTS:
            pairs[key] = value
    return pairs


def _number(config: dict[str, str], key: str, low: float, high: float) -> float:
    try:
        value = float(config[key])
    except ValueError:
        value = float(DEFAULTS[key])
    return min(max(value, low), high)


def _fields(config: dict[str, str]) -> list[str]:
    return [f.strip() for f in config["LOGIN_AUDIT_HOOK_USER_FIELDS"].split(",") if f.strip()]


# -- settings that must not be used


def _problem(config: dict[str, str], fields: list[str]) -> str | None:
    """Why these settings would leak or cannot work, or None when they are usable."""
    secrets = secret_fields(fields)
    if secrets:
        return (
            f"LOGIN_AUDIT_HOOK_USER_FIELDS names {', '.join(secrets)}, where SFTPGo's user JSON "
            "keeps secrets: remove it"
        )
    for key in ("LOGIN_AUDIT_HOOK_CA_FILE", "LOGIN_AUDIT_HOOK_CLIENT_CERT"):
        if config[key] and not os.path.isfile(config[key]):
            return f"{key}={config[key]}: no such file"
    return _url_problem(config["LOGIN_AUDIT_HOOK_URL"])


def _url_problem(url: str) -> str | None:
    scheme, separator, rest = url.partition("://")
    usage = "use unix:///path.sock, http://127.0.0.1:port or https://host:port"
    if not separator or scheme not in ("unix", "http", "https"):
        return f"LOGIN_AUDIT_HOOK_URL must be a unix://, http:// or https:// URL: {usage}"
    if scheme == "unix":
        return None if rest.startswith("/") else "LOGIN_AUDIT_HOOK_URL: unix:// needs a path"
    try:
        host, _ = _split_host_port(rest.split("/", 1)[0], 443 if scheme == "https" else 80)
    except ValueError:
        return f"LOGIN_AUDIT_HOOK_URL is not {scheme}://host:port: {usage}"
    if scheme == "http" and not _is_loopback_host(host):
        return (
            f"LOGIN_AUDIT_HOOK_URL: plain http:// to {host!r}, which is not a loopback address, "
            "would send logins and the token unencrypted over the network; use https:// for "
            "a bridge on another host, or unix:// for one on this host"
        )
    return None


def _is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, as written (names other than localhost are not)."""
    if host.lower() == "localhost":
        return True
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            return _is_loopback_packed(_socket.inet_pton(family, host))
        except OSError:
            continue
    return False


def _is_loopback_packed(packed: bytes) -> bool:
    if len(packed) == 4:
        return packed[0] == 127
    mapped = packed[:12] == b"\0" * 10 + b"\xff\xff" and packed[12] == 127
    return packed == b"\0" * 15 + b"\1" or mapped


# -- the event


def _new_event_id() -> str:
    """A random (version 4) UUID: the event's id from here on, through every retry and spool.

    ``uuid`` costs more to import than this whole program runs; sixteen random bytes with the
    version and variant bits set are what ``uuid.uuid4()`` returns too.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text(value: str) -> str:
    """An environment value as valid Unicode: bytes that are not UTF-8 become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _projected(user: bytes, fields: list[str]) -> dict[str, Any]:
    """The user object reduced to the allow-list; ``{}`` when the user JSON is unusable."""
    kept = project_user(_loads(user), fields)
    # JSON has no infinity: a number like 1e999 would make the body unreadable to the bridge.
    return {k: v for k, v in kept.items() if not (isinstance(v, float) and v - v != 0)}


def _essentials(user: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in user.items() if k in ALWAYS_KEPT}
    return {k: v[:MAX_RESENT_TEXT] if isinstance(v, str) else v for k, v in kept.items()}


class _JSONSettings:
    """The attributes ``_json``'s C scanner reads off a JSONDecoder: strict, plain objects."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")


# typeshed names JSONDecoder as the argument; the scanner reads only the attributes above.
_scan_once = _json.make_scanner(_JSONSettings)  # type: ignore[arg-type]


def _unencodable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON")


# ASCII-only output: valid UTF-8 whatever the strings hold.
_encode = _json.make_encoder(
    None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)


def _loads(data: bytes) -> object:
    """JSON text to Python objects, or None when it is not JSON."""
    text = data.decode("utf-8", "replace").strip(" \t\r\n")
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    return value if end == len(text) else None


def _dumps(value: object) -> bytes:
    return "".join(_encode(value, 0)).encode("ascii")


# -- handing over


def _hand_over(config: dict[str, str], document: dict[str, Any], deadline: float) -> _Answer:
    """Posts the login to the bridge; what came back, or ``_NO_ANSWER``."""
    body = _dumps(document["user"])
    qs = "&".join(f"{name}={_quote(value)}" for name, value in document["query"].items())
    return _post(config, f"{HOOK_PATH}?{qs}", body, document["event_id"], deadline)


def _post(
    config: dict[str, str], target: str, body: bytes, event_id: str, deadline: float
) -> _Answer:
    url = config["LOGIN_AUDIT_HOOK_URL"]
    head = [
        f"POST {target} HTTP/1.1",
        f"Host: {_host_header(url)}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"{EVENT_ID_HEADER}: {event_id}",
        "User-Agent: login-audit-hook",
        "Connection: close",
    ]
    if config["LOGIN_AUDIT_HOOK_TOKEN"]:
        head.append(f"Authorization: Bearer {config['LOGIN_AUDIT_HOOK_TOKEN']}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
    try:
        return _answer(_exchange(config, request, deadline))
    except (OSError, ValueError, IndexError):
        return _NO_ANSWER


def _host_header(url: str) -> str:
    if url.startswith("unix://"):
        return "localhost"
    return url.partition("://")[2].split("/", 1)[0]


def _split_host_port(hostport: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest.removeprefix(":") or default_port)
    host, _, port = hostport.partition(":")
    if not host:
        raise ValueError("no host")
    return host, int(port or default_port)


def _connect(config: dict[str, str], deadline: float) -> _socket.socket:
    """A connected socket to the bridge: unix:///path, http://loopback:port or https://."""
    url = config["LOGIN_AUDIT_HOOK_URL"]
    if url.startswith("https://"):
        return _connect_tls(config, deadline)
    address: tuple[object, ...] | str
    if url.startswith("unix://"):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        address = url.removeprefix("unix://")
    else:
        host, port = _split_host_port(_host_header(url), 80)
        # A str host makes getaddrinfo import the idna codec (and with it re, enum, functools):
        # more than the rest of a run. Bytes skip it; only a non-ASCII name needs IDNA.
        name = host.encode("ascii") if host.isascii() else host
        family, _, _, _, address = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)[0]
        if not _is_loopback_host(str(address[0])):
            raise ValueError(f"{host} resolved to {address[0]}, not a loopback address")
        sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.settimeout(_remaining(deadline))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_tls(config: dict[str, str], deadline: float) -> _socket.socket:
    # Only https:// pays for ssl and socket (several milliseconds per login, plus the
    # handshake): a bridge on this host is better reached over unix://.
    import socket
    import ssl

    host, port = _split_host_port(_host_header(config["LOGIN_AUDIT_HOOK_URL"]), 443)
    context = ssl.create_default_context(cafile=config["LOGIN_AUDIT_HOOK_CA_FILE"] or None)
    if config["LOGIN_AUDIT_HOOK_CLIENT_CERT"]:
        context.load_cert_chain(config["LOGIN_AUDIT_HOOK_CLIENT_CERT"])
    raw = socket.create_connection((host, port), timeout=_remaining(deadline))
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def _exchange(config: dict[str, str], request: bytes, deadline: float) -> bytes:
    sock = _connect(config, deadline)
    try:
        sock.settimeout(_remaining(deadline))
        sock.sendall(request)
        reply = b""
        while len(reply) < MAX_REPLY_BYTES and not _complete(reply):
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(16384)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    return reply


def _complete(reply: bytes) -> bool:
    """Whether the reply holds its status line, headers and the Content-Length of body."""
    head, separator, body = reply.partition(b"\r\n\r\n")
    length = _header(head, b"content-length") if separator else None
    return length is not None and length.isdigit() and len(body) >= int(length)


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def _answer(reply: bytes) -> _Answer:
    """Reads "HTTP/1.1 400 Bad Request", the identity header, and a 4xx's verdict."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    bridge = _header(head, _IDENTITY)
    if bridge is None or not 400 <= status < 500:
        return _Answer(status, bridge)
    error = _loads(body)
    if not isinstance(error, dict):
        return _Answer(status, bridge)
    detail = f"{error.get('error')}: {error.get('message')}"[:300]
    return _Answer(status, bridge, error.get("final") is True, detail)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("bridge did not answer in time")
    return left


def _quote(text: str) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


# -- keeping it on disk


def _keep_rejected(spool_dir: str, document: dict[str, Any], answer: _Answer) -> int:
    """A login the bridge refused for good: kept aside for the operator, never dropped."""
    verdict = {"status": answer.status, "bridge": answer.bridge, "error": answer.detail}
    document["rejected"] = verdict
    path = _spool(os.path.join(spool_dir, handoff.REJECTED_DIR), document)
    if path is None:
        _say(f"the bridge refused this login for good ({answer.status}) and it could not be kept")
        return EXIT_LOST
    _say(
        f"bridge {answer.bridge} refused this login for good (HTTP {answer.status} "
        f"{answer.detail}); kept in {path}"
    )
    return EXIT_OK


def _spool(directory: str, document: dict[str, Any]) -> str | None:
    """Hands the event over durably through the hand-off directory; the file's path."""
    return handoff.write(directory, document["received_ms"], _dumps(document))


# -- PAM (pam_exec)


def _drain() -> int:
    """Sends the spooled PAM logins to the bridge, oldest first, until one is not taken."""
    from pathlib import Path

    from bridge import pam
    from bridge.errors import MalformedInput

    config = _settings(os.environ)
    problem = _problem(config, [])
    if problem is not None:
        _say(problem)
        return EXIT_USAGE
    spool = Path(config["LOGIN_AUDIT_HOOK_SPOOL_DIR"])
    timeout = _number(config, "LOGIN_AUDIT_HOOK_TIMEOUT", 0.1, 10.0)
    files = sorted(spool.glob("*" + handoff.SUFFIX)) if spool.is_dir() else []
    sent = 0
    for path in files:
        try:
            document = handoff.read(path)
        except MalformedInput:
            continue  # a bridge's intake sets such a file aside, with its reason
        if document is None or document.get("source") != pam.SPOOL_SOURCE:
            continue  # SFTPGo's files carry no time the route takes: a local bridge's intake
        event_id = document.get("event_id") or _new_event_id()
        body = _dumps(document["query"])
        answer = _post(config, PAM_HOOK_PATH, body, event_id, time.monotonic() + timeout)
        if not (answer.stored or answer.final):
            _say(f"sent {sent} spooled PAM login(s); the bridge did not take {path.name}")
            return 1
        if answer.final and _keep_rejected(str(spool), document, answer) != EXIT_OK:
            return 1
        path.unlink(missing_ok=True)
        sent += 1
    _say(f"sent {sent} spooled PAM login(s); none left")
    return EXIT_OK


def _pam(args: list[str]) -> int:
    """pam_exec's mode: the login's facts from PAM_*, the outcome from the stack line's argument."""
    global _quiet
    _quiet = True
    from bridge import pam  # tables only: imports nothing

    environ = os.environ
    kind = environ.get("PAM_TYPE")
    if kind is None or len(args) > 1 or (args and args[0] not in pam.RESULTS):
        _say("--pam success|failure is run by pam_exec, which sets PAM_TYPE (--help)")
        return EXIT_USAGE
    if kind == pam.CLOSE_SESSION:
        return EXIT_OK  # the login was reported when the session opened
    if not args and kind != pam.OPEN_SESSION:
        _say(f"--pam needs success or failure on a {kind} line (docs/pam.md)")
        return EXIT_USAGE
    received_ms = time.time_ns() // 1_000_000
    # Armed before the settings file is read (a file on a hung mount, a FIFO): the variable's
    # timeout if set, else the longest one; then again with the file's.
    early = {**DEFAULTS, "LOGIN_AUDIT_HOOK_PAM_TIMEOUT": environ.get(_PAM_TIMEOUT, "5")}
    _hard_limit(_number(early, _PAM_TIMEOUT, 0.1, 5.0) + PAM_SPOOL_SECONDS)
    config = _settings(environ)
    timeout = _number(config, _PAM_TIMEOUT, 0.1, 5.0)
    _hard_limit(timeout + PAM_SPOOL_SECONDS)
    document: dict[str, Any] = {
        "format": handoff.FORMAT,
        "source": pam.SPOOL_SOURCE,
        "received_ms": received_ms,
        "event_id": _new_event_id(),
        "query": _pam_facts(pam, environ, args[0] if args else "success", received_ms),
        "user": {},
    }
    spool_dir = config["LOGIN_AUDIT_HOOK_SPOOL_DIR"]
    problem = _problem(config, [])
    if problem is not None:
        _say(f"{problem}; this login was spooled, not sent (login-audit-hook --check)")
        return EXIT_USAGE if _spool(spool_dir, document) else EXIT_LOST
    body = _dumps(document["query"])
    deadline = time.monotonic() + timeout
    answer = _post(config, PAM_HOOK_PATH, body, document["event_id"], deadline)
    if answer.stored:
        return EXIT_OK
    if answer.final:
        return _keep_rejected(spool_dir, document, answer)
    return EXIT_OK if _spool(spool_dir, document) else EXIT_LOST


def _pam_facts(
    pam: Any, environ: os._Environ[str], result: str, received_ms: int
) -> dict[str, str]:
    """What the bridge is told: pam_exec's variables, this host's name, never a secret."""
    facts = {
        "format": pam.FORMAT,
        "result": result,
        "time": str(received_ms),
        "host": _text(os.uname().nodename),
    }
    for variable, name in pam.ENV_TO_FIELD:
        facts[name] = _text(environ.get(variable, ""))
    # sshd's ExposeAuthInfo: "publickey ssh-ed25519 AAAA..." per method; the first word only.
    words = environ.get(pam.SSH_AUTH_INFO, "").split(None, 1)
    if words and len(words[0]) <= 64 and words[0].replace("-", "").isalnum():
        facts["auth_method"] = words[0]
    return facts


def _hard_limit(seconds: float) -> None:
    """SIGALRM's default action ends the process after ``seconds``, whatever it is waiting on
    (a disk, a DNS lookup): a login never waits longer. The caller may have ignored or blocked
    SIGALRM; a child inherits both, so both are undone."""
    try:
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [_signal.SIGALRM])
        _signal.setitimer(_signal.ITIMER_REAL, seconds)
    except (OSError, ValueError):
        pass  # no timer: the socket timeouts still bound the wait for the bridge


if __name__ == "__main__":
    sys.exit(main())
