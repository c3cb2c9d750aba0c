package backstageproxy

// Tests of `caddy backstage explain` and of the admin API's
// POST /backstage/explain: every kind of decision on a real app-config.yaml,
// the command's JSON and text output, and a table of requests sent both to
// the running test Caddy (its upstream records what arrives) and to explain,
// which must agree on route, decision, status and upstream URL.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// explainSecret is an injected header's value; it must never be printed.
const explainSecret = "s3cr3t-injected-value-42"

// explainUpstream records the method and request-target of what it gets.
type explainUpstream struct {
	recordingUpstream[string]
}

func newExplainUpstream(t *testing.T) *explainUpstream {
	u := &explainUpstream{}
	u.Server = newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.record(r.Method + " " + u.URL + r.RequestURI)
		w.WriteHeader(http.StatusOK)
	}))
	return u
}

// explainConfigYAML is the app-config of these tests: one endpoint per kind
// of decision, each with a target path of its own, so the upstream URL
// names the route.
func explainConfigYAML(up string) string {
	return staticTokenConfig(testStaticToken, "ci-bot", `    /open:
      target: `+up+`/open-base
      credentials: dangerously-allow-unauthenticated
    /catalog:
      target: `+up+`/api/catalog?fixed=1
    /ro:
      target: `+up+`/ro-base
      allowedMethods: [GET]
    /ro/rw:
      target: `+up+`/rw-base
    /fwd:
      target: `+up+`/fwd-base
      credentials: forward
    /secret:
      target: `+up+`/v1
      allowedHeaders: [X-Trace]
      headers:
        X-Api-Key: ${EXPLAIN_TEST_SECRET}
    /rewrite:
      target: `+up+`/base?t=1
      pathRewrite:
        '^/api/proxy/rewrite/old': '/new'
    /users-only:
      target: `+up+`/u
      caddy: {allow: [user]}
    /qkey:
      target: `+up+`/q?api_key=${EXPLAIN_TEST_SECRET}&v=2
`)
}

