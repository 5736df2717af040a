package tokend

import (
	"context"
	"time"

	"github.com/tokend-dev/tokend/clients/go/tokendv1"
)

// InstallRequest creates a connection, or atomically replaces one (which
// makes it ACTIVE again). Set AuthorizationCode to exchange a code, or
// TokenImport to import a token set; leave both nil for a client-credentials
// provider (then Provider, ConnectionID and Params are enough).
type InstallRequest struct {
	// A provider name from tokend's configuration, e.g. "hubspot".
	Provider string
	// Optional: tokend derives "<provider>-<account_id>" without it.
	ConnectionID string
	// The provider-side account id; required for imports.
	AccountID         string
	AuthorizationCode *AuthorizationCode
	TokenImport       *TokenImport
	// Required to replace a connection holding another account's grant
	// (with an explicit ConnectionID); without it that is an
	// *AlreadyExistsError.
	Replace bool
	// Fill the provider's per-connection endpoints, e.g. {"subdomain": "acme"}.
	Params map[string]string
}

// AuthorizationCode is an OAuth2 authorization code to exchange.
type AuthorizationCode struct {
	Code        Secret
	RedirectURI string
	// The PKCE code verifier, when the authorization request had a challenge.
	CodeVerifier Secret
}

// TokenImport is a token set obtained elsewhere.
type TokenImport struct {
	AccessToken  Secret
	RefreshToken Secret
	// Validity left on AccessToken; 0 means already expired.
	ExpiresIn time.Duration
	Scopes    []string
	// Defaults to "Bearer".
	TokenType string
}

// InstallResult is the installed connection.
type InstallResult struct {
	Connection Connection
	// False when the connection existed and was replaced.
	Created bool
	// True when this was a retry of an install already applied.
	Replayed bool
}

// Install creates or replaces a connection. A retried identical request is
// answered without a second effect.
func (c *Client) Install(ctx context.Context, r InstallRequest) (*InstallResult, error) {
	request := &tokendv1.InstallRequest{
		Provider:     r.Provider,
		ConnectionId: r.ConnectionID,
		AccountId:    r.AccountID,
		Replace:      r.Replace,
		Params:       r.Params,
	}
	switch {
	case r.AuthorizationCode != nil && r.TokenImport != nil:
		return nil, &InvalidArgumentError{Field: "grant", Description: "give an authorization code or a token import, not both"}
	case r.AuthorizationCode != nil:
		request.Grant = &tokendv1.InstallRequest_AuthorizationCode{AuthorizationCode: &tokendv1.AuthorizationCode{
			Code:         r.AuthorizationCode.Code.Reveal(),
			RedirectUri:  r.AuthorizationCode.RedirectURI,
			CodeVerifier: r.AuthorizationCode.CodeVerifier.Reveal(),
		}}
	case r.TokenImport != nil:
		request.Grant = &tokendv1.InstallRequest_TokenImport{TokenImport: &tokendv1.TokenImport{
			AccessToken:      r.TokenImport.AccessToken.Reveal(),
			RefreshToken:     r.TokenImport.RefreshToken.Reveal(),
			ExpiresInSeconds: int64(r.TokenImport.ExpiresIn / time.Second),
			Scopes:           r.TokenImport.Scopes,
			TokenType:        r.TokenImport.TokenType,
		}}
	}
	var response *tokendv1.InstallResponse
	err := c.unary(ctx, r.ConnectionID, func(ctx context.Context) (err error) {
		response, err = c.rpc.Install(ctx, request)
		return err
	})
	if err != nil {
		return nil, err
	}
	connection := connectionFromPB(response.GetConnection())
	// A new token set: the cached token (if any) is superseded.
	c.cache.evict(connection.ConnectionID)
	return &InstallResult{Connection: connection, Created: response.GetCreated(), Replayed: response.GetReplayed()}, nil
}

