package backstageproxy

// Integration tests of the config adapter through a real Caddy: HPM options,
// backend.cors, backend.https, caddy.backend, config reload (divergence D7)
// and the CLI form with real files (multi-file merge, $include).
//
// caddytest runs one Caddy per test binary (ports reserved per test binary;
// the configs' fixed addresses are replaced by withTestPorts), shared with
// caddy_test.go: no t.Parallel, skipped with -short.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// adiSeen is one request the upstream received.
type adiSeen struct {
	Method string      `json:"method"`
	URI    string      `json:"uri"`
	Host   string      `json:"host"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// adiUpstream records requests and answers by the last path segment:
//
//	redirect        302 → <U>/new-place?x=1
//	redirect-rel    302 → /new-place?x=1
//	redirect-other  302 → http://other.invalid/x
//	see-other       303 → <U>/new-place
//	temp-redirect   307 → <U>/echo-body
//	loop            302 → <U>/loop
//	created         201 → <U>/item/1
//
// and otherwise 200 with a JSON echo of the request. Every answer carries the
// conformance cases' Set-Cookie pair, Access-Control-Allow-Origin: * and a
// Location of <U>/loc.
type adiUpstream struct {
	recordingUpstream[adiSeen]
}

func adiNewUpstream(t *testing.T) *adiUpstream {
	t.Helper()
	u := &adiUpstream{}
	u.Server = httptest.NewServer(u)
	t.Cleanup(u.Close)
	return u
}

func (u *adiUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s := adiSeen{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(), Body: string(body)}
	u.record(s)

	h := w.Header()
	h.Add("Set-Cookie", "a=b; Domain=localhost; Path=/")
	h.Add("Set-Cookie", "c=d; Domain=upstream.example.com; Path=/x")
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Location", u.URL+"/loc")
	h.Set("Content-Type", "application/json")
	status := http.StatusOK
	switch r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:] {
	case "redirect":
		status = http.StatusFound
		h.Set("Location", u.URL+"/new-place?x=1")
	case "redirect-rel":
		status = http.StatusFound
		h.Set("Location", "/new-place?x=1")
	case "redirect-other":
		status = http.StatusFound
		h.Set("Location", "http://other.invalid/x")
	case "see-other":
		status = http.StatusSeeOther
		h.Set("Location", u.URL+"/new-place")
	case "temp-redirect":
		status = http.StatusTemporaryRedirect
		h.Set("Location", u.URL+"/echo-body")
	case "loop":
		status = http.StatusFound
		h.Set("Location", u.URL+"/loop")
	case "created":
		status = http.StatusCreated
		h.Set("Location", u.URL+"/item/1")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(s)
}

func (u *adiUpstream) uris() []string {
	var out []string
	for _, s := range u.take() {
		out = append(out, s.Method+" "+s.URI)
	}
	return out
}

// adiLoad loads an app-config.yaml into the test Caddy through the admin API
// (POST /load, Content-Type text/backstage), with @U@, @U2@... replaced.
func adiLoad(t *testing.T, config string, replace ...string) {
	t.Helper()
	skipIfShort(t)
	loadTestCaddy(t, strings.NewReplacer(replace...).Replace(config), "backstage")
}

// adiResponse is what a client got.
type adiResponse struct {
	Status int
	Header http.Header
	Body   string
}

// adiDo sends a request to the test Caddy with Host localhost:7007 (unless
// given), never following redirects.
func adiDo(t *testing.T, method, path string, body string, headers ...string) adiResponse {
	t.Helper()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+testClientHost+path, rb)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Add(headers[i], headers[i+1])
	}
	res, err := ciClient().Do(req) // dials the test Caddy's listener
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return adiResponse{Status: res.StatusCode, Header: res.Header, Body: string(b)}
}

// adiPostLoad POSTs a config to the admin API's /load.
func adiPostLoad(t *testing.T, body, contentType string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, testAdmin+"/load", strings.NewReader(withTestPorts(body)))
	req.Header.Set("Content-Type", contentType)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func adiExpect(t *testing.T, what string, got, want any) {
	t.Helper()
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if !bytes.Equal(gj, wj) {
		t.Errorf("%s = %s, want %s", what, gj, wj)
	}
}

const adiBase = `
caddy:
  admin: localhost:2999
backend:
  baseUrl: http://localhost:7007
  listen: {host: 127.0.0.1, port: 9080}
  auth:
    externalAccess:
      - type: static
        options: {token: static-token-123, subject: static-subject}
`

// ---------------------------------------------------------------------------
// http-proxy-middleware options, which Backstage's
// plugins/proxy-backend/src/service/router.ts passes through as written:
// autoRewrite, hostRewrite/protocolRewrite, cookieDomainRewrite, followRedirects
// (conformance 41–43, 66).

func TestAdapterIntegrationHPMOptions(t *testing.T) {
	u := adiNewUpstream(t)
	u2 := adiNewUpstream(t)
	t.Setenv("AI_PROXY_PASSWORD", "s3cr3t pass")
	adiLoad(t, adiBase+`
proxy:
  endpoints:
    /open: {target: @U@, credentials: dangerously-allow-unauthenticated}
    /follow:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      followRedirects: true
    /autorewrite:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      autoRewrite: true
      allowedHeaders: [Location]
    /hostrw:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      hostRewrite: public.example.com
      protocolRewrite: https
      allowedHeaders: [Location]
    /cookiedomain:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      cookieDomainRewrite: cookies.example.com
      allowedHeaders: [Set-Cookie]
    /cookiepath:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      cookiePathRewrite: {/x: /api/proxy/cookiepath/x}
      cookieDomainRewrite: {localhost: ''}
      allowedHeaders: [Set-Cookie]
    /router:
      target: @U@/default
      credentials: dangerously-allow-unauthenticated
      router:
        /api/proxy/router/special: @U2@/special
        router.example.com: @U2@/byhost
    /basic:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      auth: admin:${AI_PROXY_PASSWORD}
      caddy: {acknowledgeRisk: a test of anonymous header injection}
    /basic-forward:
      target: @U@
      credentials: forward
      auth: admin:${AI_PROXY_PASSWORD}
`, "@U@", u.URL, "@U2@", u2.URL)

	t.Run("66 followRedirects follows same-host redirects", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/follow/redirect", "")
		adiExpect(t, "status", res.Status, 200)
		adiExpect(t, "upstream", u.uris(), []string{"GET /redirect", "GET /new-place?x=1"})
		res = adiDo(t, "GET", "/api/proxy/follow/redirect-rel", "")
		adiExpect(t, "status (relative Location)", res.Status, 200)
		adiExpect(t, "upstream (relative Location)", u.uris(), []string{"GET /redirect-rel", "GET /new-place?x=1"})
	})
	t.Run("followRedirects: 303 turns POST into GET without body", func(t *testing.T) {
		res := adiDo(t, "POST", "/api/proxy/follow/see-other", "payload", "Content-Type", "text/plain")
		adiExpect(t, "status", res.Status, 200)
		seen := u.take()
		if len(seen) != 2 || seen[1].Method != "GET" || seen[1].URI != "/new-place" || seen[1].Body != "" || seen[1].Header.Get("Content-Type") != "" {
			t.Errorf("upstream saw %+v", seen)
		}
	})
	t.Run("followRedirects: 307 repeats the method and body", func(t *testing.T) {
		res := adiDo(t, "POST", "/api/proxy/follow/temp-redirect", "payload")
		adiExpect(t, "status", res.Status, 200)
		seen := u.take()
		if len(seen) != 2 || seen[1].Method != "POST" || seen[1].URI != "/echo-body" || seen[1].Body != "payload" {
			t.Errorf("upstream saw %+v", seen)
		}
	})
	t.Run("followRedirects: other hosts are not followed", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/follow/redirect-other", "")
		adiExpect(t, "status", res.Status, 302)
		adiExpect(t, "Location (not allowed)", res.Header.Values("Location"), []string(nil))
		adiExpect(t, "upstream", u.uris(), []string{"GET /redirect-other"})
	})
	t.Run("followRedirects: a loop ends with an upstream error", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/follow/loop", "")
		adiExpect(t, "status", res.Status, 502)
		if n := len(u.take()); n != defaultMaxRedirects+1 {
			t.Errorf("upstream saw %d requests, want %d", n, defaultMaxRedirects+1)
		}
	})
	t.Run("40 without followRedirects the redirect is returned, Location stripped", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/open/redirect", "")
		adiExpect(t, "status", res.Status, 302)
		adiExpect(t, "Location", res.Header.Values("Location"), []string(nil))
		u.take()
	})
	t.Run("41 autoRewrite", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/autorewrite/redirect", "")
		adiExpect(t, "status", res.Status, 302)
		adiExpect(t, "Location", res.Header.Values("Location"), []string{"http://localhost:7007/new-place?x=1"})
		res = adiDo(t, "GET", "/api/proxy/autorewrite/created", "")
		adiExpect(t, "Location of a 201", res.Header.Values("Location"), []string{"http://localhost:7007/item/1"})
		res = adiDo(t, "GET", "/api/proxy/autorewrite/x", "")
		adiExpect(t, "Location of a 200 (not rewritten)", res.Header.Values("Location"), []string{u.URL + "/loc"})
		u.take()
	})
	t.Run("42 hostRewrite + protocolRewrite", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/hostrw/redirect", "")
		adiExpect(t, "status", res.Status, 302)
		adiExpect(t, "Location", res.Header.Values("Location"), []string{"https://public.example.com/new-place?x=1"})
		u.take()
	})
	t.Run("43 cookieDomainRewrite and cookiePathRewrite", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/cookiedomain/a", "")
		adiExpect(t, "(a) Set-Cookie", res.Header.Values("Set-Cookie"), []string{
			"a=b; Domain=cookies.example.com; Path=/", "c=d; Domain=cookies.example.com; Path=/x"})
		res = adiDo(t, "GET", "/api/proxy/cookiepath/a", "")
		adiExpect(t, "(b) Set-Cookie", res.Header.Values("Set-Cookie"), []string{
			"a=b; Path=/", "c=d; Domain=upstream.example.com; Path=/api/proxy/cookiepath/x"})
		u.take()
	})
	t.Run("router", func(t *testing.T) {
		adiDo(t, "GET", "/api/proxy/router/special/x", "")
		adiExpect(t, "path entry", u2.uris(), []string{"GET /special/special/x"})
		adiDo(t, "GET", "/api/proxy/router/w", "", "Host", "router.example.com")
		seen := u2.take()
		if len(seen) != 1 || seen[0].URI != "/byhost/w" || seen[0].Host != u2.hostport() {
			t.Errorf("host entry: upstream 2 saw %+v", seen)
		}
		adiDo(t, "GET", "/api/proxy/router/z?q=1", "")
		adiExpect(t, "default", u.uris(), []string{"GET /default/z?q=1"})
		adiExpect(t, "upstream 2 (default)", u2.uris(), []string(nil))
		adiDo(t, "GET", "/api/proxy/ROUTER/special/x", "")
		adiExpect(t, "router keys are case-sensitive", u.uris(), []string{"GET /default/special/x"})
	})
	t.Run("auth sends Basic credentials; the secret stays out of the JSON", func(t *testing.T) {
		adiDo(t, "GET", "/api/proxy/basic/a", "")
		seen := u.take()
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:s3cr3t pass"))
		if len(seen) != 1 || seen[0].Header.Get("Authorization") != want {
			t.Errorf("upstream saw %+v, want Authorization %q", seen, want)
		}
		cfg := runningCaddyConfig(t)
		if strings.Contains(cfg, "s3cr3t") || !strings.Contains(cfg, "admin:{env.AI_PROXY_PASSWORD}") {
			t.Errorf("the running config must hold {env.AI_PROXY_PASSWORD}, not the secret")
		}
	})
	t.Run("auth does not replace a forwarded Authorization", func(t *testing.T) {
		adiDo(t, "GET", "/api/proxy/basic-forward/a", "", "Authorization", "Bearer static-token-123")
		seen := u.take()
		if len(seen) != 1 || !slices.Equal(seen[0].Header.Values("Authorization"), []string{"Bearer static-token-123"}) {
			t.Errorf("upstream saw %+v", seen)
		}
	})
}

// ---------------------------------------------------------------------------
// backend.cors (Backstage's readCorsOptions.ts; conformance 81).

func TestAdapterIntegrationCORS(t *testing.T) {
	u := adiNewUpstream(t)
	adiLoad(t, adiBase+`
  cors:
    origin: [http://localhost:3000, 'https://*.example.com']
    methods: [GET, HEAD, PATCH, POST, PUT, DELETE]
    credentials: true
proxy:
  endpoints:
    /open: {target: @U@, credentials: dangerously-allow-unauthenticated}
    /open-acao:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      allowedHeaders: [Access-Control-Allow-Origin]
    /req: {target: @U@}
`, "@U@", u.URL)
	origin := []string{"Origin", "http://localhost:3000"}

	t.Run("81a preflight is answered before auth", func(t *testing.T) {
		res := adiDo(t, "OPTIONS", "/api/proxy/req/a", "", append(origin, "Access-Control-Request-Method", "POST")...)
		adiExpect(t, "status", res.Status, 204)
		adiExpect(t, "body", res.Body, "")
		for name, want := range map[string][]string{
			"Access-Control-Allow-Origin":      {"http://localhost:3000"},
			"Access-Control-Allow-Credentials": {"true"},
			"Access-Control-Allow-Methods":     {"GET,HEAD,PATCH,POST,PUT,DELETE"},
			"Vary":                             {"Origin, Access-Control-Request-Headers"},
			"Access-Control-Allow-Headers":     nil,
		} {
			adiExpect(t, name, res.Header.Values(name), want)
		}
		adiExpect(t, "upstream", u.uris(), []string(nil))
	})
	t.Run("preflight reflects Access-Control-Request-Headers; globs match", func(t *testing.T) {
		res := adiDo(t, "OPTIONS", "/api/proxy/req/a", "", "Origin", "https://App.Example.com",
			"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "X-A, x-b")
		adiExpect(t, "status", res.Status, 204)
		adiExpect(t, "Allow-Origin", res.Header.Values("Access-Control-Allow-Origin"), []string{"https://App.Example.com"})
		adiExpect(t, "Allow-Headers", res.Header.Values("Access-Control-Allow-Headers"), []string{"X-A, x-b"})
	})
	t.Run("81b actual response: Backstage's CORS headers, the upstream's stripped", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/open/a", "", origin...)
		adiExpect(t, "status", res.Status, 200)
		adiExpect(t, "Allow-Origin", res.Header.Values("Access-Control-Allow-Origin"), []string{"http://localhost:3000"})
		adiExpect(t, "Allow-Credentials", res.Header.Values("Access-Control-Allow-Credentials"), []string{"true"})
		adiExpect(t, "Vary", res.Header.Values("Vary"), []string{"Origin"})
		u.take()
	})
	t.Run("81c an allowed upstream Access-Control-Allow-Origin overwrites it", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/open-acao/a", "", origin...)
		u.take()
		adiExpect(t, "Allow-Origin", res.Header.Values("Access-Control-Allow-Origin"), []string{"*"})
		adiExpect(t, "Allow-Credentials", res.Header.Values("Access-Control-Allow-Credentials"), []string{"true"})
	})
	t.Run("CORS headers on the 401 of a protected route", func(t *testing.T) {
		res := adiDo(t, "GET", "/api/proxy/req/a", "", origin...)
		adiExpect(t, "status", res.Status, 401)
		adiExpect(t, "Allow-Origin", res.Header.Values("Access-Control-Allow-Origin"), []string{"http://localhost:3000"})
	})
	t.Run("a disallowed origin gets no CORS headers; OPTIONS reaches the route", func(t *testing.T) {
		res := adiDo(t, "OPTIONS", "/api/proxy/req/a", "", "Origin", "http://evil.example.org", "Access-Control-Request-Method", "POST")
		adiExpect(t, "status", res.Status, 401)
		adiExpect(t, "Allow-Origin", res.Header.Values("Access-Control-Allow-Origin"), []string(nil))
		res = adiDo(t, "OPTIONS", "/api/proxy/open/a", "", "Origin", "http://evil.example.org")
		adiExpect(t, "open route status", res.Status, 200)
		adiExpect(t, "upstream", u.uris(), []string{"OPTIONS /a"})
	})
}

// ---------------------------------------------------------------------------
// Config reload (Backstage re-reads the proxy config on change: router.ts;
// conformance 74/75; README "Differences from Backstage" D7).

func TestAdapterIntegrationReload(t *testing.T) {
	u := adiNewUpstream(t)
	configA := adiBase + `
proxy:
  endpoints:
    /r1: {target: @U@/r1-v1, credentials: dangerously-allow-unauthenticated}
    /gone: {target: @U@/gone, credentials: dangerously-allow-unauthenticated}
`
	adiLoad(t, configA, "@U@", u.URL)
	check := func(t *testing.T, path string, status int, upstream ...string) {
		t.Helper()
		res := adiDo(t, "GET", path, "")
		if res.Status != status {
			t.Errorf("GET %s: status %d, want %d (body %q)", path, res.Status, status, res.Body)
		}
		adiExpect(t, "upstream of "+path, u.uris(), upstream)
	}
	check(t, "/api/proxy/r1/a", 200, "GET /r1-v1/a")
	check(t, "/api/proxy/r2/a", 401)

	t.Run("75/D7 an invalid config is rejected whole; the old one keeps serving", func(t *testing.T) {
		bad := strings.NewReplacer("@U@", u.URL).Replace(adiBase + `
proxy:
  endpoints:
    /open: {target: @U@/open, credentials: dangerously-allow-unauthenticated}
    /bad: {target: nope}
    /r3: {target: @U@/r3, credentials: dangerously-allow-unauthenticated}
`)
		status, body := adiPostLoad(t, bad, "text/backstage")
		if status < 400 {
			t.Fatalf("POST /load of an invalid config: %d %s", status, body)
		}
		for _, want := range []string{"request body:15:", "proxy route /bad", "Proxy target is not a valid URL: nope"} {
			if !strings.Contains(body, want) {
				t.Errorf("error %q does not contain %q", body, want)
			}
		}
		check(t, "/api/proxy/r1/a", 200, "GET /r1-v1/a")
		check(t, "/api/proxy/open/a", 401)
		check(t, "/api/proxy/r3/a", 401)
	})
	t.Run("74 a new config applies whole; removed open routes are protected again", func(t *testing.T) {
		adiLoad(t, adiBase+`
proxy:
  endpoints:
    /r1: {target: @U@/r1-v2, credentials: require}
    /r2: {target: @U@/r2, credentials: dangerously-allow-unauthenticated}
`, "@U@", u.URL)
		check(t, "/api/proxy/r1/a", 401)
		check(t, "/api/proxy/r2/a", 200, "GET /r2/a")
		// Backstage keeps the old unauthenticated policy: 404 there.
		check(t, "/api/proxy/gone/a", 401)
		res := adiDo(t, "GET", "/api/proxy/r1/a", "", "Authorization", "Bearer static-token-123")
		adiExpect(t, "r1 with a token", res.Status, 200)
		adiExpect(t, "upstream", u.uris(), []string{"GET /r1-v2/a"})
	})
	t.Run("69 with skipInvalidProxies the invalid routes are skipped with a warning", func(t *testing.T) {
		status, body := adiPostLoad(t, strings.NewReplacer("@U@", u.URL).Replace(adiBase+`
proxy:
  skipInvalidProxies: true
  endpoints:
    /bad: {target: nope}
    /ok: {target: @U@/ok, credentials: dangerously-allow-unauthenticated}
`), "text/backstage")
		if status != 200 || !strings.Contains(body, "skipped configuring /bad due to Proxy target is not a valid URL: nope") {
			t.Fatalf("POST /load: %d %s", status, body)
		}
		check(t, "/api/proxy/ok/a", 200, "GET /ok/a")
		check(t, "/api/proxy/bad/a", 401)
		check(t, "/api/proxy/r2/a", 401)
	})
}

// ---------------------------------------------------------------------------
// The CLI form: files on disk, default discovery, $include, as
// @backstage/config-loader loads them (conformance 72).

func TestAdapterIntegrationConfigFiles(t *testing.T) {
	skipIfShort(t)
	u := adiNewUpstream(t)
	t.Setenv("AI_UPSTREAM_SECRET", "upstream-secret")
	t.Setenv("BACKSTAGE_ENV", "")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(content, "@U@", u.URL)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	main := write("app-config.yaml", adiBase+`
proxy:
  endpoints:
    /headers:
      target: @U@
      credentials: dangerously-allow-unauthenticated
      headers:
        Authorization: Bearer ${AI_UPSTREAM_SECRET}
        X-Custom: configured
      caddy: {acknowledgeRisk: a test of anonymous header injection}
    /methods: {target: @U@, credentials: dangerously-allow-unauthenticated, allowedMethods: [GET]}
    /simple: @U@
    /nulled: {target: @U@, credentials: dangerously-allow-unauthenticated}
    /included:
      $include: ./conf/included.yaml#endpoint
`)
	write("conf/included.yaml", `
endpoint:
  target: @U@/included
  credentials: dangerously-allow-unauthenticated
  headers:
    X-From-File:
      $file: ./value.txt
  caddy: {acknowledgeRisk: a test of anonymous header injection}
`)
	write("conf/value.txt", "from-a-file\n")
	write("app-config.local.yaml", `
proxy:
  endpoints:
    /headers: {headers: {X-Custom: overridden, X-Added: added}}
    /methods: {allowedMethods: [POST]}
    /simple: {target: @U@/replaced, credentials: dangerously-allow-unauthenticated}
    /nulled: null
`)
	body, err := os.ReadFile(main)
	if err != nil {
		t.Fatal(err)
	}
	js, warnings, err := caddyconfig.GetAdapter("backstage").Adapt(body, map[string]any{"filename": main})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Logf("warning: %s", w)
	}
	if strings.Contains(string(js), "upstream-secret") {
		t.Fatalf("the secret from the environment is in the JSON: %s", js)
	}
	loadTestCaddy(t, string(js), "json")

	res := adiDo(t, "GET", "/api/proxy/headers/a", "")
	seen := u.take()
	if res.Status != 200 || len(seen) != 1 {
		t.Fatalf("(a) status %d, upstream saw %+v", res.Status, seen)
	}
	for name, want := range map[string]string{
		"Authorization": "Bearer upstream-secret", "X-Custom": "overridden", "X-Added": "added",
	} {
		adiExpect(t, "(a) upstream "+name, seen[0].Header.Values(name), []string{want})
	}
	adiExpect(t, "(b) GET methods", adiDo(t, "GET", "/api/proxy/methods/a", "").Status, 404)
	adiExpect(t, "(b) POST methods", adiDo(t, "POST", "/api/proxy/methods/a", "x").Status, 200)
	adiExpect(t, "(b) upstream", u.uris(), []string{"POST /a"})
	adiExpect(t, "(c) simple without a token", adiDo(t, "GET", "/api/proxy/simple/a", "").Status, 200)
	adiExpect(t, "(c) upstream", u.uris(), []string{"GET /replaced/a"})
	adiExpect(t, "(d) nulled", adiDo(t, "GET", "/api/proxy/nulled/a", "").Status, 401)
	res = adiDo(t, "GET", "/api/proxy/included/a", "")
	seen = u.take()
	if res.Status != 200 || len(seen) != 1 || seen[0].URI != "/included/a" || seen[0].Header.Get("X-From-File") != "from-a-file" {
		t.Errorf("$include: status %d, upstream saw %+v", res.Status, seen)
	}
}

// ---------------------------------------------------------------------------
// caddy.backend: Caddy in front of a Backstage backend.

func TestAdapterIntegrationCaddyBackend(t *testing.T) {
	u := adiNewUpstream(t)
	backstage := adiNewUpstream(t)
	adiLoad(t, `
caddy:
  admin: localhost:2999
  backend: @B@
backend:
  baseUrl: https://backstage.example.com
  listen: {host: 127.0.0.1, port: 9080}
proxy:
  endpoints:
    /open: {target: @U@, credentials: dangerously-allow-unauthenticated}
`, "@U@", u.URL, "@B@", backstage.URL)
	res := adiDo(t, "GET", "/api/catalog/entities?filter=kind%3Dcomponent", "")
	adiExpect(t, "status", res.Status, 200)
	seen := backstage.take()
	if len(seen) != 1 || seen[0].URI != "/api/catalog/entities?filter=kind%3Dcomponent" || seen[0].Host != testClientHost {
		t.Errorf("backend saw %+v", seen)
	}
	adiExpect(t, "unknown proxy route", adiDo(t, "GET", "/api/proxy/nope", "").Status, 401)
	adiExpect(t, "backend requests for /api/proxy", backstage.uris(), []string(nil))
	adiDo(t, "GET", "/api/proxy/open/x", "")
	adiExpect(t, "proxy route", u.uris(), []string{"GET /x"})
	if cfg := runningCaddyConfig(t); !strings.Contains(cfg, `"jwks_url":"`+backstage.URL+`/api/auth/.well-known/jwks.json"`) {
		t.Errorf("user tokens should be verified with the backend's key set: %s", cfg)
	}
}

// ---------------------------------------------------------------------------
// backend.https with a PEM certificate (the key from the environment).

func TestAdapterIntegrationBackendHTTPS(t *testing.T) {
	skipIfShort(t)
	u := adiNewUpstream(t)
	certPEM, keyPEM := adiSelfSigned(t)
	// Backstage trims env values and Caddy would not, so only a value without
	// surrounding whitespace can stay an {env.*} placeholder
	t.Setenv("AI_TLS_KEY", strings.TrimSpace(keyPEM))
	cert := "      cert: |\n        " + strings.ReplaceAll(strings.TrimSpace(certPEM), "\n", "\n        ") + "\n"
	adiLoad(t, `
caddy:
  admin: localhost:2999
backend:
  baseUrl: https://localhost:9443
  listen: {host: 127.0.0.1, port: 9443}
  https:
    certificate:
`+cert+`      key: ${AI_TLS_KEY}
proxy:
  endpoints:
    /open: {target: @U@, credentials: dangerously-allow-unauthenticated}
`, "@U@", u.URL)
	if strings.Contains(runningCaddyConfig(t), "PRIVATE KEY") {
		t.Errorf("the private key is in the running config")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(certPEM))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	res, err := client.Get("https://localhost:" + testHTTPSPort + "/api/proxy/open/x")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	adiExpect(t, "status", res.StatusCode, 200)
	adiExpect(t, "upstream", u.uris(), []string{"GET /x"})
}

// adiSelfSigned makes a certificate for localhost and 127.0.0.1.
func adiSelfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         true,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}
