package backstageproxy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter
)

// lintAdapt adapts an app-config.yaml written to a file in a temporary
// directory, and returns the route table of its dispatcher.
func lintAdapt(t *testing.T, config string) ([]routeSummary, []caddyconfig.Warning, string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "app-config.yaml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	out, warnings, err := Adapter{}.Adapt([]byte(config), map[string]any{"filename": file})
	if err != nil {
		return nil, warnings, file, err
	}
	tables, err := routeTablesOf(out)
	if err != nil || len(tables) != 1 {
		t.Fatalf("route tables %v, %v", tables, err)
	}
	return tables[0].routes, warnings, file, nil
}

// TestSecureRouteLint runs the secure-route lint on endpoints through the
// adapter and checks the route table it reads back from the JSON: the
// flags, which headers count as credentials, the warnings (file and line),
// and the refusals (file, line, route and the fix).
func TestSecureRouteLint(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LINT_UNIT_SECRET", "env-secret-value")
	t.Setenv("LINT_UNIT_PADDED", " padded-secret-value ")
	const disabled = "backend:\n  baseUrl: http://localhost:7007\n  auth:\n    dangerouslyDisableDefaultAuthPolicy: true\n"
	type want struct {
		flags, injected, credential []string
		anonymous                   bool
		target                      string
		methods                     []string
		warnings                    []string // "line: substring"
	}
	for _, tc := range []struct {
		name, top, endpoint string
		want                want
		// err is a refusal: "line: substrings..."
		err []string
	}{
		{
			name:     "required, literal Authorization, methods set: no flag",
			endpoint: "target: https://api.example.com:8443/v1?x=1\nallowedMethods: [GET]\nheaders:\n  Authorization: Bearer literal",
			want: want{flags: []string{}, injected: []string{"Authorization"}, credential: []string{"Authorization"},
				target: "https://api.example.com:8443", methods: []string{"GET"}},
		},
		{
			name:     "a value from ${VAR} is a credential whatever its name; all methods",
			endpoint: "target: http://up.internal:80/x\nheaders:\n  X-Custom: pre-${LINT_UNIT_SECRET}",
			want: want{flags: []string{lintFlagAnyMethod}, injected: []string{"X-Custom"}, credential: []string{"X-Custom"},
				target: "http://up.internal", warnings: []string{"7: proxy route /r injects a credential (header X-Custom) for every method, writes included: set allowedMethods"}},
		},
		{
			name:     "a literal value under a harmless name is not a credential",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nheaders:\n  X-Tenant: acme",
			want:     want{flags: []string{}, injected: []string{"X-Tenant"}, credential: []string{}, anonymous: true, target: "http://up.internal"},
		},
		{
			name:     "names that say credential",
			endpoint: "target: http://up.internal\nallowedMethods: [GET]\nheaders:\n  X-Session-Token: a\n  Cookie: b\n  X-Api-Key: c\n  Proxy-Authorization: d\n  X-Client-Secret: e\n  Db-Password: f\n  X-Auth-User: g\n  Accept: h",
			want: want{flags: []string{}, injected: []string{"Accept", "Cookie", "Db-Password", "Proxy-Authorization", "X-Api-Key", "X-Auth-User", "X-Client-Secret", "X-Session-Token"},
				credential: []string{"Cookie", "Db-Password", "Proxy-Authorization", "X-Api-Key", "X-Auth-User", "X-Client-Secret", "X-Session-Token"},
				target:     "http://up.internal", methods: []string{"GET"}},
		},
		{
			name:     "anonymous with a ${VAR} credential is refused",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nallowedMethods: [GET]\nheaders:\n  X-Custom: ${LINT_UNIT_SECRET}",
			err: []string{"app-config.yaml:9: ", "proxy route /r injects a credential (header X-Custom)",
				"lets anonymous callers in (credentials: dangerously-allow-unauthenticated)", "add caddy.acknowledgeRisk: <reason> to the endpoint"},
		},
		{
			name:     "anonymous with a $file credential is refused (the JSON names it)",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nallowedMethods: [GET]\nheaders:\n  X-Custom: {$file: " + secretFile + "}",
			err:      []string{"app-config.yaml:9: ", "proxy route /r injects a credential (header X-Custom)"},
		},
		{
			name:     "anonymous with $file credential, acknowledged",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nallowedMethods: [GET]\nheaders:\n  X-Custom: {$file: " + secretFile + "}\ncaddy:\n  acknowledgeRisk: a read-only key",
			want: want{flags: []string{lintFlagAcknowledged}, injected: []string{"X-Custom"}, credential: []string{"X-Custom"}, anonymous: true,
				target: "http://up.internal", methods: []string{"GET"},
				warnings: []string{`12: proxy route /r injects a credential (header X-Custom) that anonymous callers can use (credentials: dangerously-allow-unauthenticated); risk acknowledged: "a read-only key"`}},
		},
		{
			name:     "an inlined environment value is named in the JSON too",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nheaders:\n  X-Custom: ${LINT_UNIT_PADDED}",
			err:      []string{"app-config.yaml:8: ", "proxy route /r injects a credential (header X-Custom)"},
		},
		{
			name:     "Basic credentials (auth) on an anonymous route are refused",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nallowedMethods: [GET]\nauth: user:pass",
			err:      []string{"app-config.yaml:9: ", "proxy route /r injects a credential (header Authorization)"},
		},
		{
			name:     "every route is anonymous when the default auth policy is disabled",
			top:      disabled,
			endpoint: "target: http://up.internal\nallowedMethods: [GET]\nheaders:\n  Authorization: Bearer x",
			err: []string{"app-config.yaml:10: ", "proxy route /r injects a credential (header Authorization) and lets anonymous callers in (backend.auth.dangerouslyDisableDefaultAuthPolicy is set)",
				"turn off backend.auth.dangerouslyDisableDefaultAuthPolicy, or, if that is intended, add caddy.acknowledgeRisk"},
		},
		{
			name:     "disabled default auth policy, acknowledged",
			top:      disabled,
			endpoint: "target: http://up.internal\nallowedMethods: [GET]\nheaders:\n  Authorization: Bearer x\ncaddy: {acknowledgeRisk: dev only}",
			want: want{flags: []string{lintFlagAcknowledged}, injected: []string{"Authorization"}, credential: []string{"Authorization"}, anonymous: true,
				target: "http://up.internal", methods: []string{"GET"},
				warnings: []string{`4: dangerouslyDisableDefaultAuthPolicy is true`, `12: proxy route /r injects a credential (header Authorization) that anonymous callers can use (backend.auth.dangerouslyDisableDefaultAuthPolicy is set); risk acknowledged: "dev only"`}},
		},
		{
			name:     "secure: false on an https target",
			endpoint: "target: https://up.internal\nsecure: false",
			want: want{flags: []string{lintFlagTLSUnverified}, injected: []string{}, credential: []string{}, target: "https://up.internal",
				warnings: []string{"7: proxy route /r: TLS certificate verification of up.internal is off (secure: false)"}},
		},
		{
			name:     "Authorization in allowedHeaders of an anonymous route",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nallowedHeaders: [Authorization]",
			want: want{flags: []string{lintFlagAuthorizationUpstream}, injected: []string{}, credential: []string{}, anonymous: true, target: "http://up.internal",
				warnings: []string{"8: proxy route /r lets anonymous callers in (credentials: dangerously-allow-unauthenticated) and has Authorization in allowedHeaders"}},
		},
		{
			name:     "Authorization in allowedHeaders of a protected route: no flag",
			endpoint: "target: http://up.internal\nallowedHeaders: [Authorization]",
			want:     want{flags: []string{}, injected: []string{}, credential: []string{}, target: "http://up.internal"},
		},
		{
			name:     "ws with an injected credential on an anonymous route",
			endpoint: "target: http://up.internal\ncredentials: dangerously-allow-unauthenticated\nallowedMethods: [GET]\nws: true\nheaders: {X-Api-Key: k}\ncaddy: {acknowledgeRisk: public feed}",
			want: want{flags: []string{lintFlagAcknowledged, lintFlagAnonymousWebSocket}, injected: []string{"X-Api-Key"}, credential: []string{"X-Api-Key"}, anonymous: true,
				target: "http://up.internal", methods: []string{"GET"},
				warnings: []string{`11: proxy route /r injects a credential (header X-Api-Key) that anonymous callers can use`, "9: proxy route /r lets anonymous callers open WebSocket connections (ws: true) that carry its injected credential (header X-Api-Key)"}},
		},
		{
			name:     "acknowledgeRisk where there is no such risk",
			endpoint: "target: http://up.internal\ncaddy: {acknowledgeRisk: why not}",
			want: want{flags: []string{}, injected: []string{}, credential: []string{}, target: "http://up.internal",
				warnings: []string{"7: proxy route /r: caddy.acknowledgeRisk has no effect"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			top := tc.top
			if top == "" {
				top = "backend:\n  baseUrl: http://localhost:7007\n"
			}
			cfg := top + "proxy:\n  endpoints:\n    /r:\n      " + strings.ReplaceAll(tc.endpoint, "\n", "\n      ") + "\n"
			table, warnings, file, err := lintAdapt(t, cfg)
			if tc.err != nil {
				if err == nil {
					t.Fatalf("adapted; want the error %q\n%s", tc.err, cfg)
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, file+":") {
					t.Errorf("error %q does not start with the file %s", msg, file)
				}
				for _, s := range tc.err {
					if !strings.Contains(msg, s) {
						t.Errorf("error %q lacks %q", msg, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, cfg)
			}
			if len(table) != 1 {
				t.Fatalf("table %+v", table)
			}
			s := table[0]
			w := tc.want
			if s.Route != "/r" || !slices.Equal(s.Flags, w.flags) || !slices.Equal(s.InjectedHeaders, w.injected) ||
				!slices.Equal(s.CredentialHeaders, w.credential) || s.Anonymous != w.anonymous || s.Target != w.target ||
				!slices.Equal(s.Methods, w.methods) || (s.Methods == nil) != (w.methods == nil) {
				t.Errorf("summary %+v\nwant %+v", s, w)
			}
			var got []string
			for _, warning := range warnings {
				got = append(got, fmt.Sprintf("%d: %s", warning.Line, warning.Message))
			}
			if len(got) != len(w.warnings) {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(w.warnings, "\n"))
				return
			}
			for _, want := range w.warnings {
				if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, want) }) {
					t.Errorf("no warning %q in:\n%s", want, strings.Join(got, "\n"))
				}
			}
		})
	}
}

