package tokend

import (
	"context"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokend-dev/tokend/clients/go/tokendv1"
)

// EventType is what happened to a connection, in tokend's durable event log.
type EventType string

const (
	// Created, or replaced by a new Install.
	EventInstalled EventType = "INSTALLED"
	// The token set changed: a refresh or a rotation.
	EventTokenRotated EventType = "TOKEN_ROTATED"
	// A provider call failed; the connection is still ACTIVE.
	EventRefreshFailed EventType = "REFRESH_FAILED"
	// The grant is dead; only a new Install revives it. Cause says why.
	EventReconnectRequired EventType = "RECONNECT_REQUIRED"
	// Healthy again after failures, or re-installed after RECONNECT_REQUIRED.
	EventRecovered EventType = "RECOVERED"
	// The connection was deleted; Connection is its last state.
	EventDeleted EventType = "DELETED"
)

// ConnectionEvent is one entry of tokend's event log. It never carries a
// secret. (The log's CHECKPOINT entries are not events: EventStream keeps
// their cursor and does not yield them.)
type ConnectionEvent struct {
	// Opaque: persist it, and pass it as WatchAllOptions.ResumeAfter to
	// continue after this event.
	Cursor string
	// Grows by one per event in the log.
	Sequence     uint64
	Type         EventType
	Time         time.Time
	ConnectionID string
	// The connection after the event (for DELETED, its last state); nil when
	// tokend could not decode the record.
	Connection *Connection
	// For RECONNECT_REQUIRED: why.
	Cause ReconnectCause
}

// EventFilter selects events. Values within a field are alternatives; all
// non-empty fields must match.
type EventFilter struct {
	Providers            []string
	ConnectionIDPrefixes []string
	EventTypes           []EventType
	// The connection's status after the event.
	Statuses []ConnectionStatus
}

// WatchAllOptions says where an EventStream starts and which events it gets.
type WatchAllOptions struct {
	Filter EventFilter
	// A cursor saved from an earlier stream: replay what happened after it,
	// then go live. Empty: start live (or FromOldest).
	ResumeAfter string
	// Without ResumeAfter: replay the oldest retained event onwards.
	FromOldest bool
	// End the stream (Next returns false, Err nil) once it has replayed
	// every event the log held when it opened: a listing of the log.
	UntilCaughtUp bool
}

func (f EventFilter) toPB() (*tokendv1.EventFilter, error) {
	out := &tokendv1.EventFilter{Providers: f.Providers, ConnectionIdPrefixes: f.ConnectionIDPrefixes}
	for _, t := range f.EventTypes {
		v, ok := enumValue(tokendv1.EventType_value, eventPrefix, string(t))
		if !ok {
			return nil, &InvalidArgumentError{Field: "filter.event_types", Description: "unknown event type " + string(t)}
		}
		out.EventTypes = append(out.EventTypes, tokendv1.EventType(v))
	}
	for _, s := range f.Statuses {
		v, ok := enumValue(tokendv1.ConnectionStatus_value, statusPrefix, string(s))
		if !ok {
			return nil, &InvalidArgumentError{Field: "filter.statuses", Description: "unknown status " + string(s)}
		}
		out.Statuses = append(out.Statuses, tokendv1.ConnectionStatus(v))
	}
	return out, nil
}

// WatchAll streams the events of every connection the caller's grants
// cover, as the filter selects. It reconnects by itself across broker
// restarts, resuming after the last cursor received, so nothing is lost or
// repeated:
//
//	s := client.WatchAll(ctx, tokend.WatchAllOptions{ResumeAfter: saved,
//		Filter: tokend.EventFilter{EventTypes: []tokend.EventType{tokend.EventReconnectRequired}}})
//	defer s.Close()
//	for s.Next() {
//		handle(s.Event())
//		save(s.Cursor())
//	}
//	err := s.Err() // e.g. *CursorExpiredError: resync from ListConnections
func (c *Client) WatchAll(ctx context.Context, opts WatchAllOptions) *EventStream {
	ctx, cancel := context.WithCancel(ctx)
	s := &EventStream{
		items:         make(chan eventItem, 64),
		cancel:        cancel,
		done:          make(chan struct{}),
		cursor:        opts.ResumeAfter,
		untilCaughtUp: opts.UntilCaughtUp,
	}
	filter, err := opts.Filter.toPB()
	if err != nil {
		s.err = err
		close(s.items)
		close(s.done)
		return s
	}
	request := &tokendv1.WatchConnectionsRequest{Filter: filter, ResumeAfter: opts.ResumeAfter, FromOldest: opts.FromOldest}
	go s.run(ctx, c, request)
	return s
}

// EventStream is the stream Client.WatchAll returns. Use it from one
// goroutine; Cursor and Close may be called from any.
type EventStream struct {
	items         chan eventItem
	cancel        context.CancelFunc
	done          chan struct{}
	untilCaughtUp bool
	current       ConnectionEvent
	stash         *ConnectionEvent

	mu     sync.Mutex
	cursor string
	err    error
	closed bool
}

// eventItem is what the goroutine hands the stream: an event, a position
// (checkpoint), or the error that ended it.
type eventItem struct {
	event    *ConnectionEvent
	cursor   string
	caughtUp bool
	err      error
}

