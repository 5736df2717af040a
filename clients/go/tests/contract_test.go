package tests

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// The SDK contract shared by the four tokend SDKs (tokend's docs/sdks.md,
// "One vocabulary in four SDKs"), against live brokers.

// A 401 to the replay is *StillUnauthorizedError by default, carrying the
// connection, the status and the (already read and closed) response; with
// WithSecond401(Second401Return) the 401 response comes back instead. A
// POST's single 401 comes back unreplayed either way.
func TestSecond401RaisesByDefaultAndReturnsWhenAsked(t *testing.T) {
	c := shared.client(t)
	id, _ := shared.install(t, c, account("go-second-401"))
	up := &upstream{reject: map[string]bool{}, rejectAll: true}
	server := httptest.NewServer(up)
	defer server.Close()

	_, err := c.HTTPClient(id).Get(server.URL)
	var still *tokend.StillUnauthorizedError
	if !errors.As(err, &still) || still.ConnectionID != id || still.Status != http.StatusUnauthorized || still.Response == nil {
		t.Fatalf("default: %v, want *StillUnauthorizedError with status and response", err)
	}
	if body, _ := io.ReadAll(still.Response.Body); string(body) != "rejected" {
		t.Fatalf("the response in the error: body %q", body)
	}
	if n := len(up.requests()); n != 2 {
		t.Fatalf("%d requests, want the first and one replay", n)
	}
	token, _ := c.Token(ctx(t), id)
	if strings.Contains(err.Error(), token.AccessToken.Reveal()) {
		t.Fatal("the token is in the error")
	}

	for _, api := range []*http.Client{
		c.HTTPClient(id, tokend.WithSecond401(tokend.Second401Return)),
		{Transport: &tokend.Transport{Client: c, ConnectionID: id, Second401: tokend.Second401Return}},
	} {
		before := len(up.requests())
		response, err := api.Get(server.URL)
		if err != nil {
			t.Fatalf("Second401Return: %v", err)
		}
		body, _ := io.ReadAll(response.Body)
		response.Body.Close()
		if response.StatusCode != http.StatusUnauthorized || string(body) != "rejected" || len(up.requests())-before != 2 {
			t.Fatalf("Second401Return: %s %q after %d requests", response.Status, body, len(up.requests())-before)
		}
	}

	before := len(up.requests())
	if r := post(t, c.HTTPClient(id), http.MethodPost, server.URL, "payload"); r.StatusCode != http.StatusUnauthorized || len(up.requests())-before != 1 {
		t.Fatalf("POST: %s after %d requests, want its one 401", r.Status, len(up.requests())-before)
	}
}

