package backstageproxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
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
}

type headerValue struct {
	Name, Value string
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
		return nil, fmt.Errorf("Proxy target is not a valid URL: %s", target)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("Proxy target for route \"%s\" must be an http or https URL, but is %s", route, target)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("Proxy target is not a valid URL: %s", target)
	}
	if u.User != nil {
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

// pathMatchPatterns are the Caddy path patterns for a route: the prefix itself
// and everything below it on a segment boundary. Caddy's path matcher is
// case-insensitive, like Express.
func pathMatchPatterns(prefix string) []string {
	return []string{prefix, prefix + "/*"}
}

// buildEndpointRoute builds the Caddy route of one endpoint:
//
//	match: path <prefix>, <prefix>/* [, method <allowedMethods>]
//	handle: backstage_proxy → reverse_proxy
//	terminal
//
// A method that is not allowed does not match, so the request falls through
// to a later overlapping route or the final 404, as in Backstage. The route is
// terminal so that, once matched, no later route runs.
func buildEndpointRoute(s endpointSpec, warnings *[]caddyconfig.Warning) (caddyhttp.Route, error) {
	if s.Target == nil {
		return caddyhttp.Route{}, fmt.Errorf("route %s: no target", s.Route)
	}
	prefix := s.prefix()
	matcher := caddy.ModuleMap{}
	if strings.ContainsAny(prefix, "*%{}") {
		// Divergence D9: route keys are literal paths, never patterns.
		matcher["path_regexp"] = caddyconfig.JSON(caddyhttp.MatchRegexp{
			Pattern: "(?i)^" + regexpQuote(prefix) + "(/.*)?$",
		}, warnings)
	} else {
		matcher["path"] = caddyconfig.JSON(caddyhttp.MatchPath(pathMatchPatterns(prefix)), warnings)
	}
	if s.AllowedMethods != nil {
		matcher["method"] = caddyconfig.JSON(caddyhttp.MatchMethod(s.AllowedMethods), warnings)
	}

	credentials := s.Credentials
	if credentials == "" {
		credentials = CredentialsRequire
	}
	policy := Handler{
		Credentials:    credentials,
		Route:          s.routeKey(),
		AllowedHeaders: s.AllowedHeaders,
		AllowUpgrade:   s.WebSocket,
		Rewrite: &UpstreamRewrite{
			StripPrefix:   prefix,
			PathRewrite:   s.PathRewrite,
			CustomRewrite: s.CustomRewrite,
			TargetPath:    s.Target.EscapedPath(),
			TargetQuery:   s.Target.RawQuery,
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
	}

	proxy, err := buildReverseProxy(s, warnings)
	if err != nil {
		return caddyhttp.Route{}, err
	}
	return caddyhttp.Route{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{matcher},
		HandlersRaw: []json.RawMessage{
			caddyconfig.JSONModuleObject(policy, "handler", "backstage_proxy", warnings),
			caddyconfig.JSONModuleObject(proxy, "handler", "reverse_proxy", warnings),
		},
		Terminal: true,
	}, nil
}

// buildReverseProxy configures Caddy's reverse_proxy for the endpoint's target.
func buildReverseProxy(s endpointSpec, warnings *[]caddyconfig.Warning) (*reverseproxy.Handler, error) {
	compression := false // as Backstage: the upstream sees Accept-Encoding only if allowed
	transport := reverseproxy.HTTPTransport{Compression: &compression}
	if s.Target.Scheme == "https" {
		transport.TLS = &reverseproxy.TLSConfig{InsecureSkipVerify: s.InsecureSkipVerify}
		if net.ParseIP(s.Target.Hostname()) == nil {
			// SNI is the target's name even when changeOrigin is false
			transport.TLS.ServerName = s.Target.Hostname()
		}
	}
	if s.ProxyTimeout > 0 {
		transport.ResponseHeaderTimeout = caddy.Duration(s.ProxyTimeout)
	}

	set := http.Header{}
	if s.ChangeOrigin {
		set["Host"] = []string{escapeCaddyPlaceholders(targetHost(s.Target))}
	} else {
		// explicit, because Caddy sends the upstream's host:port to TLS
		// upstreams by default
		set["Host"] = []string{"{http.request.hostport}"}
	}
	configured := map[string]bool{}
	for _, hv := range s.Headers {
		name := http.CanonicalHeaderKey(hv.Name)
		set[name] = []string{hv.Value}
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
		TransportRaw: caddyconfig.JSONModuleObject(transport, "protocol", "http", warnings),
		Upstreams:    reverseproxy.UpstreamPool{{Dial: targetDial(s.Target)}},
		Headers: &headers.Handler{
			Request: &headers.HeaderOps{Set: set, Delete: del},
		},
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

// buildBarrierRoutes are the routes after all endpoints: under the mount path,
// the credentials barrier (401 for anonymous callers, except under
// unauthenticated routes) in front of an empty 404, as Backstage answers
// unknown paths.
func buildBarrierRoutes(mount string, openRoutes []string, warnings *[]caddyconfig.Warning) []caddyhttp.Route {
	barrier := Handler{Barrier: true, UnauthenticatedPaths: openRoutes}
	if mount != DefaultMountPath {
		barrier.MountPath = mount
	}
	return []caddyhttp.Route{{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{{
			"path": caddyconfig.JSON(caddyhttp.MatchPath(pathMatchPatterns(mount)), warnings),
		}},
		HandlersRaw: []json.RawMessage{
			caddyconfig.JSONModuleObject(barrier, "handler", "backstage_proxy", warnings),
			caddyconfig.JSONModuleObject(caddyhttp.StaticResponse{StatusCode: caddyhttp.WeakString("404")}, "handler", "static_response", warnings),
		},
		Terminal: true,
	}}
}

// buildPluginJWKSRoute answers GET <mount>/.backstage/auth/v1/jwks.json
// itself, as Backstage never proxies it (backstage-proxy.md §1.1); this proxy
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

// regexpQuote quotes s for a Go regular expression.
func regexpQuote(s string) string {
	var sb strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, c) {
			sb.WriteByte('\\')
		}
		sb.WriteRune(c)
	}
	return sb.String()
}

// escapeCaddyPlaceholders makes a literal string safe to put where Caddy
// expands placeholders.
func escapeCaddyPlaceholders(s string) string {
	if !strings.ContainsAny(s, "{}") {
		return s
	}
	return strings.NewReplacer("{", `\{`, "}", `\}`).Replace(s)
}
