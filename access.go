package backstageproxy

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/policy"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Access policy of one endpoint (issue #12): who may call it (Allow) and the
// caller's own upstream credential (UpstreamAuthorization). Both are
// compiled at provision; a route without them pays a nil check and an
// empty-string check.

// notAllowedMessage is the NotAllowedError message of a principal that the
// endpoint's allow list refuses. It names neither the principal nor the
// list: the caller learns only that this route is not for it.
const notAllowedMessage = "This proxy route does not allow the calling principal"

// validateAccess is the handler's part of Validate.
func (h *Handler) validateAccess() error {
	if err := validateAccess(h.Credentials, h.Allow, h.UpstreamAuthorization, h.UpstreamHeaders, h.AllowedHeaders, handlerAccessNames); err != nil {
		return fmt.Errorf("route %s: %v", h.Route, err)
	}
	return nil
}

// provisionAccess compiles Allow and prepares UpstreamAuthorization. It runs
// after the allowlists are built (setAllowlists).
func (h *Handler) provisionAccess() error {
	h.allow = nil
	h.upstreamAuthorization = ""
	if err := h.validateAccess(); err != nil {
		return err
	}
	if len(h.Allow) > 0 {
		if h.identity != nil && h.identity.DangerouslyDisableDefaultAuthPolicy {
			return fmt.Errorf("route %s: allow needs a verified caller, but backend.auth.dangerouslyDisableDefaultAuthPolicy turns credential checks off for every route; remove one of them", h.Route)
		}
		allow, err := policy.Parse(h.Allow)
		if err != nil {
			return fmt.Errorf("route %s: %v", h.Route, err)
		}
		h.allow = allow
	}
	if h.UpstreamAuthorization != "" {
		h.upstreamAuthorization = http.CanonicalHeaderKey(h.UpstreamAuthorization)
		// Neither the named header nor the caller's Authorization (the
		// Backstage token) goes upstream as itself. validateAccess refuses
		// configurations that would list them; this holds for the header
		// sets every endpoint allows too.
		for _, name := range []string{h.upstreamAuthorization, "Authorization"} {
			delete(h.reqAllow, name)
			h.reqAllowNames = slices.DeleteFunc(h.reqAllowNames, func(n string) bool { return n == name })
		}
	}
	return nil
}

// accessNames are the names of the settings validateAccess mentions, as the
// configuration being checked spells them.
type accessNames struct {
	allow, upstreamAuthorization, headers, allowedHeaders, basicAuth string
}

var (
	handlerAccessNames   = accessNames{"allow", "upstream_authorization", "upstream_headers", "allowed_headers", "the transport's basic_auth"}
	appConfigAccessNames = accessNames{"caddy.allow", "caddy.upstreamAuthorization", "headers", "allowedHeaders", "auth"}
	caddyfileAccessNames = accessNames{"allow", "upstream_authorization", "upstream_header", "allowed_headers", "upstream_basic_auth"}
)

// validateAccess checks Allow and UpstreamAuthorization against the rest of
// the endpoint's configuration: the handler's Validate, the config adapter
// and the Caddyfile share it (checkEndpointAccess).
func validateAccess(credentials string, allow []string, upstreamAuthorization string, upstreamHeaders, allowedHeaders []string, names accessNames) error {
	if len(allow) > 0 {
		if credentials == CredentialsDangerouslyAllowUnauthenticated {
			return fmt.Errorf("%s cannot be used with credentials '%s': there is no verified caller to check", names.allow, CredentialsDangerouslyAllowUnauthenticated)
		}
		if _, err := policy.Parse(allow); err != nil {
			return fmt.Errorf("%s: %v", names.allow, err)
		}
	}
	name := upstreamAuthorization
	if name == "" {
		return nil
	}
	switch {
	case !headerNameRE.MatchString(name):
		return fmt.Errorf("%s: invalid header name %q", names.upstreamAuthorization, name)
	case strings.EqualFold(name, "Authorization"):
		return fmt.Errorf("%s cannot be Authorization itself: that header carries the Backstage token; name another header, e.g. Backstage-Upstream-Authorization", names.upstreamAuthorization)
	case credentials == CredentialsForward:
		return fmt.Errorf("%s cannot be used with credentials '%s', which sends the Backstage token upstream as Authorization", names.upstreamAuthorization, CredentialsForward)
	}
	for _, n := range upstreamHeaders {
		if strings.EqualFold(n, "Authorization") {
			return fmt.Errorf("%s cannot be used with an Authorization header in %s: both would set the upstream Authorization", names.upstreamAuthorization, names.headers)
		}
		if strings.EqualFold(n, name) {
			return fmt.Errorf("%s: %s is also set by %s", names.upstreamAuthorization, name, names.headers)
		}
	}
	for _, n := range allowedHeaders {
		if strings.EqualFold(n, "Authorization") || strings.EqualFold(n, name) {
			return fmt.Errorf("%s lists %s, which %s keeps from the upstream (the Backstage token, or the caller's upstream credential under its own name)", names.allowedHeaders, n, names.upstreamAuthorization)
		}
	}
	return nil
}

