package tests

import (
	"errors"
	"testing"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// nextEvent is the stream's next event, failing the test if it ends.
func nextEvent(t *testing.T, s *tokend.EventStream) tokend.ConnectionEvent {
	t.Helper()
	if !s.Next() {
		t.Fatalf("the event stream ended: %v", s.Err())
	}
	return s.Event()
}

// WatchAll: typed events, a filter, resuming after a saved cursor with no
// gap and no repeat, a listing that ends when caught up, and a bad filter.
func TestWatchAllResumesByCursor(t *testing.T) {
	c := shared.client(t)
	base := account("go-feed")
	filter := tokend.EventFilter{ConnectionIDPrefixes: []string{"sandbox-" + base + "-"}}
	s := c.WatchAll(ctx(t), tokend.WatchAllOptions{Filter: filter})
	start, err := s.Started()
	if err != nil || start == "" {
		t.Fatalf("Started: %q, %v", start, err)
	}
	id1, _ := shared.install(t, c, base+"-1")
	e := nextEvent(t, s)
	if e.Type != tokend.EventInstalled || e.ConnectionID != id1 || e.Connection == nil ||
		e.Connection.Status != tokend.StatusActive || e.Cursor == "" || s.Cursor() != e.Cursor {
		t.Fatalf("INSTALLED event: %+v", e)
	}
	saved := s.Cursor()
	s.Close()
	if s.Next() || s.Err() != nil {
		t.Fatalf("after Close: err %v", s.Err())
	}

	// While nobody listens: a second install, and the first one revoked.
	id2, _ := shared.install(t, c, base+"-2")
	shared.revoke(t, base+"-1")
	var rr *tokend.ReconnectRequiredError
	if _, _, err := c.ForceRefresh(ctx(t), id1, tokend.Unconditional); !errors.As(err, &rr) {
		t.Fatalf("ForceRefresh after revocation: %v", err)
	}

	resumed := c.WatchAll(ctx(t), tokend.WatchAllOptions{Filter: filter, ResumeAfter: saved})
	defer resumed.Close()
	if got, err := resumed.Started(); got != saved || err != nil {
		t.Fatalf("resumed Started: %q, %v", got, err)
	}
	first := nextEvent(t, resumed)
	if first.Type != tokend.EventInstalled || first.ConnectionID != id2 {
		t.Fatalf("first event after the cursor: %s %s (want INSTALLED %s)", first.Type, first.ConnectionID, id2)
	}
	for {
		e := nextEvent(t, resumed)
		if e.ConnectionID == id1 && e.Type == tokend.EventInstalled {
			t.Fatal("an event before the cursor was repeated")
		}
		if e.Type == tokend.EventReconnectRequired {
			if e.ConnectionID != id1 || e.Cause != tokend.CauseRevoked || e.Connection == nil || !e.Connection.ReconnectRequired() {
				t.Fatalf("RECONNECT_REQUIRED event: %+v", e)
			}
			break
		}
	}

	// Only RECONNECT_REQUIRED events, from the oldest, until caught up.
	listing := c.WatchAll(ctx(t), tokend.WatchAllOptions{
		Filter:     tokend.EventFilter{ConnectionIDPrefixes: filter.ConnectionIDPrefixes, EventTypes: []tokend.EventType{tokend.EventReconnectRequired}},
		FromOldest: true, UntilCaughtUp: true,
	})
	defer listing.Close()
	var listed []tokend.ConnectionEvent
	for listing.Next() {
		listed = append(listed, listing.Event())
	}
	if listing.Err() != nil || len(listed) != 1 || listed[0].ConnectionID != id1 {
		t.Fatalf("listing: %d events, err %v", len(listed), listing.Err())
	}

	bad := c.WatchAll(ctx(t), tokend.WatchAllOptions{Filter: tokend.EventFilter{EventTypes: []tokend.EventType{"NOPE"}}})
	var ia *tokend.InvalidArgumentError
	if bad.Next() || !errors.As(bad.Err(), &ia) || ia.Field != "filter.event_types" {
		t.Fatalf("bad filter: %v", bad.Err())
	}
}
