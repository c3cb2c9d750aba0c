package identity

import (
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// refPool is a reference-counted Pool, as Caddy's UsagePool is: the tests of
// this package need no Caddy.
type refPool struct {
	mu      sync.Mutex
	entries map[any]*refEntry
}

type refEntry struct {
	value Destructor
	refs  int
}

func (p *refPool) LoadOrNew(key any, construct func() (Destructor, error)) (any, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.entries[key]; e != nil {
		e.refs++
		return e.value, true, nil
	}
	v, err := construct()
	if err != nil {
		return nil, false, err
	}
	if p.entries == nil {
		p.entries = map[any]*refEntry{}
	}
	p.entries[key] = &refEntry{value: v, refs: 1}
	return v, false, nil
}

func (p *refPool) Delete(key any) (bool, error) {
	p.mu.Lock()
	e := p.entries[key]
	if e == nil {
		p.mu.Unlock()
		return false, nil
	}
	e.refs--
	if e.refs > 0 {
		p.mu.Unlock()
		return false, nil
	}
	delete(p.entries, key)
	p.mu.Unlock()
	return true, e.value.Destruct()
}

// References is how many users key has, and whether it is in the pool.
func (p *refPool) References(key any) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.entries[key]; e != nil {
		return e.refs, true
	}
	return 0, false
}

// testPool is the pool of every verifier the tests build, so that caches are
// shared across "reloads" as in Caddy.
var testPool = &refPool{}

// testKeySetLog is the key caches' logger; observeJWKSLogs swaps it.
var testKeySetLog = func() *atomic.Pointer[zap.Logger] {
	var p atomic.Pointer[zap.Logger]
	p.Store(zap.NewNop())
	return &p
}()

func testKeySetLogger() *zap.Logger { return testKeySetLog.Load() }

// newForTest is New with the tests' pool and key-set logger.
func newForTest(cfg Config) (*Verifier, func(), error) {
	return New(cfg, Options{Pool: testPool, KeySetLogger: testKeySetLogger})
}
