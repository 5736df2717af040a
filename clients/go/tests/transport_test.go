package tests

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// recorder is a base RoundTripper that remembers each request's token and
// answer.
type recorder struct {
	mu    sync.Mutex
	sends []send
}

type send struct {
	token  string
	status int
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	response, err := http.DefaultTransport.RoundTrip(req)
	if err == nil {
		r.mu.Lock()
		r.sends = append(r.sends, send{strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer "), response.StatusCode})
		r.mu.Unlock()
	}
	return response, err
}

func (r *recorder) log() []send {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]send(nil), r.sends...)
}

func get(t *testing.T, api *http.Client, url string) (int, error) {
	t.Helper()
	request, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, url, nil)
	response, err := api.Do(request)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, response.Body)
	response.Body.Close()
	return response.StatusCode, nil
}

// The 401 helper against the sandbox's /api/me across at least 5 token
// expiries (2 s tokens, 12 s of requests) with 0 failed requests.
func TestTransportAcrossTokenExpiriesHasNoFailedRequest(t *testing.T) {
	b, err := startBroker("expiry", "--sandbox-token-lifetime-secs", "2")
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()
	c := b.client(t)
	id, _ := b.install(t, c, "go-expiry")
	rec := &recorder{}
	api := &http.Client{Transport: &tokend.Transport{Client: c, ConnectionID: id, Base: rec}}

	requests, failed := 0, 0
	for end := time.Now().Add(12 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		requests++
		if code, err := get(t, api, b.sandbox+"/api/me"); err != nil || code != http.StatusOK {
			failed++
			t.Errorf("request %d: %d, %v", requests, code, err)
		}
	}
	tokens, rejected := map[string]bool{}, 0
	for _, s := range rec.log() {
		tokens[s.token] = true
		if s.status == http.StatusUnauthorized {
			rejected++
		}
	}
	expiries := len(tokens) - 1
	t.Logf("%d requests, %d failed, %d tokens (%d expiries), %d 401s refreshed and retried", requests, failed, len(tokens), expiries, rejected)
	if failed != 0 || expiries < 5 {
		t.Fatalf("%d failed requests across %d token expiries; want 0 across at least 5", failed, expiries)
	}
}

// A token the upstream API rejects (revoked at the sandbox, grant intact):
// the GET is refreshed by ForceRefresh with the rejected version and
// replayed once with the new token.
func TestTransportRefreshesAndRetriesAGetOn401(t *testing.T) {
	c := shared.client(t)
	id, _ := shared.install(t, c, account("go-401"))
	stale, err := c.Token(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	shared.revokeAccessToken(t, stale.AccessToken.Reveal())
	refreshes := shared.rpcCalls(t, "ForceRefresh")
	rec := &recorder{}
	api := &http.Client{Transport: &tokend.Transport{Client: c, ConnectionID: id, Base: rec}}
	if code, err := get(t, api, shared.sandbox+"/api/me"); err != nil || code != http.StatusOK {
		t.Fatalf("GET: %d, %v", code, err)
	}
	sends := rec.log()
	if len(sends) != 2 || sends[0].token != stale.AccessToken.Reveal() || sends[0].status != 401 ||
		sends[1].token == sends[0].token || sends[1].status != 200 {
		t.Fatalf("sends: %d (want the stale token's 401, then the fresh token's 200)", len(sends))
	}
	if n := shared.rpcCalls(t, "ForceRefresh") - refreshes; n != 1 {
		t.Fatalf("%d ForceRefresh calls, want 1", n)
	}
}

// upstream answers 401 to every request carrying a token in reject (all
// tokens when rejectAll) and records what it got.
type upstream struct {
	mu        sync.Mutex
	reject    map[string]bool
	rejectAll bool
	got       []string // "METHOD token body"
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	u.mu.Lock()
	u.got = append(u.got, r.Method+" "+token+" "+string(body))
	rejected := u.rejectAll || u.reject[token]
	u.mu.Unlock()
	if rejected {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("rejected"))
		return
	}
	_, _ = w.Write([]byte("ok"))
}

func (u *upstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.got...)
}

func post(t *testing.T, api *http.Client, method, url, body string) *http.Response {
	t.Helper()
	request, _ := http.NewRequestWithContext(ctx(t), method, url, strings.NewReader(body))
	response, err := api.Do(request)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer response.Body.Close()
	_, _ = io.Copy(io.Discard, response.Body)
	return response
}

