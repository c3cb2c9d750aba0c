package identity

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// currentUnlocked calls kc.current n times while the test holds kc.mu, and
// fails if they wait for it.
func currentUnlocked(t *testing.T, kc *keyCache, what string) {
	t.Helper()
	kc.mu.Lock()
	defer kc.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		for range 100 {
			if _, err := kc.current(context.Background()); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: current waits for the key cache's mutex", what)
	}
}

// Requests that find the keys due for a refresh take no lock while the
// refresh is in flight, nor while failed fetches are backed off (an
// outage): they are answered from the last good keys. Once the backoff is
// over, one of them starts the next fetch.
func TestKeyCacheCurrentTakesNoLock(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	kc := auth.user.keys
	expectOK(t, auth, userToken(t, clk, k, "user:default/a"))

	clk.Advance(jwksDefaultRefresh + time.Second)
	gate := srv.Hold()
	var release sync.Once
	open := func() { release.Do(func() { close(gate) }) }
	// A failure must not leave the key server's handler blocked.
	t.Cleanup(open)
	if _, err := kc.current(context.Background()); err != nil { // starts the refresh
		t.Fatal(err)
	}
	waitFor(t, "the refresh", func() bool { return srv.Hits.Load() == 2 })
	currentUnlocked(t, kc, "refresh in flight")
	srv.Fail(500, "down")
	open()
	waitFor(t, "the failed refresh", func() bool { return kc.fetches.Load() == 2 })

	currentUnlocked(t, kc, "backing off after a failed refresh")
	if h := srv.Hits.Load(); h != 2 {
		t.Fatalf("%d fetches during the backoff, want 2", h)
	}
	clk.Advance(jwksRetryMin)
	for range 50 {
		if _, err := kc.current(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the retry", func() bool { return kc.fetches.Load() == 3 })
	if h := srv.Hits.Load(); h != 3 {
		t.Fatalf("%d fetches after the backoff, want 3 (one retry)", h)
	}
	expectOK(t, auth, userToken(t, clk, k, "user:default/b")) // the last good keys
}

// BenchmarkVerifiedCacheParallel: lookups of cached tokens from many
// goroutines (-cpu 1,8,32). one-token: every goroutine looks up the same
// entry; many-tokens: each its own.
func BenchmarkVerifiedCacheParallel(b *testing.B) {
	c := newVerifiedCache(verifiedCacheSize)
	t0 := time.Now()
	keys := make([][sha256.Size]byte, 1024)
	for i := range keys {
		keys[i] = sha256.Sum256([]byte(fmt.Sprint(i)))
		c.put(keys[i], Principal{Type: PrincipalUser, Subject: "user:default/u"}, time.Time{}, t0)
	}
	for _, many := range []bool{false, true} {
		name := "one-token"
		if many {
			name = "many-tokens"
		}
		b.Run(name, func(b *testing.B) {
			var g atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				k := keys[0]
				if many {
					k = keys[int(g.Add(1))%len(keys)]
				}
				for pb.Next() {
					if _, ok := c.get(k, t0); !ok {
						b.Error("miss")
						return
					}
				}
			})
		})
	}
}

// BenchmarkKeyCacheCurrentParallel: keyCache.current from many goroutines
// (-cpu 1,8,32), with fresh keys, and with keys due for a refresh that is
// in flight (which used to take the mutex on every call).
func BenchmarkKeyCacheCurrentParallel(b *testing.B) {
	for _, due := range []bool{false, true} {
		name := "fresh"
		if due {
			name = "refresh-in-flight"
		}
		b.Run(name, func(b *testing.B) {
			c := newKeyCache(context.Background(), "http://127.0.0.1:1/unused", testKeySetLogger)
			defer c.Destruct()
			refreshAfter := time.Now().Add(time.Hour)
			if due {
				refreshAfter = time.Now().Add(-time.Second)
				c.mu.Lock()
				c.inflight = &fetchCall{done: make(chan struct{})}
				c.refreshGate.Store(1<<63 - 1)
				c.mu.Unlock()
			}
			c.keys.Store(&keySet{refreshAfter: refreshAfter})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.current(context.Background()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