// NOT_FOUND, INVALID_ARGUMENT (with the field) and ALREADY_EXISTS from a live
// broker, each with its code and reason; a NotFound evicts the cached token.
func TestBrokerRefusalsAreTypedAndNotFoundEvicts(t *testing.T) {
	c := shared.client(t)
	other := shared.client(t)
	acct := account("go-kinds")
	id, _ := shared.install(t, c, acct)

	var nf *tokend.NotFoundError
	_, err := c.GetToken(ctx(t), "go-missing", 0)
	if !errors.As(err, &nf) || nf.ConnectionID != "go-missing" || status.Code(err) != codes.NotFound || tokend.ErrorReason(err) != "CONNECTION_NOT_FOUND" {
		t.Fatalf("NOT_FOUND: %v (reason %q)", err, tokend.ErrorReason(err))
	}
	var ia *tokend.InvalidArgumentError
	if _, err := c.GetToken(ctx(t), "not valid", 0); !errors.As(err, &ia) || ia.Field != "connection_id" {
		t.Fatalf("INVALID_ARGUMENT: %v", err)
	}

	grant := shared.mint(t, account("go-kinds-other"))
	_, err = c.Install(ctx(t), tokend.InstallRequest{
		Provider: "sandbox", ConnectionID: id, AccountID: "someone-else",
		TokenImport: &tokend.TokenImport{AccessToken: tokend.NewSecret(grant.AccessToken), RefreshToken: tokend.NewSecret(grant.RefreshToken)},
	})
	var ae *tokend.AlreadyExistsError
	if !errors.As(err, &ae) || ae.ConnectionID != id || ae.Reason != "CONNECTION_ID_TAKEN" || status.Code(err) != codes.AlreadyExists {
		t.Fatalf("ALREADY_EXISTS: %#v", err)
	}
	if strings.Contains(err.Error(), grant.AccessToken) {
		t.Fatal("a secret is in the error")
	}

	// Cached, deleted by another client: the NotFound answer evicts it, so
	// Token no longer hands out the deleted connection's token.
	if _, err := c.Token(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if err := other.DeleteConnection(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetToken(ctx(t), id, 0); !errors.As(err, &nf) {
		t.Fatalf("GetToken after the delete: %v", err)
	}
	if _, err := c.Token(ctx(t), id); !errors.As(err, &nf) {
		t.Fatalf("Token after the NotFound: %v, want NotFound (not the cached token)", err)
	}
}

// The client's own deadline: a broker stuck on a slow provider gives
// *DeadlineExceededError after the timeout, not retried. UNAVAILABLE with
// RetryInfo from the broker is *UnavailableError at once, not retried.
func TestDeadlineAndBrokerUnavailableAreNotRetried(t *testing.T) {
	b, err := startBroker("deadline")
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()
	setup := b.client(t)
	expired := func(acct string) string {
		grant := b.mint(t, acct)
		result, err := setup.Install(ctx(t), tokend.InstallRequest{
			Provider: "sandbox", AccountID: acct,
			TokenImport: &tokend.TokenImport{AccessToken: tokend.NewSecret(grant.AccessToken), RefreshToken: tokend.NewSecret(grant.RefreshToken)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return result.Connection.ConnectionID
	}

	slow := expired("go-slow")
	b.postJSON(t, "/sandbox/faults", map[string]interface{}{"kind": "latency", "delay_ms": 3000, "count": 1})
	c := b.client(t, tokend.WithTimeout(500*time.Millisecond))
	started := time.Now()
	_, err = c.GetToken(context.Background(), slow, 0)
	took := time.Since(started)
	var de *tokend.DeadlineExceededError
	if !errors.As(err, &de) || status.Code(err) != codes.DeadlineExceeded || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("past the deadline: %#v", err)
	}
	if took < 450*time.Millisecond || took > 1500*time.Millisecond {
		t.Fatalf("one 500 ms attempt, not retried: took %v", took)
	}
	time.Sleep(3 * time.Second) // the slow refresh finishes; the fault is spent

	down := expired("go-down")
	b.postJSON(t, "/sandbox/faults", map[string]interface{}{"kind": "status", "status": 503, "count": 100})
	calls := b.rpcCalls(t, "GetToken")
	_, err = b.client(t).GetToken(ctx(t), down, 0)
	var un *tokend.UnavailableError
	if !errors.As(err, &un) || un.RetryAfter <= 0 || un.Reason != "PROVIDER_UNAVAILABLE" {
		t.Fatalf("provider down: %#v", err)
	}
	if n := b.rpcCalls(t, "GetToken") - calls; n != 1 {
		t.Fatalf("%d GetToken calls, want 1 (UNAVAILABLE with RetryInfo is not retried)", n)
	}
}

// A broker that cannot be reached: retried with backoff as configured
// (100 ms, 200 ms, 400 ms...), then *TransportError naming the endpoint.
func TestUnreachableBrokerIsRetriedThenTransportError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		retries int
		atLeast time.Duration
	}{{0, 0}, {3, 700 * time.Millisecond}} {
		c, err := tokend.New(addr, tokend.WithTransportRetries(tc.retries))
		if err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		_, err = c.GetToken(ctx(t), "x", 0)
		took := time.Since(started)
		c.Close()
		var te *tokend.TransportError
		if !errors.As(err, &te) || !strings.Contains(err.Error(), addr) || status.Code(err) != codes.Unavailable {
			t.Fatalf("%d retries: %v", tc.retries, err)
		}
		if took < tc.atLeast || took > tc.atLeast+2*time.Second {
			t.Fatalf("%d retries took %v", tc.retries, took)
		}
	}
}
