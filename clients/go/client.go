package tokend

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/tokend-dev/tokend/clients/go/tokendv1"
)

// Client is a tokend client: typed calls and errors, a deadline on every
// call, retries across broker restarts, and a token cache (Token) shared by
// every goroutine. It is safe for concurrent use; make one per process and
// Close it at the end.
type Client struct {
	conn     *grpc.ClientConn
	rpc      tokendv1.TokenServiceClient
	endpoint string
	timeout  time.Duration
	retries  int
	cache    *tokenCache
}

// New returns a client of the tokend at endpoint: "host:port" (plaintext, or
// TLS when a TLS option is given), "http://host:port" or "https://host:port".
// It connects lazily and reconnects by itself with backoff, so a broker that
// is not up yet is not an error here.
func New(endpoint string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	target, useTLS, err := parseEndpoint(endpoint, cfg.tls != nil)
	if err != nil {
		return nil, err
	}
	dial := []grpc.DialOption{
		// Reconnect fast after a broker restart (gRPC's default backoff
		// grows to two minutes).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Notice a dead broker under a long-lived watch stream.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
	if useTLS {
		tlsConfig := cfg.tlsConfig()
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	if !cfg.apiKey.IsZero() {
		dial = append(dial, grpc.WithPerRPCCredentials(apiKeyCredentials{key: cfg.apiKey}))
	}
	dial = append(dial, cfg.dialOptions...)
	conn, err := grpc.Dial(target, dial...)
	if err != nil {
		return nil, &InvalidArgumentError{Field: "endpoint", Description: err.Error()}
	}
	c := &Client{
		conn:     conn,
		rpc:      tokendv1.NewTokenServiceClient(conn),
		endpoint: target,
		timeout:  cfg.timeout,
		retries:  cfg.retries,
	}
	c.cache = newTokenCache(cfg.cacheCapacity, cfg.cacheMargin, c.fetchToken)
	return c, nil
}

// Close closes the connection to tokend; streams end with it.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated gRPC client on this Client's connection (with its
// credentials), for RPCs this package does not wrap (ExportConnections,
// ListWebhooks). Pass its errors to DecodeError.
func (c *Client) Stub() tokendv1.TokenServiceClient { return c.rpc }

// parseEndpoint returns the gRPC dial target and whether to use TLS.
func parseEndpoint(endpoint string, tlsConfigured bool) (string, bool, error) {
	endpoint = strings.TrimSpace(endpoint)
	switch {
	case strings.HasPrefix(endpoint, "http://"):
		endpoint, tlsConfigured = strings.TrimPrefix(endpoint, "http://"), false
	case strings.HasPrefix(endpoint, "https://"):
		endpoint, tlsConfigured = strings.TrimPrefix(endpoint, "https://"), true
	case strings.Contains(endpoint, "://"):
		// A gRPC target such as dns:///host:port or unix:///path.
		return endpoint, tlsConfigured, nil
	}
	endpoint = strings.TrimSuffix(endpoint, "/")
	if endpoint == "" || strings.Contains(endpoint, "/") {
		return "", false, &InvalidArgumentError{Field: "endpoint", Description: "want host:port or http(s)://host:port"}
	}
	return endpoint, tlsConfigured, nil
}

// apiKeyCredentials sends the API key with every call.
type apiKeyCredentials struct{ key Secret }

func (a apiKeyCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + a.key.Reveal()}, nil
}

// RequireTransportSecurity is false so that a loopback broker without TLS
// can be called with a key; see WithAPIKey.
func (a apiKeyCredentials) RequireTransportSecurity() bool { return false }

// withDeadline gives ctx the client's default deadline unless it has one.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// unary runs one RPC with a deadline, retrying with backoff while tokend is
// unreachable (no gRPC status: TransportError; a status, UNAVAILABLE with
// RetryInfo included, is returned at once), and decodes its error. A
// ReconnectRequired or NotFound evicts the cached token of connectionID
// (when the call is about one).
func (c *Client) unary(ctx context.Context, connectionID string, call func(context.Context) error) error {
	delay := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		attemptCtx, cancel := c.withDeadline(ctx)
		err := call(attemptCtx)
		cancel()
		if err == nil {
			return nil
		}
		decoded := decodeError(err, c.endpoint)
		if _, transport := decoded.(*TransportError); transport && attempt < c.retries {
			if sleep(ctx, delay) == nil {
				delay = nextDelay(delay, 2*time.Second)
				continue
			}
		}
		switch e := decoded.(type) {
		case *ReconnectRequiredError:
			c.evictGone(connectionID, e.ConnectionID)
		case *NotFoundError:
			c.evictGone(connectionID, e.ConnectionID)
		}
		return decoded
	}
}

// evictGone drops the cached token of a connection the broker says is gone
// (its grant dead, or itself deleted).
func (c *Client) evictGone(connectionID, named string) {
	if connectionID != "" {
		c.cache.evict(connectionID)
	}
	if named != "" && named != connectionID {
		c.cache.evict(named)
	}
}

// sleep waits d, or less if ctx ends first (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func nextDelay(d, max time.Duration) time.Duration {
	if d *= 2; d > max {
		return max
	}
	return d
}
