package backstageproxy

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// lintSecret is the value of the environment variable the integration
// configs inject; it must appear in no log line, error or output.
const lintSecret = "lint-secret-4b1d9c7e"

// lintLogLines reads the JSON log lines of file, keeping those whose msg is
// one of msgs.
func lintLogLines(t *testing.T, file string, msgs ...string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), lintSecret) {
		t.Errorf("the log contains the injected secret")
	}
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		if msg, _ := line["msg"].(string); slices.Contains(msgs, msg) {
			out = append(out, line)
		}
	}
	return out
}

// lintStrings reads a log field that holds a list of strings.
func lintStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, s := range list {
		str, _ := s.(string)
		out = append(out, str)
	}
	return out
}

// TestLintIntegration runs the secure-route lint and the startup route
// table through the real Caddy: a refused config (as `caddy run` and as
// POST /load see it), an acknowledged one serving anonymous callers with the
// injected credential, the warnings it loads with, and the route table
// logged once per load, with names and never values.
func TestLintIntegration(t *testing.T) {
	skipIfShort(t)
	t.Setenv("LINT_INTEGRATION_KEY", lintSecret)
	var seen http.Header
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.WriteHeader(http.StatusNoContent)
	}))
	secLoad(t, staticTokenConfig(testStaticToken, "ci-lint", "    /x: http://127.0.0.1:1\n"))
	defer secLoad(t, staticTokenConfig(testStaticToken, "ci-lint", "    /x: http://127.0.0.1:1\n"))

	// lintConfigTail follows the caddy: key of the configs below.
	const lintConfigTail = `backend:
  baseUrl: http://localhost:7007
  listen: {port: 9080}
proxy:
`
	const refused = `caddy:
  admin: localhost:2999
` + lintConfigTail + `  endpoints:
    /feed:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      allowedMethods: [GET]
      headers:
        X-Api-Key: ${LINT_INTEGRATION_KEY}
`
	t.Run("refused: caddy run", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "app-config.yaml")
		if err := os.WriteFile(file, []byte(strings.ReplaceAll(refused, "@U@", up.URL)), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, _, err := caddycmd.LoadConfig(file, "backstage")
		if err == nil {
			t.Fatal("loaded")
		}
		for _, want := range []string{file + ":12: ", "proxy route /feed injects a credential (header X-Api-Key)",
			"add caddy.acknowledgeRisk: <reason> to the endpoint"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if strings.Contains(err.Error(), lintSecret) {
			t.Error("the error contains the secret")
		}
	})
	t.Run("refused: POST /load, the running config stays", func(t *testing.T) {
		status, body := adiPostLoad(t, strings.ReplaceAll(refused, "@U@", up.URL), "text/backstage")
		if status < 400 || !strings.Contains(body, "request body:12: proxy route /feed injects a credential") {
			t.Errorf("POST /load: %d %s", status, body)
		}
		if res := adiDo(t, "GET", "/api/proxy/feed/a", ""); res.Status != http.StatusUnauthorized {
			t.Errorf("GET /feed after the refused load: %d", res.Status)
		}
	})

	t.Run("acknowledged, with every warning kind, and the route table", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "caddy.log")
		cfg := strings.NewReplacer("@U@", up.URL, "@LOG@", logFile).Replace(`caddy:
  admin: localhost:2999
  json:
    logging:
      logs:
        default: {level: INFO, writer: {output: file, filename: "@LOG@"}}
` + lintConfigTail + `  endpoints:
    /feed:
      target: @U@/v1?q=1
      credentials: dangerously-allow-unauthenticated
      ws: true
      headers:
        X-Api-Key: ${LINT_INTEGRATION_KEY}
      caddy:
        acknowledgeRisk: the feed key is read-only
    /peek:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      allowedHeaders: [Authorization]
    /tls:
      target: https://127.0.0.1:1
      secure: false
    /regional:
      target: @U@
      allowedMethods: [GET]
      headers:
        Authorization: Bearer ${LINT_INTEGRATION_KEY}
      router:
        /api/proxy/regional/eu: @U@/eu
`)
		status, body := adiPostLoad(t, cfg, "text/backstage")
		if status != http.StatusOK {
			t.Fatalf("POST /load: %d %s", status, body)
		}
		var res struct {
			Warnings []struct {
				Line    int    `json:"line"`
				Message string `json:"message"`
			} `json:"warnings"`
		}
		if err := json.Unmarshal([]byte(body), &res); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		for _, want := range []string{
			`19: proxy route /feed injects a credential (header X-Api-Key) that anonymous callers can use (credentials: dangerously-allow-unauthenticated); risk acknowledged: "the feed key is read-only"`,
			`16: proxy route /feed injects a credential (header X-Api-Key) for every method, writes included`,
			`15: proxy route /feed lets anonymous callers open WebSocket connections (ws: true)`,
			`23: proxy route /peek lets anonymous callers in (credentials: dangerously-allow-unauthenticated) and has Authorization in allowedHeaders`,
			`26: proxy route /tls: TLS certificate verification of 127.0.0.1:1 is off (secure: false)`,
		} {
			found := false
			for _, w := range res.Warnings {
				found = found || strings.HasPrefix(strconv.Itoa(w.Line)+": "+w.Message, want)
			}
			if !found {
				t.Errorf("no warning %q in %s", want, body)
			}
		}
		if strings.Contains(body, lintSecret) {
			t.Error("the load response contains the secret")
		}

		// The acknowledged route serves anonymous callers, with the key.
		if r := adiDo(t, "GET", "/api/proxy/feed/a", ""); r.Status != http.StatusNoContent || seen.Get("X-Api-Key") != lintSecret {
			t.Errorf("anonymous GET /feed: %d, upstream key %q", r.Status, seen.Get("X-Api-Key"))
		}

		// One line per endpoint (the /regional route has two
		// backstage_proxy handlers), one anonymous warning, names only.
		lines := lintLogLines(t, logFile, "proxy route", "proxy routes anonymous callers can reach")
		var routes []string
		byRoute := map[string]map[string]any{}
		var anonymous []map[string]any
		for _, l := range lines {
			if l["msg"] == "proxy route" {
				r, _ := l["route"].(string)
				routes = append(routes, r)
				byRoute[r] = l
			} else {
				anonymous = append(anonymous, l)
			}
		}
		if want := []string{"/feed", "/peek", "/tls", "/regional"}; !slices.Equal(routes, want) {
			t.Fatalf("route lines for %v, want %v (once per load)", routes, want)
		}
		feed := byRoute["/feed"]
		if feed["level"] != "info" || feed["credentials"] != CredentialsDangerouslyAllowUnauthenticated || feed["anonymous"] != true ||
			feed["target"] != up.URL || feed["ws"] != true || feed["acknowledge_risk"] != "the feed key is read-only" ||
			!slices.Equal(lintStrings(feed["injected_headers"]), []string{"X-Api-Key"}) ||
			!slices.Equal(lintStrings(feed["flags"]), []string{lintFlagAcknowledged, lintFlagAnyMethod, lintFlagAnonymousWebSocket}) {
			t.Errorf("/feed line %v", feed)
		}
		for route, flags := range map[string][]string{
			"/peek": {lintFlagAuthorizationUpstream}, "/tls": {lintFlagTLSUnverified}, "/regional": nil,
		} {
			if got := lintStrings(byRoute[route]["flags"]); !slices.Equal(got, flags) {
				t.Errorf("%s flags %v, want %v", route, got, flags)
			}
		}
		if got := lintStrings(byRoute["/regional"]["methods"]); !slices.Equal(got, []string{"GET"}) {
			t.Errorf("/regional methods %v", got)
		}
		if len(anonymous) != 1 || anonymous[0]["level"] != "warn" || !slices.Equal(lintStrings(anonymous[0]["routes"]), []string{"/feed", "/peek"}) {
			t.Errorf("anonymous-route warnings %v", anonymous)
		}
	})

	t.Run("Caddyfile: refused, then acknowledged", func(t *testing.T) {
		// The Caddyfile adapter runs in the server, and its warnings go to
		// the running config's default log: a file, here.
		logFile := filepath.Join(t.TempDir(), "caddy.log")
		logging := strings.ReplaceAll(`{"admin": {"listen": "localhost:2999"}, "logging": {"logs": {"default": {"level": "INFO", "writer": {"output": "file", "filename": "@LOG@"}}}}}`, "@LOG@", logFile)
		if status, body := adiPostLoad(t, logging, "application/json"); status != http.StatusOK {
			t.Fatalf("POST /load: %d %s", status, body)
		}
		cfg := strings.NewReplacer("@U@", up.URL, "@PORT@", testListenPort).Replace(`{
	admin localhost:2999
}
:@PORT@ {
	backstage_proxy {
		endpoint /feed @U@ {
			credentials dangerously-allow-unauthenticated
			upstream_header X-Api-Key {env.LINT_INTEGRATION_KEY}
			@ACK@
		}
	}
}
`)
		status, body := adiPostLoad(t, strings.Replace(cfg, "@ACK@", "", 1), "text/caddyfile")
		if status < 400 || !strings.Contains(body, "proxy route /feed injects a credential (header X-Api-Key)") ||
			!strings.Contains(body, "add acknowledge_risk") || !strings.Contains(body, "at Caddyfile:6") {
			t.Errorf("POST /load: %d %s", status, body)
		}
		status, body = adiPostLoad(t, strings.Replace(cfg, "@ACK@", "acknowledge_risk the feed key is read-only", 1), "text/caddyfile")
		if status != http.StatusOK {
			t.Fatalf("POST /load: %d %s", status, body)
		}
		if r := adiDo(t, "GET", "/api/proxy/feed/a", ""); r.Status != http.StatusNoContent || seen.Get("X-Api-Key") != lintSecret {
			t.Errorf("anonymous GET /feed: %d, upstream key %q", r.Status, seen.Get("X-Api-Key"))
		}
		warned := lintLogLines(t, logFile, "proxy route /feed injects a credential (header X-Api-Key) that anonymous callers can use (credentials dangerously-allow-unauthenticated); risk acknowledged: \"the feed key is read-only\"",
			"proxy route /feed injects a credential (header X-Api-Key) for every method, writes included: set allowed_methods to the methods the route needs")
		if len(warned) != 2 || warned[0]["level"] != "warn" || warned[0]["line"] != 6.0 || !strings.HasSuffix(warned[0]["file"].(string), "Caddyfile") {
			t.Errorf("Caddyfile warnings %v", warned)
		}
	})

	t.Run("hand-written JSON is not refused, but logged", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "caddy.log")
		cfg := strings.NewReplacer("@U@", strings.TrimPrefix(up.URL, "http://"), "@LOG@", logFile).Replace(`{
 "admin": {"listen": "localhost:2999"},
 "logging": {"logs": {"default": {"level": "INFO", "writer": {"output": "file", "filename": "@LOG@"}}}},
 "apps": {"backstage": {}, "http": {"servers": {"s": {"listen": [":9080"], "automatic_https": {"disable": true}, "routes": [
  {"match": [{"backstage_route": {"paths": ["/api/proxy"]}}], "handle": [{"handler": "backstage_dispatch", "routes": [
   {"match": [{"backstage_route": {"paths": ["/api/proxy/raw"]}}], "handle": [
    {"handler": "backstage_proxy", "route": "/raw", "credentials": "dangerously-allow-unauthenticated"},
    {"handler": "reverse_proxy", "upstreams": [{"dial": "@U@"}],
     "transport": {"protocol": "backstage_http", "set_headers": {"X-Api-Key": ["{env.LINT_INTEGRATION_KEY}"]}}}]}]}]}]}}}}}`)
		if status, body := adiPostLoad(t, cfg, "application/json"); status != http.StatusOK {
			t.Fatalf("POST /load: %d %s", status, body)
		}
		warned := lintLogLines(t, logFile, "proxy route /raw injects a credential (header X-Api-Key) and lets anonymous callers in (\"credentials\": \"dangerously-allow-unauthenticated\"), so anyone who reaches the proxy can use it: require a Backstage token (remove \"credentials\": \"dangerously-allow-unauthenticated\"), or, if that is intended, add \"acknowledge_risk\": \"<reason>\" to the endpoint")
		if len(warned) != 1 || warned[0]["level"] != "warn" {
			t.Errorf("the unacknowledged anonymous credential route was not warned about once: %v", warned)
		}
		line := lintLogLines(t, logFile, "proxy route")
		if len(line) != 1 || !slices.Equal(lintStrings(line[0]["flags"]), []string{lintFlagAnonymousCredential, lintFlagAnyMethod}) {
			t.Errorf("route lines %v", line)
		}
	})
}
