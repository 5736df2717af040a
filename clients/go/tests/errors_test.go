package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// statusErr is a status as tokend sends it: ErrorInfo (domain tokend.dev),
// plus RetryInfo / BadRequest when given.
func statusErr(t *testing.T, code codes.Code, reason string, meta map[string]string, retry time.Duration, field string) error {
	t.Helper()
	st := status.New(code, "the message")
	details := []interface{}{}
	if reason != "" {
		details = append(details, &errdetails.ErrorInfo{Reason: reason, Domain: "tokend.dev", Metadata: meta})
	}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	if field != "" {
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: field, Description: "is malformed"},
		}})
	}
	for _, d := range details {
		var err error
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			st, err = st.WithDetails(d)
		case *errdetails.RetryInfo:
			st, err = st.WithDetails(d)
		case *errdetails.BadRequest:
			st, err = st.WithDetails(d)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return st.Err()
}

// Every row of tokend's error table maps to its type, with its fields, in
// the one decoding place (statuses crafted here; the live tests below see
// NOT_FOUND, INVALID_ARGUMENT, RECONNECT_REQUIRED, UNAUTHENTICATED and
// PERMISSION_DENIED from a real broker).
func TestErrorTableDecodesToTypedErrors(t *testing.T) {
	decode := func(err error) error { return tokend.DecodeError(err) }

	var rr *tokend.ReconnectRequiredError
	err := decode(statusErr(t, codes.FailedPrecondition, "RECONNECT_REQUIRED", map[string]string{
		"connection_id": "c1", "cause": "ROTATION_LOST", "provider_error": "invalid_grant",
		"provider_message": "grant revoked", "provider_correlation_id": "req-9",
	}, 0, ""))
	if !errors.As(err, &rr) || rr.ConnectionID != "c1" || rr.Cause != tokend.CauseRotationLost ||
		rr.ProviderError != "invalid_grant" || rr.ProviderMessage != "grant revoked" || rr.ProviderCorrelationID != "req-9" {
		t.Fatalf("RECONNECT_REQUIRED: %#v", err)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("GRPCStatus lost: %v", status.Code(err))
	}

	var pm *tokend.ProviderMisconfiguredError
	if err := decode(statusErr(t, codes.FailedPrecondition, "PROVIDER_MISCONFIGURED", nil, 0, "")); !errors.As(err, &pm) {
		t.Fatalf("PROVIDER_MISCONFIGURED: %#v", err)
	}

	var nf *tokend.NotFoundError
	if err := decode(statusErr(t, codes.NotFound, "CONNECTION_NOT_FOUND", map[string]string{"connection_id": "x"}, 0, "")); !errors.As(err, &nf) || nf.ConnectionID != "x" {
		t.Fatalf("NOT_FOUND: %#v", err)
	}

	var ia *tokend.InvalidArgumentError
	if err := decode(statusErr(t, codes.InvalidArgument, "INVALID_ARGUMENT", nil, 0, "min_ttl_seconds")); !errors.As(err, &ia) || ia.Field != "min_ttl_seconds" || ia.Description != "is malformed" {
		t.Fatalf("INVALID_ARGUMENT: %#v", err)
	}

	var un *tokend.UnavailableError
	if err := decode(statusErr(t, codes.Unavailable, "PROVIDER_UNAVAILABLE", nil, 3*time.Second, "")); !errors.As(err, &un) || un.RetryAfter != 3*time.Second || un.Reason != "PROVIDER_UNAVAILABLE" {
		t.Fatalf("UNAVAILABLE: %#v", err)
	}
	if err := decode(statusErr(t, codes.Unavailable, "STORAGE_UNAVAILABLE", nil, 0, "")); !errors.As(err, &un) || un.RetryAfter != 0 {
		t.Fatalf("UNAVAILABLE without RetryInfo: %#v", err)
	}

	var tr *tokend.TransportError
	if err := decode(status.Error(codes.Unavailable, "connection refused")); !errors.As(err, &tr) {
		t.Fatalf("UNAVAILABLE from the transport: %#v", err)
	}

	var ue *tokend.UnauthenticatedError
	if err := decode(statusErr(t, codes.Unauthenticated, "UNAUTHENTICATED", nil, 0, "")); !errors.As(err, &ue) {
		t.Fatalf("UNAUTHENTICATED: %#v", err)
	}
	var pd *tokend.PermissionDeniedError
	if err := decode(statusErr(t, codes.PermissionDenied, "PERMISSION_DENIED", nil, 0, "")); !errors.As(err, &pd) {
		t.Fatalf("PERMISSION_DENIED: %#v", err)
	}
	var re *tokend.ResourceExhaustedError
	if err := decode(statusErr(t, codes.ResourceExhausted, "SERVER_OVERLOADED", nil, 2*time.Second, "")); !errors.As(err, &re) || re.RetryAfter != 2*time.Second {
		t.Fatalf("RESOURCE_EXHAUSTED: %#v", err)
	}
	var ce *tokend.CursorExpiredError
	if err := decode(statusErr(t, codes.OutOfRange, "CURSOR_EXPIRED", map[string]string{"oldest_cursor": "c-42"}, 0, "")); !errors.As(err, &ce) || ce.OldestCursor != "c-42" {
		t.Fatalf("CURSOR_EXPIRED: %#v", err)
	}
	var ae *tokend.AlreadyExistsError
	if err := decode(statusErr(t, codes.AlreadyExists, "CONNECTION_ID_TAKEN", nil, 0, "")); !errors.As(err, &ae) || ae.Reason != "CONNECTION_ID_TAKEN" {
		t.Fatalf("ALREADY_EXISTS: %#v", err)
	}

	if err := decode(statusErr(t, codes.AlreadyExists, "CONNECTION_ID_TAKEN", map[string]string{"connection_id": "t"}, 0, "")); !errors.As(err, &ae) || ae.ConnectionID != "t" {
		t.Fatalf("ALREADY_EXISTS connection_id: %#v", err)
	}
	var ab *tokend.AbortedError
	if err := decode(statusErr(t, codes.Aborted, "CONCURRENT_MODIFICATION", map[string]string{"connection_id": "a"}, 0, "")); !errors.As(err, &ab) || ab.ConnectionID != "a" || tokend.ErrorReason(err) != "CONCURRENT_MODIFICATION" {
		t.Fatalf("ABORTED: %#v", err)
	}
	var ru *tokend.RecordUnreadableError
	for _, code := range []codes.Code{codes.FailedPrecondition, codes.DataLoss} {
		if err := decode(statusErr(t, code, "RECORD_UNREADABLE", map[string]string{"connection_id": "r"}, 0, "")); !errors.As(err, &ru) || ru.ConnectionID != "r" || ru.Code != code {
			t.Fatalf("RECORD_UNREADABLE (%v): %#v", code, err)
		}
	}

	var de *tokend.DeadlineExceededError
	err = decode(status.Error(codes.DeadlineExceeded, "deadline"))
	if !errors.As(err, &de) || status.Code(err) != codes.DeadlineExceeded || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("DEADLINE_EXCEEDED: %#v", err)
	}
	var se *tokend.StatusError
	err = decode(statusErr(t, codes.Internal, "STORAGE_FAILURE", nil, 0, ""))
	if !errors.As(err, &se) || se.Code != codes.Internal || se.Reason != "STORAGE_FAILURE" || tokend.ErrorReason(err) != "STORAGE_FAILURE" {
		t.Fatalf("INTERNAL: %#v", err)
	}
	plain := errors.New("not a status")
	if decode(plain) != plain || decode(nil) != nil {
		t.Fatal("non-status errors must pass through")
	}
}

