import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATUS_UNSPECIFIED: _ClassVar[ConnectionStatus]
    CONNECTION_STATUS_ACTIVE: _ClassVar[ConnectionStatus]
    CONNECTION_STATUS_RECONNECT_REQUIRED: _ClassVar[ConnectionStatus]

class ErrorClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CLASS_UNSPECIFIED: _ClassVar[ErrorClass]
    ERROR_CLASS_REVOKED: _ClassVar[ErrorClass]
    ERROR_CLASS_CLIENT_MISCONFIGURED: _ClassVar[ErrorClass]
    ERROR_CLASS_RATE_LIMITED: _ClassVar[ErrorClass]
    ERROR_CLASS_TRANSIENT: _ClassVar[ErrorClass]

class ReconnectCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECONNECT_CAUSE_UNSPECIFIED: _ClassVar[ReconnectCause]
    RECONNECT_CAUSE_REVOKED: _ClassVar[ReconnectCause]
    RECONNECT_CAUSE_ROTATION_LOST: _ClassVar[ReconnectCause]
    RECONNECT_CAUSE_NO_REFRESH_TOKEN: _ClassVar[ReconnectCause]
    RECONNECT_CAUSE_CONSENT_REQUIRED: _ClassVar[ReconnectCause]
    RECONNECT_CAUSE_INTERACTION_REQUIRED: _ClassVar[ReconnectCause]

class WatchEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_TYPE_UNSPECIFIED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_SNAPSHOT: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_TOKEN_ROTATED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_STATUS_CHANGED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_DELETED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_REFRESH_FAILED: _ClassVar[WatchEventType]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_INSTALLED: _ClassVar[EventType]
    EVENT_TYPE_TOKEN_ROTATED: _ClassVar[EventType]
    EVENT_TYPE_REFRESH_FAILED: _ClassVar[EventType]
    EVENT_TYPE_RECONNECT_REQUIRED: _ClassVar[EventType]
    EVENT_TYPE_RECOVERED: _ClassVar[EventType]
    EVENT_TYPE_DELETED: _ClassVar[EventType]
    EVENT_TYPE_CHECKPOINT: _ClassVar[EventType]

class WebhookState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_STATE_UNSPECIFIED: _ClassVar[WebhookState]
    WEBHOOK_STATE_HEALTHY: _ClassVar[WebhookState]
    WEBHOOK_STATE_RETRYING: _ClassVar[WebhookState]
    WEBHOOK_STATE_FAILING: _ClassVar[WebhookState]
CONNECTION_STATUS_UNSPECIFIED: ConnectionStatus
CONNECTION_STATUS_ACTIVE: ConnectionStatus
CONNECTION_STATUS_RECONNECT_REQUIRED: ConnectionStatus
ERROR_CLASS_UNSPECIFIED: ErrorClass
ERROR_CLASS_REVOKED: ErrorClass
ERROR_CLASS_CLIENT_MISCONFIGURED: ErrorClass
ERROR_CLASS_RATE_LIMITED: ErrorClass
ERROR_CLASS_TRANSIENT: ErrorClass
RECONNECT_CAUSE_UNSPECIFIED: ReconnectCause
RECONNECT_CAUSE_REVOKED: ReconnectCause
RECONNECT_CAUSE_ROTATION_LOST: ReconnectCause
RECONNECT_CAUSE_NO_REFRESH_TOKEN: ReconnectCause
RECONNECT_CAUSE_CONSENT_REQUIRED: ReconnectCause
RECONNECT_CAUSE_INTERACTION_REQUIRED: ReconnectCause
WATCH_EVENT_TYPE_UNSPECIFIED: WatchEventType
WATCH_EVENT_TYPE_SNAPSHOT: WatchEventType
WATCH_EVENT_TYPE_TOKEN_ROTATED: WatchEventType
WATCH_EVENT_TYPE_STATUS_CHANGED: WatchEventType
WATCH_EVENT_TYPE_DELETED: WatchEventType
WATCH_EVENT_TYPE_REFRESH_FAILED: WatchEventType
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_INSTALLED: EventType
EVENT_TYPE_TOKEN_ROTATED: EventType
EVENT_TYPE_REFRESH_FAILED: EventType
EVENT_TYPE_RECONNECT_REQUIRED: EventType
EVENT_TYPE_RECOVERED: EventType
EVENT_TYPE_DELETED: EventType
EVENT_TYPE_CHECKPOINT: EventType
WEBHOOK_STATE_UNSPECIFIED: WebhookState
WEBHOOK_STATE_HEALTHY: WebhookState
WEBHOOK_STATE_RETRYING: WebhookState
WEBHOOK_STATE_FAILING: WebhookState

