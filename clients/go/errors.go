package tokend

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The errors of tokend calls, one type per case of tokend's error table,
// decoded in one place (decodeError) from the gRPC status and its
// google.rpc.ErrorInfo, RetryInfo and BadRequest details. Match them with
// errors.As:
//
//	var rr *tokend.ReconnectRequiredError
//	if errors.As(err, &rr) { ... rr.Cause, rr.ProviderError ... }
//
// Each also has GRPCStatus, so status.Code(err) gives the gRPC code. No
// message carries a secret.

// rpcStatus keeps the status an error was decoded from.
type rpcStatus struct{ st *status.Status }

// GRPCStatus returns the gRPC status the error was decoded from.
func (s rpcStatus) GRPCStatus() *status.Status { return s.st }

// NotFoundError: the connection does not exist (NOT_FOUND).
type NotFoundError struct {
	ConnectionID string
	Message      string
	rpcStatus
}

func (e *NotFoundError) Error() string {
	if e.ConnectionID == "" {
		return "tokend: not found: " + e.Message
	}
	return "tokend: connection " + e.ConnectionID + " not found"
}

// InvalidArgumentError: a malformed field (INVALID_ARGUMENT, with the field
// named by google.rpc.BadRequest), or an invalid option of this package.
type InvalidArgumentError struct {
	Field       string
	Description string
	rpcStatus
}

func (e *InvalidArgumentError) Error() string {
	return "tokend: invalid " + e.Field + ": " + e.Description
}

// ReconnectRequiredError: the grant is dead and only a new Install revives
// the connection (FAILED_PRECONDITION, reason RECONNECT_REQUIRED). The
// client has already evicted the connection's cached token.
type ReconnectRequiredError struct {
	ConnectionID string
	// Why: CauseRevoked, CauseRotationLost, CauseNoRefreshToken,
	// CauseConsentRequired or CauseInteractionRequired; empty from a broker
	// that does not say.
	Cause ReconnectCause
	// The provider's error code, e.g. "invalid_grant".
	ProviderError string
	// The provider's words, stripped of secrets by tokend.
	ProviderMessage string
	// The provider's correlation id, for its support desk.
	ProviderCorrelationID string
	Message               string
	rpcStatus
}

func (e *ReconnectRequiredError) Error() string {
	return fmt.Sprintf("tokend: connection %s requires reconnecting (cause %s, provider error %s)",
		e.ConnectionID, orNone(string(e.Cause)), orNone(e.ProviderError))
}

// ProviderMisconfiguredError: the provider rejected tokend's own client
// credentials, an operator problem (FAILED_PRECONDITION, reason
// PROVIDER_MISCONFIGURED).
type ProviderMisconfiguredError struct {
	Message string
	rpcStatus
}

func (e *ProviderMisconfiguredError) Error() string {
	return "tokend: provider misconfigured: " + e.Message
}

// UnavailableError: the provider failed transiently and no valid token is
// left (reason PROVIDER_UNAVAILABLE), or tokend's storage is unavailable
// (STORAGE_UNAVAILABLE). Retry after RetryAfter when it is not zero.
type UnavailableError struct {
	Reason     string
	Message    string
	RetryAfter time.Duration
	rpcStatus
}

func (e *UnavailableError) Error() string {
	return "tokend: unavailable: " + e.Message + retryAfterText(e.RetryAfter)
}

// UnauthenticatedError: no valid API key or client certificate.
type UnauthenticatedError struct {
	Message string
	rpcStatus
}

func (e *UnauthenticatedError) Error() string { return "tokend: unauthenticated: " + e.Message }

// PermissionDeniedError: the caller's grants do not cover the call.
type PermissionDeniedError struct {
	Message string
	rpcStatus
}

func (e *PermissionDeniedError) Error() string { return "tokend: permission denied: " + e.Message }

// ResourceExhaustedError: a rate limit or stream cap; retry after
// RetryAfter when it is not zero.
type ResourceExhaustedError struct {
	Reason     string
	Message    string
	RetryAfter time.Duration
	rpcStatus
}

