"""Request messages, built the same way for the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from tokend_client._pb import pb
from tokend_client.models import AuthorizationCode, Grant, TokenImport, enum_values


def get_token(connection_id: str, min_ttl_seconds: int) -> Any:
    return pb.GetTokenRequest(connection_id=connection_id, min_ttl_seconds=min_ttl_seconds)


def force_refresh(
    connection_id: str, rejected_version: int | None, rejected_access_token: str | None
) -> Any:
    request = pb.ForceRefreshRequest(connection_id=connection_id)
    if rejected_version is not None and rejected_access_token is not None:
        raise ValueError("name the rejected token by version or by value, not both")
    if rejected_version is not None:
        request.rejected_version = rejected_version
    elif rejected_access_token is not None:
        request.rejected_access_token = rejected_access_token
    return request


def install(
    provider: str,
    grant: Grant,
    connection_id: str,
    account_id: str,
    params: Mapping[str, str] | None,
    replace: bool,
) -> Any:
    request = pb.InstallRequest(
        provider=provider,
        connection_id=connection_id,
        account_id=account_id,
        replace=replace,
        params=dict(params or {}),
    )
    if isinstance(grant, AuthorizationCode):
        request.authorization_code.CopyFrom(
            pb.AuthorizationCode(
                code=grant.code,
                redirect_uri=grant.redirect_uri,
                code_verifier=grant.code_verifier,
            )
        )
    elif isinstance(grant, TokenImport):
        request.token_import.CopyFrom(
            pb.TokenImport(
                access_token=grant.access_token,
                refresh_token=grant.refresh_token,
                expires_in_seconds=grant.expires_in_seconds,
                scopes=list(grant.scopes),
                token_type=grant.token_type,
            )
        )
    elif grant is not None:
        raise TypeError("grant must be an AuthorizationCode, a TokenImport or None")
    return request


def list_connections(
    provider: str | None, status: str | int | None, page_size: int, page_token: str
) -> Any:
    request = pb.ListConnectionsRequest(
        page_size=page_size, page_token=page_token, provider=provider or ""
    )
    if status is not None:
        [value] = enum_values(status, pb.ConnectionStatus, "CONNECTION_STATUS_")
        request.status = cast(Any, value)
    return request


def _strings(values: str | Iterable[str]) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


def watch_all(
    providers: str | Iterable[str],
    connection_id_prefixes: str | Iterable[str],
    event_types: str | int | Iterable[str | int],
    statuses: str | int | Iterable[str | int],
    resume_after: str | None,
    from_oldest: bool,
) -> Any:
    return pb.WatchConnectionsRequest(
        filter=pb.EventFilter(
            providers=_strings(providers),
            connection_id_prefixes=_strings(connection_id_prefixes),
            event_types=cast(Any, enum_values(event_types, pb.EventType, "EVENT_TYPE_")),
            statuses=cast(Any, enum_values(statuses, pb.ConnectionStatus, "CONNECTION_STATUS_")),
        ),
        resume_after=resume_after or "",
        from_oldest=from_oldest,
    )