// A POST (or PATCH) that gets a 401 is not replayed: the 401 comes back as
// it is, though the token is refreshed for the next request. Opted in, it
// is replayed once, with the same body and the new token.
func TestNonIdempotentRequestsAreNotReplayedUnlessOptedIn(t *testing.T) {
	c := shared.client(t)
	id, _ := shared.install(t, c, account("go-post"))
	token, err := c.Token(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	up := &upstream{reject: map[string]bool{token.AccessToken.Reveal(): true}}
	server := httptest.NewServer(up)
	defer server.Close()

	api := &http.Client{Transport: &tokend.Transport{Client: c, ConnectionID: id}}
	if r := post(t, api, http.MethodPost, server.URL, "payload"); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST: %s, want the 401 as it is", r.Status)
	}
	if got := up.requests(); len(got) != 1 {
		t.Fatalf("the POST was sent %d times: %v", len(got), len(got))
	}
	fresh, err := c.Token(ctx(t), id)
	if err != nil || fresh.Version <= token.Version {
		t.Fatalf("the token was not refreshed after the POST's 401: %v", err)
	}
	up.mu.Lock()
	up.reject[fresh.AccessToken.Reveal()] = true
	up.mu.Unlock()
	if r := post(t, api, http.MethodPatch, server.URL, "patch"); r.StatusCode != http.StatusUnauthorized || len(up.requests()) != 2 {
		t.Fatalf("PATCH: %s after %d requests, want one 401", r.Status, len(up.requests())-1)
	}

	// Opted in: replayed once with the same body and a new token.
	current, err := c.Token(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	up.mu.Lock()
	up.reject, up.got = map[string]bool{current.AccessToken.Reveal(): true}, nil
	up.mu.Unlock()
	replaying := &http.Client{Transport: &tokend.Transport{Client: c, ConnectionID: id, ReplayNonIdempotent: true}}
	if r := post(t, replaying, http.MethodPost, server.URL, "payload"); r.StatusCode != http.StatusOK {
		t.Fatalf("opted-in POST: %s", r.Status)
	}
	got := up.requests()
	if len(got) != 2 || got[0] != "POST "+current.AccessToken.Reveal()+" payload" ||
		!strings.HasSuffix(got[1], " payload") || strings.Contains(got[1], current.AccessToken.Reveal()) {
		t.Fatalf("opted-in POST sends: %d, want the rejected one then one replay with the same body", len(got))
	}

	// A second 401 is a typed error.
	up.mu.Lock()
	up.rejectAll = true
	up.mu.Unlock()
	_, err = api.Get(server.URL)
	var still *tokend.StillUnauthorizedError
	if !errors.As(err, &still) || still.ConnectionID != id {
		t.Fatalf("second 401: %v", err)
	}
}

// A revoked grant reaches the HTTP caller as *ReconnectRequiredError.
func TestTransportReportsReconnectRequiredTyped(t *testing.T) {
	c := shared.client(t)
	acct := account("go-http-revoked")
	id, _ := shared.install(t, c, acct)
	api := c.HTTPClient(id)
	if code, err := get(t, api, shared.sandbox+"/api/me"); err != nil || code != http.StatusOK {
		t.Fatalf("GET before revocation: %d, %v", code, err)
	}
	shared.revoke(t, acct)
	for i := 0; i < 2; i++ { // from ForceRefresh after the 401, then from the evicted cache's GetToken
		_, err := get(t, api, shared.sandbox+"/api/me")
		var rr *tokend.ReconnectRequiredError
		if !errors.As(err, &rr) || rr.ConnectionID != id || rr.Cause != tokend.CauseRevoked {
			t.Fatalf("GET %d after revocation: %v", i+1, err)
		}
	}
}

// The example program, built as a user builds it (ci.sh builds it in a
// scratch module and passes it as TOKEND_GO_EXAMPLE), calls the sandbox API.
func TestExampleProgram(t *testing.T) {
	bin := os.Getenv("TOKEND_GO_EXAMPLE")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "authclient")
		build := exec.Command("go", "build", "-o", bin, "github.com/tokend-dev/tokend/clients/go/examples/authclient")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build the example: %v\n%s", err, out)
		}
	}
	c := shared.client(t)
	acct := account("go-example")
	id, _ := shared.install(t, c, acct)
	run := exec.Command(bin, "-connection", id, "-url", shared.sandbox+"/api/me")
	run.Env = append(os.Environ(), "TOKEND_ENDPOINT="+shared.grpc)
	out, err := run.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "200 OK") || !strings.Contains(string(out), acct) {
		t.Fatalf("example: %v\n%s", err, out)
	}
	// Revoked at the provider: the 401's ForceRefresh hears RECONNECT_REQUIRED.
	shared.revoke(t, acct)
	run = exec.Command(bin, "-connection", id, "-url", shared.sandbox+"/api/me")
	run.Env = append(os.Environ(), "TOKEND_ENDPOINT="+shared.grpc)
	out, err = run.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 4 {
		t.Fatalf("example on a revoked grant: %v (want exit 4)\n%s", err, out)
	}
}
