package tokend

import (
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
// A second 401 is a *StillUnauthorizedError. tokend's errors come out typed:
// errors.As(err, &reconnectRequired) works on what http.Client.Do returns.
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
}

// HTTPClient is an http.Client whose requests carry tokens of connectionID,
// with refresh-and-retry on 401 (see Transport).
func (c *Client) HTTPClient(connectionID string) *http.Client {
	return &http.Client{Transport: &Transport{Client: c, ConnectionID: connectionID}}
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
	if response.StatusCode == http.StatusUnauthorized {
		discard(response)
		return nil, &StillUnauthorizedError{ConnectionID: connectionID}
	}
	return response, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// discard reads a little of a response we drop (so its connection can be
// reused) and closes it.
func discard(response *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(response.Body, 64<<10))
	_ = response.Body.Close()
}
