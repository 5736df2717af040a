package tests

import (
	"errors"
	"testing"
	"time"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

// The broker is killed and started again: a call made while it is down
// succeeds once it is back (retries with backoff), Watch subscribes again
// and yields a fresh SNAPSHOT, WatchAll resumes after its last cursor with
// no gap and no repeat. A cursor from another data dir is CURSOR_EXPIRED.
func TestBrokerRestart(t *testing.T) {
	b, err := startBroker("restart")
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()
	c := b.client(t)
	id, _ := b.install(t, c, "go-restart-1")

	w := c.Watch(ctx(t), id)
	defer w.Close()
	if !w.Next() || w.Event().Type != tokend.WatchSnapshot {
		t.Fatalf("first watch event: %+v, %v", w.Event(), w.Err())
	}
	feed := c.WatchAll(ctx(t), tokend.WatchAllOptions{Filter: tokend.EventFilter{Providers: []string{"sandbox"}}})
	defer feed.Close()
	if _, err := feed.Started(); err != nil {
		t.Fatal(err)
	}

	b.kill()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(700 * time.Millisecond)
		restarted <- b.start()
	}()
	// Called while the broker is down: retried until it is back.
	token, err := c.GetToken(ctx(t), id, 0)
	if err != nil {
		t.Fatalf("GetToken across the restart: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if token.ConnectionID != id {
		t.Fatalf("token of %q", token.ConnectionID)
	}

	if !w.Next() {
		t.Fatalf("the watch ended at the restart: %v", w.Err())
	}
	if e := w.Event(); e.Type != tokend.WatchSnapshot || e.Connection.ConnectionID != id {
		t.Fatalf("first event after the restart: %+v", e)
	}

	id2, _ := b.install(t, c, "go-restart-2")
	e := nextEvent(t, feed)
	if e.Type != tokend.EventInstalled || e.ConnectionID != id2 {
		t.Fatalf("first event after the restart: %s %s (want INSTALLED %s, nothing repeated)", e.Type, e.ConnectionID, id2)
	}

	// The shared broker's cursors mean nothing here.
	other := shared.client(t)
	s := other.WatchAll(ctx(t), tokend.WatchAllOptions{})
	foreign, err := s.Started()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	stale := c.WatchAll(ctx(t), tokend.WatchAllOptions{ResumeAfter: foreign})
	defer stale.Close()
	var expired *tokend.CursorExpiredError
	if stale.Next() || !errors.As(stale.Err(), &expired) || expired.OldestCursor == "" {
		t.Fatalf("foreign cursor: %v", stale.Err())
	}
}