// Next waits for the next event; false when the stream has ended (see
// Err). Checkpoints move Cursor without being yielded.
func (s *EventStream) Next() bool {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return false
	}
	if s.stash != nil {
		s.current, s.stash = *s.stash, nil
		s.mu.Lock()
		s.cursor = s.current.Cursor
		s.mu.Unlock()
		return true
	}
	for {
		item, ok := s.receive(true)
		switch {
		case !ok:
			return false
		case item.event != nil:
			s.current = *item.event
			return true
		case item.caughtUp && s.untilCaughtUp:
			s.mu.Lock()
			s.closed = true
			s.mu.Unlock()
			s.cancel()
			return false
		}
	}
}

// receive takes the next item and moves the cursor past it (past an event
// only when yield is set: Started keeps one back).
func (s *EventStream) receive(yield bool) (eventItem, bool) {
	item, ok := <-s.items
	if !ok {
		return item, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case item.err != nil:
		s.setErr(item.err)
		return item, false
	case item.event != nil:
		if yield {
			s.cursor = item.event.Cursor
		}
	default:
		s.cursor = item.cursor
	}
	return item, true
}

func (s *EventStream) setErr(err error) {
	if !s.closed {
		s.err = err
	}
}

// Started subscribes and returns the stream's position: the ResumeAfter
// cursor given, or the one tokend sent first. Persist it before acting on
// anything, so a restart resumes from here even if no event came.
func (s *EventStream) Started() (string, error) {
	for {
		if cursor := s.Cursor(); cursor != "" {
			return cursor, nil
		}
		if s.stash != nil {
			return "", &StatusError{Code: codes.Internal, Message: "an event came before the stream's position"}
		}
		item, ok := s.receive(false)
		if !ok {
			if err := s.Err(); err != nil {
				return "", err
			}
			return "", &TransportError{Message: "the event stream ended before it started"}
		}
		if item.event != nil {
			event := *item.event
			s.stash = &event
		}
	}
}

// Event is the event Next received.
func (s *EventStream) Event() ConnectionEvent { return s.current }

// Cursor is the position after the last event yielded (or checkpoint
// passed): persist it, and resume after it with WatchAllOptions.ResumeAfter.
func (s *EventStream) Cursor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursor
}

// Err is why the stream ended: nil after Close or UntilCaughtUp, the
// context's error when it was cancelled, or a refusal such as
// *CursorExpiredError.
func (s *EventStream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the stream and waits for its goroutine.
func (s *EventStream) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
}

func (s *EventStream) run(ctx context.Context, c *Client, request *tokendv1.WatchConnectionsRequest) {
	defer close(s.done)
	defer close(s.items)
	delay := 100 * time.Millisecond
	for {
		err := s.subscribe(ctx, c, request, &delay)
		if ctx.Err() != nil {
			s.send(ctx, eventItem{err: ctx.Err()})
			return
		}
		if !resubscribable(err) {
			s.send(ctx, eventItem{err: err})
			return
		}
		if sleep(ctx, delay) != nil {
			s.send(ctx, eventItem{err: ctx.Err()})
			return
		}
		delay = nextDelay(delay, 5*time.Second)
	}
}

// send hands an item over; an ending item is delivered even when ctx is
// done, as long as the buffer has room (the reader may be gone otherwise).
func (s *EventStream) send(ctx context.Context, item eventItem) bool {
	if item.err != nil {
		select {
		case s.items <- item:
		default:
			s.mu.Lock()
			s.setErr(item.err)
			s.mu.Unlock()
		}
		return false
	}
	select {
	case s.items <- item:
		return true
	case <-ctx.Done():
		return false
	}
}

// subscribe runs one WatchConnections stream until it ends, moving
// request.ResumeAfter past everything received, so the next subscription
// continues with no gap and no repeat.
func (s *EventStream) subscribe(ctx context.Context, c *Client, request *tokendv1.WatchConnectionsRequest, delay *time.Duration) error {
	stream, err := c.rpc.WatchConnections(ctx, request)
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
		request.ResumeAfter = m.GetCursor()
		var item eventItem
		if m.GetEventType() == tokendv1.EventType_EVENT_TYPE_CHECKPOINT {
			item = eventItem{cursor: m.GetCursor(), caughtUp: m.GetCaughtUp()}
		} else {
			event := eventFromPB(m)
			if event.Connection != nil {
				c.evictFor(*event.Connection, event.Type == EventDeleted)
			} else if event.Type == EventReconnectRequired || event.Type == EventDeleted {
				c.cache.evict(event.ConnectionID)
			}
			item = eventItem{event: &event}
		}
		if !s.send(ctx, item) {
			return ctx.Err()
		}
	}
}

func eventFromPB(m *tokendv1.ConnectionEvent) ConnectionEvent {
	event := ConnectionEvent{
		Cursor:       m.GetCursor(),
		Sequence:     m.GetSequence(),
		Type:         EventType(enumName(m.GetEventType().String(), eventPrefix)),
		Time:         timeOf(m.GetEventTime()),
		ConnectionID: m.GetConnectionId(),
		Cause:        ReconnectCause(enumName(m.GetCause().String(), causePrefix)),
	}
	if m.GetConnection() != nil {
		connection := connectionFromPB(m.GetConnection())
		event.Connection = &connection
	}
	return event
}