// writeExplainConfig writes the config to a file and returns its path.
func writeExplainConfig(t *testing.T, up string) string {
	t.Helper()
	t.Setenv("EXPLAIN_TEST_SECRET", explainSecret)
	path := filepath.Join(t.TempDir(), "app-config.yaml")
	if err := os.WriteFile(path, []byte(withTestPorts(explainConfigYAML(up))), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runExplainCLI runs `caddy backstage explain` in-process and returns its
// standard output.
func runExplainCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newExplainCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String() + errOut.String(), err
}

// explainJSON runs the command with --json and decodes its output.
func explainJSON(t *testing.T, config string, headers []string, method, url string) (explanation, string) {
	t.Helper()
	args := []string{"--config", config, "--json"}
	for _, h := range headers {
		args = append(args, "--header", h)
	}
	out, err := runExplainCLI(t, append(args, method, url)...)
	if err != nil {
		t.Fatalf("explain %s %s: %v\n%s", method, url, err, out)
	}
	var ex explanation
	if err := json.Unmarshal([]byte(out), &ex); err != nil {
		t.Fatalf("explain %s %s: output is not one JSON object: %v\n%s", method, url, err, out)
	}
	return ex, out
}

const bearerStatic = "Authorization: Bearer " + testStaticToken

func TestExplainDecisions(t *testing.T) {
	skipIfShort(t)
	up := "http://127.0.0.1:1" // never dialed: explain sends nothing
	config := writeExplainConfig(t, up)

	type want struct {
		route     string // "" for null
		decision  string
		status    int // 0 for null
		upstream  string
		subject   string
		forwarded []string
		dropped   []string
		injected  []string
		reason    string
	}
	for _, tc := range []struct {
		name    string
		method  string
		url     string
		headers []string
		want    want
	}{
		{"open route", "GET", "/api/proxy/open/a/b?x=1", []string{"Accept: text/plain", "Cookie: c=1"},
			want{route: "/open", decision: "proxy", upstream: "GET " + up + "/open-base/a/b?x=1",
				forwarded: []string{"accept"}, dropped: []string{"cookie"}, reason: "allows unauthenticated"}},
		{"open route, any letter case", "GET", "http://localhost:" + testListenPort + "/API/proxy/OPEN/a", nil,
			want{route: "/open", decision: "proxy", upstream: "GET " + up + "/open-base/a"}},
		{"public URL on another port", "GET", "https://backstage.example.com/api/proxy/open/a", nil,
			want{route: "/open", decision: "proxy", upstream: "GET " + up + "/open-base/a"}},
		{"required without a token", "GET", "/api/proxy/catalog/entities", nil,
			want{route: "/catalog", decision: "deny", status: 401, reason: "refuses the request with 401"}},
		{"required with a wrong token", "GET", "/api/proxy/catalog/entities", []string{"Authorization: Bearer wrong-token-value"},
			want{route: "/catalog", decision: "deny", status: 401, dropped: []string{"authorization"}}},
		{"required with a static token", "GET", "/api/proxy/catalog/entities?kind=x", []string{bearerStatic},
			want{route: "/catalog", decision: "proxy", upstream: "GET " + up + "/api/catalog/entities?fixed=1&kind=x",
				subject: "ci-bot", dropped: []string{"authorization"}, reason: "accepts ci-bot"}},
		{"forward sends the token on", "DELETE", "/api/proxy/fwd/x", []string{bearerStatic},
			want{route: "/fwd", decision: "proxy", upstream: "DELETE " + up + "/fwd-base/x",
				subject: "ci-bot", forwarded: []string{"authorization"}}},
		{"disallowed method falls through to a later route", "POST", "/api/proxy/ro/rw/x", []string{bearerStatic},
			want{route: "/ro/rw", decision: "proxy", upstream: "POST " + up + "/rw-base/x"}},
		{"allowed method on the first route", "GET", "/api/proxy/ro/rw/x", []string{bearerStatic},
			want{route: "/ro", decision: "proxy", upstream: "GET " + up + "/ro-base/rw/x"}},
		{"disallowed method, nothing to fall to", "POST", "/api/proxy/ro/x", []string{bearerStatic},
			want{decision: "deny", status: 404, subject: "ci-bot", reason: "route /ro matches the path but not the method POST: it allows GET"}},
		{"unknown path, authenticated", "GET", "/api/proxy/nothing/here", []string{bearerStatic},
			want{decision: "deny", status: 404, reason: "no endpoint covers this path"}},
		{"unknown path, anonymous", "GET", "/api/proxy/nothing/here", nil,
			want{decision: "deny", status: 401, reason: "No route matched GET /api/proxy/nothing/here"}},
		{"prefix without a segment boundary", "GET", "/api/proxy/catalogue/x", []string{bearerStatic},
			want{decision: "deny", status: 404, reason: "route /catalog: /api/proxy/catalogue/x is not under its prefix /api/proxy/catalog"}},
		{"percent-encoded route key", "GET", "/api/proxy/op%65n/x", nil,
			want{decision: "deny", status: 401, reason: "route /open: /api/proxy/op%65n/x is under its prefix /api/proxy/open only after percent-decoding"}},
		{"path traversal", "GET", "/api/proxy/open/../catalog/x", nil,
			want{route: "/open", decision: "deny", status: 400, reason: "path traversal"}},
		{"rewrite with target path and query", "GET", "/api/proxy/rewrite/old/x?q=1", nil,
			want{route: "/rewrite", decision: "deny", status: 401}},
		{"rewrite with target path and query, token", "GET", "/api/proxy/rewrite/old/x?q=1", []string{bearerStatic},
			want{route: "/rewrite", decision: "proxy", upstream: "GET " + up + "/base/new/x?t=1&q=1"}},
		{"injected header, names only", "GET", "/api/proxy/secret/items", []string{bearerStatic, "X-Trace: t1", "X-Api-Key: from-client"},
			want{route: "/secret", decision: "proxy", upstream: "GET " + up + "/v1/items",
				forwarded: []string{"x-trace"}, dropped: []string{"authorization", "x-api-key"}, injected: []string{"x-api-key"}}},
		{"a secret in the target's query, names only", "GET", "/api/proxy/qkey/x?page=2", []string{bearerStatic},
			want{route: "/qkey", decision: "proxy", upstream: "GET " + up + "/q/x?api_key=…&v=2&page=2", subject: "ci-bot", dropped: []string{"authorization"}}},
		{"forbidden by allow", "GET", "/api/proxy/users-only/x", []string{bearerStatic},
			want{route: "/users-only", decision: "deny", status: 403, subject: "ci-bot", dropped: []string{"authorization"}, reason: "403"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex, out := explainJSON(t, config, tc.headers, tc.method, tc.url)
			w := tc.want
			gotRoute := ""
			if ex.Route != nil {
				gotRoute = *ex.Route
			}
			if gotRoute != w.route || ex.Decision != w.decision {
				t.Fatalf("route %q decision %q, want %q %q\n%s", gotRoute, ex.Decision, w.route, w.decision, out)
			}
			gotStatus := 0
			if ex.Status != nil {
				gotStatus = *ex.Status
			}
			if gotStatus != w.status {
				t.Errorf("status %d, want %d\n%s", gotStatus, w.status, out)
			}
			gotUpstream := ""
			if ex.Upstream != nil {
				gotUpstream = ex.Upstream.Method + " " + ex.Upstream.URL
			}
			if gotUpstream != w.upstream {
				t.Errorf("upstream %q, want %q", gotUpstream, w.upstream)
			}
			if w.subject != "" {
				if ex.Principal == nil || ex.Principal.Subject != w.subject || ex.Principal.Type != "service" || ex.Principal.Method != "static" {
					t.Errorf("principal %+v, want %s (service, static)", ex.Principal, w.subject)
				}
			} else if w.decision == "proxy" && ex.Principal != nil && tc.headers == nil {
				t.Errorf("principal %+v, want none", ex.Principal)
			}
			for _, c := range []struct {
				name      string
				got, want []string
			}{{"forwarded", ex.RequestHeaders.Forwarded, w.forwarded}, {"dropped", ex.RequestHeaders.Dropped, w.dropped}, {"injected", ex.RequestHeaders.Injected, w.injected}} {
				if c.want != nil && !slices.Equal(c.got, c.want) {
					t.Errorf("%s headers %v, want %v", c.name, c.got, c.want)
				}
			}
			if !strings.Contains(ex.Reason, w.reason) || ex.Reason == "" {
				t.Errorf("reason %q, want it to say %q", ex.Reason, w.reason)
			}
			for _, secret := range []string{explainSecret, testStaticToken, "wrong-token-value", "from-client", "t1"} {
				if strings.Contains(out, secret) {
					t.Errorf("output shows the value %q:\n%s", secret, out)
				}
			}
		})
	}
}

func TestExplainResponseHeadersAllowed(t *testing.T) {
	skipIfShort(t)
	config := writeExplainConfig(t, "http://127.0.0.1:1")
	ex, _ := explainJSON(t, config, []string{bearerStatic}, "GET", "/api/proxy/secret/x")
	if !slices.Contains(ex.ResponseHeaders.Allowed, "x-trace") || !slices.Contains(ex.ResponseHeaders.Allowed, "content-type") ||
		slices.Contains(ex.ResponseHeaders.Allowed, "set-cookie") {
		t.Errorf("response headers allowed %v: want x-trace and content-type, not set-cookie", ex.ResponseHeaders.Allowed)
	}
}

func TestExplainCommandText(t *testing.T) {
	skipIfShort(t)
	config := writeExplainConfig(t, "http://127.0.0.1:1")
	out, err := runExplainCLI(t, "--config", config, "--header", bearerStatic, "--header", "X-Trace: t1", "GET", "/api/proxy/secret/items?a=b")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"Route:      /secret\n",
		"Decision:   proxy\n",
		"Principal:  ci-bot (service, verified by static)\n",
		"Upstream:   GET http://127.0.0.1:1/v1/items?a=b\n",
		"  forwarded: x-trace\n",
		"  dropped:   authorization\n",
		"  injected:  x-api-key\n",
		"Reason:     Route /secret",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, explainSecret) || strings.Contains(out, testStaticToken) {
		t.Errorf("text output shows a secret:\n%s", out)
	}

	out, err = runExplainCLI(t, "--config", config, "GET", "/api/proxy/catalog/x")
	if err != nil || !strings.Contains(out, "Decision:   deny (401 Unauthorized)\n") || !strings.Contains(out, "Upstream:   (not sent)\n") {
		t.Errorf("denied request: %v\n%s", err, out)
	}
}

