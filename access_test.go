package backstageproxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestAccessConfigErrors: every form of configuration refuses the same
// access-policy mistakes, naming the route and the setting.
func TestAccessConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler Handler
		want    string
	}{
		{"allow on an open route", Handler{Credentials: CredentialsDangerouslyAllowUnauthenticated, Allow: []string{"user"}}, "allow cannot be used with credentials 'dangerously-allow-unauthenticated'"},
		{"bad pattern", Handler{Allow: []string{"user", "group:sre*"}}, `allow: entry 1 "group:sre*": ambiguous wildcard`},
		{"empty pattern", Handler{Allow: []string{""}}, `allow: entry 0 "": empty entry`},
		{"forward", Handler{Credentials: CredentialsForward, UpstreamAuthorization: "X-Up"}, "upstream_authorization cannot be used with credentials 'forward'"},
		{"injected Authorization", Handler{UpstreamHeaders: []string{"authorization"}, UpstreamAuthorization: "X-Up"}, "upstream_authorization cannot be used with an Authorization header in upstream_headers"},
		{"named header injected", Handler{UpstreamHeaders: []string{"x-up"}, UpstreamAuthorization: "X-Up"}, "upstream_authorization: X-Up is also set by upstream_headers"},
		{"invalid name", Handler{UpstreamAuthorization: "X Up"}, `upstream_authorization: invalid header name "X Up"`},
		{"Authorization itself", Handler{UpstreamAuthorization: "AUTHORIZATION"}, "upstream_authorization cannot be Authorization itself"},
		{"allowedHeaders Authorization", Handler{AllowedHeaders: []string{"Authorization"}, UpstreamAuthorization: "X-Up"}, "allowed_headers lists Authorization"},
		{"allowedHeaders the named header", Handler{AllowedHeaders: []string{"x-UP"}, UpstreamAuthorization: "X-Up"}, "allowed_headers lists x-UP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.handler
			h.Route = "/r"
			if err := h.setup(&App{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "route /r: "+tc.want) {
				t.Errorf("provision: %v, want %q", err, tc.want)
			}
			if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "route /r: "+tc.want) {
				t.Errorf("validate: %v, want %q", err, tc.want)
			}
		})
	}
	// Without credential checks there is nobody to allow: fail closed.
	h := Handler{Route: "/r", Allow: []string{"user"}}
	if err := h.setup(&App{DangerouslyDisableDefaultAuthPolicy: true}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "dangerouslyDisableDefaultAuthPolicy") {
		t.Errorf("allow with dangerouslyDisableDefaultAuthPolicy: %v", err)
	}
	// And the good ones provision.
	for _, h := range []Handler{
		{Route: "/r", Allow: []string{"user", "group:default/sre"}},
		{Route: "/r", UpstreamAuthorization: "X-Up", UpstreamHeaders: []string{"X-Api-Key"}},
		{Route: "/r", UpstreamAuthorization: "X-Up", Credentials: CredentialsDangerouslyAllowUnauthenticated},
	} {
		if err := h.setup(&App{}, zap.NewNop()); err != nil {
			t.Errorf("%+v: %v", h, err)
		}
	}
}

func TestAccessCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, block, want string
	}{
		{"allow on an open route", "credentials dangerously-allow-unauthenticated\n\t\t\tallow user", "endpoint /r: allow cannot be used with credentials 'dangerously-allow-unauthenticated': there is no verified caller to check, at Caddyfile:5"},
		{"bad pattern", "allow user:default/alice *", `entry 1 "*": '*' alone`},
		{"allow without patterns", "allow", "wrong argument count"},
		{"allow twice", "allow user\n\t\t\tallow service", "allow specified more than once"},
		{"forward", "credentials forward\n\t\t\tupstream_authorization X-Up", "upstream_authorization cannot be used with credentials 'forward'"},
		{"injected Authorization", "upstream_header AUTHORIZATION \"Bearer {env.T}\"\n\t\t\tupstream_authorization X-Up", "upstream_authorization cannot be used with an Authorization header in upstream_header"},
		{"two names", "upstream_authorization X-Up X-Other", "wrong argument count"},
		{"Authorization itself", "upstream_authorization authorization", "upstream_authorization cannot be Authorization itself"},
		{"basic credentials", "upstream_basic_auth svc:{env.PW}\n\t\t\tupstream_authorization X-Up", "upstream_authorization cannot be used with upstream_basic_auth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cf := ":9080 {\n\tbackstage_proxy {\n\t\tendpoint /r http://localhost:9100 {\n\t\t\t" + tc.block + "\n\t\t}\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// TestAccessAdapterTypeErrors: wrong YAML types are errors at the file and
// line of the endpoint's caddy key.
func TestAccessAdapterTypeErrors(t *testing.T) {
	for _, tc := range []struct{ caddy, want string }{
		{"allow: []", "caddy.allow is empty"},
		{"allow: [1]", "caddy.allow must be a list of strings, but has a number"},
		{"allow: user", "caddy.allow must be a list of strings, got string"},
		{"upstreamAuthorization: 42", "caddy.upstreamAuthorization must be a header name, got number"},
		{"upstreamAuthorization: [X-Up]", "caddy.upstreamAuthorization must be a header name, got array"},
		{"upstreamAuthorization: 'X Up'", `caddy.upstreamAuthorization: invalid header name "X Up"`},
	} {
		cfg := "proxy:\n  endpoints:\n    /r:\n      target: http://localhost:9100\n      caddy:\n        " + tc.caddy + "\n"
		_, _, err := caddyconfig.GetAdapter("backstage").Adapt([]byte(cfg), nil)
		if err == nil || !strings.Contains(err.Error(), "proxy route /r: "+tc.want) || !strings.Contains(err.Error(), "(line 5)") {
			t.Errorf("%s: got %v, want %q at line 5", tc.caddy, err, tc.want)
		}
	}
}

// TestAllowRefusalLog: a refusal by allow is logged at debug level with the
// route and the principal, never the token, and sets
// {http.backstage_proxy.error}; the next handler is not called.
func TestAllowRefusalLog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	auth := &htAuth{}
	h := Handler{Route: "/r", Allow: []string{"user", "plugin:catalog"}}
	if err := h.setup(&App{authn: auth}, zap.New(core)); err != nil {
		t.Fatal(err)
	}
	repl := caddy.NewReplacer()
	r := httptest.NewRequest("GET", "/api/proxy/r/x", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	r.Header.Set("Authorization", "Bearer good")
	called := false
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { called = true; return nil })
	err := h.ServeHTTP(httptest.NewRecorder(), r, next)
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != 403 || called {
		t.Fatalf("got %v (next called: %v), want a 403 handler error", err, called)
	}
	if v, _ := repl.Get(placeholderError); v != notAllowedMessage {
		t.Errorf("{%s} = %v", placeholderError, v)
	}
	entries := logs.FilterMessage("principal not allowed").All()
	if len(entries) != 1 {
		t.Fatalf("%d log entries: %v", len(entries), logs.All())
	}
	fields := entries[0].ContextMap()
	if fields["route"] != "/r" || fields["principal"] != "external:ci" {
		t.Errorf("log fields %v", fields)
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message+fmt.Sprint(e.ContextMap()), "good") {
			t.Errorf("the token is in the log: %v", e)
		}
	}
}
