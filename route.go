package backstageproxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/encode/gzip" // the encoders the generated routes name
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/encode/zstd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// endpointSpec is one Backstage proxy endpoint, independent of where it was
// written (app-config.yaml or Caddyfile). buildEndpointRoute turns it into the
// Caddy route both front ends emit, so they produce identical JSON.
type endpointSpec struct {
	// Route is the route key as written; routeKey the normalized one.
	Route       string
	Target      *url.URL
	Credentials string
	// AllowedMethods is nil when every method is allowed.
	AllowedMethods []string
	AllowedHeaders []string
	// Headers are set upstream, overriding the client's; values are Caddy
	// placeholder strings (secrets as {env.VAR}).
	Headers      []headerValue
	ChangeOrigin bool
	// PathRewrite is used when CustomRewrite is true.
	PathRewrite   []PathRewriteRule
	CustomRewrite bool
	XForwarded    bool
	WebSocket     bool
	// InsecureSkipVerify is HPM `secure: false`.
	InsecureSkipVerify bool
	// ProxyTimeout bounds the wait for the upstream's response headers.
	ProxyTimeout  time.Duration
	IgnorePath    bool
	NoPrependPath bool
	// Method overrides the upstream method (HPM `method`).
	Method string
	// MountPath defaults to /api/proxy.
	MountPath string

	// Router is HPM `router` (map form): the first entry whose condition
	// matches the original request replaces the target.
	Router []routerEntry
	// FollowRedirects follows redirects to the target's own host server-side
	// (HPM `followRedirects`).
	FollowRedirects bool
	// LocationRewrite is HPM autoRewrite/hostRewrite/protocolRewrite.
	LocationRewrite *locationRewrite
	// RewriteLocation (caddy.rewriteLocation) rewrites a redirect to the
	// target into the proxy's namespace. It replaces LocationRewrite.
	RewriteLocation *locationToProxy
	// CookieDomainRewrite and CookiePathRewrite are HPM cookieDomainRewrite
	// and cookiePathRewrite, in map form ("*" is the fallback, "" removes the
	// attribute).
	CookieDomainRewrite []cookieRewrite
	CookiePathRewrite   []cookieRewrite
	// CACerts are base64 DER certificates (HPM `ca` as PEM), CAFiles PEM file
	// paths: the only roots trusted for an https target.
	CACerts []string
	CAFiles []string
	// BasicAuth is HPM `auth` ("user:password", placeholders allowed so that
	// secrets stay {env.VAR}); sent as Basic credentials unless the upstream
	// request already has an Authorization header.
	BasicAuth string
	// LocalAddress is HPM `localAddress`: the local address to dial from.
	LocalAddress string

	// Allow, UpstreamAuthorization, RateLimit and AcknowledgeRisk are the
	// access policy (the endpoint's `caddy:` key; Handler has their docs).
	Allow                 []string
	UpstreamAuthorization string
	RateLimit             *RateLimit
	AcknowledgeRisk       string

	// configureProxy, if set, adjusts each reverse_proxy handler after it is
	// built (the Caddyfile's reverse_proxy and transport subdirectives).
	configureProxy func(*reverseproxy.Handler) error
}

// routerEntry is one HPM `router` entry. Host is matched exactly against the
// client's Host header, PathPrefix as a string prefix of the original
// request-target (path and query, as received), as http-proxy-middleware does.
type routerEntry struct {
	Key        string
	Host       string
	PathPrefix string
	Target     *url.URL
}

// locationToProxy rewrites the Location of a redirect that points at the
// target (under its path) to the same place under the proxy route, so that
// redirects stay inside the proxy (backstage/backstage#20156):
// `https://api.example.com/v1/x` from target `https://api.example.com/v1`
// becomes `<PublicBase>/api/proxy/<route>/x`.
type locationToProxy struct {
	// PublicBase is backend.baseUrl without a trailing `/`; "" means the
	// request's own scheme and host.
	PublicBase string
}

