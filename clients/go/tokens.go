package tokend

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokend-dev/tokend/clients/go/tokendv1"
)

// GetToken asks tokend for a token of the connection with at least minTTL
// left (0: the provider's refresh buffer), bypassing the local cache. Most
// callers want Token instead.
func (c *Client) GetToken(ctx context.Context, connectionID string, minTTL time.Duration) (*Token, error) {
	request := &tokendv1.GetTokenRequest{ConnectionId: connectionID, MinTtlSeconds: int64(minTTL / time.Second)}
	var (
		response *tokendv1.GetTokenResponse
		received time.Time
	)
	err := c.unary(ctx, connectionID, func(ctx context.Context) (err error) {
		received = time.Now()
		response, err = c.rpc.GetToken(ctx, request)
		return err
	})
	if err != nil {
		return nil, err
	}
	if response.GetToken() == nil {
		return nil, &StatusError{Code: codes.Internal, Message: "reply without a token"}
	}
	return tokenFromPB(response.GetToken(), received), nil
}

// Token returns a valid token of the connection from the local cache, asking
// tokend only when less than min(cache margin, a quarter of its lifetime) is
// left. Concurrent callers for one connection share a single tokend call.
func (c *Client) Token(ctx context.Context, connectionID string) (*Token, error) {
	return c.cache.get(ctx, connectionID)
}

// fetchToken is the cache's call to tokend, detached from any one caller's
// context so that a caller giving up does not fail the others.
func (c *Client) fetchToken(connectionID string) (*Token, error) {
	return c.GetToken(context.Background(), connectionID, 0)
}

// CachedConnections is how many connections' tokens the cache holds now.
func (c *Client) CachedConnections() int { return c.cache.len() }

// Rejected names the token an upstream API rejected, for ForceRefresh.
type Rejected struct {
	version *uint64
	token   Secret
}

// RejectedVersion names the rejected token by the Version it came with (the
// preferred way: no secret on the wire).
func RejectedVersion(version uint64) Rejected { return Rejected{version: &version} }

// RejectedAccessToken names the rejected token itself.
func RejectedAccessToken(token Secret) Rejected { return Rejected{token: token} }

// Unconditional names nothing: tokend refreshes whatever is current, at most
// once per the provider's min_refresh_interval_secs.
var Unconditional = Rejected{}

// ForceRefresh replaces a token the upstream API rejected. tokend calls the
// provider only if the stored token is not already newer than the rejected
// one; refreshed reports whether it did. The new token also replaces the
// cached one, so Token stops handing out the rejected token.
func (c *Client) ForceRefresh(ctx context.Context, connectionID string, rejected Rejected) (token *Token, refreshed bool, err error) {
	request := &tokendv1.ForceRefreshRequest{ConnectionId: connectionID}
	switch {
	case rejected.version != nil:
		request.Rejected = &tokendv1.ForceRefreshRequest_RejectedVersion{RejectedVersion: *rejected.version}
	case !rejected.token.IsZero():
		request.Rejected = &tokendv1.ForceRefreshRequest_RejectedAccessToken{RejectedAccessToken: rejected.token.Reveal()}
	}
	var (
		response *tokendv1.ForceRefreshResponse
		received time.Time
	)
	err = c.unary(ctx, connectionID, func(ctx context.Context) (err error) {
		received = time.Now()
		response, err = c.rpc.ForceRefresh(ctx, request)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	if response.GetToken() == nil {
		return nil, false, &StatusError{Code: codes.Internal, Message: "reply without a token"}
	}
	token = tokenFromPB(response.GetToken(), received)
	c.cache.put(connectionID, token)
	return token, response.GetRefreshed(), nil
}
