// Package tests runs the Go SDK against a live `tokend serve --sandbox`. It
// is a module of its own that requires the SDK as a user's module does, so
// the tests see only its public API.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// shared is the broker most tests use, started by TestMain.
var shared *broker

func TestMain(m *testing.M) {
	var err error
	shared, err = startBroker("shared")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cannot start tokend:", err)
		os.Exit(1)
	}
	code := m.Run()
	shared.stop()
	os.Exit(code)
}

// tokendBin is $TOKEND_BIN, or the repo's debug build. A missing binary
// fails the run: the tests never skip.
func tokendBin() (string, error) {
	bin := os.Getenv("TOKEND_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "..", "target", "debug", "tokend")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("tokend binary %s: %w (set TOKEND_BIN, or `cargo build --bin tokend` in the repo)", bin, err)
	}
	return bin, nil
}

// broker is one `tokend serve --sandbox` on free loopback ports.
type broker struct {
	name    string
	args    []string
	dir     string // removed by stop: data, config, log
	dataDir string
	grpc    string // host:port
	sandbox string // http://host:port
	admin   string // http://host:port
	cmd     *exec.Cmd
	log     *os.File
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startBroker starts a broker with its own data dir; extra are more
// `serve` flags (e.g. --sandbox-token-lifetime-secs 2).
func startBroker(name string, extra ...string) (*broker, error) {
	return startConfigured(name, "", extra...)
}

// startConfigured starts a broker with this tokend.toml, in which
// {{SANDBOX}} stands for the sandbox provider's URL. The broker's
// environment has TOKEND_GO_TEST_SECRET=sandbox-secret, the sandbox's
// client secret, for providers that name it in client_secret_env.
func startConfigured(name, config string, extra ...string) (*broker, error) {
	bin, err := tokendBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tokend-go-"+name+"-")
	if err != nil {
		return nil, err
	}
	addrs := make([]string, 3)
	for i := range addrs {
		if addrs[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	b := &broker{
		name:    name,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		grpc:    addrs[0],
		sandbox: "http://" + addrs[1],
		admin:   "http://" + addrs[2],
	}
	b.args = append([]string{bin, "serve", "--sandbox", "--listen", addrs[0], "--sandbox-listen", addrs[1],
		"--admin-listen", addrs[2], "--data-dir", b.dataDir}, extra...)
	if config != "" {
		path := filepath.Join(dir, "tokend.toml")
		if err := os.WriteFile(path, []byte(strings.ReplaceAll(config, "{{SANDBOX}}", b.sandbox)), 0o600); err != nil {
			return nil, err
		}
		b.args = append(b.args, "--config", path)
	}
	if b.log, err = os.Create(filepath.Join(dir, "tokend.log")); err != nil {
		return nil, err
	}
	return b, b.start()
}

func (b *broker) start() error {
	cmd := exec.Command(b.args[0], b.args[1:]...)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	cmd.Env = append(os.Environ(), "TOKEND_GO_TEST_SECRET=sandbox-secret")
	// The broker dies with the test process, however that ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	b.cmd = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("tokend (%s) exited at start: %v; log: %s", b.name, err, b.logTail())
		default:
		}
		if r, err := http.Get(b.admin + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.kill()
	return fmt.Errorf("tokend (%s) not ready after 30 s; log: %s", b.name, b.logTail())
}

func (b *broker) logTail() string {
	raw, _ := os.ReadFile(b.log.Name())
	if len(raw) > 2000 {
		raw = raw[len(raw)-2000:]
	}
	return string(raw)
}

// kill ends the broker at once (SIGKILL).
func (b *broker) kill() {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Kill()
		for i := 0; i < 100 && b.alive(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// alive reports whether the gRPC port still accepts connections.
func (b *broker) alive() bool {
	c, err := net.DialTimeout("tcp", b.grpc, 100*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// stop ends the broker gracefully (SIGTERM), then for good, and removes
// its files.
func (b *broker) stop() {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		for i := 0; i < 250 && b.alive(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
		b.kill()
	}
	b.log.Close()
	_ = os.RemoveAll(b.dir)
}

// client is a tokend client of this broker; it is closed with the test.
func (b *broker) client(t testing.TB, opts ...tokend.Option) *tokend.Client {
	t.Helper()
	c, err := tokend.New(b.grpc, opts...)
	if err != nil {
		t.Fatalf("tokend.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (b *broker) postJSON(t testing.TB, path string, body interface{}) map[string]interface{} {
	t.Helper()
	raw, _ := json.Marshal(body)
	r, err := http.Post(b.sandbox+path, "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer r.Body.Close()
	if r.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %s", path, r.Status)
	}
	out := map[string]interface{}{}
	_ = json.NewDecoder(r.Body).Decode(&out)
	return out
}

// issued is a grant the sandbox minted.
type issued struct {
	AccessToken  string
	RefreshToken string
	ExpiresIn    time.Duration
}

// mint has the sandbox issue tokens for a new account.
func (b *broker) mint(t testing.TB, account string) issued {
	t.Helper()
	out := b.postJSON(t, "/sandbox/tokens", map[string]interface{}{"account_id": account, "scopes": []string{"crm"}})
	return issued{
		AccessToken:  out["access_token"].(string),
		RefreshToken: out["refresh_token"].(string),
		ExpiresIn:    time.Duration(out["expires_in"].(float64)) * time.Second,
	}
}

// install mints a grant for account and installs it by token import; the
// connection id is "sandbox-<account>".
func (b *broker) install(t testing.TB, c *tokend.Client, account string) (string, issued) {
	t.Helper()
	grant := b.mint(t, account)
	result, err := c.Install(context.Background(), tokend.InstallRequest{
		Provider:  "sandbox",
		AccountID: account,
		TokenImport: &tokend.TokenImport{
			AccessToken:  tokend.NewSecret(grant.AccessToken),
			RefreshToken: tokend.NewSecret(grant.RefreshToken),
			ExpiresIn:    grant.ExpiresIn,
			Scopes:       []string{"crm"},
		},
	})
	if err != nil {
		t.Fatalf("install %s: %v", account, err)
	}
	return result.Connection.ConnectionID, grant
}

// revoke revokes the account's whole grant at the sandbox provider.
func (b *broker) revoke(t testing.TB, account string) {
	t.Helper()
	b.postJSON(t, "/sandbox/revoke", map[string]string{"account_id": account})
}

// revokeAccessToken revokes one access token (RFC 7009), leaving the grant:
// the upstream API then answers 401 to it.
func (b *broker) revokeAccessToken(t testing.TB, token string) {
	t.Helper()
	form := url.Values{"token": {token}, "client_id": {"sandbox-client"}, "client_secret": {"sandbox-secret"}}
	r, err := http.PostForm(b.sandbox+"/oauth/revoke", form)
	if err != nil {
		t.Fatalf("revoke token: %v", err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("revoke token: %s", r.Status)
	}
}

// providerTokenCalls is the sandbox's count of token endpoint calls.
func (b *broker) providerTokenCalls(t testing.TB) int {
	t.Helper()
	r, err := http.Get(b.sandbox + "/sandbox/stats")
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	defer r.Body.Close()
	var stats struct {
		TokenRequests int `json:"token_requests"`
	}
	if err := json.NewDecoder(r.Body).Decode(&stats); err != nil {
		t.Fatalf("stats: %v", err)
	}
	return stats.TokenRequests
}

// rpcCalls is how many calls of method the broker has counted, over all
// codes (tokend_rpc_requests_total on the admin listener).
func (b *broker) rpcCalls(t testing.TB, method string) int {
	t.Helper()
	r, err := http.Get(b.admin + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer r.Body.Close()
	total := 0
	prefix := `tokend_rpc_requests_total{`
	scanner := bufio.NewScanner(r.Body)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, prefix) || !strings.Contains(line, `method="`+method+`"`) {
			continue
		}
		fields := strings.Fields(line)
		n, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += int(n)
	}
	return total
}

var runs int64

// account is a sandbox account name unique in this process, so that the
// tests can run again (-count) against the same shared broker.
func account(base string) string {
	return fmt.Sprintf("%s%d", base, atomic.AddInt64(&runs, 1))
}

// ctx is a context that ends with the test, or after a minute.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}