// locationRewrite is http-proxy's setRedirectHostRewrite: on 201, 301, 302,
// 307 and 308, a Location whose host is the target's gets the client's Host
// (AutoRewrite), or HostRewrite, and/or the scheme ProtocolRewrite.
type locationRewrite struct {
	AutoRewrite     bool
	HostRewrite     string
	ProtocolRewrite string
}

// cookieRewrite maps a Set-Cookie Domain or Path value From ("*": any
// other) to To ("": remove the attribute).
type cookieRewrite struct {
	From, To string
}

type headerValue struct {
	Name, Value string
	// Secret is set when the value came from ${VAR}, $env or $file: the
	// secure-route lint counts the header as an injected credential.
	Secret bool
}

// pathRewriteRules are the custom rules (non-nil, possibly empty) or nil
// for the default rewrite.
func (s endpointSpec) pathRewriteRules() []PathRewriteRule {
	if s.CustomRewrite && s.PathRewrite == nil {
		return []PathRewriteRule{}
	}
	if !s.CustomRewrite {
		return nil
	}
	return s.PathRewrite
}

func (s endpointSpec) routeKey() string { return normalizeRouteKey(s.Route) }

func (s endpointSpec) mountPath() string {
	if s.MountPath == "" {
		return DefaultMountPath
	}
	return strings.TrimRight(s.MountPath, "/")
}

// prefix is the request path the endpoint is mounted at.
func (s endpointSpec) prefix() string {
	k := s.routeKey()
	if k == "/" {
		return s.mountPath()
	}
	return s.mountPath() + k
}

// parseTarget validates a proxy target the way Backstage does, and more
// strictly: only http and https URLs with a host can be proxied to.
func parseTarget(route, target string) (*url.URL, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Opaque != "" {
		//lint:ignore ST1005 Backstage's message, word for word (plugins/proxy-backend/src/service/router.ts)
		return nil, fmt.Errorf("Proxy target is not a valid URL: %s", target)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		//lint:ignore ST1005 worded like Backstage's proxy config errors around it, which start with "Proxy"
		return nil, fmt.Errorf("Proxy target for route \"%s\" must be an http or https URL, but is %s", route, target)
	}
	if u.Hostname() == "" {
		//lint:ignore ST1005 Backstage's message, word for word (plugins/proxy-backend/src/service/router.ts)
		return nil, fmt.Errorf("Proxy target is not a valid URL: %s", target)
	}
	if u.User != nil {
		//lint:ignore ST1005 worded like Backstage's proxy config errors around it, which start with "Proxy"
		return nil, fmt.Errorf("Proxy target for route \"%s\" must not contain credentials; use headers (e.g. Authorization) instead", route)
	}
	return u, nil
}

