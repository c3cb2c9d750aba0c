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
			c := newKeyCache(context.Background(), "http://127.0.0.1:1/unused", testKeySetLogger, nil)
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

// The verification cache holds at most its size, whatever is stored; a full
// set evicts an expired entry before a live one; concurrent lookups and
// stores are safe (go test -race).
func TestVerifiedCacheBounds(t *testing.T) {
	c := newVerifiedCache(verifiedCacheSize)
	t0 := time.Unix(1_900_000_000, 0)
	for i := range 4 * verifiedCacheSize {
		c.put(sha256.Sum256([]byte(fmt.Sprint(i))), Principal{Subject: "s"}, time.Time{}, t0)
	}
	if n := c.len(); n > verifiedCacheSize || n < verifiedCacheSize/2 {
		t.Fatalf("%d entries, want at most %d (and most slots used)", n, verifiedCacheSize)
	}

	// One set of 8: the entry expiring first is evicted before older live ones.
	s := newVerifiedCache(cacheWays)
	key := func(i byte) (k [sha256.Size]byte) { k[31] = i; return }
	for i := range byte(cacheWays) {
		exp := time.Time{}
		if i == 5 {
			exp = t0.Add(time.Second)
		}
		s.put(key(i), Principal{Subject: fmt.Sprint(i)}, exp, t0)
	}
	s.put(key(100), Principal{Subject: "new"}, time.Time{}, t0.Add(2*time.Second))
	for i := range byte(cacheWays) {
		_, ok := s.get(key(i), t0.Add(2*time.Second))
		if want := i != 5; ok != want {
			t.Errorf("entry %d cached=%v, want %v", i, ok, want)
		}
	}
	if p, ok := s.get(key(100), t0.Add(2*time.Second)); !ok || p.Subject != "new" {
		t.Errorf("new entry: %v %v", p, ok)
	}

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := sha256.Sum256([]byte(fmt.Sprint(g, i%50)))
				if i%10 == 0 {
					c.put(k, Principal{Subject: fmt.Sprint(g)}, time.Time{}, t0)
				} else if p, ok := c.get(k, t0); ok && p.Subject != fmt.Sprint(g) {
					t.Errorf("goroutine %d got %q", g, p.Subject)
					return
				}
			}
		}()
	}
	wg.Wait()
}
