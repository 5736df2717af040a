package tests

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// Install (token import and code exchange), get, list over pages, delete.
func TestInstallGetListDelete(t *testing.T) {
	c := shared.client(t)
	base := account("go-crud")
	var ids []string
	for i := 1; i <= 5; i++ {
		id, _ := shared.install(t, c, fmt.Sprintf("%s-%d", base, i))
		ids = append(ids, id)
	}
	if ids[0] != "sandbox-"+base+"-1" {
		t.Fatalf("derived connection id = %q", ids[0])
	}

	// A retried identical install is answered without a second effect.
	grant := shared.mint(t, base+"-retry")
	request := tokend.InstallRequest{Provider: "sandbox", AccountID: base + "-retry", TokenImport: &tokend.TokenImport{
		AccessToken: tokend.NewSecret(grant.AccessToken), RefreshToken: tokend.NewSecret(grant.RefreshToken),
		ExpiresIn: grant.ExpiresIn, Scopes: []string{"crm"},
	}}
	first, err := c.Install(ctx(t), request)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Install(ctx(t), request)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Created || first.Replayed || !again.Replayed || again.Connection.Version != first.Connection.Version {
		t.Fatalf("install then retry: %+v / %+v", first, again)
	}
	conn := first.Connection
	if conn.Status != tokend.StatusActive || string(conn.Status) != "ACTIVE" || conn.Provider != "sandbox" ||
		conn.AccountID != base+"-retry" || conn.Version == 0 || len(conn.Scopes) != 1 || conn.Scopes[0] != "crm" ||
		conn.ReconnectCause != tokend.CauseUnspecified || conn.LastError != nil || conn.CreatedAt.IsZero() {
		t.Fatalf("installed connection: %+v", conn)
	}

	// Code exchange: the sandbox mints an authorization code.
	code := shared.postJSON(t, "/sandbox/codes", map[string]string{"account_id": base + "-code"})
	exchanged, err := c.Install(ctx(t), tokend.InstallRequest{
		Provider:          "sandbox",
		AuthorizationCode: &tokend.AuthorizationCode{Code: tokend.NewSecret(fmt.Sprint(code["code"]))},
	})
	if err != nil {
		t.Fatalf("code exchange (sandbox said %v): %v", code, err)
	}
	if exchanged.Connection.ConnectionID != "sandbox-"+base+"-code" || !exchanged.Created {
		t.Fatalf("code exchange: %+v", exchanged)
	}

	got, err := c.GetConnection(ctx(t), ids[2])
	if err != nil {
		t.Fatal(err)
	}
	if got.ConnectionID != ids[2] || got.Status != tokend.StatusActive || got.AccessTokenExpiresAt.IsZero() {
		t.Fatalf("GetConnection: %+v", got)
	}

	// Pages of two: the iterator walks them all.
	page, next, err := c.ListConnectionsPage(ctx(t), tokend.ListOptions{Provider: "sandbox", PageSize: 2}, "")
	if err != nil || len(page) != 2 || next == "" {
		t.Fatalf("first page: %d connections, next %q, %v", len(page), next, err)
	}
	it := c.ListConnections(ctx(t), tokend.ListOptions{Provider: "sandbox", Status: tokend.StatusActive, PageSize: 2})
	var listed []string
	for it.Next() {
		if it.Connection().Status != tokend.StatusActive {
			t.Fatalf("status filter ignored: %+v", it.Connection())
		}
		if strings.HasPrefix(it.Connection().ConnectionID, "sandbox-"+base+"-") {
			listed = append(listed, it.Connection().ConnectionID)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(listed)
	want := append(append([]string{}, ids...), "sandbox-"+base+"-code", "sandbox-"+base+"-retry")
	sort.Strings(want)
	if strings.Join(listed, ",") != strings.Join(want, ",") {
		t.Fatalf("listed %v, want %v", listed, want)
	}

	if err := c.DeleteConnection(ctx(t), ids[0]); err != nil {
		t.Fatal(err)
	}
	var nf *tokend.NotFoundError
	if _, err := c.GetConnection(ctx(t), ids[0]); !errors.As(err, &nf) || nf.ConnectionID != ids[0] {
		t.Fatalf("after delete: %v", err)
	}
}

// A second ForceRefresh naming the same old version makes no provider call.
func TestForceRefreshSecondCallMakesNoProviderCall(t *testing.T) {
	c := shared.client(t)
	id, _ := shared.install(t, c, account("go-refresh"))
	token, err := c.GetToken(ctx(t), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := shared.providerTokenCalls(t)
	fresh, refreshed, err := c.ForceRefresh(ctx(t), id, tokend.RejectedVersion(token.Version))
	if err != nil {
		t.Fatal(err)
	}
	if !refreshed || fresh.Version != token.Version+1 || fresh.AccessToken.Reveal() == token.AccessToken.Reveal() {
		t.Fatalf("first refresh: refreshed=%v version %d -> %d", refreshed, token.Version, fresh.Version)
	}
	if calls := shared.providerTokenCalls(t); calls != before+1 {
		t.Fatalf("first refresh made %d provider calls, want 1", calls-before)
	}
	again, refreshed, err := c.ForceRefresh(ctx(t), id, tokend.RejectedVersion(token.Version))
	if err != nil {
		t.Fatal(err)
	}
	if refreshed || again.Version != fresh.Version || again.AccessToken.Reveal() != fresh.AccessToken.Reveal() {
		t.Fatalf("second refresh: refreshed=%v version %d", refreshed, again.Version)
	}
	if calls := shared.providerTokenCalls(t); calls != before+1 {
		t.Fatalf("the second refresh with the old version made %d provider calls, want 0", calls-before-1)
	}
	// The cache now holds the fresh token: Token needs no broker call.
	gets := shared.rpcCalls(t, "GetToken")
	cached, err := c.Token(ctx(t), id)
	if err != nil || cached.Version != fresh.Version {
		t.Fatalf("Token after ForceRefresh: %v, %v", cached, err)
	}
	if n := shared.rpcCalls(t, "GetToken") - gets; n != 0 {
		t.Fatalf("Token after ForceRefresh made %d GetToken calls, want 0", n)
	}
}

// NOT_FOUND, INVALID_ARGUMENT and RECONNECT_REQUIRED from a live broker.
func TestTypedErrorsFromTheBroker(t *testing.T) {
	c := shared.client(t)
	var nf *tokend.NotFoundError
	_, err := c.GetToken(ctx(t), "go-missing", 0)
	if !errors.As(err, &nf) || nf.ConnectionID != "go-missing" || status.Code(err) != codes.NotFound {
		t.Fatalf("unknown connection: %#v", err)
	}
	var ia *tokend.InvalidArgumentError
	if _, err := c.GetToken(ctx(t), "not valid", 0); !errors.As(err, &ia) || ia.Field != "connection_id" {
		t.Fatalf("malformed id: %#v", err)
	}
	if _, _, err := c.ListConnectionsPage(ctx(t), tokend.ListOptions{Status: "BOGUS"}, ""); !errors.As(err, &ia) || ia.Field != "status" {
		t.Fatalf("unknown status name: %#v", err)
	}

	acct := account("go-errors")
	id, grant := shared.install(t, c, acct)
	shared.revoke(t, acct)
	var rr *tokend.ReconnectRequiredError
	_, _, err = c.ForceRefresh(ctx(t), id, tokend.Unconditional)
	if !errors.As(err, &rr) {
		t.Fatalf("revoked grant: %#v", err)
	}
	if rr.ConnectionID != id || rr.Cause != tokend.CauseRevoked || rr.ProviderError != "invalid_grant" {
		t.Fatalf("ReconnectRequired fields: %+v", rr)
	}
	if strings.Contains(err.Error(), grant.AccessToken) || strings.Contains(err.Error(), grant.RefreshToken) {
		t.Fatal("an error message carries a secret")
	}
	got, err := c.GetConnection(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != tokend.StatusReconnectRequired || got.ReconnectCause != tokend.CauseRevoked ||
		got.LastError == nil || got.LastError.Code != "invalid_grant" || got.LastError.ErrorClass != tokend.ErrorClassRevoked {
		t.Fatalf("revoked connection: %+v (last error %+v)", got, got.LastError)
	}
	// RECONNECT_REQUIRED connections are listed by that status.
	it := c.ListConnections(ctx(t), tokend.ListOptions{Status: tokend.StatusReconnectRequired})
	found := false
	for it.Next() {
		found = found || it.Connection().ConnectionID == id
	}
	if it.Err() != nil || !found {
		t.Fatalf("status filter: found=%v err=%v", found, it.Err())
	}
}

// A ReconnectRequired evicts the connection's cached token at once: the
// next Token asks the broker again (and hears RECONNECT_REQUIRED).
func TestReconnectRequiredEvictsTheCachedToken(t *testing.T) {
	c := shared.client(t)
	acct := account("go-evict")
	id, _ := shared.install(t, c, acct)
	if _, err := c.Token(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	gets := shared.rpcCalls(t, "GetToken")
	if _, err := c.Token(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if n := shared.rpcCalls(t, "GetToken") - gets; n != 0 || c.CachedConnections() != 1 {
		t.Fatalf("a cached token cost %d GetToken calls (cached: %d)", n, c.CachedConnections())
	}
	shared.revoke(t, acct)
	var rr *tokend.ReconnectRequiredError
	if _, _, err := c.ForceRefresh(ctx(t), id, tokend.Unconditional); !errors.As(err, &rr) {
		t.Fatalf("ForceRefresh after revocation: %v", err)
	}
	if c.CachedConnections() != 0 {
		t.Fatal("the revoked connection's token is still cached")
	}
	_, err := c.Token(ctx(t), id)
	if !errors.As(err, &rr) {
		t.Fatalf("Token after eviction: %v", err)
	}
	if n := shared.rpcCalls(t, "GetToken") - gets; n != 1 {
		t.Fatalf("Token after eviction made %d GetToken calls, want 1", n)
	}
}

// 1,000 concurrent Token calls on an empty cache cost at most 2 broker
// calls, counted at the broker.
func TestThousandConcurrentTokenCallsCostAtMostTwoBrokerCalls(t *testing.T) {
	installer := shared.client(t)
	id, grant := shared.install(t, installer, account("go-thousand"))
	c := shared.client(t) // an empty cache
	before := shared.rpcCalls(t, "GetToken")
	const callers = 1000
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			token, err := c.Token(ctx(t), id)
			if err == nil && token.AccessToken.Reveal() != grant.AccessToken {
				err = errors.New("another token than the installed one")
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	calls := shared.rpcCalls(t, "GetToken") - before
	t.Logf("%d concurrent Token calls: %d GetToken calls at the broker", callers, calls)
	if calls < 1 || calls > 2 {
		t.Fatalf("%d concurrent Token calls cost %d broker calls, want 1..2", callers, calls)
	}
}

// A watch sees RECONNECT_REQUIRED after a sandbox revocation, as a typed
// Connection with names for enums, and the event evicts the watching
// client's cached token; it ends cleanly after DELETED.
func TestWatchSeesReconnectRequired(t *testing.T) {
	admin := shared.client(t)
	acct := account("go-watch")
	id, _ := shared.install(t, admin, acct)
	c := shared.client(t)
	if _, err := c.Token(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	w := c.Watch(ctx(t), id)
	defer w.Close()
	if !w.Next() {
		t.Fatalf("no snapshot: %v", w.Err())
	}
	if e := w.Event(); e.Type != tokend.WatchSnapshot || e.ReconnectRequired() || e.Connection.ConnectionID != id {
		t.Fatalf("first event: %+v", e)
	}

	shared.revoke(t, acct)
	var rr *tokend.ReconnectRequiredError
	if _, _, err := admin.ForceRefresh(ctx(t), id, tokend.Unconditional); !errors.As(err, &rr) {
		t.Fatalf("ForceRefresh after revocation: %v", err)
	}
	var event tokend.WatchEvent
	for w.Next() {
		if event = w.Event(); event.Type == tokend.WatchStatusChanged {
			break
		}
	}
	if event.Type != tokend.WatchStatusChanged {
		t.Fatalf("no STATUS_CHANGED: %v", w.Err())
	}
	conn := event.Connection
	if !event.ReconnectRequired() || string(conn.Status) != "RECONNECT_REQUIRED" || conn.ReconnectCause != tokend.CauseRevoked ||
		conn.LastError == nil || conn.LastError.Code != "invalid_grant" || event.Time.IsZero() {
		t.Fatalf("STATUS_CHANGED event: %+v (last error %+v)", event, conn.LastError)
	}
	if c.CachedConnections() != 0 {
		t.Fatal("the watch event did not evict the cached token")
	}

	if err := admin.DeleteConnection(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	for w.Next() {
		event = w.Event()
	}
	if event.Type != tokend.WatchDeleted || w.Err() != nil {
		t.Fatalf("after delete: last event %s, err %v", event.Type, w.Err())
	}

	// Watching what does not exist ends at once, with the typed error.
	missing := c.Watch(ctx(t), id)
	defer missing.Close()
	var nf *tokend.NotFoundError
	if missing.Next() || !errors.As(missing.Err(), &nf) {
		t.Fatalf("watching a deleted connection: %v", missing.Err())
	}
}
