package tokend

import (
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokend-dev/tokend/clients/go/tokendv1"
)

// Enums come out as their proto names without the type's prefix:
// CONNECTION_STATUS_RECONNECT_REQUIRED is StatusReconnectRequired, whose
// value is "RECONNECT_REQUIRED". A value this package does not know (from a
// newer broker) reads "UNKNOWN_<number>".

// ConnectionStatus is whether tokend can still obtain tokens for a connection.
type ConnectionStatus string

const (
	StatusUnspecified ConnectionStatus = "UNSPECIFIED"
	// Tokens are being served and refreshed.
	StatusActive ConnectionStatus = "ACTIVE"
	// The grant is dead; only a new Install revives the connection.
	StatusReconnectRequired ConnectionStatus = "RECONNECT_REQUIRED"
)

// ReconnectCause is why a connection became RECONNECT_REQUIRED.
type ReconnectCause string

const (
	CauseUnspecified         ReconnectCause = "UNSPECIFIED"
	CauseRevoked             ReconnectCause = "REVOKED"
	CauseRotationLost        ReconnectCause = "ROTATION_LOST"
	CauseNoRefreshToken      ReconnectCause = "NO_REFRESH_TOKEN"
	CauseConsentRequired     ReconnectCause = "CONSENT_REQUIRED"
	CauseInteractionRequired ReconnectCause = "INTERACTION_REQUIRED"
)

// ErrorClass is how tokend classified a provider failure.
type ErrorClass string

const (
	ErrorClassUnspecified         ErrorClass = "UNSPECIFIED"
	ErrorClassRevoked             ErrorClass = "REVOKED"
	ErrorClassClientMisconfigured ErrorClass = "CLIENT_MISCONFIGURED"
	ErrorClassRateLimited         ErrorClass = "RATE_LIMITED"
	ErrorClassTransient           ErrorClass = "TRANSIENT"
)

const (
	statusPrefix = "CONNECTION_STATUS_"
	causePrefix  = "RECONNECT_CAUSE_"
	classPrefix  = "ERROR_CLASS_"
	watchPrefix  = "WATCH_EVENT_TYPE_"
	eventPrefix  = "EVENT_TYPE_"
)

// enumName strips prefix from a generated enum's name.
func enumName(name, prefix string) string {
	if strings.HasPrefix(name, prefix) {
		return name[len(prefix):]
	}
	return "UNKNOWN_" + name
}

// enumValue is the number of the generated enum value prefix+name.
func enumValue(values map[string]int32, prefix, name string) (int32, bool) {
	v, ok := values[prefix+name]
	return v, ok
}

// Connection is a connection's metadata. It never carries a secret.
type Connection struct {
	ConnectionID string
	Provider     string
	// The provider-side account: HubSpot portal id, Salesforce org...
	AccountID string
	Status    ConnectionStatus
	// Grows by one with every change of the token set.
	Version   uint64
	Scopes    []string
	TokenType string
	// Zero when tokend did not say.
	AccessTokenExpiresAt time.Time
	LastRefreshAt        time.Time
	CreatedAt            time.Time
	UpdatedAt            time.Time
	// When the background refresher will next renew the token, if it will.
	NextRefreshAt time.Time
	// The last failure seen from the provider: set while it lasts, and kept
	// for a revoked connection. Nil when none.
	LastError *ProviderError
	// Why the connection needs reconnecting, when it does.
	ReconnectCause ReconnectCause
	// The parameters given at Install (e.g. "subdomain").
	Params map[string]string
	// What the provider said about the connection beside the tokens, e.g.
	// Salesforce's "instance_url".
	Metadata map[string]string
}

// ReconnectRequired reports whether the customer must reconnect.
func (c Connection) ReconnectRequired() bool { return c.Status == StatusReconnectRequired }

// ProviderError is the last failure tokend saw from a provider, truncated and
// stripped of secrets by tokend.
type ProviderError struct {
	ErrorClass ErrorClass
	// The provider's error code: "invalid_grant", "BAD_REFRESH_TOKEN", "http_503".
	Code          string
	Message       string
	CorrelationID string
	// HTTP status of the provider's answer; 0 when none arrived.
	HTTPStatus uint32
	OccurredAt time.Time
}

func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func connectionFromPB(c *tokendv1.Connection) Connection {
	out := Connection{
		ConnectionID:         c.GetConnectionId(),
		Provider:             c.GetProvider(),
		AccountID:            c.GetAccountId(),
		Status:               ConnectionStatus(enumName(c.GetStatus().String(), statusPrefix)),
		Version:              c.GetVersion(),
		Scopes:               c.GetScopes(),
		TokenType:            c.GetTokenType(),
		AccessTokenExpiresAt: timeOf(c.GetAccessTokenExpiresAt()),
		LastRefreshAt:        timeOf(c.GetLastRefreshAt()),
		CreatedAt:            timeOf(c.GetCreatedAt()),
		UpdatedAt:            timeOf(c.GetUpdatedAt()),
		NextRefreshAt:        timeOf(c.GetNextRefreshAt()),
		ReconnectCause:       ReconnectCause(enumName(c.GetReconnectCause().String(), causePrefix)),
		Params:               c.GetParams(),
		Metadata:             c.GetMetadata(),
	}
	if e := c.GetLastError(); e != nil {
		out.LastError = &ProviderError{
			ErrorClass:    ErrorClass(enumName(e.GetErrorClass().String(), classPrefix)),
			Code:          e.GetCode(),
			Message:       e.GetMessage(),
			CorrelationID: e.GetCorrelationId(),
			HTTPStatus:    e.GetHttpStatus(),
			OccurredAt:    timeOf(e.GetOccurredAt()),
		}
	}
	return out
}

// Token is an access token as tokend handed it out.
type Token struct {
	ConnectionID string
	// The secret: put AccessToken.Reveal() in an Authorization header only.
	AccessToken Secret
	// Usually "Bearer".
	TokenType string
	// When it expires by this process's monotonic clock: the time of receipt
	// plus the expires_in_seconds tokend sent, so clock skew does not matter.
	ExpiresAt time.Time
	// The connection's token version; ForceRefresh names it after a 401.
	Version   uint64
	Scopes    []string
	AccountID string
	// Validity left on receipt, which sizes the cache margin.
	lifetime time.Duration
}

// TTL is the time left before the token expires.
func (t *Token) TTL() time.Duration {
	if d := time.Until(t.ExpiresAt); d > 0 {
		return d
	}
	return 0
}

// AuthorizationHeader is the value of an Authorization header carrying the
// token: "Bearer <token>".
func (t *Token) AuthorizationHeader() string { return "Bearer " + t.AccessToken.Reveal() }

func tokenFromPB(t *tokendv1.AccessToken, received time.Time) *Token {
	lifetime := time.Duration(t.GetExpiresInSeconds()) * time.Second
	if lifetime < 0 {
		lifetime = 0
	}
	return &Token{
		ConnectionID: t.GetConnectionId(),
		AccessToken:  NewSecret(t.GetAccessToken()),
		TokenType:    t.GetTokenType(),
		// time.Now() carries a monotonic reading, and Add keeps it.
		ExpiresAt: received.Add(lifetime),
		Version:   t.GetVersion(),
		Scopes:    t.GetScopes(),
		AccountID: t.GetAccountId(),
		lifetime:  lifetime,
	}
}