// TestSecureRouteLintCaddyfile: the Caddyfile refuses what the adapter
// refuses, at the endpoint's line, and accepts acknowledge_risk.
func TestSecureRouteLintCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, global, endpoint string
		err                    []string
	}{
		{"open with an injected credential", "", "credentials dangerously-allow-unauthenticated\n\t\t\tallowed_methods GET\n\t\t\tupstream_header X-Api-Key {env.KEY}",
			[]string{"proxy route /r injects a credential (header X-Api-Key) and lets anonymous callers in (credentials dangerously-allow-unauthenticated)", "add acknowledge_risk <reason> to the endpoint", "Caddyfile:3"}},
		{"acknowledged", "", "credentials dangerously-allow-unauthenticated\n\t\t\tupstream_header X-Api-Key {env.KEY}\n\t\t\tacknowledge_risk read-only key", nil},
		{"a {file.*} placeholder is a credential", "", "credentials dangerously-allow-unauthenticated\n\t\t\tupstream_header X-Custom {file./run/secret}",
			[]string{"injects a credential (header X-Custom)", "Caddyfile:3"}},
		{"default auth policy disabled", "{\n\tbackstage {\n\t\tdangerously_disable_default_auth_policy\n\t}\n}\n", "upstream_header Authorization \"Bearer x\"",
			[]string{"(the backstage global option dangerously_disable_default_auth_policy is set)", "Caddyfile:8"}},
		{"protected", "", "upstream_header Authorization \"Bearer {env.KEY}\"", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.global + ":9080 {\n\tbackstage_proxy {\n\t\tendpoint /r http://up.internal {\n\t\t\t" + tc.endpoint + "\n\t\t}\n\t}\n}\n"
			out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
			if tc.err == nil {
				if err != nil {
					t.Fatalf("%v\n%s", err, cfg)
				}
				if _, err := routeTablesOf(out); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("adapted; want %q\n%s", tc.err, cfg)
			}
			for _, s := range tc.err {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

// TestRouteSummaryHandWrittenJSON: the table reads hand-written JSON too
// (the dispatcher logs it at startup): header ops set upstream, several
// upstreams, an IPv6 target, a rate limit, and an anonymous credential
// route without acknowledgement, which the front ends would refuse.
func TestRouteSummaryHandWrittenJSON(t *testing.T) {
	cfg := `{"apps": {"http": {"servers": {"s": {"routes": [{"handle": [{"handler": "subroute", "routes": [{"handle": [
	 {"handler": "backstage_dispatch", "mount_path": "/p", "routes": [
	  {"match": [{"backstage_route": {"paths": ["/p/a"]}}], "handle": [
	   {"handler": "backstage_proxy", "route": "/a", "credentials": "dangerously-allow-unauthenticated", "allow_upgrade": true,
	    "rate_limit": {"requests": 5, "window": 60000000000}, "upstream_authorization": "X-Up"},
	   {"handler": "reverse_proxy", "upstreams": [{"dial": "[::1]:8443"}], "transport": {"protocol": "http", "tls": {}},
	    "headers": {"request": {"set": {"Host": ["up"], "X-Forwarded-Port": ["{http.request.port}"], "X-Token": ["{env.T}"]}}}}]},
	  {"match": [{"backstage_route": {"paths": ["/p"]}}], "handle": [{"handler": "backstage_barrier"}]}
	 ]}]}]}]}]}}}}}`
	tables, err := routeTablesOf([]byte(cfg))
	if err != nil || len(tables) != 1 || tables[0].mount != "/p" || len(tables[0].routes) != 1 {
		t.Fatalf("%+v %v", tables, err)
	}
	s := tables[0].routes[0]
	if s.Target != "https://[::1]:8443" || !slices.Equal(s.InjectedHeaders, []string{"X-Token"}) || s.RateLimit.String() != "5/1m0s" ||
		s.UpstreamAuthorization != "X-Up" || !s.WebSocket || !s.Anonymous ||
		!slices.Equal(s.Flags, []string{lintFlagAnonymousCredential, lintFlagAnyMethod, lintFlagAnonymousWebSocket}) {
		t.Errorf("summary %+v", s)
	}
}
