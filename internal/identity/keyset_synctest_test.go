package identity

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// Tests of the key caches' schedule run in a synctest bubble: time is the
// bubble's fake clock, for the caches' timers as well as for token
// validation, and synctest.Wait returns once every goroutine the caches
// started has finished or is blocked on the clock. "Nothing was fetched"
// then means nothing would ever be fetched before that time, on any machine.
// The key servers are served in memory: a real socket would keep the
// bubble's goroutines busy (not durably blocked) and the bubble alive.

// inMemoryKeyServers makes the key-set client call the servers' handlers in
// memory, for the rest of the test.
func inMemoryKeyServers(t *testing.T, servers ...*httptest.Server) {
	t.Helper()
	byHost := map[string]http.Handler{}
	for _, s := range servers {
		byHost[s.Listener.Addr().String()] = s.Config.Handler
	}
	prev := jwksHTTPClient.Transport
	jwksHTTPClient.Transport = roundTripFunc(func(req *http.Request) (*http.Response, error) {
		h := byHost[req.URL.Host]
		if h == nil {
			return nil, fmt.Errorf("no in-memory server for %s", req.URL.Host)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result(), nil
	})
	t.Cleanup(func() { jwksHTTPClient.Transport = prev })
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// bubbleUserToken mints a user token issued at the bubble's now.
func bubbleUserToken(t testing.TB, k *testkit.Key, sub string) string {
	now := time.Now()
	return k.Sign(t, k.Hdr(TypeUser), map[string]any{"sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
}

func TestProvisionDoesNotFetch(t *testing.T) {
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	plugins := testkit.NewPluginServer(t)
	inMemoryKeyServers(t, srv.Server, plugins.Server)
	synctest.Test(t, func(t *testing.T) {
		auth := build(t, &Config{
			UserTokens:     &UserTokens{JWKSURL: srv.KeySetURL()},
			PluginTokens:   &PluginTokens{JWKSURL: plugins.Template()},
			ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.URL + "/ext"}}},
		})
		// Longer than any refresh interval, and every goroutine idle.
		time.Sleep(2 * jwksMaxRefresh)
		synctest.Wait()
		if n := srv.Hits.Load() + plugins.All.Load(); n != 0 {
			t.Fatalf("%d requests without any token to verify", n)
		}
		// The first use fetches, synchronously; later uses do not.
		for i := range 5 {
			expectOK(t, auth, bubbleUserToken(t, k, fmt.Sprintf("user:default/u%d", i)))
		}
		synctest.Wait()
		if n := srv.Hits.Load(); n != 1 {
			t.Fatalf("%d fetches, want 1", n)
		}
	})
}

func TestBackgroundRefreshHonoursCacheControl(t *testing.T) {
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	srv.SetCacheControl("public, max-age=120")
	inMemoryKeyServers(t, srv.Server)
	synctest.Test(t, func(t *testing.T) {
		auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
		expectOK(t, auth, bubbleUserToken(t, k, "user:default/a")) // fetch 1, at 0 s
		time.Sleep(119 * time.Second)
		expectOK(t, auth, bubbleUserToken(t, k, "user:default/b"))
		synctest.Wait()
		if h := srv.Hits.Load(); h != 1 {
			t.Fatalf("%d fetches before max-age, want 1", h)
		}
		time.Sleep(2 * time.Second) // 121 s: due, by the timer and on use
		expectOK(t, auth, bubbleUserToken(t, k, "user:default/c"))
		synctest.Wait()
		if h := srv.Hits.Load(); h != 2 {
			t.Fatalf("%d fetches after max-age, want 2", h)
		}

		// Without any request, the timer refreshes every max-age; a key
		// removed from the set stops verifying after the refresh.
		k2 := testkit.NewECKey(t, "k2")
		srv.SetKeys(k2)
		time.Sleep(120 * time.Second)
		synctest.Wait()
		if h := srv.Hits.Load(); h != 3 {
			t.Fatalf("%d fetches one max-age later, want 3", h)
		}
		expectErr(t, auth, bubbleUserToken(t, k, "user:default/d"), 401, "Failed user token verification")
		expectOK(t, auth, bubbleUserToken(t, k2, "user:default/e"))
	})
}

// The singleflight tests hold the key server inside the bubble (the gate is
// the bubble's channel), so synctest.Wait returns once every request is
// either in the one fetch or waiting for it: a second fetch would have been
// counted by then, however slow the machine.

func TestInitialFetchSingleflight(t *testing.T) {
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	inMemoryKeyServers(t, srv.Server)
	synctest.Test(t, func(t *testing.T) {
		gate := srv.Hold()
		auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
		const n = 50
		wait := authenticateConcurrently(t, auth, n, func(i int) string {
			return bubbleUserToken(t, k, fmt.Sprintf("user:default/u%d", i))
		})
		synctest.Wait()
		if h := srv.Hits.Load(); h != 1 {
			t.Errorf("%d fetches under way for %d concurrent first requests, want 1", h, n)
		}
		close(gate)
		wait()
		if h := srv.Hits.Load(); h != 1 {
			t.Fatalf("%d fetches for %d concurrent first requests, want 1", h, n)
		}
	})
}

func TestForcedRefreshSingleflight(t *testing.T) {
	k1 := testkit.NewECKey(t, "k1")
	srv := testkit.NewJWKSServer(t, k1)
	inMemoryKeyServers(t, srv.Server)
	synctest.Test(t, func(t *testing.T) {
		auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
		expectOK(t, auth, bubbleUserToken(t, k1, "user:default/a"))

		k2 := testkit.NewECKey(t, "k2")
		srv.SetKeys(k1, k2)
		gate := srv.Hold()
		time.Sleep(time.Second)

		const n = 64
		wait := authenticateConcurrently(t, auth, n, func(i int) string {
			return bubbleUserToken(t, k2, fmt.Sprintf("user:default/u%d", i))
		})
		synctest.Wait()
		if h := srv.Hits.Load(); h != 2 {
			t.Errorf("%d fetches under way, want 2 (first use + one shared refetch)", h)
		}
		close(gate)
		wait()
		if h := srv.Hits.Load(); h != 2 {
			t.Fatalf("%d fetches, want 2 (first use + one shared refetch)", h)
		}
	})
}
