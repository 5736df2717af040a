package tokend

import (
	"bytes"
	"context"
	"io"
	"net/http"
)

// Transport is an http.RoundTripper that authorizes each request with a token
// of a tokend connection (from Client.Token's cache) and, when the upstream
// API answers 401, asks tokend for a newer token (ForceRefresh with the
// rejected version) and sends the request once more.
//
// GET, HEAD, OPTIONS, PUT and DELETE are replayed. POST and PATCH are not,
// unless ReplayNonIdempotent is set, because a replayed write can duplicate
// data: their 401 response is returned as it is (the token is refreshed for
// the next request all the same). A body is replayed through
// http.Request.GetBody, which http.NewRequest sets for in-memory bodies; a
// request whose body cannot be read twice is not replayed either.
//
// A 401 to the replay is a *StillUnauthorizedError by default (a caller
// that never looks at the status must not take a rejected call for data;
// a fresh token that is still refused points at scopes or the provider,
// not at expiry); with Second401: Second401Return the 401 response is
// returned instead. tokend's errors come out typed: errors.As(err,
// &reconnectRequired) works on what http.Client.Do returns.
type Transport struct {
	Client *Client
	// The connection whose tokens every request carries, unless its context
	// names another (WithConnectionID).
	ConnectionID string
	// Sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Also replay POST and PATCH after a 401: only for APIs where a second
	// delivery is safe (idempotency keys, upserts).
	ReplayNonIdempotent bool
	// What a 401 to the replay becomes: Second401Raise (the zero value, a
	// *StillUnauthorizedError) or Second401Return (the response).
	Second401 Second401
}

// Second401 says what the HTTP helper does when the replay with a refreshed
// token is answered 401 again.
type Second401 int

const (
	// Second401Raise: fail with *StillUnauthorizedError (the default).
	Second401Raise Second401 = iota
	// Second401Return: return the 401 response to the caller.
	Second401Return
)

// A TransportOption configures the Transport of HTTPClient.
type TransportOption func(*Transport)

// WithSecond401 sets what a 401 to the replay becomes (see Second401).
func WithSecond401(s Second401) TransportOption {
	return func(t *Transport) { t.Second401 = s }
}

// WithReplayNonIdempotent also replays POST and PATCH after a 401.
func WithReplayNonIdempotent(yes bool) TransportOption {
	return func(t *Transport) { t.ReplayNonIdempotent = yes }
}

// HTTPClient is an http.Client whose requests carry tokens of connectionID,
// with refresh-and-retry on 401 (see Transport).
func (c *Client) HTTPClient(connectionID string, opts ...TransportOption) *http.Client {
	t := &Transport{Client: c, ConnectionID: connectionID}
	for _, opt := range opts {
		opt(t)
	}
	return &http.Client{Transport: t}
}

type connectionIDKey struct{}

// WithConnectionID makes a request with this context carry tokens of
// connectionID instead of its Transport's ConnectionID.
func WithConnectionID(ctx context.Context, connectionID string) context.Context {
	return context.WithValue(ctx, connectionIDKey{}, connectionID)
}

// mayReplay: idempotent methods (RFC 9110 §9.2.2), or any when opted in.
func mayReplay(method string, replayNonIdempotent bool) bool {
	switch method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return replayNonIdempotent
}

func hasBody(req *http.Request) bool { return req.Body != nil && req.Body != http.NoBody }

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	connectionID, _ := ctx.Value(connectionIDKey{}).(string)
	if connectionID == "" {
		connectionID = t.ConnectionID
	}
	if t.Client == nil || connectionID == "" {
		closeBody(req)
		return nil, &InvalidArgumentError{Field: "connection_id", Description: "the Transport has no Client or connection"}
	}
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	token, err := t.Client.Token(ctx, connectionID)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	replay := mayReplay(req.Method, t.ReplayNonIdempotent) && (!hasBody(req) || req.GetBody != nil)

	first := req.Clone(ctx)
	first.Header.Set("Authorization", token.AuthorizationHeader())
	response, err := base.RoundTrip(first)
	if err != nil || response.StatusCode != http.StatusUnauthorized {
		return response, err
	}
	// Refresh (or pick up the refresh another caller made): the next request
	// carries a good token either way.
	fresh, _, err := t.Client.ForceRefresh(ctx, connectionID, RejectedVersion(token.Version))
	if err != nil {
		discard(response)
		return nil, err
	}
	if !replay {
		return response, nil
	}
	retry := req.Clone(ctx)
	if hasBody(req) {
		if retry.Body, err = req.GetBody(); err != nil {
			discard(response)
			return nil, err
		}
	}
	discard(response)
	retry.Header.Set("Authorization", fresh.AuthorizationHeader())
	response, err = base.RoundTrip(retry)
	if err != nil {
		return nil, err
	}
	if response.StatusCode == http.StatusUnauthorized && t.Second401 != Second401Return {
		return nil, &StillUnauthorizedError{ConnectionID: connectionID, Status: response.StatusCode, Response: detach(response)}
	}
	return response, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// detach reads up to 64 KiB of a response handed over inside an error and
// closes it, so a caller who ignores it leaks no connection; its Body
// replays what was read.
func detach(response *http.Response) *http.Response {
	body, _ := io.ReadAll(io.LimitReader(response.Body, 64<<10))
	_ = response.Body.Close()
	response.Body = io.NopCloser(bytes.NewReader(body))
	return response
}

// discard reads a little of a response we drop (so its connection can be
// reused) and closes it.
func discard(response *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(response.Body, 64<<10))
	_ = response.Body.Close()
}