// targetHost is the Host header http-proxy sends with changeOrigin: the
// target's host, with the port only when it is not the scheme's default.
func targetHost(u *url.URL) string {
	port := u.Port()
	if port == "" || (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		host := u.Hostname()
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return u.Host
}

func targetDial(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// buildEndpointRoute builds the Caddy route of one endpoint:
//
//	match: backstage_route <prefix> [, method <allowedMethods>]
//	handle: backstage_proxy → [headers (Set-Cookie rewrite)] → reverse_proxy
//	terminal
//
// A method that is not allowed does not match, so the request falls through
// to a later overlapping route or the final 404, as in Backstage. The route is
// terminal so that, once matched, no later route runs.
//
// With HPM `router` entries, the handlers are a subroute with one variant per
// entry (its host and original-URL matchers, its own target), tried in order,
// then the default target.
func buildEndpointRoute(s endpointSpec, warnings *[]caddyconfig.Warning) (caddyhttp.Route, error) {
	if s.Target == nil {
		return caddyhttp.Route{}, fmt.Errorf("route %s: no target", s.Route)
	}
	prefix := s.prefix()
	// Divergence D9: route keys are literal paths, never patterns; matched
	// as received, as Express does, with no per-request cleaning.
	matcher := caddy.ModuleMap{
		"backstage_route": caddyconfig.JSON(MatchRoutePath{Paths: []string{prefix}}, warnings),
	}
	if s.AllowedMethods != nil {
		matcher["method"] = caddyconfig.JSON(caddyhttp.MatchMethod(s.AllowedMethods), warnings)
	}

	handlers, err := buildEndpointHandlers(s, s.Target, warnings)
	if err != nil {
		return caddyhttp.Route{}, err
	}
	if len(s.Router) > 0 {
		var variants caddyhttp.RouteList
		for _, re := range s.Router {
			h, err := buildEndpointHandlers(s, re.Target, warnings)
			if err != nil {
				return caddyhttp.Route{}, err
			}
			variants = append(variants, caddyhttp.Route{
				MatcherSetsRaw: caddyhttp.RawMatcherSets{re.matcherSet(warnings)},
				HandlersRaw:    h,
				Terminal:       true,
			})
		}
		variants = append(variants, caddyhttp.Route{HandlersRaw: handlers, Terminal: true})
		handlers = []json.RawMessage{caddyconfig.JSONModuleObject(
			caddyhttp.Subroute{Routes: variants}, "handler", "subroute", warnings)}
	}
	if s.allowsRequestHeader("Accept-Encoding") {
		// Backstage's root router compresses responses itself (the
		// `compression` middleware: gzip at 1 KiB or more, compressible
		// types, not when the upstream already encoded). Its client sees the
		// request's Accept-Encoding only when the route lets it through, and
		// Content-Encoding always passes (D5); so here, on such routes, Caddy's
		// encode does the same, outside the response filter. zstd for
		// clients that ask for it alone.
		handlers = append([]json.RawMessage{caddyconfig.JSONModuleObject(encode.Encode{
			EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{}`), "zstd": json.RawMessage(`{}`)},
			Prefer:       []string{"gzip", "zstd"},
			MinLength:    1024,
		}, "handler", "encode", warnings)}, handlers...)
	}
	return caddyhttp.Route{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{matcher},
		HandlersRaw:    handlers,
		Terminal:       true,
	}, nil
}

// allowsRequestHeader reports whether the endpoint lets the client's header
// name through (allowedHeaders, case-insensitively).
func (s endpointSpec) allowsRequestHeader(name string) bool {
	for _, h := range s.AllowedHeaders {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

// matcherSet matches the requests HPM's router sends to this entry: the
// client's Host header exactly, and/or the original request-target (as
// received: percent-encoding and query included) by string prefix, both
// case-sensitive.
func (re routerEntry) matcherSet(warnings *[]caddyconfig.Warning) caddy.ModuleMap {
	m := caddy.ModuleMap{}
	if re.Host != "" {
		m["header_regexp"] = caddyconfig.JSON(caddyhttp.MatchHeaderRE{
			"Host": &caddyhttp.MatchRegexp{Pattern: "^" + regexp.QuoteMeta(re.Host) + "$"},
		}, warnings)
	}
	if re.PathPrefix != "" {
		m["vars_regexp"] = caddyconfig.JSON(caddyhttp.MatchVarsRE{
			"{http.request.orig_uri}": &caddyhttp.MatchRegexp{Pattern: "^" + regexp.QuoteMeta(re.PathPrefix)},
		}, warnings)
	}
	return m
}

// buildEndpointHandlers builds the handler chain of an endpoint for one
// target (the endpoint's, or a router entry's).
func buildEndpointHandlers(s endpointSpec, target *url.URL, warnings *[]caddyconfig.Warning) ([]json.RawMessage, error) {
	prefix := s.prefix()
	credentials := s.Credentials
	if credentials == "" {
		credentials = CredentialsRequire
	}
	policy := Handler{
		Credentials:           credentials,
		Route:                 s.routeKey(),
		AllowedHeaders:        s.AllowedHeaders,
		AllowUpgrade:          s.WebSocket,
		Allow:                 s.Allow,
		UpstreamAuthorization: s.UpstreamAuthorization,
		RateLimit:             s.RateLimit,
		AcknowledgeRisk:       s.AcknowledgeRisk,
		Rewrite: &UpstreamRewrite{
			StripPrefix:   prefix,
			PathRewrite:   s.pathRewriteRules(),
			TargetPath:    target.EscapedPath(),
			TargetQuery:   target.RawQuery,
			IgnorePath:    s.IgnorePath,
			NoPrependPath: s.NoPrependPath,
		},
	}
	if s.MountPath != "" && s.mountPath() != DefaultMountPath {
		policy.MountPath = s.mountPath()
	}
	if policy.Rewrite.TargetPath == "/" {
		policy.Rewrite.TargetPath = ""
	}
	for _, hv := range s.Headers {
		policy.UpstreamHeaders = append(policy.UpstreamHeaders, hv.Name)
		if hv.Secret && !hasSecretPlaceholder(hv.Value) {
			// The JSON shows the value literally: say what it is.
			policy.CredentialHeaders = append(policy.CredentialHeaders, hv.Name)
		}
	}

	proxy, err := buildReverseProxy(s, target, warnings)
	if err != nil {
		return nil, err
	}
	if s.configureProxy != nil {
		if err := s.configureProxy(proxy); err != nil {
			return nil, err
		}
	}
	handlers := []json.RawMessage{caddyconfig.JSONModuleObject(policy, "handler", "backstage_proxy", warnings)}
	if ops := cookieRewriteOps(s.CookieDomainRewrite, s.CookiePathRewrite); ops != nil {
		// Deferred: applied when the upstream's headers are written, after
		// reverse_proxy copied them and before backstage_proxy filters them.
		handlers = append(handlers, caddyconfig.JSONModuleObject(headers.Handler{
			Response: &headers.RespHeaderOps{HeaderOps: ops, Deferred: true},
		}, "handler", "headers", warnings))
	}
	return append(handlers, caddyconfig.JSONModuleObject(proxy, "handler", "reverse_proxy", warnings)), nil
}

// buildReverseProxy configures Caddy's reverse_proxy for the endpoint and
// one of its targets.
func buildReverseProxy(s endpointSpec, target *url.URL, warnings *[]caddyconfig.Warning) (*reverseproxy.Handler, error) {
	compression := false // as Backstage: the upstream sees Accept-Encoding only if allowed
	transport := reverseproxy.HTTPTransport{Compression: &compression, LocalAddress: s.LocalAddress}
	if target.Scheme == "https" {
		transport.TLS = &reverseproxy.TLSConfig{InsecureSkipVerify: s.InsecureSkipVerify}
		if net.ParseIP(target.Hostname()) == nil {
			// SNI is the target's name even when changeOrigin is false
			transport.TLS.ServerName = target.Hostname()
		}
		switch {
		case len(s.CACerts) > 0:
			transport.TLS.CARaw = caddyconfig.JSONModuleObject(caddytls.InlineCAPool{TrustedCACerts: s.CACerts}, "provider", "inline", warnings)
		case len(s.CAFiles) > 0:
			transport.TLS.CARaw = caddyconfig.JSONModuleObject(caddytls.FileCAPool{TrustedCACertPEMFiles: s.CAFiles}, "provider", "file", warnings)
		}
	}
	if s.ProxyTimeout > 0 {
		transport.ResponseHeaderTimeout = caddy.Duration(s.ProxyTimeout)
	}
	// The route's `headers:` (often secrets: `X-Api-Key: ${API_KEY}`) are
	// set by the transport on its own copy of the request, so no logger
	// sees them: at DEBUG, reverse_proxy logs the request it hands the
	// transport, and Caddy redacts only Authorization and cookies. Host
	// stays a header op (reverse_proxy treats it specially).
	var injected http.Header
	for _, hv := range s.Headers {
		name := http.CanonicalHeaderKey(hv.Name)
		if name == "Host" {
			continue
		}
		if injected == nil {
			injected = http.Header{}
		}
		injected[name] = []string{hv.Value}
	}
	// Always ours, even when it adds nothing to Caddy's `http` transport:
	// `caddy backstage explain` relies on it to record the upstream request
	// instead of sending it (explain.go).
	transportRaw := caddyconfig.JSONModuleObject(UpstreamTransport{
		HTTPTransport:   transport,
		BasicAuth:       s.BasicAuth,
		FollowRedirects: s.FollowRedirects,
		SetHeaders:      injected,
	}, "protocol", "backstage_http", warnings)

	set := http.Header{}
	if s.ChangeOrigin {
		set["Host"] = []string{appconfig.EscapeCaddyPlaceholders(targetHost(target))}
	} else {
		// explicit, because Caddy sends the upstream's host:port to TLS
		// upstreams by default
		set["Host"] = []string{"{http.request.hostport}"}
	}
	configured := map[string]bool{}
	for _, hv := range s.Headers {
		name := http.CanonicalHeaderKey(hv.Name)
		if name == "Host" {
			set[name] = []string{hv.Value}
		}
		configured[name] = true
	}
	var del []string
	if s.XForwarded {
		if !configured["X-Forwarded-Port"] {
			set["X-Forwarded-Port"] = []string{"{http.request.port}"}
		}
		if !configured["Via"] {
			del = append(del, "Via")
		}
	} else {
		// Backstage sends neither X-Forwarded-* nor Via unless xfwd is on
		for _, name := range []string{"Via", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
			if !configured[name] {
				del = append(del, name)
			}
		}
	}

	rp := &reverseproxy.Handler{
		TransportRaw: transportRaw,
		Upstreams:    reverseproxy.UpstreamPool{{Dial: targetDial(target)}},
		Headers: &headers.Handler{
			Request: &headers.HeaderOps{Set: set, Delete: del},
		},
	}
	ops := locationRewriteOps(s.LocationRewrite, target)
	if s.RewriteLocation != nil {
		ops = locationToProxyOps(s.RewriteLocation, target, s.prefix())
	}
	if ops != nil {
		statuses := []int{201, 301, 302, 307, 308} // http-proxy's setRedirectHostRewrite
		if s.RewriteLocation != nil {
			statuses = []int{201, 301, 302, 303, 307, 308}
		}
		rp.Headers.Response = &headers.RespHeaderOps{
			HeaderOps: ops,
			Require:   &caddyhttp.ResponseMatcher{StatusCode: statuses},
		}
	}
	if s.WebSocket {
		// keep WebSocket streams open across config reloads (divergence D1)
		rp.StreamCloseDelay = caddy.Duration(time.Hour)
	}
	if s.Method != "" {
		rp.Rewrite = &rewrite.Rewrite{Method: s.Method}
	}
	return rp, nil
}

// locationRewriteOps rewrites the Location of a redirect the way http-proxy's
// setRedirectHostRewrite does: only when its host (as written, compared
// case-insensitively) is the target's host (with the port exactly as the
// target URL has it); only the scheme and host change, the path is kept; a
// Location without a path gains `/`, as url.format does. The ops run on the
// upstream's headers before backstage_proxy filters them, so they only show
// when `Location` is in allowedHeaders, as in Backstage.
func locationRewriteOps(lr *locationRewrite, target *url.URL) *headers.HeaderOps {
	if lr == nil || (!lr.AutoRewrite && lr.HostRewrite == "" && lr.ProtocolRewrite == "") {
		return nil
	}
	scheme := "${1}"
	if lr.ProtocolRewrite != "" {
		p := lr.ProtocolRewrite
		if !strings.HasSuffix(p, ":") {
			p += ":"
		}
		scheme = regexpReplacementLiteral(p)
	}
	host := "${3}"
	switch {
	case lr.HostRewrite != "":
		host = regexpReplacementLiteral(lr.HostRewrite)
	case lr.AutoRewrite:
		host = "{http.request.hostport}"
	}
	head := `(?s)^([A-Za-z][A-Za-z0-9+.\-]*:)//([^/?#@]*@)?((?i:` + regexp.QuoteMeta(strings.ToLower(target.Host)) + `))`
	return &headers.HeaderOps{Replace: map[string][]headers.Replacement{
		"Location": {
			{SearchRegexp: head + `(/.*)$`, Replace: scheme + "//${2}" + host + "${4}"},
			{SearchRegexp: head + `([?#].*)?$`, Replace: scheme + "//${2}" + host + "/${4}"},
		},
	}}
}

// locationToProxyOps rewrites a Location at or under the target (absolute
// with the target's scheme and host, or an absolute path) to the same place
// under the route's prefix on the public base. Anything else is left as it
// is.
func locationToProxyOps(lp *locationToProxy, target *url.URL, routePrefix string) *headers.HeaderOps {
	base := "{http.request.scheme}://{http.request.hostport}"
	if lp.PublicBase != "" {
		base = regexpReplacementLiteral(lp.PublicBase)
	}
	tpath := strings.TrimRight(target.EscapedPath(), "/")
	rest := `((?:/|[?#]).*)?$`
	origin := `(?i:` + regexp.QuoteMeta(strings.ToLower(target.Scheme)+"://"+strings.ToLower(target.Host)) + `)`
	repl := base + regexpReplacementLiteral(routePrefix) + "${1}"
	return &headers.HeaderOps{Replace: map[string][]headers.Replacement{
		"Location": {
			{SearchRegexp: `(?s)^` + origin + regexp.QuoteMeta(tpath) + rest, Replace: repl},
			{SearchRegexp: `(?s)^` + regexp.QuoteMeta(tpath) + rest, Replace: repl},
		},
	}}
}

// cookieMarker tags the attribute a cookie rewrite works on (cookieMarkerRE
// finds it). It cannot occur in a header value read from an upstream (Go
// refuses control characters).
const (
	cookieMarker   = "\x00"
	cookieMarkerRE = `\x00`
)

// cookieRewriteOps rewrites the Domain and Path attributes of Set-Cookie as
// http-proxy's rewriteCookieProperty does: the first `; <attr>=<value>` is
// looked up by its exact value, then "*"; the new value replaces it, or ""
// removes the attribute. To keep one rule's result from being rewritten again
// by a later one, the attribute is first tagged with cookieMarker, and each
// rule consumes the tag.
func cookieRewriteOps(domain, path []cookieRewrite) *headers.HeaderOps {
	var ops []headers.Replacement
	for _, attr := range []struct {
		name  string
		rules []cookieRewrite
	}{{"domain", domain}, {"path", path}} {
		if len(attr.rules) == 0 {
			continue
		}
		name := "(?i:" + attr.name + "=)"
		ops = append(ops, headers.Replacement{
			SearchRegexp: `(?s)^(.*?;\s*)(` + name + `[^;])`,
			Replace:      "${1}" + cookieMarker + "${2}",
		})
		var fallback *cookieRewrite
		for i, r := range attr.rules {
			if r.From == "*" {
				fallback = &attr.rules[i]
				continue
			}
			op := headers.Replacement{SearchRegexp: `(?s)^(.*?)(;\s*)` + cookieMarkerRE + `(` + name + `)` + regexp.QuoteMeta(r.From) + `(;.*)?$`}
			if r.To == "" {
				op.Replace = "${1}${4}"
			} else {
				op.Replace = "${1}${2}${3}" + regexpReplacementLiteral(r.To) + "${4}"
			}
			ops = append(ops, op)
		}
		if fallback != nil {
			op := headers.Replacement{SearchRegexp: `(?s)^(.*?)(;\s*)` + cookieMarkerRE + `(` + name + `)[^;]+(.*)$`}
			if fallback.To == "" {
				op.Replace = "${1}${4}"
			} else {
				op.Replace = "${1}${2}${3}" + regexpReplacementLiteral(fallback.To) + "${4}"
			}
			ops = append(ops, op)
		}
		ops = append(ops, headers.Replacement{SearchRegexp: cookieMarkerRE})
	}
	if ops == nil {
		return nil
	}
	return &headers.HeaderOps{Replace: map[string][]headers.Replacement{"Set-Cookie": ops}}
}

// regexpReplacementLiteral makes s a literal in a header `replace` op's
// replacement, which goes through Caddy's replacer and then
// regexp.Expand.
func regexpReplacementLiteral(s string) string {
	return appconfig.EscapeCaddyPlaceholders(strings.ReplaceAll(s, "$", "$$"))
}

// buildBarrierRoutes are the routes after all endpoints: under the mount path,
// the credentials barrier (401 for anonymous callers, except under
// unauthenticated routes) in front of an empty 404, as Backstage answers
// unknown paths.
func buildBarrierRoutes(mount string, openRoutes []string, warnings *[]caddyconfig.Warning) []caddyhttp.Route {
	barrier := Barrier{UnauthenticatedPaths: openRoutes}
	if mount != DefaultMountPath {
		barrier.MountPath = mount
	}
	return []caddyhttp.Route{{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{{
			"backstage_route": caddyconfig.JSON(MatchRoutePath{Paths: []string{mount}}, warnings),
		}},
		HandlersRaw: []json.RawMessage{
			caddyconfig.JSONModuleObject(barrier, "handler", "backstage_barrier", warnings),
			caddyconfig.JSONModuleObject(caddyhttp.StaticResponse{StatusCode: caddyhttp.WeakString("404")}, "handler", "static_response", warnings),
		},
		Terminal: true,
	}}
}

// buildPluginJWKSRoute answers GET <mount>/.backstage/auth/v1/jwks.json
// itself, as Backstage never proxies it (backend-defaults'
// createAuthIntegrationRouter.ts, in httpRouter, serves it first); this proxy
// signs nothing, so its key set is empty.
func buildPluginJWKSRoute(mount string, warnings *[]caddyconfig.Warning) caddyhttp.Route {
	return caddyhttp.Route{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{{
			"path":   caddyconfig.JSON(caddyhttp.MatchPath{mount + "/.backstage/auth/v1/jwks.json"}, warnings),
			"method": caddyconfig.JSON(caddyhttp.MatchMethod{"GET", "HEAD"}, warnings),
		}},
		HandlersRaw: []json.RawMessage{
			caddyconfig.JSONModuleObject(caddyhttp.StaticResponse{
				StatusCode: caddyhttp.WeakString("200"),
				Headers:    http.Header{"Content-Type": []string{"application/json; charset=utf-8"}},
				Body:       `\{"keys":[]\}`,
			}, "handler", "static_response", warnings),
		},
		Terminal: true,
	}
}

// buildErrorRoute is the server error route that answers the errors of
// backstage_proxy as Backstage does (ErrorHandler); other errors pass
// through it untouched.
func buildErrorRoute(warnings *[]caddyconfig.Warning) caddyhttp.Route {
	return buildErrorRouteFor(ErrorHandler{}, warnings)
}

// buildErrorRouteFor is buildErrorRoute with the handler's options.
func buildErrorRouteFor(h ErrorHandler, warnings *[]caddyconfig.Warning) caddyhttp.Route {
	return caddyhttp.Route{
		HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(h, "handler", "backstage_error", warnings)},
	}
}