func TestExplainCommandErrors(t *testing.T) {
	config := writeExplainConfig(t, "http://127.0.0.1:1")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no config", []string{"GET", "/x"}, "--config is required"},
		{"one argument", []string{"--config", config, "GET"}, "accepts 2 arg(s)"},
		{"bad header", []string{"--config", config, "--header", "Bearer " + testStaticToken, "GET", "/x"}, "--header wants 'Name: value'"},
		{"not a URL", []string{"--config", config, "GET", "api/proxy/open"}, "want an absolute URL or a path starting with /"},
		{"missing file", []string{"--config", filepath.Join(t.TempDir(), "none.yaml"), "GET", "/x"}, "none.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runExplainCLI(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(out+errString(err), testStaticToken) {
				t.Errorf("the token is shown: %v %s", err, out)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// postExplain asks the running test Caddy's admin API to explain.
func postExplain(t *testing.T, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	res, err := http.Post(testAdmin+"/backstage/explain", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, out
}

// TestExplainSharedDecision sends each request to the running test Caddy
// and to explain (the command on the same file, and the admin endpoint on
// the live config): route, decision, status and upstream URL must agree.
func TestExplainSharedDecision(t *testing.T) {
	skipIfShort(t)
	up := newExplainUpstream(t)
	config := writeExplainConfig(t, up.URL)
	loadTestCaddy(t, explainConfigYAML(up.URL), "backstage")

	client := &http.Client{CheckRedirect: dontFollowRedirects}
	for _, tc := range []struct {
		method, path string
		headers      map[string]string
	}{
		{"GET", "/api/proxy/open/a?b=1", nil},
		{"GET", "/api/proxy/OPEN/a", nil},
		{"GET", "/api/proxy/catalog/entities", nil},
		{"GET", "/api/proxy/catalog/entities?kind=x", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/catalog", map[string]string{"Authorization": "Bearer nope"}},
		{"PUT", "/api/proxy/fwd/x", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"POST", "/api/proxy/ro/rw/x", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/ro/rw/x", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"POST", "/api/proxy/ro/x", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/nothing", nil},
		{"GET", "/api/proxy/nothing", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/catalogue", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/op%65n/x", nil},
		{"GET", "/api/proxy/open/../catalog/x", nil},
		{"GET", "/api/proxy/open/%2e%2e/catalog/x", nil},
		{"GET", "/api/proxy/rewrite/old/x?q=1", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/rewrite/other?q=%20", map[string]string{"Authorization": "Bearer " + testStaticToken}},
		{"GET", "/api/proxy/secret/items", map[string]string{"Authorization": "Bearer " + testStaticToken, "X-Api-Key": "client"}},
		{"GET", "/api/proxy/.backstage/auth/v1/jwks.json", nil},
		{"GET", "/elsewhere", nil},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			// the server
			up.reset()
			req, err := http.NewRequest(tc.method, "http://"+testListen+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.URL.Opaque, _, _ = strings.Cut(tc.path, "?") // as written: no cleaning, no re-encoding
			req.Host = testClientHost
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			seen := up.take()
			serverDecision, serverUpstream := "deny", ""
			if len(seen) == 1 {
				serverDecision, serverUpstream = "proxy", seen[0]
			} else if len(seen) > 1 {
				t.Fatalf("upstream got %d requests", len(seen))
			}

			// the command, on the same config file
			cliHeaders := []string{"Host: " + testClientHost}
			adminHeaders := map[string]string{"Host": testClientHost}
			for k, v := range tc.headers {
				cliHeaders = append(cliHeaders, k+": "+v)
				adminHeaders[k] = v
			}
			cli, _ := explainJSON(t, config, cliHeaders, tc.method, tc.path)

			// the admin endpoint, on the live config
			status, body := postExplain(t, map[string]any{"method": tc.method, "url": tc.path, "headers": adminHeaders})
			if status != http.StatusOK {
				t.Fatalf("admin endpoint: %d %s", status, body)
			}
			var live explanation
			if err := json.Unmarshal(body, &live); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(body), testStaticToken) {
				t.Errorf("admin endpoint shows the token: %s", body)
			}

			for _, ex := range []struct {
				name string
				ex   explanation
			}{{"command", cli}, {"admin endpoint", live}} {
				if ex.ex.Decision != serverDecision && !(ex.ex.Decision == "respond" && res.StatusCode < 400) {
					t.Errorf("%s: decision %s, server: %s (%d)", ex.name, ex.ex.Decision, serverDecision, res.StatusCode)
				}
				gotUpstream := ""
				if ex.ex.Upstream != nil {
					gotUpstream = ex.ex.Upstream.Method + " " + ex.ex.Upstream.URL
				}
				if gotUpstream != serverUpstream {
					t.Errorf("%s: upstream %q, server sent %q", ex.name, gotUpstream, serverUpstream)
				}
				if serverDecision == "deny" && (ex.ex.Status == nil || *ex.ex.Status != res.StatusCode) {
					t.Errorf("%s: status %v, server answered %d", ex.name, ex.ex.Status, res.StatusCode)
				}
				if serverDecision == "proxy" && ex.ex.Status != nil {
					t.Errorf("%s: status %d on a proxied request, want null", ex.name, *ex.ex.Status)
				}
			}
			if (cli.Route == nil) != (live.Route == nil) || (cli.Route != nil && *cli.Route != *live.Route) || cli.Reason != live.Reason {
				t.Errorf("command and admin endpoint disagree:\n%+v\n%+v", cli, live)
			}
		})
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("explain sent %d requests upstream", n)
	}
}

func TestExplainAdminEndpoint(t *testing.T) {
	skipIfShort(t)
	up := newExplainUpstream(t)
	t.Setenv("EXPLAIN_TEST_SECRET", explainSecret)
	loadTestCaddy(t, explainConfigYAML(up.URL), "backstage")

	status, body := postExplain(t, map[string]any{
		"method":  "GET",
		"url":     "/api/proxy/secret/items?x=1",
		"headers": map[string]any{"Authorization": "Bearer " + testStaticToken, "X-Trace": []string{"a", "b"}},
	})
	if status != http.StatusOK {
		t.Fatalf("%d %s", status, body)
	}
	var ex explanation
	if err := json.Unmarshal(body, &ex); err != nil {
		t.Fatal(err)
	}
	if ex.Route == nil || *ex.Route != "/secret" || ex.Decision != "proxy" || ex.Upstream == nil || ex.Upstream.URL != up.URL+"/v1/items?x=1" ||
		!slices.Equal(ex.RequestHeaders.Injected, []string{"x-api-key"}) || !slices.Equal(ex.RequestHeaders.Forwarded, []string{"x-trace"}) {
		t.Errorf("got %s", body)
	}
	for _, secret := range []string{explainSecret, testStaticToken} {
		if strings.Contains(string(body), secret) {
			t.Errorf("the answer shows %q: %s", secret, body)
		}
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("explain sent %d requests upstream", n)
	}
	// An explanation is not a request: the metrics do not count it.
	expectSeries(t, scrapeMetrics(t), map[string]float64{requestsSeries("/secret", "proxied"): 0})

	for _, tc := range []struct {
		name   string
		method string
		body   string
		status int
	}{
		{"GET", http.MethodGet, "", http.StatusMethodNotAllowed},
		{"not JSON", http.MethodPost, "{", http.StatusBadRequest},
		{"header value not a string", http.MethodPost, `{"method":"GET","url":"/","headers":{"Authorization":1}}`, http.StatusBadRequest},
		{"bad URL", http.MethodPost, `{"method":"GET","url":"x y"}`, http.StatusUnprocessableEntity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, testAdmin+"/backstage/explain", strings.NewReader(tc.body))
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.status {
				t.Errorf("status %d, want %d", res.StatusCode, tc.status)
			}
		})
	}
}

// TestExplainAdminRefusesForeignTransport: on a live server whose
// reverse_proxy has Caddy's own http transport, explaining would send the
// request; the admin endpoint refuses instead.
func TestExplainAdminRefusesForeignTransport(t *testing.T) {
	skipIfShort(t)
	up := newExplainUpstream(t)
	loadTestCaddy(t, `{
	"admin": {"listen": "localhost:2999"},
	"apps": {"http": {"servers": {"s": {"listen": [":9080"], "routes": [
		{"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "`+strings.TrimPrefix(up.URL, "http://")+`"}]}]}
	]}}}}
}`, "json")
	status, body := postExplain(t, map[string]any{"method": "GET", "url": "/x"})
	if status != http.StatusUnprocessableEntity || !strings.Contains(string(body), "transport is not backstage_http") {
		t.Errorf("%d %s", status, body)
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("explain sent %d requests upstream", n)
	}
}

// TestExplainCommandSealsForeignTransport: the command explains a
// hand-written reverse_proxy with Caddy's http transport and active health
// checks without sending anything.
func TestExplainCommandSealsForeignTransport(t *testing.T) {
	up := newExplainUpstream(t)
	path := filepath.Join(t.TempDir(), "caddy.json")
	cfg := `{"apps": {"http": {"servers": {"s": {"listen": [":1"], "routes": [
		{"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "` + strings.TrimPrefix(up.URL, "http://") + `"}],
			"health_checks": {"active": {"uri": "/health", "interval": "10ms"}}}]}
	]}}}}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ex, out := explainJSON(t, path, nil, "GET", "/x?y=1")
	if ex.Decision != "proxy" || ex.Upstream == nil || ex.Upstream.URL != up.URL+"/x?y=1" || ex.Route != nil {
		t.Errorf("got %s", out)
	}
	time.Sleep(50 * time.Millisecond) // time for health checks, if any had started
	if n := len(up.requests()); n != 0 {
		t.Errorf("explain sent %d requests upstream", n)
	}
}

// TestExplainUserToken: a user token is verified against its key set, over
// the network, as the server does; a token signed by another key is not.
func TestExplainUserToken(t *testing.T) {
	clk := useFakeClock(t)
	key, other := testkit.NewECKey(t, "user-key"), testkit.NewECKey(t, "other-key")
	users := testkit.NewJWKSServer(t, key)
	path := filepath.Join(t.TempDir(), "caddy.json")
	cfg := `{"apps": {
	"backstage": {"user_tokens": {"jwks_url": "` + users.KeySetURL() + `"}},
	"http": {"servers": {"s": {"listen": [":1"],
		"routes": [{"match": [{"backstage_route": {"paths": ["/api/proxy/u"]}}], "terminal": true, "handle": [
			{"handler": "backstage_proxy", "route": "/u", "rewrite": {"strip_prefix": "/api/proxy/u", "target_path": "/t"}},
			{"handler": "reverse_proxy", "transport": {"protocol": "backstage_http"}, "upstreams": [{"dial": "127.0.0.1:1"}]}]}],
		"errors": {"routes": [{"handle": [{"handler": "backstage_error"}]}]}}}}}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	good, forged := userToken(t, clk, key, "user:default/jane"), userToken(t, clk, other, "user:default/jane")

	ex, out := explainJSON(t, path, []string{"Authorization: Bearer " + good}, "GET", "/api/proxy/u/x")
	if ex.Decision != "proxy" || ex.Principal == nil || *ex.Principal != (explainedPrincipal{"user:default/jane", "user", "user"}) ||
		ex.Upstream == nil || ex.Upstream.URL != "http://127.0.0.1:1/t/x" {
		t.Errorf("valid user token: %s", out)
	}
	if len(users.RequestPaths()) == 0 {
		t.Error("the key set was not fetched")
	}
	ex, out = explainJSON(t, path, []string{"Authorization: Bearer " + forged}, "GET", "/api/proxy/u/x")
	if ex.Decision != "deny" || ex.Status == nil || *ex.Status != http.StatusUnauthorized || ex.Principal != nil {
		t.Errorf("token from another key: %s", out)
	}
	for _, tok := range []string{good, forged} {
		if strings.Contains(out, tok) {
			t.Error("the output shows the token")
		}
	}
}

// TestExplainAdminRateLimited: on the live config, a caller whose budget is
// spent is explained as the server would answer it, 429.
func TestExplainAdminRateLimited(t *testing.T) {
	skipIfShort(t)
	up := newExplainUpstream(t)
	// Budgets outlive a reload that keeps the route, and the command tests
	// provision (in this process) a /limited of their own: a route key of
	// this run's own.
	route := fmt.Sprintf("/limited-%d", time.Now().UnixNano())
	loadTestCaddy(t, staticTokenConfig(testStaticToken, "ci-bot", `    `+route+`:
      target: `+up.URL+`/l
      caddy: {rateLimit: {requests: 1, window: 1h}}
`), "backstage")
	req, _ := http.NewRequest(http.MethodGet, "http://"+testListen+"/api/proxy"+route+"/a", nil)
	req.Host = testClientHost
	req.Header.Set("Authorization", "Bearer "+testStaticToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("first request: status %d", res.StatusCode)
	}
	status, body := postExplain(t, map[string]any{
		"method":  "GET",
		"url":     "/api/proxy" + route + "/b",
		"headers": map[string]any{"Authorization": "Bearer " + testStaticToken},
	})
	if status != http.StatusOK {
		t.Fatalf("%d %s", status, body)
	}
	var ex explanation
	if err := json.Unmarshal(body, &ex); err != nil {
		t.Fatal(err)
	}
	if ex.Route == nil || *ex.Route != route || ex.Decision != "deny" || ex.Status == nil || *ex.Status != http.StatusTooManyRequests ||
		ex.Upstream != nil || ex.Principal == nil || ex.Principal.Subject != "ci-bot" {
		t.Errorf("got %s", body)
	}
	if n := len(up.requests()); n != 1 {
		t.Errorf("the upstream got %d requests, want the first one only", n)
	}
}

// TestExplainCommandWithoutOutsideEffects: the command's copy of the config
// starts no active health check and shares no rate-limit counts.
func TestExplainCommandWithoutOutsideEffects(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"nothing to remove", `{"apps":{"backstage":{}}}`, `{"apps":{"backstage":{}}}`},
		{"not an object", `null`, `null`},
		{"distributed rate limits",
			`{"apps":{"backstage":{"rate_limit":{"distributed":{"read_interval":1000000000}}}}}`,
			`{"apps":{"backstage":{"rate_limit":{}}}}`},
		{"active health checks",
			`{"apps":{"http":{"servers":{"s":{"routes":[{"handle":[{"handler":"reverse_proxy","health_checks":{"active":{"uri":"/h"},"passive":{"max_fails":2}}}]}]}}}}}`,
			`{"apps":{"http":{"servers":{"s":{"routes":[{"handle":[{"handler":"reverse_proxy","health_checks":{"passive":{"max_fails":2}}}]}]}}}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := withoutOutsideEffects([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestMaskCredentialQuery(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"a=1&b=2", "a=1&b=2"},
		{"api_key=s3cr3t&v=2", "api_key=…&v=2"},
		{"v=2&access_token=x&Token=y", "v=2&access_token=…&Token=…"},
		{"api%5Fkey=s3cr3t", "api%5Fkey=…"},
		{"flag&password", "flag&password"},
		{"sig=%2F", "sig=%2F"},
	} {
		if got := maskCredentialQuery(c.in); got != c.want {
			t.Errorf("maskCredentialQuery(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