func (e *ResourceExhaustedError) Error() string {
	return "tokend: resource exhausted: " + e.Message + retryAfterText(e.RetryAfter)
}

// CursorExpiredError: WatchAll was given a cursor older than the event
// log's retention (OUT_OF_RANGE, reason CURSOR_EXPIRED). Resync from
// ListConnections, then resume from OldestCursor or start live.
type CursorExpiredError struct {
	OldestCursor string
	Message      string
	rpcStatus
}

func (e *CursorExpiredError) Error() string { return "tokend: event cursor expired: " + e.Message }

// AlreadyExistsError: Install would replace another account's grant
// without Replace (reason CONNECTION_ID_TAKEN).
type AlreadyExistsError struct {
	// The connection id taken, when tokend says.
	ConnectionID string
	Reason       string
	Message      string
	rpcStatus
}

func (e *AlreadyExistsError) Error() string { return "tokend: already exists: " + e.Message }

// AbortedError: a concurrent change won (ABORTED, reason
// CONCURRENT_MODIFICATION). Read again and retry if the change still makes
// sense.
type AbortedError struct {
	ConnectionID string
	Message      string
	rpcStatus
}

func (e *AbortedError) Error() string { return "tokend: aborted by a concurrent change: " + e.Message }

// RecordUnreadableError: tokend cannot read the stored record (sealed with a
// key it lacks, or damaged; reason RECORD_UNREADABLE, code
// FAILED_PRECONDITION or DATA_LOSS). An operator problem.
type RecordUnreadableError struct {
	ConnectionID string
	Code         codes.Code
	Message      string
	rpcStatus
}

func (e *RecordUnreadableError) Error() string {
	return "tokend: record of connection " + e.ConnectionID + " unreadable: " + e.Message
}

// DeadlineExceededError: the call ran out of time (DEADLINE_EXCEEDED): the
// client's own deadline (WithTimeout, or the context's) or tokend's.
// errors.Is(err, context.DeadlineExceeded) is true for it.
type DeadlineExceededError struct {
	Reason  string
	Message string
	rpcStatus
}

func (e *DeadlineExceededError) Error() string { return "tokend: deadline exceeded: " + e.Message }

// Is makes it match context.DeadlineExceeded.
func (e *DeadlineExceededError) Is(target error) bool { return target == context.DeadlineExceeded }

// TransportError: tokend could not be reached (down, restarting, network),
// after the client's retries.
type TransportError struct {
	Endpoint string
	Message  string
	rpcStatus
}

func (e *TransportError) Error() string {
	return "tokend: cannot reach tokend at " + e.Endpoint + ": " + e.Message
}

// StatusError is any other status (INTERNAL, CANCELLED...).
// errors.Is(err, context.Canceled) works on it.
type StatusError struct {
	Code    codes.Code
	Reason  string
	Message string
	rpcStatus
}

func (e *StatusError) Error() string { return "tokend: " + e.Code.String() + ": " + e.Message }

// Is makes a deadline or cancellation match the context package's errors.
func (e *StatusError) Is(target error) bool {
	return (e.Code == codes.DeadlineExceeded && target == context.DeadlineExceeded) ||
		(e.Code == codes.Canceled && target == context.Canceled)
}

// StillUnauthorizedError: the upstream API answered 401 again to the replay
// with a freshly refreshed token (Transport, unless Second401Return): the
// token is not the problem (scopes, the provider's side).
type StillUnauthorizedError struct {
	ConnectionID string
	// The HTTP status of the final answer (401).
	Status int
	// The final answer. Its body is already read (up to 64 KiB) and closed,
	// so ignoring it leaks nothing; Body replays what was read.
	Response *http.Response
}

func (e *StillUnauthorizedError) Error() string {
	return fmt.Sprintf("tokend: upstream rejected the refreshed token of connection %s (HTTP %d)", e.ConnectionID, e.Status)
}

// ErrorReason is the ErrorInfo reason of a tokend error (e.g.
// "CONNECTION_NOT_FOUND", "PROVIDER_UNAVAILABLE"), or "" when it has none.
// The gRPC code is status.Code(err).
func ErrorReason(err error) string {
	var s interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &s) || s.GRPCStatus() == nil {
		return ""
	}
	for _, d := range s.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// DecodeError turns the error of a raw tokend RPC (see Client.Stub) into
