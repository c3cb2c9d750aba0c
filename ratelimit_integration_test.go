package backstageproxy

// Integration tests of caddy.rateLimit through a real Caddy, loaded from an
// app-config.yaml by the backstage adapter, with real credentials (static
// tokens, user tokens signed by a key served as a JWKS). No t.Parallel: they
// share the test Caddy.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// rlResponse is what a client saw.
type rlResponse struct {
	status     int
	retryAfter string
	body       string
}

// rlGet sends GET path to the test Caddy (or, with addr, to that listener)
// with the given bearer token ("" = none), from the local address from
// ("" = any).
func rlGet(t *testing.T, addr, path, token, from string) rlResponse {
	t.Helper()
	if addr == "" {
		addr = testListen
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = testClientHost
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, address)
		},
	}}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return rlResponse{status: res.StatusCode, retryAfter: res.Header.Get("Retry-After"), body: string(body)}
}

// rlConfig is an app-config.yaml with two static tokens (subjects ci-a and
// ci-b), user tokens from users, and the given endpoints.
func rlConfig(users *testkit.JWKSServer, top, endpoints string) string {
	return `
caddy:
  admin: localhost:2999
  authBaseUrl: ` + strings.TrimSuffix(users.KeySetURL(), "/.well-known/jwks.json") + `
` + top + `
backend:
  listen: {port: 9080}
  auth:
    externalAccess:
      - type: static
        options: {token: rate-token-a, subject: ci-a}
      - type: static
        options: {token: rate-token-b, subject: ci-b}
proxy:
  endpoints:
` + endpoints
}

// rlEndpoint is the app-config.yaml lines of an endpoint with a rate limit
// (and credentials, unless "").
func rlEndpoint(route, target, credentials string, requests int, window string) string {
	s := "    " + route + ":\n      target: " + target + "\n"
	if credentials != "" {
		s += "      credentials: " + credentials + "\n"
	}
	return s + fmt.Sprintf("      caddy:\n        rateLimit: {requests: %d, window: %s}\n", requests, window)
}

// wantRateLimited checks a 429 refusal: Retry-After a whole number of
// seconds in (0, maxWait], and Backstage's JSON error.
func wantRateLimited(t *testing.T, got rlResponse, path string, maxWait int) {
	t.Helper()
	if got.status != http.StatusTooManyRequests {
		t.Fatalf("status %d (body %s), want 429", got.status, got.body)
	}
	if n, err := strconv.Atoi(got.retryAfter); err != nil || n <= 0 || n > maxWait {
		t.Errorf("Retry-After %q, want whole seconds in 1..%d", got.retryAfter, maxWait)
	}
	if want := backstageErrorBody("TooManyRequestsError", rateLimitMessage, "GET", path, 429); got.body != want {
		t.Errorf("body\n got %s\nwant %s", got.body, want)
	}
}