// Secrets print as [redacted] with every verb, nested or not, and in JSON.
func TestSecretsNeverPrinted(t *testing.T) {
	c := shared.client(t)
	id, grant := shared.install(t, c, account("go-secret"))
	token, err := c.GetToken(ctx(t), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if token.AccessToken.Reveal() != grant.AccessToken {
		t.Fatalf("GetToken gave another token than the imported one")
	}
	request := tokend.InstallRequest{Provider: "sandbox", TokenImport: &tokend.TokenImport{
		AccessToken: tokend.NewSecret(grant.AccessToken), RefreshToken: tokend.NewSecret(grant.RefreshToken)}}
	var printed []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		printed = append(printed,
			fmt.Sprintf(verb, token), fmt.Sprintf(verb, *token), fmt.Sprintf(verb, token.AccessToken),
			fmt.Sprintf(verb, request), fmt.Sprintf(verb, c))
	}
	raw, _ := json.Marshal(token)
	printed = append(printed, string(raw), token.AccessToken.String())
	keyed, err := tokend.New(shared.grpc, tokend.WithAPIKey("key-that-must-not-print"))
	if err != nil {
		t.Fatal(err)
	}
	defer keyed.Close()
	printed = append(printed, fmt.Sprintf("%+v", keyed), fmt.Sprintf("%#v", keyed))
	for _, p := range printed {
		for _, secret := range []string{grant.AccessToken, grant.RefreshToken, "key-that-must-not-print"} {
			if strings.Contains(p, secret) {
				t.Fatalf("a secret was printed: %s", p)
			}
		}
	}
	if !strings.Contains(fmt.Sprintf("%+v", *token), "[redacted]") {
		t.Fatalf("token prints without its redaction marker: %+v", *token)
	}
}