// this package's typed errors. Errors that are not gRPC statuses are
// returned as they are.
func DecodeError(err error) error { return decodeError(err, "") }

func decodeError(err error, endpoint string) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	var (
		info  *errdetails.ErrorInfo
		retry *errdetails.RetryInfo
		bad   *errdetails.BadRequest
	)
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		case *errdetails.BadRequest:
			bad = d
		}
	}
	reason := info.GetReason()
	meta := func(key string) string { return info.GetMetadata()[key] }
	var retryAfter time.Duration
	if d := retry.GetRetryDelay(); d != nil {
		retryAfter = d.AsDuration()
	}
	s := rpcStatus{st: st}
	msg := st.Message()
	switch code := st.Code(); {
	case reason == "RECORD_UNREADABLE":
		return &RecordUnreadableError{ConnectionID: meta("connection_id"), Code: code, Message: msg, rpcStatus: s}
	case code == codes.FailedPrecondition && reason == "RECONNECT_REQUIRED":
		return &ReconnectRequiredError{
			ConnectionID:          meta("connection_id"),
			Cause:                 ReconnectCause(meta("cause")),
			ProviderError:         meta("provider_error"),
			ProviderMessage:       meta("provider_message"),
			ProviderCorrelationID: meta("provider_correlation_id"),
			Message:               msg,
			rpcStatus:             s,
		}
	case code == codes.FailedPrecondition && reason == "PROVIDER_MISCONFIGURED":
		return &ProviderMisconfiguredError{Message: msg, rpcStatus: s}
	case code == codes.NotFound:
		return &NotFoundError{ConnectionID: meta("connection_id"), Message: msg, rpcStatus: s}
	case code == codes.InvalidArgument:
		e := &InvalidArgumentError{Field: meta("field"), Description: msg, rpcStatus: s}
		if violations := bad.GetFieldViolations(); len(violations) > 0 {
			e.Field, e.Description = violations[0].GetField(), violations[0].GetDescription()
		}
		return e
	case code == codes.OutOfRange && reason == "CURSOR_EXPIRED":
		return &CursorExpiredError{OldestCursor: meta("oldest_cursor"), Message: msg, rpcStatus: s}
	case code == codes.AlreadyExists:
		return &AlreadyExistsError{ConnectionID: meta("connection_id"), Reason: reason, Message: msg, rpcStatus: s}
	case code == codes.Aborted:
		return &AbortedError{ConnectionID: meta("connection_id"), Message: msg, rpcStatus: s}
	case code == codes.DeadlineExceeded:
		return &DeadlineExceededError{Reason: reason, Message: msg, rpcStatus: s}
	case code == codes.PermissionDenied:
		return &PermissionDeniedError{Message: msg, rpcStatus: s}
	case code == codes.Unauthenticated:
		return &UnauthenticatedError{Message: msg, rpcStatus: s}
	case code == codes.ResourceExhausted:
		return &ResourceExhaustedError{Reason: reason, Message: msg, RetryAfter: retryAfter, rpcStatus: s}
	case code == codes.Unavailable && info == nil:
		// UNAVAILABLE without tokend's ErrorInfo comes from the transport:
		// the broker is down or restarting.
		return &TransportError{Endpoint: endpoint, Message: msg, rpcStatus: s}
	case code == codes.Unavailable:
		return &UnavailableError{Reason: reason, Message: msg, RetryAfter: retryAfter, rpcStatus: s}
	default:
		return &StatusError{Code: code, Reason: reason, Message: msg, rpcStatus: s}
	}
}

// resubscribable reports whether a watch stream should subscribe again
// after err: broker restarts and shutdowns, not refusals.
func resubscribable(err error) bool {
	switch e := err.(type) {
	case *TransportError, *UnavailableError:
		return true
	case *StatusError:
		return e.Code == codes.Unknown || e.Code == codes.Internal || e.Code == codes.Canceled
	}
	return false
}

func retryAfterText(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return " (retry after " + d.String() + ")"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
