package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// An API key is sent as `authorization: Bearer`; no key or a wrong key is
// UNAUTHENTICATED, a connection outside the key's grants PERMISSION_DENIED.
// Also: a client-credentials install, with just provider and connection id.
func TestAPIKeyAndClientCredentials(t *testing.T) {
	const key = "go-sdk-key-0123456789"
	b, err := startConfigured("apikey", `
[providers.reports]
token_url = "{{SANDBOX}}/oauth/token"
grant = "client_credentials"
scopes = ["reports.read"]
client_id = "sandbox-client"
client_secret_env = "TOKEND_GO_TEST_SECRET"

[[identities]]
name = "go-sdk"
api_key_sha256 = "`+sha256Hex([]byte(key))+`"
grants = [{ permissions = ["tokens", "install"], connections = ["sandbox-go-key-*", "go-key-reports"] }]
`)
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()

	c := b.client(t, tokend.WithAPIKey(key))
	id, grant := b.install(t, c, "go-key-1")
	token, err := c.Token(ctx(t), id)
	if err != nil || token.AccessToken.Reveal() != grant.AccessToken {
		t.Fatalf("Token with the key: %v", err)
	}
	var denied *tokend.PermissionDeniedError
	if _, err := c.GetToken(ctx(t), "sandbox-other-1", 0); !errors.As(err, &denied) {
		t.Fatalf("outside the grants: %v", err)
	}
	var unauthenticated *tokend.UnauthenticatedError
	for _, opts := range [][]tokend.Option{nil, {tokend.WithAPIKey("wrong-key-0123456789")}} {
		if _, err := b.client(t, opts...).GetToken(ctx(t), id, 0); !errors.As(err, &unauthenticated) {
			t.Fatalf("without the right key: %v", err)
		}
	}
	if _, err := tokend.New(b.grpc, tokend.WithAPIKey("bad\nkey")); err == nil {
		t.Fatal("a key that cannot be a header was accepted")
	}

	installed, err := c.Install(ctx(t), tokend.InstallRequest{Provider: "reports", ConnectionID: "go-key-reports"})
	if err != nil {
		t.Fatalf("client-credentials install: %v", err)
	}
	if installed.Connection.Provider != "reports" || installed.Connection.Status != tokend.StatusActive {
		t.Fatalf("client-credentials connection: %+v", installed.Connection)
	}
	cc, err := c.Token(ctx(t), "go-key-reports")
	if err != nil || cc.AccessToken.IsZero() || cc.TTL() <= 0 {
		t.Fatalf("client-credentials token: %v", err)
	}
}

// pki is a CA, a server certificate for 127.0.0.1 and a client certificate.
type pki struct {
	caPEM, serverPEM, serverKey, clientPEM, clientKey []byte
	clientDER                                         []byte
}

func newPKI(t *testing.T) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokend go sdk test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) ([]byte, []byte, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		template := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			template.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			template.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), der
	}
	p := pki{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	p.serverPEM, p.serverKey, _ = leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	p.clientPEM, p.clientKey, p.clientDER = leaf(3, "go-sdk", x509.ExtKeyUsageClientAuth)
	return p
}

// Mutual TLS: the client trusts the broker's CA and presents a certificate
// that tokend knows by its SHA-256; without it the call is refused.
func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	write := func(name string, content []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	b, err := startConfigured("mtls", `
[tls]
cert_file = "`+write("server.pem", p.serverPEM)+`"
key_file = "`+write("server.key", p.serverKey)+`"
client_ca_file = "`+write("ca.pem", p.caPEM)+`"

[[identities]]
name = "go-sdk-mtls"
cert_sha256 = "`+sha256Hex(p.clientDER)+`"
grants = [{ permissions = ["tokens", "install"], connections = ["*"] }]
`)
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()

	c := b.client(t, tokend.WithTLS(p.caPEM, ""), tokend.WithClientCertificate(p.clientPEM, p.clientKey))
	id, grant := b.install(t, c, "go-mtls-1")
	token, err := c.Token(ctx(t), id)
	if err != nil || token.AccessToken.Reveal() != grant.AccessToken {
		t.Fatalf("Token over mutual TLS: %v", err)
	}
	anonymous := b.client(t, tokend.WithTLS(p.caPEM, ""), tokend.WithTransportRetries(0))
	_, err = anonymous.GetToken(ctx(t), id, 0)
	var unauthenticated *tokend.UnauthenticatedError
	if !errors.As(err, &unauthenticated) {
		t.Fatalf("without a client certificate: %v", err)
	}
	if _, err := tokend.New(b.grpc, tokend.WithClientCertificate([]byte("junk"), nil)); err == nil {
		t.Fatal("a junk client certificate was accepted")
	}
}
