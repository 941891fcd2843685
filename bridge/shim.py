"""login-audit-hook: SFTPGo's post-login hook program, handing each login to the bridge.

SFTPGo starts this program once per login, with a cleared environment and stdio on /dev/null,
kills it after 30 s and never retries it. So it must start fast, never hang, and never lose an
event: it posts the login to the running bridge exactly as SFTPGo's HTTP mode would, and when
that fails it writes the event durably into a spool directory that the bridge takes in later.

Start-up cost is paid on every login (thousands a second under a brute-force attack), so the
common path imports nothing beyond what the interpreter has already loaded: ``socket``,
``urllib`` and ``json`` each cost more than the rest of a run (measured with -X importtime),
hence ``_socket`` and the few lines of HTTP/1.1 below. ``json`` is loaded on the spool path only.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

# One table of SFTPGo's variables for the hook and the bridge; the module costs ~0.3 ms to load.
from bridge.sftpgo import ENV_TO_QUERY, SPOOL_FORMAT, SPOOL_SUFFIX, USER_ENV, project_user

EXIT_OK = 0  # handed over or spooled
EXIT_LOST = 1  # neither the bridge nor the spool took the event
EXIT_USAGE = 2  # not started by SFTPGo, or a bad flag

DEFAULT_CONFIG = "/etc/login-audit-bridge/hook.env"
DEFAULTS = {
    "LOGIN_AUDIT_HOOK_URL": "http://127.0.0.1:8080",
    "LOGIN_AUDIT_HOOK_TOKEN": "",
    "LOGIN_AUDIT_HOOK_SPOOL_DIR": "/var/lib/login-audit-bridge/hook-spool",
    "LOGIN_AUDIT_HOOK_TIMEOUT": "2",
    "LOGIN_AUDIT_HOOK_USER_FIELDS": "",
    "LOGIN_AUDIT_HOOK_MAX_BODY_BYTES": "49152",
}
HOOK_PATH = "/v1/hooks/sftpgo"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

HELP = """\
usage: login-audit-hook [--help] [--version]

SFTPGo post-login hook: set SFTPGo's common.post_login_hook to this program's absolute path.
SFTPGo passes the login in SFTPGO_LOGIND_* variables; the hook posts it to the bridge and, when
the bridge cannot take it, spools it durably for the bridge to take in later. It always exits
quickly (at most LOGIN_AUDIT_HOOK_TIMEOUT seconds).

