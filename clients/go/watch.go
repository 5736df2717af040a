package tokend

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/tokend-dev/tokend/clients/go/tokendv1"
)

// WatchEventType says why a WatchEvent was sent.
type WatchEventType string

const (
	// The state when the stream opened, and again after each resubscription
	// (a broker restart) or when tokend dropped events for a slow reader.
	WatchSnapshot WatchEventType = "SNAPSHOT"
	// The token set changed: refresh, rotation or re-install.
	WatchTokenRotated WatchEventType = "TOKEN_ROTATED"
	// The status changed, e.g. to RECONNECT_REQUIRED.
	WatchStatusChanged WatchEventType = "STATUS_CHANGED"
	// The connection was deleted; the watch ends after this event.
	WatchDeleted WatchEventType = "DELETED"
	// A provider call failed and the connection is still ACTIVE.
	WatchRefreshFailed WatchEventType = "REFRESH_FAILED"
)

// WatchEvent is one change of a watched connection.
type WatchEvent struct {
	Type WatchEventType
	// The connection after the event (for DELETED, its last state).
	Connection Connection
	Time       time.Time
}

// ReconnectRequired reports whether the connection now needs its customer
// to reconnect.
func (e WatchEvent) ReconnectRequired() bool { return e.Connection.ReconnectRequired() }

// Watch follows one connection: its current state first (a SNAPSHOT), then
// every change. When the broker restarts or the connection breaks it
// subscribes again with backoff (100 ms doubling to 5 s) and yields a fresh
// SNAPSHOT; it never ends silently:
//
//	w := client.Watch(ctx, "hubspot-portal-123")
//	defer w.Close()
//	for w.Next() {
//		if e := w.Event(); e.ReconnectRequired() { ... }
//	}
//	err := w.Err() // nil after a DELETED event or Close; ctx's error; or a refusal (*NotFoundError...)
//
// A RECONNECT_REQUIRED or DELETED event evicts the connection's cached token,
// as does a TOKEN_ROTATED to a newer version than the cached one.
func (c *Client) Watch(ctx context.Context, connectionID string) *Watch {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watch{events: make(chan WatchEvent, 16), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx, c, connectionID)
	return w
}

// Watch is the stream Client.Watch returns.
type Watch struct {
	events  chan WatchEvent
	cancel  context.CancelFunc
	done    chan struct{}
	current WatchEvent

	mu     sync.Mutex
	err    error
	closed bool
}

// Next waits for the next event; false when the watch has ended (see Err).
func (w *Watch) Next() bool {
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return false
	}
	e, ok := <-w.events
	if ok {
		w.current = e
	}
	return ok
}

// Event is the event Next received.
func (w *Watch) Event() WatchEvent { return w.current }

// Err is why the watch ended: nil after DELETED or Close, the context's
// error when it was cancelled, or the error that made subscribing again
// pointless.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the watch and waits for its goroutine.
func (w *Watch) Close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	<-w.done
}

func (w *Watch) finish(ctx context.Context, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		w.err = nil
	case ctx.Err() != nil:
		w.err = ctx.Err()
	default:
		w.err = err
	}
}

func (w *Watch) run(ctx context.Context, c *Client, connectionID string) {
	defer close(w.done)
	defer close(w.events)
	request := &tokendv1.WatchConnectionRequest{ConnectionId: connectionID}
	delay := 100 * time.Millisecond
	for {
		err := w.subscribe(ctx, c, request, &delay)
		if err == errDeleted {
			w.finish(ctx, nil)
			return
		}
		if ctx.Err() != nil || !resubscribable(err) {
			w.finish(ctx, err)
			return
		}
		if sleep(ctx, delay) != nil {
			w.finish(ctx, nil)
			return
		}
		delay = nextDelay(delay, 5*time.Second)
	}
}

var errDeleted = errors.New("deleted")

// subscribe runs one WatchConnection stream until it ends. A clean end of
// stream without DELETED (a broker shutting down) reads as a transport
// error, so the caller subscribes again.
func (w *Watch) subscribe(ctx context.Context, c *Client, request *tokendv1.WatchConnectionRequest, delay *time.Duration) error {
	stream, err := c.rpc.WatchConnection(ctx, request)
	if err != nil {
		return decodeError(err, c.endpoint)
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return &TransportError{Endpoint: c.endpoint, Message: "the broker ended the stream"}
		}
		if err != nil {
			return decodeError(err, c.endpoint)
		}
		*delay = 100 * time.Millisecond
		if m.GetConnection() == nil || m.GetEventType() == tokendv1.WatchEventType_WATCH_EVENT_TYPE_UNSPECIFIED {
			continue
		}
		event := WatchEvent{
			Type:       WatchEventType(enumName(m.GetEventType().String(), watchPrefix)),
			Connection: connectionFromPB(m.GetConnection()),
			Time:       timeOf(m.GetEventTime()),
		}
		c.evictFor(event.Connection, event.Type == WatchDeleted)
		select {
		case w.events <- event:
		case <-ctx.Done():
			return ctx.Err()
		}
		if event.Type == WatchDeleted {
			return errDeleted
		}
	}
}

// evictFor drops the cached token that an event makes stale.
func (c *Client) evictFor(connection Connection, gone bool) {
	if gone || connection.ReconnectRequired() {
		c.cache.evict(connection.ConnectionID)
		return
	}
	c.cache.evictOlder(connection.ConnectionID, connection.Version)
}
