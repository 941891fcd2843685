"""The JSON the MediaWiki extension posts (docs/mediawiki-hook.md), validated strictly."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import InvalidField, MalformedInput

FORMAT = "login-audit-bridge.mediawiki.v1"

# Bounds keep a hostile body from turning into a huge event; real values are far shorter.
Text = Annotated[str, Field(max_length=1024)]
ShortText = Annotated[str, Field(max_length=256)]


class WikiUser(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: int = Field(ge=0)
    name: ShortText


class MediaWikiLogin(BaseModel):
    """One call of AuthManagerLoginAuthenticateAudit, as the extension reports it."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    format: Literal["login-audit-bridge.mediawiki.v1"]
    status: Literal["PASS", "FAIL"]
    username: ShortText
    canonical_username: ShortText | None = None
    user: WikiUser | None = None
    message_key: ShortText | None = None
    message_params: Annotated[list[Any], Field(max_length=32)] = Field(default_factory=list)
    app_id: ShortText | None = None
    performer: ShortText | None = None
    # "" when WebRequest::getIP() failed (command-line or faux requests): the event still counts.
    ip: Annotated[str, Field(max_length=64)]
    user_agent: Text | None = None
    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    invocation: int = Field(1, ge=1, le=1000)
    wiki_id: Annotated[str, Field(min_length=1, max_length=256)]
    server: Text | None = None
    entry_point: ShortText | None = None
    time: int = Field(ge=0, le=253402300799999)  # epoch ms, at most year 9999
    mw_version: Annotated[str, Field(min_length=1, max_length=64)]


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