// checkEndpointAccess is validateAccess for an endpoint of the config
// adapter or the Caddyfile, before its handler is built.
func checkEndpointAccess(s *endpointSpec, names accessNames) error {
	if s.UpstreamAuthorization != "" && s.BasicAuth != "" {
		// the caller's credential would replace the operator's, or the
		// operator's go upstream when the caller sends none
		return fmt.Errorf("%s cannot be used with %s: both would set the upstream Authorization", names.upstreamAuthorization, names.basicAuth)
	}
	headers := make([]string, len(s.Headers))
	for i, hv := range s.Headers {
		headers[i] = hv.Name
	}
	return validateAccess(s.Credentials, s.Allow, s.UpstreamAuthorization, headers, s.AllowedHeaders, names)
}

// checkAllow refuses a verified principal that the endpoint's allow list
// does not name: 403 NotAllowedError, and nothing goes upstream.
func (h *Handler) checkAllow(r *http.Request, repl *caddy.Replacer, p *identity.Principal) error {
	if h.allow.Allows(p.PolicyView()) {
		return nil
	}
	if c := h.logger.Check(zapcore.DebugLevel, "principal not allowed"); c != nil {
		c.Write(zap.String("route", h.Route), zap.String("principal", p.Subject), zap.String("actor", p.Actor))
	}
	if repl != nil {
		repl.Set(placeholderError, notAllowedMessage)
	}
	h.record(r, outcomeForbidden, http.StatusForbidden, p.Subject, notAllowedMessage)
	return h.refuse(http.StatusForbidden, "NotAllowedError", notAllowedMessage)
}

// setUpstreamAuthorization sends the caller's upstream credential, from the
// header UpstreamAuthorization names, upstream as Authorization. Several
// values are ambiguous (which one would the upstream read?): then none is
// sent.
func (h *Handler) setUpstreamAuthorization(in, out http.Header) {
	if v := in[h.upstreamAuthorization]; len(v) == 1 {
		out["Authorization"] = v
	}
}

// endpointAccessOptions reads an endpoint's `caddy.allow` and
// `caddy.upstreamAuthorization` (endpointCaddyOptions).
func endpointAccessOptions(spec *endpointSpec, n *appconfig.Node) error {
	if v := n.Get("allow"); v != nil {
		list, err := stringList(v, "caddy.allow")
		if err != nil {
			return err
		}
		if len(list) == 0 {
			return fmt.Errorf("caddy.allow is empty, which would refuse every caller; remove it to let any verified caller in, or list who may call")
		}
		spec.Allow = list
	}
	if v := n.Get("upstreamAuthorization"); v != nil {
		s, ok := v.String()
		if !ok || s == "" {
			return fmt.Errorf("caddy.upstreamAuthorization must be a header name, got %s", v.TypeName())
		}
		spec.UpstreamAuthorization = s
	}
	return nil
}

// checkAccess checks an endpoint's access policy once all its keys are
// read (validateAccess), and refuses `caddy.allow` when
// backend.auth.dangerouslyDisableDefaultAuthPolicy turns credential checks
// off: allow would then check nobody, and never silently so.
func (ad *adaptation) checkAccess(spec *endpointSpec, n *appconfig.Node) error {
	where := n.Get("caddy")
	if where == nil {
		return nil
	}
	if err := checkEndpointAccess(spec, appConfigAccessNames); err != nil {
		return fmt.Errorf("%v (%s)", err, where.Source)
	}
	if len(spec.Allow) > 0 {
		if off, _ := ad.root.Lookup("backend.auth.dangerouslyDisableDefaultAuthPolicy").Bool(); off {
			return fmt.Errorf("caddy.allow needs a verified caller, but backend.auth.dangerouslyDisableDefaultAuthPolicy turns credential checks off for every route; remove one of them (%s)", where.Source)
		}
	}
	return nil
}

// parseAccessSubdirective parses the Caddyfile subdirectives `allow
// <pattern...>` and `upstream_authorization <header>` of an endpoint.
func parseAccessSubdirective(d *caddyfile.Dispenser, spec *endpointSpec, sub string, args []string) error {
	switch sub {
	case "allow":
		if len(args) == 0 {
			return d.ArgErr()
		}
		spec.Allow = args
	case "upstream_authorization":
		if len(args) != 1 {
			return d.ArgErr()
		}
		spec.UpstreamAuthorization = args[0]
	}
	return nil
}