// TestIntegrationRateLimit: the budget is per principal and per route,
// counted after authentication; over it, 429 with Retry-After and
// Backstage's JSON error, and nothing reaches the upstream; anonymous
// callers are counted by client address; the window slides.
func TestIntegrationRateLimit(t *testing.T) {
	skipIfShort(t)
	clk := useFakeClock(t)
	userKey := testkit.NewECKey(t, "rl-user-key")
	users := testkit.NewJWKSServer(t, userKey)
	up := newAIUpstream(t)
	unlimited := "    /unlimited: " + up.URL + "\n"
	loadTestCaddy(t, rlConfig(users, "", rlEndpoint("/limited", up.URL, "", 2, "1m")+
		rlEndpoint("/other", up.URL, "", 2, "1m")+
		rlEndpoint("/short", up.URL, "", 1, "1s")+
		rlEndpoint("/open", up.URL, CredentialsDangerouslyAllowUnauthenticated, 2, "1m")+
		unlimited), "backstage")
	alice := userToken(t, clk, userKey, "user:default/alice")
	bob := userToken(t, clk, userKey, "user:default/bob")

	// spend runs n requests that must pass, and checks the upstream saw them.
	spend := func(t *testing.T, n int, path, token, from string) {
		t.Helper()
		up.reset()
		for i := range n {
			if got := rlGet(t, "", path, token, from); got.status != http.StatusOK {
				t.Fatalf("request %d to %s: status %d (body %s), want 200", i+1, path, got.status, got.body)
			}
		}
		if _, seen := up.seen(); seen != n {
			t.Fatalf("upstream saw %d requests, want %d", seen, n)
		}
		up.reset()
	}
	// refused checks that a request is refused and the upstream sees nothing.
	refused := func(t *testing.T, path, token, from string, maxWait int) rlResponse {
		t.Helper()
		got := rlGet(t, "", path, token, from)
		wantRateLimited(t, got, strings.TrimPrefix(path, "/api/proxy"), maxWait)
		if _, seen := up.seen(); seen != 0 {
			t.Errorf("upstream saw %d requests after the refusal, want none", seen)
		}
		return got
	}

	t.Run("refused requests spend nothing", func(t *testing.T) {
		for range 5 {
			if got := rlGet(t, "", "/api/proxy/limited/%2e%2e/x", "rate-token-a", ""); got.status != http.StatusBadRequest {
				t.Fatalf("traversal: status %d, want 400", got.status)
			}
			if got := rlGet(t, "", "/api/proxy/limited/x", "", ""); got.status != http.StatusUnauthorized {
				t.Fatalf("anonymous: status %d, want 401", got.status)
			}
			if got := rlGet(t, "", "/api/proxy/limited/x", "not-a-valid-token", ""); got.status != http.StatusUnauthorized {
				t.Fatalf("bad token: status %d, want 401", got.status)
			}
		}
		spend(t, 2, "/api/proxy/limited/x", "rate-token-a", "")
	})
	t.Run("over the limit", func(t *testing.T) {
		refused(t, "/api/proxy/limited/x?q=1", "rate-token-a", "", 60)
		refused(t, "/api/proxy/limited/y", "rate-token-a", "", 60)
	})
	t.Run("other principals are unaffected", func(t *testing.T) {
		spend(t, 2, "/api/proxy/limited/x", "rate-token-b", "")
		refused(t, "/api/proxy/limited/x", "rate-token-b", "", 60)
		spend(t, 2, "/api/proxy/limited/x", alice, "")
		refused(t, "/api/proxy/limited/x", alice, "", 60)
		spend(t, 2, "/api/proxy/limited/x", bob, "")
	})
	t.Run("other routes are unaffected", func(t *testing.T) {
		spend(t, 2, "/api/proxy/other/x", "rate-token-a", "")
		refused(t, "/api/proxy/other/x", "rate-token-a", "", 60)
		spend(t, 10, "/api/proxy/unlimited/x", "rate-token-a", "")
	})
	t.Run("anonymous callers by client address", func(t *testing.T) {
		spend(t, 2, "/api/proxy/open/x", "", "127.0.0.1")
		refused(t, "/api/proxy/open/x", "", "127.0.0.1", 60)
		// a token does not make a caller anyone else on an open route
		refused(t, "/api/proxy/open/x", "rate-token-b", "127.0.0.1", 60)
		spend(t, 2, "/api/proxy/open/x", "", "127.0.0.2")
		refused(t, "/api/proxy/open/x", "", "127.0.0.2", 60)
	})
	t.Run("the window slides", func(t *testing.T) {
		spend(t, 1, "/api/proxy/short/x", "rate-token-a", "")
		refused(t, "/api/proxy/short/x", "rate-token-a", "", 1)
		// wait out the window (1s), with margin
		time.Sleep(time.Second + 300*time.Millisecond)
		spend(t, 1, "/api/proxy/short/x", "rate-token-a", "")
		refused(t, "/api/proxy/short/x", "rate-token-a", "", 1)
	})
	t.Run("a reload keeps the counts", func(t *testing.T) {
		// the same endpoint in a new config: its budget is not reset
		loadTestCaddy(t, rlConfig(users, "", rlEndpoint("/limited", up.URL, "", 2, "1m")+unlimited), "backstage")
		refused(t, "/api/proxy/limited/x", "rate-token-a", "", 60)
	})
	t.Run("a reload with a lower limit applies at once", func(t *testing.T) {
		// bob spent 2 of 2 above; the same config with 1 of 1 refuses him,
		// and a principal that has not called yet gets 1
		loadTestCaddy(t, rlConfig(users, "", rlEndpoint("/limited", up.URL, "", 1, "1m")), "backstage")
		refused(t, "/api/proxy/limited/x", bob, "", 60)
		carol := userToken(t, clk, userKey, "user:default/carol")
		spend(t, 1, "/api/proxy/limited/x", carol, "")
		refused(t, "/api/proxy/limited/x", carol, "", 60)
	})
	t.Run("a route removed and added again starts afresh", func(t *testing.T) {
		loadTestCaddy(t, rlConfig(users, "", unlimited), "backstage")
		loadTestCaddy(t, rlConfig(users, "", rlEndpoint("/limited", up.URL, "", 2, "1m")), "backstage")
		spend(t, 2, "/api/proxy/limited/x", "rate-token-a", "")
		refused(t, "/api/proxy/limited/x", "rate-token-a", "", 60)
	})
}

// TestIntegrationRateLimitCaddyfile: the Caddyfile's rate_limit gives the
// same limit.
func TestIntegrationRateLimitCaddyfile(t *testing.T) {
	skipIfShort(t)
	up := newAIUpstream(t)
	loadTestCaddy(t, fmt.Sprintf(`{
	admin localhost:%s
	http_port %s
	grace_period 1ns
	backstage {
		static_token rate-token-a ci-a
	}
}
:%s {
	backstage_proxy {
		endpoint /cf-limited %s {
			rate_limit 1 1m
		}
	}
}
`, testAdminPort, testListenPort, testListenPort, up.URL), "caddyfile")
	if got := rlGet(t, "", "/api/proxy/cf-limited/x", "rate-token-a", ""); got.status != http.StatusOK {
		t.Fatalf("status %d (body %s), want 200", got.status, got.body)
	}
	wantRateLimited(t, rlGet(t, "", "/api/proxy/cf-limited/x", "rate-token-a", ""), "/cf-limited/x", 60)
}

