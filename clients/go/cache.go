package tokend

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// tokenCache keeps one token per connection, least recently used first out,
// with a singleflight per connection: concurrent misses wait on one flight
// (a channel closed when the tokend call returns) instead of each calling.
// A flight belongs to its entry, so evicting a connection (ReconnectRequired)
// also stops the flight in progress from storing its token, and the next
// caller starts a new one. (Plain mutex and channel: x/sync's singleflight
// cannot tie a flight to an entry.)
type tokenCache struct {
	mu       sync.Mutex
	entries  map[string]*list.Element // of *cacheEntry
	lru      *list.List               // front: most recently used
	capacity int
	margin   time.Duration
	fetch    func(connectionID string) (*Token, error)
}

type cacheEntry struct {
	connectionID string
	token        *Token  // nil until the first flight lands
	flight       *flight // the tokend call in progress, if any
}

type flight struct {
	done  chan struct{}
	token *Token
	err   error
}

func newTokenCache(capacity int, margin time.Duration, fetch func(string) (*Token, error)) *tokenCache {
	return &tokenCache{
		entries:  make(map[string]*list.Element),
		lru:      list.New(),
		capacity: capacity,
		margin:   margin,
		fetch:    fetch,
	}
}

// freshEnough: more than min(margin, lifetime/4) left, on the monotonic clock.
func (c *tokenCache) freshEnough(t *Token) bool {
	margin := c.margin
	if quarter := t.lifetime / 4; quarter < margin {
		margin = quarter
	}
	return time.Until(t.ExpiresAt) > margin
}

// entry returns the connection's entry, creating it (and dropping the least
// recently used past capacity). Call with mu held.
func (c *tokenCache) entry(connectionID string) *cacheEntry {
	if el, ok := c.entries[connectionID]; ok {
		c.lru.MoveToFront(el)
		return el.Value.(*cacheEntry)
	}
	e := &cacheEntry{connectionID: connectionID}
	c.entries[connectionID] = c.lru.PushFront(e)
	for c.lru.Len() > c.capacity {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).connectionID)
	}
	return e
}

func (c *tokenCache) get(ctx context.Context, connectionID string) (*Token, error) {
	c.mu.Lock()
	e := c.entry(connectionID)
	if e.token != nil && c.freshEnough(e.token) {
		t := *e.token
		c.mu.Unlock()
		return &t, nil
	}
	f := e.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		e.flight = f
		go c.fly(e, f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		t := *f.token
		return &t, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *tokenCache) fly(e *cacheEntry, f *flight) {
	token, err := c.fetch(e.connectionID)
	c.mu.Lock()
	// Store only into the entry that is still current: an eviction while
	// the call was in flight discarded it.
	if e.flight == f {
		e.flight = nil
		current, ok := c.entries[e.connectionID]
		if ok && current.Value == e && err == nil && (e.token == nil || e.token.Version <= token.Version) {
			e.token = token
		}
	}
	c.mu.Unlock()
	f.token, f.err = token, err
	close(f.done)
}

// put stores a token tokend handed out elsewhere (ForceRefresh), unless a
// newer one is cached already.
func (c *tokenCache) put(connectionID string, token *Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(connectionID)
	if e.token == nil || e.token.Version <= token.Version {
		t := *token
		e.token = &t
	}
}

// evict forgets the connection's token at once; a flight in progress still
// answers its waiters but stores nothing.
func (c *tokenCache) evict(connectionID string) {
	c.evictOlder(connectionID, ^uint64(0))
}

// evictOlder forgets the connection's token, and any flight in progress,
// unless the cached token has at least this version (a watch event says the
// token set changed to it).
func (c *tokenCache) evictOlder(connectionID string, version uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[connectionID]
	if !ok {
		return
	}
	e := el.Value.(*cacheEntry)
	if version != ^uint64(0) && e.token != nil && e.token.Version >= version {
		return
	}
	e.flight, e.token = nil, nil
	c.lru.Remove(el)
	delete(c.entries, connectionID)
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