class ProviderError(_message.Message):
    __slots__ = ("error_class", "code", "message", "correlation_id", "http_status", "occurred_at")
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    error_class: ErrorClass
    code: str
    message: str
    correlation_id: str
    http_status: int
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, error_class: _Optional[_Union[ErrorClass, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., correlation_id: _Optional[str] = ..., http_status: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Connection(_message.Message):
    __slots__ = ("connection_id", "provider", "account_id", "status", "version", "scopes", "token_type", "access_token_expires_at", "last_refresh_at", "last_error", "created_at", "updated_at", "next_refresh_at", "reconnect_cause", "params", "metadata")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_REFRESH_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_REFRESH_AT_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_CAUSE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    provider: str
    account_id: str
    status: ConnectionStatus
    version: int
    scopes: _containers.RepeatedScalarFieldContainer[str]
    token_type: str
    access_token_expires_at: _timestamp_pb2.Timestamp
    last_refresh_at: _timestamp_pb2.Timestamp
    last_error: ProviderError
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    next_refresh_at: _timestamp_pb2.Timestamp
    reconnect_cause: ReconnectCause
    params: _containers.ScalarMap[str, str]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, connection_id: _Optional[str] = ..., provider: _Optional[str] = ..., account_id: _Optional[str] = ..., status: _Optional[_Union[ConnectionStatus, str]] = ..., version: _Optional[int] = ..., scopes: _Optional[_Iterable[str]] = ..., token_type: _Optional[str] = ..., access_token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_refresh_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[_Union[ProviderError, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_refresh_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reconnect_cause: _Optional[_Union[ReconnectCause, str]] = ..., params: _Optional[_Mapping[str, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AccessToken(_message.Message):
    __slots__ = ("connection_id", "access_token", "token_type", "expires_at", "expires_in_seconds", "scopes", "account_id", "version")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    access_token: str
    token_type: str
    expires_at: _timestamp_pb2.Timestamp
    expires_in_seconds: int
    scopes: _containers.RepeatedScalarFieldContainer[str]
    account_id: str
    version: int
    def __init__(self, connection_id: _Optional[str] = ..., access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_in_seconds: _Optional[int] = ..., scopes: _Optional[_Iterable[str]] = ..., account_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetTokenRequest(_message.Message):
    __slots__ = ("connection_id", "min_ttl_seconds")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    min_ttl_seconds: int
    def __init__(self, connection_id: _Optional[str] = ..., min_ttl_seconds: _Optional[int] = ...) -> None: ...

class GetTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: AccessToken
    def __init__(self, token: _Optional[_Union[AccessToken, _Mapping]] = ...) -> None: ...

class ForceRefreshRequest(_message.Message):
    __slots__ = ("connection_id", "rejected_access_token", "rejected_version")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    rejected_access_token: str
    rejected_version: int
    def __init__(self, connection_id: _Optional[str] = ..., rejected_access_token: _Optional[str] = ..., rejected_version: _Optional[int] = ...) -> None: ...

class ForceRefreshResponse(_message.Message):
    __slots__ = ("token", "refreshed")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    token: AccessToken
    refreshed: bool
    def __init__(self, token: _Optional[_Union[AccessToken, _Mapping]] = ..., refreshed: _Optional[bool] = ...) -> None: ...

class WatchConnectionRequest(_message.Message):
    __slots__ = ("connection_id",)
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    def __init__(self, connection_id: _Optional[str] = ...) -> None: ...

class WatchConnectionResponse(_message.Message):
    __slots__ = ("event_type", "connection", "event_time")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    event_type: WatchEventType
    connection: Connection
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, event_type: _Optional[_Union[WatchEventType, str]] = ..., connection: _Optional[_Union[Connection, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuthorizationCode(_message.Message):
    __slots__ = ("code", "redirect_uri", "code_verifier")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URI_FIELD_NUMBER: _ClassVar[int]
    CODE_VERIFIER_FIELD_NUMBER: _ClassVar[int]
    code: str
    redirect_uri: str
    code_verifier: str
    def __init__(self, code: _Optional[str] = ..., redirect_uri: _Optional[str] = ..., code_verifier: _Optional[str] = ...) -> None: ...

class TokenImport(_message.Message):
    __slots__ = ("access_token", "refresh_token", "expires_in_seconds", "scopes", "token_type")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    refresh_token: str
    expires_in_seconds: int
    scopes: _containers.RepeatedScalarFieldContainer[str]
    token_type: str
    def __init__(self, access_token: _Optional[str] = ..., refresh_token: _Optional[str] = ..., expires_in_seconds: _Optional[int] = ..., scopes: _Optional[_Iterable[str]] = ..., token_type: _Optional[str] = ...) -> None: ...

class InstallRequest(_message.Message):
    __slots__ = ("provider", "connection_id", "account_id", "authorization_code", "token_import", "replace", "params", "force")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_CODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IMPORT_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    provider: str
    connection_id: str
    account_id: str
    authorization_code: AuthorizationCode
    token_import: TokenImport
    replace: bool
    params: _containers.ScalarMap[str, str]
    force: bool
    def __init__(self, provider: _Optional[str] = ..., connection_id: _Optional[str] = ..., account_id: _Optional[str] = ..., authorization_code: _Optional[_Union[AuthorizationCode, _Mapping]] = ..., token_import: _Optional[_Union[TokenImport, _Mapping]] = ..., replace: _Optional[bool] = ..., params: _Optional[_Mapping[str, str]] = ..., force: _Optional[bool] = ...) -> None: ...

class InstallResponse(_message.Message):
    __slots__ = ("connection", "created", "replayed")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    connection: Connection
    created: bool
    replayed: bool
    def __init__(self, connection: _Optional[_Union[Connection, _Mapping]] = ..., created: _Optional[bool] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetConnectionRequest(_message.Message):
    __slots__ = ("connection_id",)
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    def __init__(self, connection_id: _Optional[str] = ...) -> None: ...

class GetConnectionResponse(_message.Message):
    __slots__ = ("connection",)
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    connection: Connection
    def __init__(self, connection: _Optional[_Union[Connection, _Mapping]] = ...) -> None: ...

class ListConnectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "provider", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    provider: str
    status: ConnectionStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., provider: _Optional[str] = ..., status: _Optional[_Union[ConnectionStatus, str]] = ...) -> None: ...

class ListConnectionsResponse(_message.Message):
    __slots__ = ("connections", "next_page_token")
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    connections: _containers.RepeatedCompositeFieldContainer[Connection]
    next_page_token: str
    def __init__(self, connections: _Optional[_Iterable[_Union[Connection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteConnectionRequest(_message.Message):
    __slots__ = ("connection_id", "force")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    force: bool
    def __init__(self, connection_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteConnectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportConnectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportConnectionsResponse(_message.Message):
    __slots__ = ("records", "format_version")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[SealedRecord]
    format_version: int
    def __init__(self, records: _Optional[_Iterable[_Union[SealedRecord, _Mapping]]] = ..., format_version: _Optional[int] = ...) -> None: ...

class SealedRecord(_message.Message):
    __slots__ = ("connection_id", "sealed")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    sealed: bytes
    def __init__(self, connection_id: _Optional[str] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class EventFilter(_message.Message):
    __slots__ = ("providers", "connection_id_prefixes", "event_types", "statuses")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    connection_id_prefixes: _containers.RepeatedScalarFieldContainer[str]
    event_types: _containers.RepeatedScalarFieldContainer[EventType]
    statuses: _containers.RepeatedScalarFieldContainer[ConnectionStatus]
    def __init__(self, providers: _Optional[_Iterable[str]] = ..., connection_id_prefixes: _Optional[_Iterable[str]] = ..., event_types: _Optional[_Iterable[_Union[EventType, str]]] = ..., statuses: _Optional[_Iterable[_Union[ConnectionStatus, str]]] = ...) -> None: ...

class WatchConnectionsRequest(_message.Message):
    __slots__ = ("filter", "resume_after", "from_oldest")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    FROM_OLDEST_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    resume_after: str
    from_oldest: bool
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., resume_after: _Optional[str] = ..., from_oldest: _Optional[bool] = ...) -> None: ...

class ConnectionEvent(_message.Message):
    __slots__ = ("cursor", "sequence", "event_type", "event_time", "connection_id", "connection", "cause", "caught_up")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    sequence: int
    event_type: EventType
    event_time: _timestamp_pb2.Timestamp
    connection_id: str
    connection: Connection
    cause: ReconnectCause
    caught_up: bool
    def __init__(self, cursor: _Optional[str] = ..., sequence: _Optional[int] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connection_id: _Optional[str] = ..., connection: _Optional[_Union[Connection, _Mapping]] = ..., cause: _Optional[_Union[ReconnectCause, str]] = ..., caught_up: _Optional[bool] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks",)
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[WebhookStatus]
    def __init__(self, webhooks: _Optional[_Iterable[_Union[WebhookStatus, _Mapping]]] = ...) -> None: ...

class WebhookStatus(_message.Message):
    __slots__ = ("name", "url", "state", "cursor", "delivered_sequence", "behind", "failing_since", "last_error", "last_success_at", "next_attempt_at", "consecutive_failures", "delivered_since_start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    FAILING_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SUCCESS_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_SINCE_START_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    state: WebhookState
    cursor: str
    delivered_sequence: int
    behind: int
    failing_since: _timestamp_pb2.Timestamp
    last_error: str
    last_success_at: _timestamp_pb2.Timestamp
    next_attempt_at: _timestamp_pb2.Timestamp
    consecutive_failures: int
    delivered_since_start: int
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., state: _Optional[_Union[WebhookState, str]] = ..., cursor: _Optional[str] = ..., delivered_sequence: _Optional[int] = ..., behind: _Optional[int] = ..., failing_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., last_success_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consecutive_failures: _Optional[int] = ..., delivered_since_start: _Optional[int] = ...) -> None: ...
