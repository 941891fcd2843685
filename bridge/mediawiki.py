"""The JSON the MediaWiki extension posts (docs/mediawiki-hook.md), validated strictly."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import InvalidField, MalformedInput

FORMAT = "login-audit-bridge.mediawiki.v1"

# No length bounds on text: the body limit bounds it, and the normalizer cuts each field to its
# size and flags it. A user name, a request id or a user agent may come from an attacker, and a
# refused event would be a login with no trace.


class WikiUser(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: int = Field(ge=0)
    name: str


class MediaWikiLogin(BaseModel):
    """One call of AuthManagerLoginAuthenticateAudit, as the extension reports it."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    format: Literal["login-audit-bridge.mediawiki.v1"]
    status: Literal["PASS", "FAIL"]
    username: str
    canonical_username: str | None = None
    user: WikiUser | None = None
    message_key: str | None = None
    message_params: list[Any] = Field(default_factory=list)
    app_id: str | None = None
    performer: str | None = None
    # "" when WebRequest::getIP() failed (command-line or faux requests): the event still counts.
    ip: str
    user_agent: str | None = None
    # The X-Request-Id header when the wiki accepts it from clients: any text, even "".
    request_id: str
    invocation: int = Field(1, ge=1, le=1000)
    wiki_id: Annotated[str, Field(min_length=1)]
    server: str | None = None
    entry_point: str | None = None
    time: int = Field(ge=0, le=253402300799999)  # epoch ms, at most year 9999
    mw_version: Annotated[str, Field(min_length=1)]


def parse_mediawiki(body: bytes) -> MediaWikiLogin:
    """Parses and validates a request body, or raises MalformedInput / InvalidField."""
    try:
        return MediaWikiLogin.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise MalformedInput(f"body is not valid JSON: {first['msg']}") from None
        if first["type"] == "model_type" and not first["loc"]:
            raise MalformedInput("body must be a JSON object") from None
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidField(field, first["msg"].lower()) from None