settings (SFTPGo's command.env, or KEY=VALUE lines in {config}, or the file
named by LOGIN_AUDIT_HOOK_CONFIG; the environment wins):
  LOGIN_AUDIT_HOOK_URL          bridge address: http://host:port or unix:///path/to.sock
                                (default {url})
  LOGIN_AUDIT_HOOK_TOKEN        bearer token, one of the bridge's BRIDGE_AUTH_TOKENS
  LOGIN_AUDIT_HOOK_SPOOL_DIR    spool directory, the bridge's BRIDGE_HOOK_SPOOL_DIR
                                (default {spool})
  LOGIN_AUDIT_HOOK_TIMEOUT      seconds to wait for the bridge, 0.1 to 10 (default {timeout})
  LOGIN_AUDIT_HOOK_USER_FIELDS  extra user fields kept in spooled events, comma-separated: set
                                it to the bridge's BRIDGE_SFTPGO_USER_FIELDS (username and id
                                are always kept; nothing else of the user reaches the disk)
  LOGIN_AUDIT_HOOK_MAX_BODY_BYTES  user JSON larger than this is reduced to the allow-listed
                                fields before sending (default {max_body}; keep it under the
                                bridge's BRIDGE_MAX_BODY_BYTES)

exit codes: 0 handed over or spooled, 1 lost (bridge and spool both failed), 2 usage
""".format(
    config=DEFAULT_CONFIG,
    url=DEFAULTS["LOGIN_AUDIT_HOOK_URL"],
    spool=DEFAULTS["LOGIN_AUDIT_HOOK_SPOOL_DIR"],
    timeout=DEFAULTS["LOGIN_AUDIT_HOOK_TIMEOUT"],
    max_body=DEFAULTS["LOGIN_AUDIT_HOOK_MAX_BODY_BYTES"],
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        return _flags(args)
    environ = os.environ
    if "SFTPGO_LOGIND_STATUS" not in environ:
        sys.stderr.write("login-audit-hook: no SFTPGO_LOGIND_STATUS: run by SFTPGo only (--help)\n")
        return EXIT_USAGE
    received_ms = time.time_ns() // 1_000_000
    config = _settings(environ)
    query = [(name, environ.get(variable, "")) for variable, name in ENV_TO_QUERY]
    user = os.environb.get(USER_ENV.encode()) or b"{}"
    reduced = len(user) > _number(config, "LOGIN_AUDIT_HOOK_MAX_BODY_BYTES", 1024, 16 << 20)
    body = _projected_json(user, config) if reduced else user
    status = _hand_over(config, query, body)
    if status == 413 and not reduced:
        # The bridge's limit is lower than ours: the allow-listed fields are all it keeps anyway.
        status = _hand_over(config, query, _projected_json(user, config))
    if _decided(status):
        return EXIT_OK
    return _spool(config, received_ms, query, user)


def _decided(status: int | None) -> bool:
    """A 2xx (durable there), or a 4xx that no retry can change (the bridge logged it)."""
    if status is None:
        return False
    return 200 <= status < 300 or (400 <= status < 500 and status not in (401, 408, 413, 429))


def _flags(args: list[str]) -> int:
    if args[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return EXIT_OK
    if args[0] == "--version":
        from bridge import __version__

        sys.stdout.write(f"login-audit-hook {__version__}\n")
        return EXIT_OK
    sys.stderr.write(f"login-audit-hook: unknown argument {args[0]!r} (--help)\n")
    return EXIT_USAGE


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


def _hand_over(config: dict[str, str], query: list[tuple[str, str]], body: bytes) -> int | None:
    """Posts the login to the bridge; its HTTP status, or None when it could not be reached."""
    timeout = _number(config, "LOGIN_AUDIT_HOOK_TIMEOUT", 0.1, 10.0)
    deadline = time.monotonic() + timeout
    url = config["LOGIN_AUDIT_HOOK_URL"]
    qs = "&".join(f"{name}={_quote(value)}" for name, value in query)
    head = [
        f"POST {HOOK_PATH}?{qs} HTTP/1.1",
        f"Host: {_host_header(url)}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "User-Agent: login-audit-hook",
        "Connection: close",
    ]
    if config["LOGIN_AUDIT_HOOK_TOKEN"]:
        head.append(f"Authorization: Bearer {config['LOGIN_AUDIT_HOOK_TOKEN']}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
    try:
        return _exchange(url, request, deadline)
    except (OSError, ValueError, IndexError):
        return None


def _host_header(url: str) -> str:
    if url.startswith("unix://"):
        return "localhost"
    return url.removeprefix("http://").split("/", 1)[0]


def _split_host_port(hostport: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (port 80)."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest.removeprefix(":") or 80)
    host, _, port = hostport.partition(":")
    return host, int(port or 80)


def _connect(url: str, deadline: float) -> _socket.socket:
    """A connected socket to the bridge: unix:///path or http://host:port (no TLS on loopback)."""
    address: tuple[object, ...] | str
    if url.startswith("unix://"):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        address = url.removeprefix("unix://")
    elif url.startswith("http://"):
        host, port = _split_host_port(_host_header(url))
        # A str host makes getaddrinfo import the idna codec (and with it re, enum, functools):
        # more than the rest of a run. Bytes skip it; only a non-ASCII name needs IDNA.
        name = host.encode("ascii") if host.isascii() else host
        family, _, _, _, address = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)[0]
        sock = _socket.socket(family, _socket.SOCK_STREAM)
    else:
        raise ValueError(f"unsupported bridge URL {url!r}: use http:// or unix://")
    try:
        sock.settimeout(_remaining(deadline))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _exchange(url: str, request: bytes, deadline: float) -> int:
    sock = _connect(url, deadline)
    try:
        sock.settimeout(_remaining(deadline))
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply and len(reply) < 4096:
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    # "HTTP/1.1 200 OK"
    return int(reply.split(b" ", 2)[1])


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("bridge did not answer in time")
    return left


def _quote(text: str) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


def _projected_json(user: bytes, config: dict[str, str]) -> bytes:
    """The user object reduced to the allow-list, as JSON."""
    import json

    return json.dumps(_projected(user, config), separators=(",", ":")).encode()


def _projected(user: bytes, config: dict[str, str]) -> dict[str, object]:
    # json costs about as much as the rest of a run; only this path (a large body, or the
    # bridge away) pays it.
    import json

    fields = [f.strip() for f in config["LOGIN_AUDIT_HOOK_USER_FIELDS"].split(",") if f.strip()]
    try:
        parsed = json.loads(user)
    except (ValueError, RecursionError):
        parsed = {}  # keep the login's facts even when the user JSON is unusable
    return project_user(parsed, fields)


def _spool(
    config: dict[str, str], received_ms: int, query: list[tuple[str, str]], user: bytes
) -> int:
    """Writes the event durably: temp file, fsync, rename, fsync the directory."""
    import json

    directory = config["LOGIN_AUDIT_HOOK_SPOOL_DIR"]
    document = {
        "format": SPOOL_FORMAT,
        "received_ms": received_ms,
        "query": {
            name: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            for name, value in query
        },
        # Only allow-listed fields reach the disk: the full user object carries secrets.
        "user": _projected(user, config),
    }
    name = f"{received_ms:013d}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        # Group access: the bridge, usually another user in a shared group, reads and deletes
        # these files. They hold only allow-listed fields, never the secrets of the user JSON.
        os.makedirs(directory, mode=0o770, exist_ok=True)
        temporary = os.path.join(directory, name + ".tmp")
        final = os.path.join(directory, name + SPOOL_SUFFIX)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        try:
            os.write(fd, json.dumps(document, ensure_ascii=False).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        return EXIT_LOST
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
