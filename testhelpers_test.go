package backstageproxy

// Fixtures shared by the test files: the test Caddy's fixed addresses and
// how to load a config into it, recording upstream servers, clients that
// talk to the test Caddy, and Backstage's JSON error body.

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// caddytest runs one Caddy per test binary, at fixed addresses; every
// integration test shares it (so none of them uses t.Parallel).
const (
	testAdmin      = "http://localhost:2999" // the admin API
	testListen     = "127.0.0.1:9080"        // the HTTP listener
	testClientHost = "localhost:7007"        // the Host header clients send, as in the conformance cases
	// testStaticToken is the static external-access token of the
	// integration configs (without "Bearer ").
	testStaticToken = "static-token-123"
)

// skipIfShort skips an integration test, one that runs a real Caddy, with
// -short.
func skipIfShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs a real Caddy")
	}
}

// loadTestCaddy loads cfg, in the format of the named config adapter
// ("backstage", "json"), into the test Caddy through its admin API, and
// stops the test if that fails.
func loadTestCaddy(t *testing.T, cfg, adapter string) {
	t.Helper()
	caddytest.NewTester(t).InitServer(cfg, adapter)
	if t.Failed() {
		t.FailNow()
	}
}

// runningCaddyConfig is the config the test Caddy runs, as its admin API
// shows it.
func runningCaddyConfig(t *testing.T) string {
	t.Helper()
	res, err := http.Get(testAdmin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// staticTokenConfig is an app-config.yaml for the test Caddy with one
// static token (a YAML scalar, usually testStaticToken) for subject, and the
// given lines under proxy.endpoints.
func staticTokenConfig(token, subject, endpoints string) string {
	return `
caddy:
  admin: localhost:2999
backend:
  listen: {port: 9080}
  auth:
    externalAccess:
      - type: static
        options: {token: ` + token + `, subject: ` + subject + `}
proxy:
  endpoints:
` + endpoints
}

// newTestUpstream starts an upstream server with handler h. At the end of
// the test its client connections are closed first, so that closing the
// server does not wait for requests still running (streams, slow answers).
func newTestUpstream(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(func() {
		s.CloseClientConnections()
		s.Close()
	})
	return s
}

// recordingUpstream is an upstream test server that records what it
// receives, one T per request, for the test to check. The recording is
// safe for concurrent use.
type recordingUpstream[T any] struct {
	*httptest.Server
	seenMu sync.Mutex
	seen   []T
}

// record adds one request.
func (u *recordingUpstream[T]) record(s T) {
	u.seenMu.Lock()
	u.seen = append(u.seen, s)
	u.seenMu.Unlock()
}

// reset forgets every request recorded so far.
func (u *recordingUpstream[T]) reset() {
	u.seenMu.Lock()
	u.seen = nil
	u.seenMu.Unlock()
}

// requests returns the requests recorded so far.
func (u *recordingUpstream[T]) requests() []T {
	u.seenMu.Lock()
	defer u.seenMu.Unlock()
	return slices.Clone(u.seen)
}

// take returns the requests recorded so far and forgets them.
func (u *recordingUpstream[T]) take() []T {
	u.seenMu.Lock()
	defer u.seenMu.Unlock()
	s := u.seen
	u.seen = nil
	return s
}

// hostport is the upstream's host:port, i.e. the Host header changeOrigin
// sends.
func (u *recordingUpstream[T]) hostport() string { return strings.TrimPrefix(u.URL, "http://") }

// dialTestListener is an http.Transport DialContext that connects to the
// test Caddy's listener whatever the address asked for.
func dialTestListener(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, testListen)
}

// sendRawToListener connects to the test Caddy's listener, sets the
// connection's deadline and writes raw to it, byte for byte. It returns the
// connection, for the caller to close, and a reader of what comes back.
func sendRawToListener(t *testing.T, raw string, deadline time.Duration) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", testListen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(deadline))
	if _, err := io.WriteString(conn, raw); err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// dontFollowRedirects is an http.Client CheckRedirect that returns
// redirects to the caller as they are.
func dontFollowRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// closedLoopbackAddr returns a loopback address nothing listens on: a port
// taken, then freed.
func closedLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// backstageErrorBody is Backstage's JSON error body (backstage-proxy.md
// §1.12), with its key order.
func backstageErrorBody(name, message, method, url string, status int) string {
	q := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	return `{"error":{"name":` + q(name) + `,"message":` + q(message) + `},"request":{"method":` + q(method) +
		`,"url":` + q(url) + `},"response":{"statusCode":` + strconv.Itoa(status) + `}}`
}

// Messages of the proxy's own upstream errors (handler.go, divergence D8).
const (
	msgBadGateway     = "The upstream of this proxy route could not be reached"
	msgGatewayTimeout = "The upstream of this proxy route did not answer in time"
)

// useFakeClock makes the identity package read a fake clock, set to a fixed
// instant, until the test ends.
func useFakeClock(t testing.TB) *testkit.FakeClock {
	t.Helper()
	c := &testkit.FakeClock{}
	c.Set(time.Unix(1_900_000_000, 0))
	t.Cleanup(identity.SetClock(c.Now))
	return c
}

// userToken is a user token from key k for sub, valid for an hour on clk.
func userToken(t testing.TB, clk *testkit.FakeClock, k *testkit.Key, sub string) string {
	return k.Sign(t, k.Hdr(identity.TypeUser), map[string]any{"sub": sub, "iat": clk.Unix(), "exp": clk.At(time.Hour)})
}

// testContext is a real caddy.Context, cancelled at the end of the test.
func testContext(t testing.TB) caddy.Context {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

// expectOK authenticates token with a and requires success.
func expectOK(t testing.TB, a authenticator, token string) identity.Principal {
	t.Helper()
	p, err := a.Authenticate(context.Background(), token)
	if err != nil {
		t.Fatalf("authenticate: unexpected %d %s: %s", err.Status, err.Name, err.Message)
	}
	return p
}

// expectErr authenticates token with a and requires the given refusal.
func expectErr(t testing.TB, a authenticator, token string, status int, message string) {
	t.Helper()
	p, err := a.Authenticate(context.Background(), token)
	if err == nil {
		t.Fatalf("authenticate: unexpected success %+v", p)
	}
	if err.Status != status || err.Message != message {
		t.Fatalf("authenticate: got %d %q, want %d %q", err.Status, err.Message, status, message)
	}
}
