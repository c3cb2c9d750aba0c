package backstageproxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// scrapeMetrics returns the test Caddy's admin /metrics as series → value,
// the series written `name{label="value",...}` with the labels sorted by
// name, as the exposition format writes them.
func scrapeMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	res, err := http.Get(testAdmin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("GET /metrics: %d %s", res.StatusCode, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// expectSeries requires each series of want in the scrape m, with its value.
func expectSeries(t *testing.T, m, want map[string]float64) {
	t.Helper()
	for s, v := range want {
		got, ok := m[s]
		if !ok {
			t.Errorf("/metrics has no %s", s)
		} else if got != v {
			t.Errorf("%s = %v, want %v", s, got, v)
		}
	}
}

// series spells a series as scrapeMetrics keys it; labels are name, value
// pairs in name order.
func series(name string, labels ...string) string {
	var b strings.Builder
	b.WriteString(name)
	for i := 0; i+1 < len(labels); i += 2 {
		if i == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(labels[i] + "=" + strconv.Quote(labels[i+1]))
	}
	if len(labels) > 0 {
		b.WriteByte('}')
	}
	return b.String()
}

func requestsSeries(route, outcome string) string {
	return series("caddy_backstage_proxy_requests_total", "outcome", outcome, "route", route)
}

// obsRequest sends one request to the test listener, raw (so that dot
// segments reach Caddy as written), and returns its status.
func obsRequest(t *testing.T, method, target, token string) int {
	t.Helper()
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: localhost:7007\r\nUser-Agent: observe-test/1\r\n")
	if token != "" {
		b.WriteString("Authorization: Bearer " + token + "\r\n")
	}
	if method != http.MethodGet {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	res := secRawRequestBytes([]byte(b.String()), method)
	if res.Err != nil {
		t.Fatalf("%s %s: %v", method, target, res.Err)
	}
	return res.Status
}

// TestMetricsRequestOutcomes sends requests of every outcome the handler
// and the dispatcher count, then scrapes the admin API's /metrics: each
// config load has a registry of its own, so the counts are this test's.
func TestMetricsRequestOutcomes(t *testing.T) {
	skipIfShort(t)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	down := closedLoopbackAddr(t)
	secLoad(t, staticTokenConfig(testStaticToken, "metrics-tests", `    /mx-req:
      target: `+up.URL+`
      allowedMethods: [GET]
    /mx-open:
      target: `+up.URL+`
      credentials: dangerously-allow-unauthenticated
    /mx-down: http://`+down+`/x
    /mx-allow:
      target: `+up.URL+`
      caddy:
        allow: [user]
    /mx-limited:
      target: `+up.URL+`
      caddy:
        rateLimit: {requests: 1, window: 1h}
`))
	for _, tc := range []struct {
		name, method, target, token string
		status                      int
	}{
		{"proxied", "GET", "/api/proxy/mx-req/a", testStaticToken, 200},
		{"proxied again", "GET", "/api/proxy/mx-req/b?q=1", testStaticToken, 200},
		{"no token", "GET", "/api/proxy/mx-req/a", "", 401},
		{"wrong token", "GET", "/api/proxy/mx-req/a", "wrong-token-1", 401},
		{"traversal", "GET", "/api/proxy/mx-open/a/../../mx-x", "", 400},
		{"method not allowed", "POST", "/api/proxy/mx-req/a", testStaticToken, 404},
		{"method not allowed, anonymous: the barrier's 401", "POST", "/api/proxy/mx-req/a", "", 401},
		{"upstream down", "GET", "/api/proxy/mx-down/a", testStaticToken, 502},
		{"no such route", "GET", "/api/proxy/mx-nothing", "", 401},
		{"open", "GET", "/api/proxy/mx-open/a", "", 200},
		{"not allowed: a service on a users-only route", "GET", "/api/proxy/mx-allow/a", testStaticToken, 403},
		{"within the rate limit", "GET", "/api/proxy/mx-limited/a", testStaticToken, 200},
		{"over the rate limit", "GET", "/api/proxy/mx-limited/a", testStaticToken, 429},
	} {
		if got := obsRequest(t, tc.method, tc.target, tc.token); got != tc.status {
			t.Errorf("%s: %s %s: status %d, want %d", tc.name, tc.method, tc.target, got, tc.status)
		}
	}
	m := scrapeMetrics(t)
	want := map[string]float64{
		requestsSeries("/mx-req", "proxied"):                 2,
		requestsSeries("/mx-req", "unauthenticated"):         2,
		requestsSeries("/mx-req", "method_not_allowed"):      1,
		requestsSeries("/mx-req", "forbidden"):               0,
		requestsSeries("/mx-req", "rate_limited"):            0,
		requestsSeries("/mx-open", "bad_path"):               1,
		requestsSeries("/mx-open", "proxied"):                1,
		requestsSeries("/mx-down", "upstream_error"):         1,
		requestsSeries("/mx-down", "proxied"):                0,
		requestsSeries(barrierRouteLabel, "unauthenticated"): 2,
		requestsSeries("/mx-allow", "forbidden"):             1,
		requestsSeries("/mx-allow", "proxied"):               0,
		requestsSeries("/mx-limited", "proxied"):             1,
		requestsSeries("/mx-limited", "rate_limited"):        1,
		// valid static tokens: two proxied, the POST (checked by the
		// barrier), the 502, the 403, the two to the limited route
		series("caddy_backstage_proxy_credential_checks_total", "method", "static", "result", "ok"):     7,
		series("caddy_backstage_proxy_credential_checks_total", "method", "none", "result", "rejected"): 1,
		series("caddy_backstage_proxy_credential_checks_total", "method", "user", "result", "ok"):       0,
		// static tokens are not cached; the wrong one was looked up
		series("caddy_backstage_proxy_verification_cache_lookups_total", "result", "miss"): 1,
		series("caddy_backstage_proxy_verification_cache_lookups_total", "result", "hit"):  0,
	}
	expectSeries(t, m, want)
	// Label values come from the config only.
	for s := range m {
		if strings.HasPrefix(s, "caddy_backstage_proxy_requests_total{") &&
			!strings.Contains(s, `route="/mx-`) && !strings.Contains(s, `route="(none)"`) {
			t.Errorf("unexpected series %s", s)
		}
		if strings.Contains(s, "mx-nothing") || strings.Contains(s, "mx-x") {
			t.Errorf("a request path became a label: %s", s)
		}
		if strings.HasPrefix(s, "caddy_http_requests_total") {
			t.Errorf("Caddy's HTTP metrics are on without caddy.metrics: %s", s)
		}
	}
}

// TestMetricsUserTokensAndKeySets checks the credential checks of user
// tokens, the verification cache and the key-set series, and that
// caddy.metrics turns on Caddy's own HTTP metrics.
func TestMetricsUserTokensAndKeySets(t *testing.T) {
	skipIfShort(t)
	clk := useFakeClock(t)
	key := testkit.NewECKey(t, "metrics-user-key")
	users := testkit.NewJWKSServer(t, key)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	keySetURL := users.KeySetURL()
	secLoad(t, `
caddy:
  admin: localhost:2999
  metrics: true
  authBaseUrl: `+strings.TrimSuffix(keySetURL, "/.well-known/jwks.json")+`
backend:
  listen: {port: 9080}
proxy:
  endpoints:
    /mx-user: `+up.URL+`
`)
	token := userToken(t, clk, key, "user:default/metrics")
	for i := range 3 {
		if got := obsRequest(t, "GET", "/api/proxy/mx-user/a", token); got != 200 {
			t.Fatalf("request %d: status %d", i, got)
		}
	}
	clk.Advance(90 * 1e9) // 90s: the key set's age
	m := scrapeMetrics(t)
	want := map[string]float64{
		requestsSeries("/mx-user", "proxied"):                                                          3,
		series("caddy_backstage_proxy_credential_checks_total", "method", "user", "result", "ok"):      3,
		series("caddy_backstage_proxy_verification_cache_lookups_total", "result", "miss"):             1,
		series("caddy_backstage_proxy_verification_cache_lookups_total", "result", "hit"):              2,
		series("caddy_backstage_proxy_key_set_fetches_total", "key_set", keySetURL, "result", "ok"):    1,
		series("caddy_backstage_proxy_key_set_fetches_total", "key_set", keySetURL, "result", "error"): 0,
		series("caddy_backstage_proxy_key_set_age_seconds", "key_set", keySetURL):                      90,
	}
	expectSeries(t, m, want)
	var caddyHTTP bool
	for s := range m {
		caddyHTTP = caddyHTTP || strings.HasPrefix(s, "caddy_http_requests_total{")
	}
	if !caddyHTTP {
		t.Errorf("caddy.metrics: true, but /metrics has no caddy_http_requests_total")
	}
}

// TestAuditEvents routes the audit log to a file, as the README says, and
// checks the events of a request with an injected credential and of each
// kind of refusal the handler makes, and that no secret is in them.
func TestAuditEvents(t *testing.T) {
	const (
		upstreamKey = "audit-upstream-key-5e1"
		wrongToken  = "audit-wrong-token-77"
	)
	t.Setenv("AUDIT_TEST_UPSTREAM_KEY", upstreamKey)
	skipIfShort(t)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	down := closedLoopbackAddr(t)
	logFile := filepath.Join(t.TempDir(), "audit.log")
	secLoad(t, `
caddy:
  admin: localhost:2999
  json:
    logging:
      logs:
        audit:
          writer: {output: file, filename: `+logFile+`}
          include: [backstage.audit]
backend:
  listen: {port: 9080}
  auth:
    externalAccess:
      - type: static
        options: {token: `+testStaticToken+`, subject: audit-tests}
proxy:
  endpoints:
    /au-inject:
      target: `+up.URL+`
      headers: {X-Api-Key: '${AUDIT_TEST_UPSTREAM_KEY}'}
    /au-plain: `+up.URL+`
    /au-down:
      target: http://`+down+`
      headers: {X-Api-Key: '${AUDIT_TEST_UPSTREAM_KEY}'}
    /au-users:
      target: `+up.URL+`
      headers: {X-Api-Key: '${AUDIT_TEST_UPSTREAM_KEY}'}
      caddy: {allow: [user]}
`)
	type event struct {
		Msg           string `json:"msg"`
		Logger        string `json:"logger"`
		IsAuditEvent  bool   `json:"isAuditorEvent"`
		Plugin        string `json:"plugin"`
		EventID       string `json:"eventId"`
		SeverityLevel string `json:"severityLevel"`
		Actor         struct {
			ActorID   string `json:"actorId"`
			IP        string `json:"ip"`
			Hostname  string `json:"hostname"`
			UserAgent string `json:"userAgent"`
		} `json:"actor"`
		Request struct {
			URL    string `json:"url"`
			Method string `json:"method"`
		} `json:"request"`
		Meta struct {
			Route           string   `json:"route"`
			Outcome         string   `json:"outcome"`
			Status          int      `json:"status"`
			InjectedHeaders []string `json:"injectedHeaders"`
		} `json:"meta"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	for _, tc := range []struct {
		name, method, target, token string
		status                      int
		want                        *event // nil: no event
	}{
		{"injected credential", "GET", "/api/proxy/au-inject/a?api_key=query-secret", testStaticToken, 200, &event{
			SeverityLevel: "medium", Status: "succeeded",
		}},
		{"injected credential, upstream down", "GET", "/api/proxy/au-down/a", testStaticToken, 502, &event{
			SeverityLevel: "medium", Status: "failed", Error: "Bad Gateway",
		}},
		{"plain route, proxied: not audited", "GET", "/api/proxy/au-plain/a", testStaticToken, 200, nil},
		{"wrong token", "GET", "/api/proxy/au-plain/a", wrongToken, 401, &event{
			SeverityLevel: "low", Status: "failed", Error: "Illegal token",
		}},
		{"no token, no route", "GET", "/api/proxy/au-nothing", "", 401, &event{
			SeverityLevel: "low", Status: "failed", Error: "Missing credentials",
		}},
		{"not allowed", "GET", "/api/proxy/au-users/a", testStaticToken, 403, &event{
			SeverityLevel: "medium", Status: "failed", Error: notAllowedMessage,
		}},
		{"traversal", "GET", "/api/proxy/au-inject/a/../../au-plain", testStaticToken, 400, &event{
			SeverityLevel: "high", Status: "failed", Error: "path traversal",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := os.ReadFile(logFile)
			if got := obsRequest(t, tc.method, tc.target, tc.token); got != tc.status {
				t.Fatalf("status %d, want %d", got, tc.status)
			}
			after, err := os.ReadFile(logFile)
			if err != nil && tc.want != nil {
				t.Fatal(err)
			}
			text := string(after[len(before):])
			for _, secret := range []string{upstreamKey, testStaticToken, wrongToken, "query-secret"} {
				if strings.Contains(text, secret) {
					t.Errorf("the audit log contains the secret %q: %s", secret, text)
				}
			}
			lines := slices.DeleteFunc(strings.Split(text, "\n"), func(s string) bool { return s == "" })
			if tc.want == nil {
				if len(lines) != 0 {
					t.Errorf("want no event, got %q", lines)
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("want one event, got %q", lines)
			}
			var got event
			if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
				t.Fatal(err)
			}
			path, _, _ := strings.Cut(tc.target, "?")
			want := *tc.want
			want.Msg, want.Logger, want.IsAuditEvent, want.Plugin, want.EventID = "proxy.proxy-request", AuditLoggerName, true, "proxy", "proxy-request"
			want.Actor.IP, want.Actor.Hostname, want.Actor.UserAgent = "127.0.0.1", "localhost", "observe-test/1"
			want.Request.URL, want.Request.Method = path, tc.method
			want.Meta.Status = tc.status
			switch {
			case tc.status == 200:
				want.Meta.Outcome = "proxied"
			case tc.status == 400:
				want.Meta.Outcome = "bad_path"
			case tc.status == 502:
				want.Meta.Outcome = "upstream_error"
			case tc.status == 403:
				want.Meta.Outcome = "forbidden"
			default:
				want.Meta.Outcome = "unauthenticated"
			}
			if tc.token == testStaticToken {
				want.Actor.ActorID = "audit-tests"
			}
			if strings.HasPrefix(path, "/api/proxy/au-inject") {
				want.Meta.Route = "/au-inject"
				want.Meta.InjectedHeaders = []string{"X-Api-Key"}
			} else if strings.HasPrefix(path, "/api/proxy/au-down") {
				want.Meta.Route = "/au-down"
				want.Meta.InjectedHeaders = []string{"X-Api-Key"}
			} else if strings.HasPrefix(path, "/api/proxy/au-users") {
				want.Meta.Route = "/au-users"
				want.Meta.InjectedHeaders = []string{"X-Api-Key"}
			} else if strings.HasPrefix(path, "/api/proxy/au-plain") {
				want.Meta.Route = "/au-plain"
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("event:\n got %s\nwant %s\n(line %s)", gotJSON, wantJSON, lines[0])
			}
		})
	}
}
