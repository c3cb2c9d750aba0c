package backstageproxy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter, for *.caddyfiletest
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/ with the current output")

const goldenSeparator = "\n----------\n"

// TestAdaptGolden adapts every testdata/adapt/*.yamltest (app-config YAML) and
// testdata/caddyfile_adapt/*.caddyfiletest (Caddyfile) and compares the output
// with the expected JSON, or the expected error ("ERROR: <substring>"), and
// the expected warnings (after a second separator, one per line).
func TestAdaptGolden(t *testing.T) {
	t.Setenv("TEST_SECRET", "s3cr3t-value")
	t.Setenv("TEST_HOST", "upstream.internal")
	for _, dir := range []struct{ glob, adapter string }{
		{"testdata/adapt/*.yamltest", "backstage"},
		{"testdata/caddyfile_adapt/*.caddyfiletest", "caddyfile"},
	} {
		files, err := filepath.Glob(dir.glob)
		if err != nil || len(files) == 0 {
			t.Fatalf("no golden files for %s: %v", dir.glob, err)
		}
		for _, file := range files {
			t.Run(filepath.Base(file), func(t *testing.T) {
				raw, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				parts := strings.Split(string(raw), goldenSeparator)
				if len(parts) == 1 && *update {
					// a new case: input only
					parts = append([]string{strings.TrimRight(parts[0], "\n")}, "")
				}
				if len(parts) < 2 || len(parts) > 3 {
					t.Fatalf("%s: want input, separator, expected output [, separator, warnings]", file)
				}
				input, want := parts[0]+"\n", strings.TrimSpace(parts[1])
				wantWarnings := ""
				if len(parts) == 3 {
					wantWarnings = strings.TrimSpace(parts[2])
				}
				got, gotWarnings := adaptForTest(dir.adapter, file, []byte(input))
				if *update {
					out := parts[0] + goldenSeparator + got + "\n"
					if gotWarnings != "" {
						out += "----------\n" + gotWarnings + "\n"
					}
					if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				if strings.HasPrefix(want, "ERROR: ") {
					if !strings.HasPrefix(got, "ERROR: ") || !strings.Contains(got, strings.TrimPrefix(want, "ERROR: ")) {
						t.Fatalf("want error containing %q, got:\n%s", strings.TrimPrefix(want, "ERROR: "), got)
					}
				} else if got != want {
					t.Fatalf("adapted JSON differs (run go test -run TestAdaptGolden -update and review the diff)\n--- got:\n%s\n--- want:\n%s", got, want)
				}
				if gotWarnings != wantWarnings {
					t.Fatalf("warnings differ\n--- got:\n%s\n--- want:\n%s", gotWarnings, wantWarnings)
				}
			})
		}
	}
}

func adaptForTest(adapter, file string, input []byte) (out, warnings string) {
	a := caddyconfig.GetAdapter(adapter)
	if a == nil {
		return "ERROR: no adapter " + adapter, ""
	}
	js, warns, err := a.Adapt(input, map[string]any{"filename": file})
	var w []string
	for _, warn := range warns {
		w = append(w, fmt.Sprintf("%s:%d: %s", filepath.Base(warn.File), warn.Line, warn.Message))
	}
	if err != nil {
		return "ERROR: " + err.Error(), strings.Join(w, "\n")
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, js, "", "\t"); err != nil {
		return "ERROR: invalid JSON: " + err.Error(), ""
	}
	return buf.String(), strings.Join(w, "\n")
}

// TestYAMLAndCaddyfileProduceSameRoutes proves that the config adapter and
// the Caddyfile directive share one route builder: the same endpoints give
// byte-identical routes, barrier included.
func TestYAMLAndCaddyfileProduceSameRoutes(t *testing.T) {
	t.Setenv("UPSTREAM_TOKEN", "secret")
	yamlConfig := `
proxy:
  endpoints:
    /nested:
      target: http://localhost:9100/outer
      credentials: dangerously-allow-unauthenticated
      allowedMethods: [GET]
    /nested/inner:
      target: https://upstream.example.com/inner?key=abc
      credentials: forward
      allowedHeaders: [X-Foo, Set-Cookie]
      headers:
        Authorization: Bearer ${UPSTREAM_TOKEN}
      changeOrigin: false
      xfwd: true
      ws: true
      secure: false
      proxyTimeout: 1500
      pathRewrite:
        '^/api/proxy/nested/inner/(\w+)': /items/$1
    /empty-rewrite:
      target: http://localhost:9100
      pathRewrite: {}
`
	caddyfileConfig := `:9080 {
	backstage_proxy /nested http://localhost:9100/outer {
		credentials dangerously-allow-unauthenticated
		allowed_methods GET
	}
	backstage_proxy /nested/inner https://upstream.example.com/inner?key=abc {
		credentials forward
		allowed_headers X-Foo Set-Cookie
		header Authorization "Bearer {env.UPSTREAM_TOKEN}"
		change_origin false
		xfwd
		ws
		insecure_skip_verify
		proxy_timeout 1500ms
		path_rewrite ^/api/proxy/nested/inner/(\w+) /items/$1
	}
	backstage_proxy /empty-rewrite http://localhost:9100 {
		path_rewrite off
	}
	backstage_proxy_barrier
}
`
	routesOf := func(adapter, input string) []json.RawMessage {
		t.Helper()
		js, _, err := caddyconfig.GetAdapter(adapter).Adapt([]byte(input), nil)
		if err != nil {
			t.Fatalf("%s: %v", adapter, err)
		}
		return flatRoutes(t, serverRoutes(t, js))
	}
	fromYAML := routesOf("backstage", yamlConfig)
	fromCaddyfile := routesOf("caddyfile", caddyfileConfig)
	// YAML: jwks route, 3 endpoints, barrier, non-proxy 404; Caddyfile: 3 endpoints, barrier
	if len(fromYAML) != 6 || len(fromCaddyfile) != 4 {
		t.Fatalf("unexpected route counts: yaml %d, caddyfile %d", len(fromYAML), len(fromCaddyfile))
	}
	for i := 0; i < 4; i++ {
		if !bytes.Equal(fromYAML[i+1], fromCaddyfile[i]) {
			t.Errorf("route %d differs:\nyaml:      %s\ncaddyfile: %s", i, fromYAML[i+1], fromCaddyfile[i])
		}
	}
}

// applyOps runs header ops the way Caddy does (Provision, then ApplyTo with
// a request's replacer).
func applyOps(t *testing.T, ops *headers.HeaderOps, field string, values []string, host string) []string {
	t.Helper()
	if err := ops.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "http://"+host+"/", nil)
	hdr := http.Header{field: slices.Clone(values)}
	ops.ApplyTo(hdr, caddyhttp.NewTestReplacer(req))
	return hdr[field]
}