// peerConfigEnv carries the app-config.yaml of the peer Caddy process that
// TestIntegrationRateLimitDistributed starts (TestRateLimitPeerProcess).
const peerConfigEnv = "BACKSTAGE_PROXY_TEST_PEER_CONFIG"

// TestRateLimitPeerProcess is not a test: it is the second Caddy instance of
// TestIntegrationRateLimitDistributed, run in a process of its own (this
// test binary, started again), because caddy-ratelimit's distributed mode
// tells instances apart by Caddy's instance ID, one per process (data
// directory). It adapts the config in peerConfigEnv, runs it, says "ready"
// and stops when its standard input closes.
func TestRateLimitPeerProcess(t *testing.T) {
	cfg := os.Getenv(peerConfigEnv)
	if cfg == "" {
		t.Skip("only run by TestIntegrationRateLimitDistributed")
	}
	adapted, warnings, err := caddyconfig.GetAdapter("backstage").Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatalf("adapt: %v (%v)", err, warnings)
	}
	if err := caddy.Load(adapted, true); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
}

// startPeerCaddy runs TestRateLimitPeerProcess with cfg and waits until its
// Caddy runs. It is stopped at the end of the test.
func startPeerCaddy(t *testing.T, cfg string) {
	t.Helper()
	self, err := os.Executable() // not os.Args[0]: tests of the caddy command change it
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestRateLimitPeerProcess$", "-test.count=1", "-test.v")
	home := t.TempDir()
	// a data directory of its own: another instance ID
	cmd.Env = append(os.Environ(), peerConfigEnv+"="+cfg, "XDG_DATA_HOME="+home+"/data", "XDG_CONFIG_HOME="+home+"/config")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan string, 1)
	go func() {
		out, _ := io.ReadAll(io.TeeReader(stdout, readyWriter(ready)))
		done <- cmd.Wait()
		ready <- string(out)
	}()
	select {
	case got := <-ready:
		if got != "ready" {
			t.Fatalf("peer Caddy did not start: %s\n%s", got, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("peer Caddy did not start in 30s:\n%s", stderr.String())
	}
}

// readyWriter sends "ready" to ch when a line "ready" is written.
type readyWriter chan string

func (w readyWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if line == "ready" {
			select {
			case w <- "ready":
			default:
			}
		}
	}
	return len(b), nil
}

// TestIntegrationRateLimitDistributed: two Caddy instances (the test Caddy
// and a peer process) with caddy.rateLimit.distributed and one
// file_system storage share a principal's budget: what it spent on the
// peer is refused here once the instances have synced; another principal
// is unaffected.
func TestIntegrationRateLimitDistributed(t *testing.T) {
	skipIfShort(t)
	// not t.TempDir: the instances may still be writing to it when the
	// test ends, and TempDir's removal fails on a file created meanwhile
	storage, err := os.MkdirTemp("", "rate-limit-storage-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(storage) })
	up := newAIUpstream(t)
	users := testkit.NewJWKSServer(t, testkit.NewECKey(t, "rl-dist-key"))
	peer := closedLoopbackAddr(t)
	top := `  storage: {module: file_system, root: ` + storage + `}
  rateLimit:
    distributed: {readInterval: 100ms, writeInterval: 100ms}`
	endpoints := rlEndpoint("/dist", up.URL, "", 3, "1m")
	peerCfg := strings.Replace(rlConfig(users, top+"\n  listen: "+peer, endpoints), "admin: localhost:2999", "admin: 'off'", 1)
	startPeerCaddy(t, peerCfg)
	loadTestCaddy(t, rlConfig(users, top, endpoints), "backstage")
	// stop this instance's syncing before the storage is removed
	t.Cleanup(func() { loadTestCaddy(t, rlConfig(users, "", "    /unlimited: "+up.URL+"\n"), "backstage") })

	for i := range 3 {
		if got := rlGet(t, peer, "/api/proxy/dist/x", "rate-token-a", ""); got.status != http.StatusOK {
			t.Fatalf("request %d to the peer: status %d (body %s)", i+1, got.status, got.body)
		}
	}
	up.reset()
	// the peer writes its counts, this instance reads them: every 100ms;
	// wait for both, with margin
	time.Sleep(time.Second)
	wantRateLimited(t, rlGet(t, "", "/api/proxy/dist/x", "rate-token-a", ""), "/dist/x", 60)
	if _, seen := up.seen(); seen != 0 {
		t.Errorf("upstream saw %d requests after the refusal", seen)
	}
	if got := rlGet(t, "", "/api/proxy/dist/x", "rate-token-b", ""); got.status != http.StatusOK {
		t.Errorf("another principal: status %d (body %s), want 200", got.status, got.body)
	}
	// one state per instance (and, while one is written, its temporary file)
	entries, err := os.ReadDir(filepath.Join(storage, "rate_limit", "instances"))
	states := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".rlstate") {
			states++
		}
	}
	if err != nil || states != 2 {
		t.Errorf("storage holds %d instance states (%v), want 2", states, err)
	}
}
