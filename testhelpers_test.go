package backstageproxy

// Fixtures shared by the test files: the test Caddy's addresses (ports
// reserved per test binary) and how to load a config into it, recording
// upstream servers, clients that talk to the test Caddy, and Backstage's
// JSON error body.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
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
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// caddytest runs one Caddy per test binary; every integration test shares
// it (so none of them uses t.Parallel). Its ports are reserved once per test
// binary (reserveTestPorts), so that test binaries running at the same time
// (other packages, other checkouts) do not meet. The test configs are written
// with the fixed addresses admin localhost:2999, listener port 9080 and HTTPS
// port 9443; withTestPorts, applied wherever a config is loaded into the
// test Caddy, replaces them with the reserved ones.
var (
	testAdminPort, testListenPort, testHTTPSPort = reserveTestPorts()

	testAdmin  = "http://localhost:" + testAdminPort // the admin API
	testListen = "127.0.0.1:" + testListenPort       // the HTTP listener
)

const (
	testClientHost = "localhost:7007" // the Host header clients send, as in the conformance cases
	// testStaticToken is the static external-access token of the
	// integration configs (without "Bearer ").
	testStaticToken = "static-token-123"
)

// reserveTestPorts returns three distinct TCP ports that were free on every
// address: each is taken with port 0, read back, then freed for the test
// Caddy to use.
func reserveTestPorts() (admin, listen, https string) {
	var ports [3]string
	for i := range ports {
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			panic("reserving a port for the test Caddy: " + err.Error())
		}
		defer ln.Close() // all three held at once, so they differ
		_, ports[i], _ = net.SplitHostPort(ln.Addr().String())
	}
	return ports[0], ports[1], ports[2]
}

// init points caddytest at the reserved admin port: every caddytest.Tester
// starts the in-process Caddy with its admin API there (if none answers
// yet) and loads configs through it.
func init() {
	caddytest.Default.AdminPort, _ = strconv.Atoi(testAdminPort)
	// A config load waits for every module to provision (the 1,000-endpoint
	// test takes 7 s under -race on 2 idle cores); caddytest's 5 s would make
	// a busy machine fail a load that is only slow.
	caddytest.Default.LoadRequestTimeout = time.Minute
}

// testPortReplacer rewrites the fixed addresses of the test configs, in the
// spellings they have in YAML, in JSON and in the adapter's JSON output.
var testPortReplacer = strings.NewReplacer(
	"localhost:2999", "localhost:"+testAdminPort, // caddy.admin, admin.listen
	"port: 9080}", "port: "+testListenPort+"}", // backend.listen: {[host: ..., ]port: 9080}
	`:9080"`, ":"+testListenPort+`"`, // a server's listen, ":9080" or "127.0.0.1:9080"
	`"http_port":9080`, `"http_port":`+testListenPort,
	"port: 9443}", "port: "+testHTTPSPort+"}",
	"localhost:9443", "localhost:"+testHTTPSPort, // backend.baseUrl of the HTTPS listener
	`"https_port":9443`, `"https_port":`+testHTTPSPort,
)

// fixedTestPort finds a fixed port that testPortReplacer left in a config.
var fixedTestPort = regexp.MustCompile(`[: ](2999|9080|9443)([^0-9]|$)`)

// withTestPorts returns cfg, a test config (YAML or JSON), with the fixed
// addresses admin localhost:2999, listener 9080 and HTTPS 9443 replaced by
// this test binary's reserved ports. Every path that loads a config into the
// test Caddy (loadTestCaddy, and the tests' own POSTs to /load) goes through
// it. A fixed port in a spelling it does not know is a bug in the test: it
// panics rather than let the test Caddy take a fixed port.
func withTestPorts(cfg string) string {
	cfg = testPortReplacer.Replace(cfg)
	if m := fixedTestPort.FindString(cfg); m != "" {
		panic("withTestPorts: a test config names the fixed port in " + strconv.Quote(m) + "; add its spelling to testPortReplacer")
	}
	return cfg
}

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
	caddytest.NewTester(t).InitServer(withTestPorts(cfg), adapter)
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

// backstageErrorBody is Backstage's JSON error body (the error handler of
// packages/backend-defaults/src/entrypoints/rootHttpRouter/http/MiddlewareFactory.ts),
// with its key order.
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

// TestWithTestPorts: the YAML fixtures and the config builders, once through
// withTestPorts, name this binary's ports and no fixed one (it would panic).
func TestWithTestPorts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "integration", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	configs := map[string]string{"staticTokenConfig": staticTokenConfig(testStaticToken, "s", "    /a: http://127.0.0.1:1\n")}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		configs[f] = string(raw)
	}
	for name, cfg := range configs {
		got := withTestPorts(cfg)
		for _, want := range []string{"admin: localhost:" + testAdminPort + "\n", "port: " + testListenPort + "}"} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: %q missing after withTestPorts:\n%s", name, want, got)
			}
		}
	}
}

// writeError writes the answer to a refusal as the error route does.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, status int, name, message string) error {
	return (&proxyError{name: name, message: message, mountPath: h.MountPath}).write(w, r, status)
}

// serveWithErrors runs h as a Caddy server with the generated error route
// does: an error h returns goes to ErrorHandler, then Caddy's last resort
// (the status alone).
func serveWithErrors(h caddyhttp.MiddlewareHandler, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	err := h.ServeHTTP(w, r, next)
	var pe *proxyError
	if !errors.As(err, &pe) {
		return err // not ours: as before
	}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ErrorCtxKey, err))
	return ErrorHandler{}.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) {
			w.WriteHeader(he.StatusCode)
		} else {
			w.WriteHeader(http.StatusInternalServerError)
		}
		return nil
	}))
}