// GetConnection returns a connection's metadata: status, last provider
// error, last and next refresh. Never a secret.
func (c *Client) GetConnection(ctx context.Context, connectionID string) (*Connection, error) {
	var response *tokendv1.GetConnectionResponse
	err := c.unary(ctx, connectionID, func(ctx context.Context) (err error) {
		response, err = c.rpc.GetConnection(ctx, &tokendv1.GetConnectionRequest{ConnectionId: connectionID})
		return err
	})
	if err != nil {
		return nil, err
	}
	connection := connectionFromPB(response.GetConnection())
	return &connection, nil
}

// DeleteConnection forgets a connection and its tokens (and drops its cached
// token); its watchers receive a DELETED event.
func (c *Client) DeleteConnection(ctx context.Context, connectionID string) error {
	err := c.unary(ctx, connectionID, func(ctx context.Context) error {
		_, err := c.rpc.DeleteConnection(ctx, &tokendv1.DeleteConnectionRequest{ConnectionId: connectionID})
		return err
	})
	if err == nil {
		c.cache.evict(connectionID)
	}
	return err
}

// ListOptions filters and pages ListConnections.
type ListOptions struct {
	// Only this provider's connections, when set.
	Provider string
	// Only connections with this status, when set.
	Status ConnectionStatus
	// Connections per call to tokend: 1..1000; 0 means 100.
	PageSize int
}

// ListConnectionsPage returns one page of connections in id order and the
// token of the next page ("" after the last).
func (c *Client) ListConnectionsPage(ctx context.Context, opts ListOptions, pageToken string) ([]Connection, string, error) {
	request := &tokendv1.ListConnectionsRequest{
		PageSize:  int32(opts.PageSize),
		PageToken: pageToken,
		Provider:  opts.Provider,
	}
	if opts.Status != "" {
		v, ok := enumValue(tokendv1.ConnectionStatus_value, statusPrefix, string(opts.Status))
		if !ok {
			return nil, "", &InvalidArgumentError{Field: "status", Description: "unknown status " + string(opts.Status)}
		}
		request.Status = tokendv1.ConnectionStatus(v)
	}
	var response *tokendv1.ListConnectionsResponse
	err := c.unary(ctx, "", func(ctx context.Context) (err error) {
		response, err = c.rpc.ListConnections(ctx, request)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	connections := make([]Connection, 0, len(response.GetConnections()))
	for _, pb := range response.GetConnections() {
		connections = append(connections, connectionFromPB(pb))
	}
	return connections, response.GetNextPageToken(), nil
}

// ListConnections iterates over every connection, page after page:
//
//	it := client.ListConnections(ctx, tokend.ListOptions{Status: tokend.StatusReconnectRequired})
//	for it.Next() {
//		c := it.Connection()
//	}
//	if err := it.Err(); err != nil { ... }
func (c *Client) ListConnections(ctx context.Context, opts ListOptions) *ConnectionIterator {
	return &ConnectionIterator{client: c, ctx: ctx, opts: opts}
}

// ConnectionIterator walks the pages of ListConnections; each page is one
// call to tokend, with its own deadline.
type ConnectionIterator struct {
	client    *Client
	ctx       context.Context
	opts      ListOptions
	page      []Connection
	pageToken string
	started   bool
	current   Connection
	err       error
}

// Next advances to the next connection, fetching the next page when needed.
// It returns false at the end or on an error (see Err).
func (it *ConnectionIterator) Next() bool {
	for len(it.page) == 0 {
		if it.err != nil || (it.started && it.pageToken == "") {
			return false
		}
		it.started = true
		it.page, it.pageToken, it.err = it.client.ListConnectionsPage(it.ctx, it.opts, it.pageToken)
	}
	it.current, it.page = it.page[0], it.page[1:]
	return true
}

// Connection is the connection Next advanced to.
func (it *ConnectionIterator) Connection() Connection { return it.current }

// Err is the error that ended the iteration, if any.
func (it *ConnectionIterator) Err() error { return it.err }
