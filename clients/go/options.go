package tokend

import (
	"crypto/tls"
	"crypto/x509"
	"time"

	"google.golang.org/grpc"
)

// Defaults of a Client; each has an Option.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultTransportRetries = 5
	DefaultCacheMargin      = 30 * time.Second
	DefaultCacheCapacity    = 10000
)

// An Option configures a Client in New.
type Option func(*config)

type config struct {
	apiKey        Secret
	tls           *tls.Config
	timeout       time.Duration
	retries       int
	cacheMargin   time.Duration
	cacheCapacity int
	dialOptions   []grpc.DialOption
	// The first invalid option, reported by New.
	err error
}

func defaultConfig() config {
	return config{
		timeout:       DefaultTimeout,
		retries:       DefaultTransportRetries,
		cacheMargin:   DefaultCacheMargin,
		cacheCapacity: DefaultCacheCapacity,
	}
}

func (c *config) fail(field, description string) {
	if c.err == nil {
		c.err = &InvalidArgumentError{Field: field, Description: description}
	}
}

func (c *config) tlsConfig() *tls.Config {
	if c.tls == nil {
		c.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return c.tls
}

// WithAPIKey sends key as `authorization: Bearer <key>` with every call (see
// tokend's docs/configuration.md, "Callers, TLS and audit"). Over plaintext the key travels
// in clear: use it with TLS unless tokend is on loopback.
func WithAPIKey(key string) Option {
	return func(c *config) {
		for _, r := range key {
			if r < 0x21 || r > 0x7e {
				c.fail("api_key", "not valid in a gRPC header")
				return
			}
		}
		c.apiKey = NewSecret(key)
	}
}

// WithTLS connects over TLS, trusting the CA certificates in caPEM (nil: the
// system's roots). serverName overrides the name checked in tokend's
// certificate (empty: the endpoint's host).
func WithTLS(caPEM []byte, serverName string) Option {
	return func(c *config) {
		t := c.tlsConfig()
		if caPEM != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				c.fail("tls_ca", "no PEM certificate in the CA bundle")
				return
			}
			t.RootCAs = pool
		}
		if serverName != "" {
			t.ServerName = serverName
		}
	}
}

// WithClientCertificate presents this certificate and key (PEM) to tokend:
// mutual TLS, for identities tokend knows by `cert_sha256`. It implies TLS;
// combine it with WithTLS to trust a private CA.
func WithClientCertificate(certPEM, keyPEM []byte) Option {
	return func(c *config) {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			c.fail("tls_client_certificate", "not a PEM certificate and matching key")
			return
		}
		t := c.tlsConfig()
		t.Certificates = append(t.Certificates, pair)
	}
}

// WithTLSConfig connects over TLS with this configuration as is.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(c *config) { c.tls = cfg.Clone() }
}

// WithTimeout is the deadline given to each call whose context has none
// (default 10 s). Streams (Watch, WatchAll) end only with their context.
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail("timeout", "must be positive")
			return
		}
		c.timeout = d
	}
}

// WithTransportRetries sets how often a call that cannot reach tokend is
// retried, with exponential backoff from 100 ms (default 5, about 3 s in
// all), to ride out a broker restart. 0 disables retries.
func WithTransportRetries(n int) Option {
	return func(c *config) {
		if n < 0 {
			n = 0
		}
		c.retries = n
	}
}

// WithCacheMargin: Token hands out a cached token only while more than this
// is left of it (default 30 s), capped at a quarter of the token's lifetime.
func WithCacheMargin(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			d = 0
		}
		c.cacheMargin = d
	}
}

// WithCacheCapacity bounds how many connections' tokens Token keeps (default
// 10,000); past it the least recently used is dropped. Values below 1 are
// taken as 1.
func WithCacheCapacity(n int) Option {
	return func(c *config) {
		if n < 1 {
			n = 1
		}
		c.cacheCapacity = n
	}
}

// WithDialOptions adds gRPC dial options (interceptors, a custom dialer...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, opts...) }
}
