"""Fixtures for the MediaWiki end-to-end tests: a real wiki with the extension, a client, events."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.sinks.file import read_events

from ocsf import assert_ocsf
from support import IN_CI, free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "mediawiki"
MW_CODE = Path("/usr/share/mediawiki")
TOKEN = "test-token"
# Long enough for a POSTSEND update on a loaded CI machine; the loop ends as soon as events are in.
EVENT_WAIT_SECONDS = 20.0


def _mediawiki_missing() -> str | None:
    for need in (MW_CODE / "api.php", Path("/usr/sbin/php-fpm8.2"), Path("/usr/sbin/nginx")):
        if not need.exists():
            return f"{need} is missing"
    if shutil.which("php") is None:
        return "php is missing"
    return None


@dataclass(frozen=True)
class Wiki:
    """A running throwaway wiki (scripts/mediawiki start) and its credentials."""

    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.env["MW_URL"]

    @property
    def fpm_url(self) -> str:
        return self.env["MW_FPM_URL"]

    @property
    def run_dir(self) -> Path:
        return Path(self.env["MW_RUN"])

    def script(self, *args: str) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args],
            env={**os.environ, **self._script_env()},
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return done.stdout

    def point_at(self, bridge_url: str, token: str = TOKEN, timeout: float = 1.0) -> None:
        self.script("bridge", f"{bridge_url}/v1/hooks/mediawiki", token, str(timeout))

    def run_jobs(self) -> str:
        return self.script("runjobs", "--type", "loginAuditBridgeSend")

    def queued_jobs(self) -> list[str]:
        """The extension's jobs still in the wiki's job table (queued or claimed)."""
        listing = self._maintenance("showJobs.php", "--list")
        return [line for line in listing.splitlines() if line.startswith("loginAuditBridgeSend")]

    def delete_jobs(self) -> None:
        """Empties the extension's job queue, claimed jobs included."""
        self._maintenance("manageJobs.php", "--action", "delete")

    def _maintenance(self, script: str, *args: str) -> str:
        return subprocess.run(
            [
                "php",
                str(MW_CODE / "maintenance" / script),
                "--type",
                "loginAuditBridgeSend",
                *args,
            ],
            env={**os.environ, "MW_CONFIG_FILE": self.env["MW_CONFIG_FILE"]},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def extension_log(self) -> str:
        path = self.run_dir / "logs" / "LoginAuditBridge.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def _script_env(self) -> dict[str, str]:
        return {
            "LOGIN_AUDIT_RUN": str(self.run_dir.parent),
            "MW_PORT": self.url.rsplit(":", 1)[1],
            "MW_FPM_PORT": self.fpm_url.rsplit(":", 1)[1],
        }


@pytest.fixture(scope="session")
def wiki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wiki]:
    """One fresh wiki for the session, served by `php -S` and by nginx + php-fpm."""
    missing = _mediawiki_missing()
    if missing and not IN_CI:
        pytest.skip(f"MediaWiki not installed ({missing}): run scripts/mediawiki ensure")
    # In CI, `start` installs what is missing itself, and any failure fails the tests.
    run_base = tmp_path_factory.mktemp("mw-run")
    env = {
        **os.environ,
        "LOGIN_AUDIT_RUN": str(run_base),
        "MW_PORT": str(free_port()),
        "MW_FPM_PORT": str(free_port()),
    }
    started = subprocess.run(
        [str(SCRIPT), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"scripts/mediawiki start failed:\n{started.stderr}", pytrace=False)
        values = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
        yield Wiki(env=values)
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)


class WikiClient:
    """Logs in the three ways a person or a bot can: clientlogin, action=login, the web form."""

    def __init__(self, base_url: str, user_agent: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"User-Agent": user_agent}, timeout=30.0
        )

    def close(self) -> None:
        self.http.close()

    def _login_token(self) -> str:
        reply = self.http.get(
            "/api.php",
            params={
                "action": "query",
                "meta": "tokens",
                "type": "login",
                "format": "json",
            },
        )
        token: str = reply.json()["query"]["tokens"]["logintoken"]
        return token

    def clientlogin(self, username: str, password: str) -> dict[str, Any]:
        reply = self.http.post(
            "/api.php",
            data={
                "action": "clientlogin",
                "username": username,
                "password": password,
                "logintoken": self._login_token(),
                "loginreturnurl": f"{self.http.base_url}/",
                "format": "json",
            },
        )
        result: dict[str, Any] = reply.json()["clientlogin"]
        return result

    def botlogin(self, username: str, password: str) -> dict[str, Any]:
        reply = self.http.post(
            "/api.php",
            data={
                "action": "login",
                "lgname": username,
                "lgpassword": password,
                "lgtoken": self._login_token(),
                "format": "json",
            },
        )
        result: dict[str, Any] = reply.json()["login"]
        return result

    def web_login(self, username: str, password: str) -> httpx.Response:
        form = self.http.get("/index.php", params={"title": "Special:UserLogin"})
        match = re.search(r'<input name="wpLoginToken"[^>]* value="([^"]+)"', form.text)
        assert match, "the login form carries no wpLoginToken"
        return self.http.post(
            "/index.php",
            params={"title": "Special:UserLogin"},
            data={
                "wpName": username,
                "wpPassword": password,
                "wpLoginToken": html.unescape(match.group(1)),
                "wploginattempt": "Log in",
                "authAction": "login",
                "title": "Special:UserLogin",
            },
        )

    def user_id(self, name: str) -> int:
        reply = self.http.get(
            "/api.php",
            params={
                "action": "query",
                "list": "users",
                "ususers": name,
                "format": "json",
            },
        )
        user_id: int = reply.json()["query"]["users"][0]["userid"]
        return user_id


@pytest.fixture
def client(wiki: Wiki, request: pytest.FixtureRequest) -> Iterator[WikiClient]:
    """A client of the `php -S` server whose User-Agent names the test."""
    http = WikiClient(wiki.url, f"login-audit-test/{request.node.name}")
    yield http
    http.close()


@pytest.fixture
def fpm_client(wiki: Wiki, request: pytest.FixtureRequest) -> Iterator[WikiClient]:
    """A client of the nginx + php-fpm server."""
    http = WikiClient(wiki.fpm_url, f"login-audit-test/{request.node.name}")
    yield http
    http.close()


def wait_for_events(events_dir: Path, count: int) -> list[dict[str, Any]]:
    """The bridge's events once there are at least `count` (the extension sends after the reply)."""
    deadline = time.monotonic() + EVENT_WAIT_SECONDS
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = list(read_events(events_dir)) if events_dir.exists() else []
        if len(events) >= count:
            for event in events:  # every event a real wiki made is OCSF 1.3.0 as handed out
                assert_ocsf(event)
            return sorted(events, key=lambda e: (e["time"], e["unmapped"]["mediawiki.invocation"]))
        time.sleep(0.1)
    return events


@pytest.fixture
def wired(wiki: Wiki, bridge_factory: Callable[..., Any]) -> Any:
    """A bridge of this test's own (file sink, token), the wiki pointed at it, and an empty
    job queue: a job an earlier test left (it failed) must not be counted or sent in this one."""
    bridge = bridge_factory(auth_tokens=TOKEN)
    wiki.point_at(bridge.url)
    wiki.delete_jobs()
    return bridge


@pytest.fixture
def events_of(wiki: Wiki) -> Callable[[Any, int], list[dict[str, Any]]]:
    """Waits for and returns a bridge's events."""

    def read(bridge: Any, count: int) -> list[dict[str, Any]]:
        return wait_for_events(bridge.events_dir, count)

    return read
