"""PAM logins through pam_exec: the facts the hook passes on, and their OCSF Authentication event.

``pam_exec`` runs the hook (``login-audit-hook --pam success|failure``) with the login's facts in
``PAM_*`` variables. It does not say whether the authentication succeeded: the PAM stack line's
place does (docs/pam.md), and the line passes it as the argument. The hook sends these facts, as
strings, in one JSON object to ``POST /v1/hooks/pam`` (or keeps the same object in its hand-off
spool), and :func:`pam_event` makes the event of it.

The hook imports this module for its tables, once per login: nothing is imported at the top.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs more than a run of the hook
    from collections.abc import Mapping

    from bridge.event import LoginEvent

FORMAT = "login-audit-bridge.pam.v1"
# The hand-off spool's ``source`` for a PAM login (files without one are SFTPGo's).
SPOOL_SOURCE = "pam"
RESULTS = ("success", "failure")
# What pam_exec passes (pam_exec(8)) -> the key in the hook's JSON. PAM_AUTHTOK is never among
# them: the password reaches pam_exec's child only on stdin, only with expose_authtok, and the
# hook never reads its stdin.
ENV_TO_FIELD = (
    ("PAM_TYPE", "type"),
    ("PAM_SERVICE", "service"),
    ("PAM_USER", "user"),
    ("PAM_RHOST", "rhost"),
    ("PAM_RUSER", "ruser"),
    ("PAM_TTY", "tty"),
)
# sshd with ExposeAuthInfo puts "<method> [<key type> <key>]" here, in the PAM environment that
# pam_exec passes on: only the method (its first word) is taken, never a key.
SSH_AUTH_INFO = "SSH_AUTH_INFO_0"
FIELDS = ("format", "result", "time", "host", "auth_method", *(name for _, name in ENV_TO_FIELD))
MAX_TIME_MS = 253_402_300_799_999  # Avro timestamp-millis as every reader decodes it
# PAM_TYPE values of a session stack: the hook sends nothing when a session closes.
OPEN_SESSION = "open_session"
CLOSE_SESSION = "close_session"

# OCSF 1.3.0 logon types (logon_type_id: caption).
LOGON_INTERACTIVE = (2, "Interactive")
LOGON_NETWORK = (3, "Network")
LOGON_BATCH = (4, "Batch")
LOGON_OS_SERVICE = (5, "OS Service")
# Services that are logged in to over the network even when PAM_RHOST is empty.
REMOTE_SERVICES = frozenset(
    {"sshd", "dovecot", "vsftpd", "proftpd", "pure-ftpd", "xrdp-sesman", "cockpit", "rsh",
     "rlogin", "rexec", "ppp", "openvpn", "samba", "imap", "pop3", "smtp"}
)  # fmt: skip
BATCH_SERVICES = frozenset({"cron", "atd"})
OS_SERVICES = frozenset({"systemd-user", "systemd-run0"})
MAX_TTY_CHARS = 64
PRODUCT = {"name": "Linux-PAM", "vendor_name": "Linux-PAM", "version": None}


def pam_event(facts: Mapping[str, object], *, received_ms: int, event_id: str) -> LoginEvent:
    """One event of the facts the hook sent; an InputError names the first unusable one."""
    # The bridge has these loaded already; the hook, which imports this module, never calls it.
    # (`import a.b as c` finds a loaded module without importlib's Python code; `from a import b`
    # of a package runs it on every call.)
    import bridge.normalize as n
    from bridge.errors import InvalidField
    from bridge.event import UNKNOWN_USER, LoginEvent

    text = _texts(facts, InvalidField)
    # The hook's clock at the login: the event's time even when it arrives late from a spool.
    stamp = text.get("time", "")
    # isdigit() alone also accepts digits int() refuses, such as "²".
    from_hook = stamp.isascii() and stamp.isdigit() and int(stamp) <= MAX_TIME_MS
    time_ms = int(stamp) if from_hook else received_ms
    if text.get("format") != FORMAT:
        raise InvalidField("format", f"must be {FORMAT!r}")
    result = text.get("result")
    if result not in RESULTS:
        raise InvalidField("result", "must be 'success' or 'failure'")
    ok = result == "success"
    flags = n._Flags()
    service = flags.fit("service.name", text.get("service") or "", n.MAX_NAME_CHARS)
    if not service:
        raise InvalidField("service", "is missing (PAM_SERVICE)")
    name = flags.fit("user.name", text.get("user") or "", n.MAX_NAME_CHARS) or None
    requester = flags.fit("actor.user.name", text.get("ruser") or "", n.MAX_NAME_CHARS) or None
    rhost = text.get("rhost") or ""
    # An address (its check cached: the same hosts log in again), or a host name, or nothing.
    is_ip = n._address_version(rhost.partition("%")[0]) is not None
    ip, zone = n._ip(rhost, flags) if is_ip else (None, None)
    method = text.get("auth_method") or None
    if method is not None and not n._is_token(method):
        raise InvalidField("auth_method", "must be 1-64 letters, digits or _.+-")
    unmapped = {"pam.type": flags.fit("unmapped.pam.type", text.get("type") or "", 64)}
    if rhost and ip is None:  # a host name (sshd with UseDNS yes) or "localhost"
        unmapped["pam.rhost"] = flags.fit("unmapped.pam.rhost", rhost, n.MAX_NAME_CHARS)
    if text.get("tty"):
        unmapped["pam.tty"] = flags.fit("unmapped.pam.tty", text["tty"], MAX_TTY_CHARS)
    host = flags.fit("dst_endpoint.hostname", text.get("host") or "", n.MAX_NAME_CHARS) or None
    if host is not None and not n._DNS_NAME.fullmatch(host):
        # OCSF's hostname_t is a DNS name; anything else the host calls itself stays unmapped.
        unmapped["pam.host"] = host
        host = None
    flags.note(unmapped)
    auth_protocol_id = n.AUTH_PROTOCOL_OTHER if method else n.AUTH_PROTOCOL_UNKNOWN
    logon_type = _logon_type(service, rhost)
    # The fields not set here are the same for every PAM event (status_detail, http_request and
    # is_mfa: one PAM module's verdict, whether others asked more the hook cannot see).
    record = n._PAM_RECORDS[ok].copy()
    record["time"] = time_ms
    record["message"] = _message(service, ok, name, requester, ip or rhost)
    # PAM_USER is what was typed: whether such an account exists, PAM does not say.
    record["user"] = {
        "uid": None,
        "email_addr": None,
        "groups": [],
        "type_id": n.USER_TYPE_UNKNOWN[0],
        "type": n.USER_TYPE_UNKNOWN[1],
        "name": UNKNOWN_USER if name is None else name,
    }
    record["src_endpoint"] = {"ip": ip, "interface_name": zone}
    record["dst_endpoint"] = {"svc_name": service, "hostname": host, "ip": None, "port": None}
    record["service"] = {"name": service, "uid": None, "version": None}
    record["auth_protocol_id"] = auth_protocol_id
    record["auth_protocol"] = n._AUTH_PROTOCOL_CAPTIONS.get(auth_protocol_id, method)
    record["logon_type_id"], record["logon_type"] = logon_type
    record["is_remote"] = logon_type == LOGON_NETWORK
    record["metadata"] = n._metadata(
        event_id, received_ms, None, dict(PRODUCT), stamp if from_hook else None
    )
    record["unmapped"] = unmapped
    record["status_code"] = result
    record["observables"] = n._observables(ip, name)
    record["actor"] = {"user": {"name": requester, "uid": None}} if requester else None
    return LoginEvent(record, "pam")


def _texts(facts: Mapping[str, object], invalid: type[Exception]) -> dict[str, str]:
    """The known facts, each a string; unknown keys are ignored (a newer hook may add some)."""
    text: dict[str, str] = {}
    for key in FIELDS:
        value = facts.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise invalid(key, "must be a string")
        text[key] = value
    return text


def _logon_type(service: str, rhost: str) -> tuple[int, str]:
    """Network when the login came from another host; else by what kind of service asked."""
    if service in REMOTE_SERVICES or (rhost and rhost != "localhost"):
        return LOGON_NETWORK
    if service in BATCH_SERVICES:
        return LOGON_BATCH
    if service in OS_SERVICES:
        return LOGON_OS_SERVICE
    return LOGON_INTERACTIVE  # login, su, sudo, a display manager, a screen locker


def _message(service: str, ok: bool, name: str | None, requester: str | None, src: str) -> str:
    outcome = "succeeded" if ok else "failed"
    who = repr(name) if name is not None else "an unnamed user"
    text = f"PAM {service} authentication {outcome} for {who}"
    if requester is not None:
        text += f" requested by {requester!r}"
    return text + (f" from {src}" if src else "")
