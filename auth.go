package backstageproxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Principal types, as Backstage names them (BackstagePrincipalTypes).
const (
	principalUser    = "user"
	principalService = "service"
)

// principal is who a verified credential belongs to.
type principal struct {
	// Type is "user" or "service".
	Type string
	// Subject is the user entity ref for users ("user:default/alice"), "plugin:<id>"
	// for plugin tokens, or the configured or prefixed subject of external access.
	Subject string
	// Actor is the plugin that acts on behalf of a user (plugin tokens with obo), or "".
	Actor string
	// Method names how the credential was verified: "user", "plugin", "static",
	// "legacy", "jwks". It is exposed as a placeholder and never contains secrets.
	Method string
}

// authError is a rejected credential. Its name and message are those Backstage
// uses (AuthenticationError, NotAllowedError), so clients see the same JSON body.
// It never contains any part of a token.
type authError struct {
	status  int
	name    string
	message string
}

func (e *authError) Error() string { return e.name + ": " + e.message }

func errAuthentication(msg string) *authError {
	return &authError{status: http.StatusUnauthorized, name: "AuthenticationError", message: msg}
}

func errNotAllowed(msg string) *authError {
	return &authError{status: http.StatusForbidden, name: "NotAllowedError", message: msg}
}

// Frequent rejections, allocated once.
var (
	errMissingCredentials = errAuthentication("Missing credentials")
	errIllegalToken       = errAuthentication("Illegal token")
	errMultipleAuthHeader = errAuthentication("Multiple Authorization headers")
)

// authenticator verifies a bearer token the way Backstage's AuthService.authenticate
// does (backstage-proxy.md §3.2): plugin tokens, then user tokens, then external
// access entries in order, else "Illegal token".
type authenticator interface {
	authenticate(ctx context.Context, token string) (principal, *authError)
}

// bearerToken extracts the token from the request's Authorization header with
// Backstage's rule /^Bearer[ ]+(\S+)$/i (backstage-proxy.md §3.1). It reports
// ok=false when there is no usable bearer token, which Backstage treats as no
// credentials at all. Several Authorization headers are refused outright: which
// one a downstream server would read is ambiguous, so we fail closed.
func bearerToken(h http.Header) (token string, authErr *authError) {
	values := h["Authorization"]
	switch len(values) {
	case 0:
		return "", errMissingCredentials
	case 1:
	default:
		return "", errMultipleAuthHeader
	}
	v := strings.TrimRight(values[0], " \t")
	if len(v) < 7 || !strings.EqualFold(v[:6], "bearer") || v[6] != ' ' {
		return "", errMissingCredentials
	}
	v = strings.TrimLeft(v[6:], " ")
	if v == "" {
		return "", errMissingCredentials
	}
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			return "", errMissingCredentials
		}
	}
	return v, nil
}

// staticToken is one external-access entry of type "static"
// (backstage-proxy.md §3.5). Tokens are compared by their SHA-256 digests in
// constant time, so neither the comparison time nor a memory dump of the
// comparison reveals the configured token.
type staticToken struct {
	digest   [sha256.Size]byte
	subject  string
	restrict *accessRestriction
}

func newStaticToken(token, subject string, restrict *accessRestriction) (staticToken, error) {
	if strings.TrimSpace(token) == "" || len(token) < 8 {
		return staticToken{}, fmt.Errorf("static token must be at least 8 characters long")
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return staticToken{}, fmt.Errorf("static token must not contain whitespace")
	}
	if strings.TrimSpace(subject) == "" {
		return staticToken{}, fmt.Errorf("static token subject must not be empty")
	}
	return staticToken{digest: sha256.Sum256([]byte(token)), subject: subject, restrict: restrict}, nil
}

// staticTokens verifies static external-access tokens.
type staticTokens []staticToken

// match returns the entry whose token equals token. All entries are compared,
// so the time taken does not depend on which entry (if any) matched.
func (s staticTokens) match(token string) (*staticToken, bool) {
	if len(s) == 0 {
		return nil, false
	}
	d := sha256.Sum256([]byte(token))
	found := -1
	for i := range s {
		if subtle.ConstantTimeCompare(d[:], s[i].digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return nil, false
	}
	return &s[found], true
}

// accessRestriction limits an external-access entry to some plugins
// (backstage-proxy.md §3.5, accessRestrictions). The proxy only cares whether
// plugin "proxy" is among them.
type accessRestriction struct {
	plugins []string
}

// check returns a 403 unless the restriction allows the proxy plugin.
func (a *accessRestriction) check() *authError {
	if a == nil {
		return nil
	}
	for _, p := range a.plugins {
		if p == "proxy" {
			return nil
		}
	}
	quoted := make([]string, len(a.plugins))
	for i, p := range a.plugins {
		quoted[i] = "'" + p + "'"
	}
	return errNotAllowed("This token's access is restricted to plugin(s) " + strings.Join(quoted, ", "))
}

// buildAuthenticator turns the identity configuration into a verifier. The
// returned release function gives back shared resources (key caches); it is
// never nil when err is nil.
func buildAuthenticator(ctx caddy.Context, a *App) (authenticator, func(), error) {
	repl := caddy.NewReplacer()
	var chain chainAuthenticator
	for i, e := range a.ExternalAccess {
		where := fmt.Sprintf("external_access[%d] (type %q)", i, e.Type)
		restrict, err := newAccessRestriction(e.AccessRestrictions)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %v", where, err)
		}
		switch e.Type {
		case "static":
			st, err := newStaticToken(repl.ReplaceAll(e.Options.Token, ""), repl.ReplaceAll(e.Options.Subject, ""), restrict)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %v", where, err)
			}
			chain.static = append(chain.static, st)
		default:
			return nil, nil, fmt.Errorf("%s: unknown type '%s', expected one of 'static', 'legacy', 'jwks'", where, e.Type)
		}
	}
	return &chain, func() {}, nil
}

func newAccessRestriction(rs []AccessRestriction) (*accessRestriction, error) {
	if rs == nil {
		return nil, nil
	}
	seen := make(map[string]bool, len(rs))
	out := &accessRestriction{}
	for _, r := range rs {
		if r.Plugin == "" {
			return nil, fmt.Errorf("access restriction without plugin")
		}
		if seen[r.Plugin] {
			return nil, fmt.Errorf("duplicate access restriction for plugin '%s'", r.Plugin)
		}
		seen[r.Plugin] = true
		out.plugins = append(out.plugins, r.Plugin)
	}
	return out, nil
}

// chainAuthenticator tries the token handlers in Backstage's order.
type chainAuthenticator struct {
	static staticTokens
}

func (c *chainAuthenticator) authenticate(_ context.Context, token string) (principal, *authError) {
	if st, ok := c.static.match(token); ok {
		if err := st.restrict.check(); err != nil {
			return principal{}, err
		}
		return principal{Type: principalService, Subject: st.subject, Method: "static"}, nil
	}
	return principal{}, errIllegalToken
}