// TestCookieRewriteOps checks the Set-Cookie ops against http-proxy's
// rewriteCookieProperty (the expectations were produced by running it).
func TestCookieRewriteOps(t *testing.T) {
	for _, tc := range []struct {
		name     string
		domain   []cookieRewrite
		path     []cookieRewrite
		in, want []string
	}{
		{"43a string", []cookieRewrite{{"*", "cookies.example.com"}}, nil,
			[]string{"a=b; Domain=localhost; Path=/", "c=d; Domain=upstream.example.com; Path=/x"},
			[]string{"a=b; Domain=cookies.example.com; Path=/", "c=d; Domain=cookies.example.com; Path=/x"}},
		{"43b maps", []cookieRewrite{{"localhost", ""}}, []cookieRewrite{{"/x", "/api/proxy/cookiepath/x"}},
			[]string{"a=b; Domain=localhost; Path=/", "c=d; Domain=upstream.example.com; Path=/x"},
			[]string{"a=b; Path=/", "c=d; Domain=upstream.example.com; Path=/api/proxy/cookiepath/x"}},
		{"only the first attribute is looked at", []cookieRewrite{{"y", "z"}}, nil,
			[]string{"a=b; Domain=x; Domain=y"}, []string{"a=b; Domain=x; Domain=y"}},
		{"the first attribute is rewritten", []cookieRewrite{{"x", "z"}}, nil,
			[]string{"a=b; Domain=x; Domain=y"}, []string{"a=b; Domain=z; Domain=y"}},
		{"an empty value is skipped", []cookieRewrite{{"x", "y"}}, nil,
			[]string{"a=b; Domain=; Domain=x"}, []string{"a=b; Domain=; Domain=y"}},
		{"values match exactly", []cookieRewrite{{"x", "y"}}, nil,
			[]string{"a=b; Domain=x ; Path=/", "a=b;domain=A"}, []string{"a=b; Domain=x ; Path=/", "a=b;domain=A"}},
		{"attribute names are case-insensitive", []cookieRewrite{{"a", ""}, {"*", "q"}}, nil,
			[]string{"a=b;DOMAIN=a;path=/"}, []string{"a=b;path=/"}},
		{"no cascade", []cookieRewrite{{"a", "b"}, {"b", "c"}}, nil,
			[]string{"a=b; Domain=a"}, []string{"a=b; Domain=b"}},
		{"* only for other values", []cookieRewrite{{"localhost", "public.com"}, {"*", "other.com"}}, nil,
			[]string{"a=b; Domain=localhost", "a=b; Domain=zzz; Path=/", "no=attributes"},
			[]string{"a=b; Domain=public.com", "a=b; Domain=other.com; Path=/", "no=attributes"}},
		{"literal $ and braces", []cookieRewrite{{"*", "a$1{b}"}}, nil,
			[]string{"a=b; Domain=x"}, []string{"a=b; Domain=a$1{b}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := applyOps(t, cookieRewriteOps(tc.domain, tc.path), "Set-Cookie", tc.in, "localhost:7007")
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLocationRewriteOps checks the Location ops against http-proxy's
// setRedirectHostRewrite (expectations produced by url.parse/url.format).
func TestLocationRewriteOps(t *testing.T) {
	target, _ := url.Parse("http://localhost:9100/base")
	hostProto := &locationRewrite{HostRewrite: "public.example.com", ProtocolRewrite: "https"}
	for _, tc := range []struct {
		lr       *locationRewrite
		in, want string
	}{
		{hostProto, "http://localhost:9100/new?x=1", "https://public.example.com/new?x=1"},
		{hostProto, "http://localhost:9100", "https://public.example.com/"},
		{hostProto, "http://localhost:9100?x=1", "https://public.example.com/?x=1"},
		{hostProto, "http://LOCALHOST:9100/x", "https://public.example.com/x"},
		{hostProto, "http://localhost:91000/x", "http://localhost:91000/x"},
		{hostProto, "http://localhost/x", "http://localhost/x"},
		{hostProto, "/relative", "/relative"},
		{hostProto, "http://user@localhost:9100/x", "https://user@public.example.com/x"},
		{hostProto, "https://localhost:9100/x#f", "https://public.example.com/x#f"},
		{&locationRewrite{ProtocolRewrite: "https"}, "http://localhost:9100/x", "https://localhost:9100/x"},
		{&locationRewrite{AutoRewrite: true}, "http://localhost:9100/new-place?x=1", "http://localhost:7007/new-place?x=1"},
		{&locationRewrite{AutoRewrite: true, HostRewrite: "wins.example.com"}, "http://localhost:9100/a", "http://wins.example.com/a"},
	} {
		got := applyOps(t, locationRewriteOps(tc.lr, target), "Location", []string{tc.in}, "localhost:7007")
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%+v: %q → %q, want %q", *tc.lr, tc.in, got, tc.want)
		}
	}
	if locationRewriteOps(&locationRewrite{}, target) != nil {
		t.Error("no option set: no ops")
	}
}

// TestOriginPattern checks backend.cors origin globs against minimatch
// (nocase, noglobstar), as Backstage's readCorsOptions uses it; the
// expectations were produced by running minimatch 9.
func TestOriginPattern(t *testing.T) {
	for _, tc := range []struct {
		glob, origin string
		match        bool
	}{
		{"http://localhost:3000", "http://LOCALHOST:3000", true},
		{"http://localhost:3000", "http://localhost:30000", false},
		{"https://*.example.com", "https://a.example.com", true},
		{"https://*.example.com", "https://a.b.example.com", true},
		{"https://*.example.com", "https://.example.com", false},
		{"https://*.example.com", "https://a/b.example.com", false},
		{"http://localhost:*", "http://localhost:3000", true},
		{"https://{a,b}.example.com", "https://b.example.com", true},
		{"https://{a,b}.example.com", "https://c.example.com", false},
		{"https://[ab].x.com", "https://a.x.com", true},
		{"https://**.example.com", "https://a.b.example.com", true},
		{"http://a?c", "http://abc", true},
		{"*://x", "https://x", true},
		{"https://x.com", "https://x.com/", true},
		{"https://*", "https://.x", false},
		{"https://a*", "https://a.x", true},
		{"https://+(a|b).x.com", "https://ab.x.com", true},
		{"*", "http://a.com", false},
	} {
		p, err := originPattern([]string{tc.glob})
		if err != nil {
			t.Errorf("%q: %v", tc.glob, err)
			continue
		}
		if got := regexp.MustCompile(p).MatchString(tc.origin); got != tc.match {
			t.Errorf("%q (%s) on %q: %v, want %v", tc.glob, p, tc.origin, got, tc.match)
		}
	}
	for _, bad := range []string{"!http://x", "https://!(a).x.com"} {
		if _, err := originPattern([]string{bad}); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

// TestListenForms is conformance case 77 (the backend.listen forms that
// backend-defaults' rootHttpRouter/http/config.ts accepts), plus caddy.listen
// and caddy.https.
func TestListenForms(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{"backend: {listen: ':7007'}", ":7007"},
		{"backend: {listen: '7007'}", ":7007"},
		{"backend: {listen: '0.0.0.0:7007'}", "0.0.0.0:7007"},
		{"backend: {listen: {port: 8080}}", ":8080"},
		{"backend: {listen: {host: 127.0.0.1, port: '8080'}}", "127.0.0.1:8080"},
		{"backend: {}", ":7007"},
		{"caddy: {listen: '127.0.0.1:9000'}\nbackend: {listen: ':7007'}", "127.0.0.1:9000"},
		{"caddy: {https: {domain: a.example.com}}\nbackend: {listen: ':7007'}", ":443"},
		{"backend: {listen: 7007}", "ERROR: Invalid type in config for key 'backend.listen', got number, wanted object"},
		{"backend: {listen: '[::1]:7007'}", "ERROR: Unable to parse listen address [::1]:7007"},
	} {
		js, _, err := Adapter{}.Adapt([]byte(tc.config+"\n"), nil)
		got := ""
		if err != nil {
			got = "ERROR: " + err.Error()
		} else {
			var cfg struct {
				Apps struct {
					HTTP struct {
						Servers map[string]struct {
							Listen []string `json:"listen"`
						} `json:"servers"`
					} `json:"http"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(js, &cfg); err != nil {
				t.Fatal(err)
			}
			got = strings.Join(cfg.Apps.HTTP.Servers["backstage"].Listen, ",")
		}
		if want, isErr := strings.CutPrefix(tc.want, "ERROR: "); (isErr && !strings.Contains(got, want)) || (!isErr && got != tc.want) {
			t.Errorf("%s: got %q, want %q", tc.config, got, tc.want)
		}
	}
}

// TestAdaptErrorsNameTheSource: without a file name (admin API), errors and
// warnings name the request body; with one, the file.
func TestAdaptErrorsNameTheSource(t *testing.T) {
	config := []byte("proxy:\n  endpoints:\n    /ok: http://localhost:9100\n    /bad: {target: nope, allowedMethods: [get]}\n")
	_, _, err := Adapter{}.Adapt(config, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "request body:4: proxy route /bad: Proxy target is not a valid URL: nope") {
		t.Errorf("no file name: %v", err)
	}
	_, _, err = Adapter{}.Adapt(config, map[string]any{"filename": "conf/app-config.yaml"})
	if err == nil || !strings.HasPrefix(err.Error(), "conf/app-config.yaml:4: proxy route /bad:") {
		t.Errorf("file name: %v", err)
	}
	_, warnings, err := Adapter{}.Adapt([]byte("proxy:\n  skipInvalidProxies: true\n  endpoints:\n    /bad: nope\n"), nil)
	if err != nil || len(warnings) == 0 || warnings[0].File != unnamedSource || warnings[0].Line != 4 {
		t.Errorf("warnings without a file name: %+v, %v", warnings, err)
	}
}

// TestAdaptIsDeterministic adapts configs that use every map-shaped feature
// many times.
func TestAdaptIsDeterministic(t *testing.T) {
	files, _ := filepath.Glob("testdata/adapt/*.yamltest")
	files = append(files, "examples/app-config.yaml")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		input := []byte(strings.Split(string(raw), goldenSeparator)[0] + "\n")
		first, _, err1 := Adapter{}.Adapt(input, map[string]any{"filename": f})
		for i := 0; i < 20; i++ {
			again, _, err2 := Adapter{}.Adapt(input, map[string]any{"filename": f})
			if !bytes.Equal(first, again) || (err1 == nil) != (err2 == nil) {
				t.Fatalf("%s: output differs between runs", f)
			}
		}
	}
}

// TestExamplesAdapt keeps examples/ working (the README's quick start) and
// checks that every example is valid Caddy config.
func TestExamplesAdapt(t *testing.T) {
	files, _ := filepath.Glob("examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no examples")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		js, warnings, err := Adapter{}.Adapt(raw, map[string]any{"filename": f})
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, w := range warnings {
			t.Errorf("%s: unexpected warning %s", f, w)
		}
		var cfg caddy.Config
		if err := json.Unmarshal(js, &cfg); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestYAMLAndCaddyfileHPMOptions: the http-proxy-middleware options the
// Caddyfile also has words for give the same route.
func TestYAMLAndCaddyfileHPMOptions(t *testing.T) {
	t.Setenv("LEGACY_PASSWORD", "pw")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pem, err := os.ReadFile("testdata/adapt/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	yamlConfig := `
proxy:
  endpoints:
    /legacy:
      target: https://legacy.internal:8443/app
      credentials: dangerously-allow-unauthenticated
      auth: service:${LEGACY_PASSWORD}
      followRedirects: true
      ca: ` + caFile + `
      localAddress: 127.0.0.1
      allowedHeaders: [Location, Set-Cookie]
      autoRewrite: true
      protocolRewrite: https
      cookieDomainRewrite: {legacy.internal: public.example.com, '*': ''}
      cookiePathRewrite: {/app: /api/proxy/legacy}
      caddy: {acknowledgeRisk: read-only service account}
`
	caddyfileConfig := `:9080 {
	backstage_proxy /legacy https://legacy.internal:8443/app {
		credentials dangerously-allow-unauthenticated
		upstream_basic_auth service:{env.LEGACY_PASSWORD}
		follow_redirects
		ca_file ` + caFile + `
		local_address 127.0.0.1
		allowed_headers Location Set-Cookie
		location_rewrite auto
		location_rewrite protocol https
		cookie_domain_rewrite legacy.internal public.example.com
		cookie_domain_rewrite * ""
		cookie_path_rewrite /app /api/proxy/legacy
		acknowledge_risk read-only service account
	}
}
`
	yamlJSON, _, err := caddyconfig.GetAdapter("backstage").Adapt([]byte(yamlConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	route := func(js []byte) string {
		for _, r := range flatRoutes(t, serverRoutes(t, js)) {
			if bytes.Contains(r, []byte(`"/api/proxy/legacy"`)) {
				return string(r)
			}
		}
		t.Fatalf("no /legacy route in %s", js)
		return ""
	}
	if y, c := route(yamlJSON), route(cfJSON); y != c {
		t.Fatalf("routes differ:\nyaml:      %s\ncaddyfile: %s", y, c)
	}
}

// serverRoutes returns the routes of the only HTTP server in adapted JSON.
func serverRoutes(t *testing.T, js []byte) []json.RawMessage {
	t.Helper()
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps.HTTP.Servers) != 1 {
		t.Fatalf("want one server, got %d", len(cfg.Apps.HTTP.Servers))
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		return srv.Routes
	}
	return nil
}

// TestBackendIsListener: caddy.backend may not name the address Caddy
// listens on (one app-config read by Backstage and Caddy), but may use the
// same port on another host.
func TestBackendIsListener(t *testing.T) {
	for _, tc := range []struct {
		backend, listen string
		want            bool
	}{
		{"http://localhost:7007", ":7007", true},
		{"http://127.0.0.1:7007", ":7007", true},
		{"http://[::1]:7007", "127.0.0.1:7007", true},
		{"http://0.0.0.0:7007", ":7007", true},
		{"http://localhost:7007", "localhost:7007", true},
		{"http://backstage.internal:7007", "backstage.internal:7007", true},
		{"https://localhost", ":443", true},
		{"http://localhost:7008", ":7007", false},
		{"http://backstage:7007", ":7007", false}, // another pod
		{"http://localhost:7007", "10.0.0.5:7007", false},
		{"https://localhost:7007", ":443", false},
	} {
		u, err := url.Parse(tc.backend)
		if err != nil {
			t.Fatal(err)
		}
		if got := backendIsListener(u, tc.listen); got != tc.want {
			t.Errorf("backendIsListener(%s, %s) = %v, want %v", tc.backend, tc.listen, got, tc.want)
		}
	}
}

// The block form of the backstage_proxy directive emits what the adapter
// emits for the same endpoints: the plugin key set route, the endpoints in
// order, then the barrier.
func TestCaddyfileBlockMatchesAdapter(t *testing.T) {
	t.Setenv("CATALOG_TOKEN", "secret")
	yamlConfig := `
proxy:
  endpoints:
    /open:
      target: http://localhost:9100/outer
      credentials: dangerously-allow-unauthenticated
      allowedMethods: [GET]
    /catalog:
      target: https://catalog.internal/v1
      credentials: forward
      headers: {Authorization: "Bearer ${CATALOG_TOKEN}"}
      pathRewrite: {}
      caddy:
        rateLimit: {requests: 60, window: 1m}
    /pagerduty:
      target: https://api.pagerduty.com
      allowedMethods: [GET]
      caddy:
        allow: [group:default/sre, user:alice, plugin:catalog, 'external:ci-*', static-subject]
        upstreamAuthorization: Backstage-Upstream-Authorization
`
	caddyfileConfig := `:9080 {
	backstage_proxy {
		endpoint /open http://localhost:9100/outer {
			credentials dangerously-allow-unauthenticated
			allowed_methods GET
		}
		endpoint /catalog https://catalog.internal/v1 {
			credentials forward
			upstream_header Authorization "Bearer {env.CATALOG_TOKEN}"
			path_rewrite off
			rate_limit 60 1m
		}
		endpoint /pagerduty https://api.pagerduty.com {
			allowed_methods GET
			allow group:default/sre user:alice plugin:catalog external:ci-* static-subject
			upstream_authorization Backstage-Upstream-Authorization
		}
	}
}
`
	yamlJSON, _, err := caddyconfig.GetAdapter("backstage").Adapt([]byte(yamlConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	y, c := serverRoutes(t, yamlJSON), serverRoutes(t, cfJSON)
	if len(y) != 3 || len(c) != 2 {
		t.Fatalf("%d adapter routes (want 3: key set, dispatch, 404), %d Caddyfile routes (want 2: key set, dispatch)", len(y), len(c))
	}
	for i := range c {
		if string(y[i]) != string(c[i]) {
			t.Errorf("route %d differs:\nyaml:      %s\ncaddyfile: %s", i, y[i], c[i])
		}
	}
	for _, want := range []string{`"allow":["group:default/sre","user:alice","plugin:catalog","external:ci-*","static-subject"]`, `"upstream_authorization":"Backstage-Upstream-Authorization"`} {
		if !bytes.Contains(cfJSON, []byte(want)) {
			t.Errorf("the Caddyfile JSON lacks %s", want)
		}
	}
}
