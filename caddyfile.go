package backstageproxy

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

func init() {
	httpcaddyfile.RegisterDirective("backstage_proxy", parseEndpointDirective)
	// Before `handle`: the endpoints match only their own paths, so a
	// catch-all `handle` block must not hide them.
	httpcaddyfile.RegisterDirectiveOrder("backstage_proxy", httpcaddyfile.Before, "handle")
	httpcaddyfile.RegisterDirective("backstage_proxy_barrier", parseBarrierDirective)
	httpcaddyfile.RegisterDirectiveOrder("backstage_proxy_barrier", httpcaddyfile.Before, "handle")
	httpcaddyfile.RegisterGlobalOption("backstage", parseIdentityOption)
}

const (
	stateOpenRoutes   = "backstage_proxy.open_routes"
	stateBarrierSeen  = "backstage_proxy.barrier_seen"
	stateErrorRoute   = "backstage_proxy.error_route"
	stateMountDefault = DefaultMountPath
)

// parseEndpointDirective parses the `backstage_proxy` directive. Its block
// form holds every endpoint of a site and emits them, in the order written,
// together with the credentials barrier after them, so nothing can be put in
// the wrong order:
//
//	backstage_proxy [<mount path>] {
//		endpoint <route> <target> [{
//			<endpoint options...>
//		}]
//		...
//	}
//
// Its single form is one endpoint; put `backstage_proxy_barrier` after the
// last one of a site (deprecated: use the block form):
//
//	backstage_proxy <route> <target> [{
//		<endpoint options...>
//	}]
//
// Each endpoint produces exactly the route the `backstage` config adapter
// produces for the same endpoint in app-config.yaml. `<route>` is the
// Backstage route key (e.g. `/catalog`), served under the mount path
// (default `/api/proxy`). The endpoint options are Backstage's:
//
//	credentials require|forward|dangerously-allow-unauthenticated
//	allowed_methods <METHOD...>
//	allowed_headers <name...>
//	upstream_header <name> <value>
//	change_origin true|false
//	path_rewrite <regexp> <replacement>
//	path_rewrite off
//	xfwd
//	ws
//	insecure_skip_verify
//	proxy_timeout <duration>
//	ignore_path
//	no_prepend_path
//	method <METHOD>
//	follow_redirects
//	upstream_basic_auth <user>:<password>
//	ca_file <pem file...>
//	local_address <address>
//	location_rewrite auto | host <host> | protocol http|https
//	cookie_domain_rewrite <from>|* <to>
//	cookie_path_rewrite <from>|* <to>
//	rate_limit <requests> <window>
//	mount_path <path>            (single form only)
//	allow <pattern...>
//	upstream_authorization <header>
//	acknowledge_risk <reason>
//
// `transport http|backstage_http { … }` takes the options of those
// transports, applied on top of the transport derived from the target and
// the options above. Every other subdirective is `reverse_proxy`'s own
// (`lb_policy`, `health_uri`, `lb_retries`, `header_up`, `to`, …), parsed by
// its Caddyfile parser. `header` and `basic_auth` are the deprecated names
// of `upstream_header` and `upstream_basic_auth`.
func parseEndpointDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	h.Next() // directive name
	args := h.RemainingArgs()
	switch len(args) {
	case 0, 1:
		return parseEndpointBlock(h, args)
	case 2:
	default:
		return nil, h.ArgErr()
	}
	at := h.Token()
	spec, err := parseEndpoint(h, h.Dispenser, args[0], args[1], true)
	if err != nil {
		return nil, err
	}
	site := siteState(h)
	if site[stateBarrierSeen] == true {
		return nil, h.Err("backstage_proxy must come before backstage_proxy_barrier in the same site block")
	}
	if spec.Credentials == CredentialsDangerouslyAllowUnauthenticated {
		open, _ := site[stateOpenRoutes].(map[string][]string)
		if open == nil {
			open = map[string][]string{}
			site[stateOpenRoutes] = open
		}
		open[spec.mountPath()] = append(open[spec.mountPath()], spec.routeKey())
	}
	var warnings []caddyconfig.Warning
	r, err := buildEndpointRoute(spec, &warnings)
	if err != nil {
		return nil, h.Errf("%v", err)
	}
	if err := lintCaddyfileEndpoint(h, at, r); err != nil {
		return nil, err
	}
	if spec.AllowedMethods != nil && len(spec.AllowedMethods) == 0 {
		return nil, nil
	}
	return withErrorRoute(h, []httpcaddyfile.ConfigValue{{Class: "route", Value: r}}, &warnings), nil
}

// parseEndpointBlock parses the block form of backstage_proxy: the
// endpoints, then the plugin key set route and the barrier, as the adapter
// emits them.
func parseEndpointBlock(h httpcaddyfile.Helper, args []string) ([]httpcaddyfile.ConfigValue, error) {
	mount := stateMountDefault
	if len(args) == 1 {
		mount = strings.TrimRight(args[0], "/")
		if !strings.HasPrefix(mount, "/") {
			return nil, h.Errf("mount path must start with '/'")
		}
	}
	site := siteState(h)
	if site[stateBarrierSeen] == true {
		return nil, h.Err("only one backstage_proxy block (or backstage_proxy_barrier) per site block")
	}
	site[stateBarrierSeen] = true
	var warnings []caddyconfig.Warning
	values := []httpcaddyfile.ConfigValue{{Class: "route", Value: buildPluginJWKSRoute(mount, &warnings)}}
	open, _ := site[stateOpenRoutes].(map[string][]string)
	openRoutes := append([]string(nil), open[mount]...)
	var routes []caddyhttp.Route
	for nesting := h.Nesting(); h.NextBlock(nesting); {
		if h.Val() != "endpoint" {
			return nil, h.Errf("unrecognized subdirective %s (want endpoint <route> <target>)", h.Val())
		}
		eargs := h.RemainingArgs()
		if len(eargs) != 2 {
			return nil, h.ArgErr()
		}
		at := h.Token()
		spec, err := parseEndpoint(h, h.Dispenser, eargs[0], eargs[1], false)
		if err != nil {
			return nil, err
		}
		if mount != DefaultMountPath {
			spec.MountPath = mount
		}
		if spec.Credentials == CredentialsDangerouslyAllowUnauthenticated {
			openRoutes = append(openRoutes, spec.routeKey())
		}
		r, err := buildEndpointRoute(spec, &warnings)
		if err != nil {
			return nil, h.Errf("%v", err)
		}
		if err := lintCaddyfileEndpoint(h, at, r); err != nil {
			return nil, err
		}
		if spec.AllowedMethods != nil && len(spec.AllowedMethods) == 0 {
			continue
		}
		routes = append(routes, r)
	}
	// The endpoints and the barrier in one route for the mount, indexed by
	// backstage_dispatch, as the adapter emits them.
	routes = append(routes, buildBarrierRoutes(mount, openRoutes, &warnings)...)
	values = append(values, httpcaddyfile.ConfigValue{Class: "route", Value: buildDispatchRoute(mount, routes, &warnings)})
	return withErrorRoute(h, values, &warnings), nil
}

// parseEndpoint parses the options block of one endpoint from d, which is
// at the endpoint's last argument.
func parseEndpoint(h httpcaddyfile.Helper, d *caddyfile.Dispenser, route, rawTarget string, single bool) (endpointSpec, error) {
	at := d.Token()
	target, err := parseTarget(route, rawTarget)
	if err != nil {
		return endpointSpec{}, d.Errf("%v", err)
	}
	spec := endpointSpec{Route: route, Target: target, Credentials: CredentialsRequire, ChangeOrigin: true}
	seen := map[string]bool{}
	rewriteOff, rewriteRules := false, 0
	accessAt := "" // where the last access-policy subdirective is
	var proxySegments []caddyfile.Segment
	var transportSegment caddyfile.Segment
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		switch sub {
		case "header", "basic_auth":
			caddy.Log().Named("caddyfile").Warn("backstage_proxy: subdirective renamed; use upstream_"+sub,
				zap.String("file", d.File()), zap.Int("line", d.Line()))
			sub = "upstream_" + sub
		case "credentials", "allowed_methods", "allowed_headers", "upstream_header", "change_origin", "path_rewrite",
			"xfwd", "ws", "insecure_skip_verify", "ignore_path", "no_prepend_path", "proxy_timeout", "method",
			"follow_redirects", "upstream_basic_auth", "ca_file", "local_address", "location_rewrite",
			"cookie_domain_rewrite", "cookie_path_rewrite", "mount_path",
			"allow", "upstream_authorization", "rate_limit", "acknowledge_risk":
		case "transport":
			if transportSegment != nil {
				return spec, d.Err("transport specified more than once")
			}
			transportSegment = d.NextSegment()
			continue
		default:
			// reverse_proxy's own subdirective
			proxySegments = append(proxySegments, d.NextSegment())
			continue
		}
		if seen[sub] && sub != "upstream_header" && sub != "path_rewrite" && sub != "ca_file" &&
			sub != "location_rewrite" && sub != "cookie_domain_rewrite" && sub != "cookie_path_rewrite" {
			return spec, d.Errf("%s specified more than once", sub)
		}
		seen[sub] = true
		args := d.RemainingArgs()
		switch sub {
		case "credentials":
			if len(args) != 1 {
				return spec, d.ArgErr()
			}
			switch args[0] {
			case CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated:
				spec.Credentials = args[0]
			default:
				return spec, d.Errf("Unknown credentials policy '%s' for proxy route '%s'; expected one of '%s', '%s', '%s'",
					args[0], route, CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated)
			}
		case "allowed_methods":
			if len(args) == 0 {
				return spec, d.ArgErr()
			}
			spec.AllowedMethods = args
		case "allowed_headers":
			if len(args) == 0 {
				return spec, d.ArgErr()
			}
			for _, a := range args {
				if !headerNameRE.MatchString(a) {
					return spec, d.Errf("invalid header name %q", a)
				}
			}
			spec.AllowedHeaders = args
		case "upstream_header":
			if len(args) != 2 {
				return spec, d.ArgErr()
			}
			if !headerNameRE.MatchString(args[0]) {
				return spec, d.Errf("invalid header name %q", args[0])
			}
			spec.Headers = append(spec.Headers, headerValue{Name: args[0], Value: args[1]})
		case "change_origin":
			if len(args) != 1 {
				return spec, d.ArgErr()
			}
			v, err := strconv.ParseBool(args[0])
			if err != nil {
				return spec, d.Errf("change_origin must be true or false, got %q", args[0])
			}
			spec.ChangeOrigin = v
		case "path_rewrite":
			switch {
			case len(args) == 1 && args[0] == "off":
				if rewriteRules > 0 {
					return spec, d.Err("path_rewrite off cannot be combined with rules")
				}
				rewriteOff = true
				spec.PathRewrite = []PathRewriteRule{}
			case len(args) == 2:
				if rewriteOff {
					return spec, d.Err("path_rewrite off cannot be combined with rules")
				}
				rules, err := pathRewriteRules(&appconfig.Node{Kind: appconfig.KindMap, Keys: []string{args[0]},
					Values: []*appconfig.Node{{Kind: appconfig.KindScalar, Tag: "!!str", Value: args[1]}}})
				if err != nil {
					return spec, d.Errf("%v", err)
				}
				rewriteRules++
				spec.PathRewrite = append(spec.PathRewrite, rules...)
			default:
				return spec, d.ArgErr()
			}
			spec.CustomRewrite = true
		case "xfwd", "ws", "insecure_skip_verify", "ignore_path", "no_prepend_path", "follow_redirects":
			if len(args) != 0 {
				return spec, d.ArgErr()
			}
			switch sub {
			case "xfwd":
				spec.XForwarded = true
			case "ws":
				spec.WebSocket = true
			case "insecure_skip_verify":
				spec.InsecureSkipVerify = true
			case "ignore_path":
				spec.IgnorePath = true
			case "no_prepend_path":
				spec.NoPrependPath = true
			case "follow_redirects":
				spec.FollowRedirects = true
			}
		case "proxy_timeout":
			if len(args) != 1 {
				return spec, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(args[0])
			if err != nil || dur <= 0 {
				return spec, d.Errf("proxy_timeout: invalid duration %q", args[0])
			}
			spec.ProxyTimeout = time.Duration(dur)
		case "method":
			if len(args) != 1 || !headerNameRE.MatchString(args[0]) {
				return spec, d.ArgErr()
			}
			spec.Method = strings.ToUpper(args[0])
		case "upstream_basic_auth":
			if len(args) != 1 || !strings.Contains(args[0], ":") {
				return spec, d.Errf("upstream_basic_auth takes one <user>:<password> argument")
			}
			spec.BasicAuth = args[0]
		case "ca_file":
			if len(args) == 0 {
				return spec, d.ArgErr()
			}
			spec.CAFiles = append(spec.CAFiles, args...)
		case "local_address":
			if len(args) != 1 {
				return spec, d.ArgErr()
			}
			spec.LocalAddress = args[0]
		case "location_rewrite":
			// location_rewrite auto | host <host> | protocol <http|https>
			if spec.LocationRewrite == nil {
				spec.LocationRewrite = &locationRewrite{}
			}
			switch {
			case len(args) == 1 && args[0] == "auto":
				spec.LocationRewrite.AutoRewrite = true
			case len(args) == 2 && args[0] == "host":
				spec.LocationRewrite.HostRewrite = args[1]
			case len(args) == 2 && args[0] == "protocol" && (args[1] == "http" || args[1] == "https"):
				spec.LocationRewrite.ProtocolRewrite = args[1]
			default:
				return spec, d.Errf("location_rewrite takes auto, host <host> or protocol http|https")
			}
		case "cookie_domain_rewrite", "cookie_path_rewrite":
			// <from> <to>, repeatable; from "*" is the fallback, to "" removes
			if len(args) != 2 {
				return spec, d.ArgErr()
			}
			rule := cookieRewrite{From: args[0], To: args[1]}
			if sub == "cookie_domain_rewrite" {
				spec.CookieDomainRewrite = append(spec.CookieDomainRewrite, rule)
			} else {
				spec.CookiePathRewrite = append(spec.CookiePathRewrite, rule)
			}
		case "allow", "upstream_authorization":
			if err := parseAccessSubdirective(d, &spec, sub, args); err != nil {
				return spec, err
			}
			accessAt = d.File() + ":" + strconv.Itoa(d.Line())
		case "rate_limit":
			rl, err := parseRateLimitArgs(args)
			if err != nil {
				return spec, d.Errf("%v", err)
			}
			spec.RateLimit = rl
		case "acknowledge_risk":
			if len(args) == 0 {
				return spec, d.Err("acknowledge_risk takes the reason the risk is accepted")
			}
			spec.AcknowledgeRisk = strings.Join(args, " ")
		case "mount_path":
			if !single {
				return spec, d.Err("mount_path: in the block form, the mount path is the block's argument")
			}
			if len(args) != 1 || !strings.HasPrefix(args[0], "/") {
				return spec, d.Errf("mount_path must be one path starting with '/'")
			}
			spec.MountPath = args[0]
		}
	}
	if err := checkEndpointAccess(&spec, caddyfileAccessNames); err != nil {
		return spec, fmt.Errorf("endpoint %s: %v, at %s", route, err, accessAt)
	}
	if transportSegment != nil || len(proxySegments) > 0 {
		spec.configureProxy = func(rp *reverseproxy.Handler) error {
			if transportSegment != nil {
				if err := applyTransportSegment(rp, transportSegment); err != nil {
					return err
				}
			}
			if len(proxySegments) == 0 {
				return nil
			}
			transport := rp.TransportRaw // the transport is ours, whatever `to` says
			if err := rp.UnmarshalCaddyfile(blockDispenser(at, "reverse_proxy", proxySegments)); err != nil {
				return err
			}
			if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
				return err
			}
			rp.TransportRaw = transport
			return nil
		}
	}
	return spec, nil
}

// applyTransportSegment applies a `transport http|backstage_http { … }`
// segment to the transport buildReverseProxy derived for rp.
func applyTransportSegment(rp *reverseproxy.Handler, seg caddyfile.Segment) error {
	d := caddyfile.NewDispenser(seg)
	d.Next() // transport
	if !d.NextArg() {
		return d.ArgErr()
	}
	if name := d.Val(); name != "http" && name != "backstage_http" {
		return d.Errf("backstage_proxy: transport must be http or backstage_http, not %s", name)
	}
	var t UpstreamTransport
	if err := json.Unmarshal(rp.TransportRaw, &t); err != nil {
		return d.Errf("backstage_proxy: transport: %v", err)
	}
	if err := t.UnmarshalCaddyfile(caddyfile.NewDispenser(seg[1:])); err != nil {
		return err
	}
	// backstage_http either way, as buildReverseProxy writes it (explain
	// needs it).
	rp.TransportRaw = caddyconfig.JSONModuleObject(t, "protocol", "backstage_http", nil)
	return nil
}

// blockDispenser returns a dispenser over `name { <segments> }`, to hand
// subdirectives to another module's Caddyfile parser. The name and the
// opening brace take the position of at, so errors point at the config.
func blockDispenser(at caddyfile.Token, name string, segments []caddyfile.Segment) *caddyfile.Dispenser {
	tok := func(text string, line int) caddyfile.Token {
		t := at
		t.Text, t.Line = text, line
		return t
	}
	tokens := []caddyfile.Token{tok(name, at.Line), tok("{", at.Line)}
	last := at.Line
	for _, seg := range segments {
		tokens = append(tokens, seg...)
		if n := len(seg); n > 0 && seg[n-1].Line > last {
			last = seg[n-1].Line
		}
	}
	return caddyfile.NewDispenser(append(tokens, tok("}", last+1)))
}

// withErrorRoute adds to a directive's routes the error route that renders
// backstage_proxy's errors as Backstage does: once per site block, in the
// site's error routes. Nested in another directive's block (`handle`,
// `route`, a named route), where error routes cannot be declared, the routes
// are wrapped in a subroute with that error route instead; a site's
// `handle_errors` then does not see those refusals.
func withErrorRoute(h httpcaddyfile.Helper, routes []httpcaddyfile.ConfigValue, warnings *[]caddyconfig.Warning) []httpcaddyfile.ConfigValue {
	if !topLevel(h) {
		sr := caddyhttp.Subroute{Errors: &caddyhttp.HTTPErrorConfig{Routes: caddyhttp.RouteList{buildErrorRoute(warnings)}}}
		for _, v := range routes {
			sr.Routes = append(sr.Routes, v.Value.(caddyhttp.Route))
		}
		return []httpcaddyfile.ConfigValue{{Class: "route", Value: caddyhttp.Route{
			HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(sr, "handler", "subroute", warnings)},
		}}}
	}
	site := siteState(h)
	if site[stateErrorRoute] == true {
		return routes
	}
	site[stateErrorRoute] = true
	return append(routes, httpcaddyfile.ConfigValue{Class: "error_route", Value: &caddyhttp.Subroute{
		Routes: caddyhttp.RouteList{buildErrorRoute(warnings)},
	}})
}

// topLevel reports whether the directive is directly in a site block. There,
// Caddy gives directives one map as both State and BlockState; nested
// blocks get a copy of BlockState.
func topLevel(h httpcaddyfile.Helper) bool {
	if h.IsNamedRoute() {
		return false
	}
	const probe = "backstage_proxy.top_level_probe"
	h.BlockState[probe] = true
	_, ok := h.State[probe]
	delete(h.BlockState, probe)
	return ok
}

// siteState is the state the directives share within one site block.
// Caddy v2.11.9 gives every top-level directive of a Caddyfile the same
// BlockState map, whatever its site block, so the state is kept per site
// block, keyed by the block's addresses.
func siteState(h httpcaddyfile.Helper) map[string]any {
	key := "backstage_proxy.site " + siteKey(h)
	m, _ := h.BlockState[key].(map[string]any)
	if m == nil {
		m = map[string]any{}
		h.BlockState[key] = m
	}
	return m
}

// siteKey names the site block h is in: its keys (addresses), with the file
// and line of the first. The Helper does not export its block, so they are
// read by reflection; should that fail in a later Caddy, all sites share one
// state, as the BlockState map does.
func siteKey(h httpcaddyfile.Helper) string {
	keys := reflect.ValueOf(h).FieldByName("parentBlock").FieldByName("Keys")
	if !keys.IsValid() || keys.Kind() != reflect.Slice {
		return ""
	}
	var b strings.Builder
	for i := 0; i < keys.Len(); i++ {
		k := keys.Index(i)
		if t := k.FieldByName("Text"); t.IsValid() && t.Kind() == reflect.String {
			b.WriteString(t.String())
		}
		if i == 0 {
			if f := k.FieldByName("File"); f.IsValid() && f.Kind() == reflect.String {
				b.WriteString("@" + f.String())
			}
			if l := k.FieldByName("Line"); l.IsValid() && l.Kind() == reflect.Int {
				b.WriteString(":" + strconv.FormatInt(l.Int(), 10))
			}
		}
		b.WriteByte(' ')
	}
	return b.String()
}

// parseBarrierDirective parses the credentials barrier that follows the
// endpoints of a site (deprecated: the block form of backstage_proxy emits
// it after its endpoints, so it cannot be misplaced). Syntax:
//
//	backstage_proxy_barrier [<mount path>]
//
// It answers requests under the mount path (default `/api/proxy`) that no
// endpoint took: 401 with Backstage's JSON error for anonymous callers (except
// under endpoints with `credentials dangerously-allow-unauthenticated`, which
// it learns from the `backstage_proxy` directives before it in the same site
// block), an empty 404 otherwise.
func parseBarrierDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	h.Next()
	mount := stateMountDefault
	if h.NextArg() {
		mount = strings.TrimRight(h.Val(), "/")
		if !strings.HasPrefix(mount, "/") {
			return nil, h.Errf("mount path must start with '/'")
		}
	}
	if h.NextArg() || h.NextBlock(0) {
		return nil, h.ArgErr()
	}
	site := siteState(h)
	if site[stateBarrierSeen] == true {
		return nil, h.Err("backstage_proxy_barrier specified more than once in this site block (or with a backstage_proxy block)")
	}
	caddy.Log().Named("caddyfile").Warn("backstage_proxy_barrier is deprecated: write the endpoints in one backstage_proxy block, which adds the barrier after them",
		zap.String("file", h.File()), zap.Int("line", h.Line()))
	site[stateBarrierSeen] = true
	open, _ := site[stateOpenRoutes].(map[string][]string)
	var warnings []caddyconfig.Warning
	var values []httpcaddyfile.ConfigValue
	for _, r := range buildBarrierRoutes(mount, open[mount], &warnings) {
		values = append(values, httpcaddyfile.ConfigValue{Class: "route", Value: r})
	}
	return withErrorRoute(h, values, &warnings), nil
}

// parseIdentityOption parses the `backstage` global option, which configures
// the `backstage` identity app. Syntax:
//
//	backstage {
//		user_tokens_jwks <url> [<algorithm...>]
//		plugin_tokens_jwks <url with {plugin}> [<allowed plugin id...>]
//		static_token <token> <subject> [restrict <plugin...>]
//		legacy_secret <base64 secret> <subject> [restrict <plugin...>]
//		jwks <url> {
//			issuers <iss...>
//			audiences <aud...>
//			algorithms <alg...>
//			subject_prefix <prefix>
//			restrict <plugin...>
//		}
//		legacy_key <base64 secret>
//		rate_limit_distributed [{
//			read_interval <duration>
//			write_interval <duration>
//			purge_age <duration>
//		}]
//		dangerously_disable_default_auth_policy
//	}
//
// Secrets may be given as placeholders such as `{env.STATIC_TOKEN}`.
func parseIdentityOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("backstage global option specified more than once")
	}
	app := &App{}
	d.Next()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		sub := d.Val()
		args := d.RemainingArgs()
		restrictOf := func(from int) ([]identity.AccessRestriction, []string, error) {
			var rs []identity.AccessRestriction
			for i := from; i < len(args); i++ {
				if args[i] == "restrict" {
					if i+1 == len(args) {
						return nil, nil, d.Err("restrict needs at least one plugin id")
					}
					for _, p := range args[i+1:] {
						rs = append(rs, identity.AccessRestriction{Plugin: p})
					}
					return rs, args[:i], nil
				}
			}
			return nil, args, nil
		}
		switch sub {
		case "user_tokens_jwks":
			if len(args) < 1 {
				return nil, d.ArgErr()
			}
			app.UserTokens = &identity.UserTokens{JWKSURL: args[0], Algorithms: args[1:]}
		case "plugin_tokens_jwks":
			if len(args) < 1 {
				return nil, d.ArgErr()
			}
			app.PluginTokens = &identity.PluginTokens{JWKSURL: args[0], Plugins: args[1:]}
		case "static_token", "legacy_secret":
			rs, rest, err := restrictOf(2)
			if err != nil {
				return nil, err
			}
			if len(rest) != 2 {
				return nil, d.ArgErr()
			}
			e := identity.ExternalAccess{AccessRestrictions: rs}
			if sub == "static_token" {
				e.Static = &identity.StaticAccess{Token: rest[0], Subject: rest[1]}
			} else {
				e.Legacy = &identity.LegacyAccess{Secret: rest[0], Subject: rest[1]}
			}
			app.ExternalAccess = append(app.ExternalAccess, e)
		case "jwks":
			if len(args) != 1 {
				return nil, d.ArgErr()
			}
			jwks := &identity.JWKSAccess{URL: args[0]}
			e := identity.ExternalAccess{JWKS: jwks}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				opt := d.Val()
				vals := d.RemainingArgs()
				if len(vals) == 0 {
					return nil, d.ArgErr()
				}
				switch opt {
				// the singular spellings are those of earlier versions
				case "issuers", "issuer":
					jwks.Issuers = append(jwks.Issuers, vals...)
				case "audiences", "audience":
					jwks.Audiences = append(jwks.Audiences, vals...)
				case "algorithms", "algorithm":
					jwks.Algorithms = append(jwks.Algorithms, vals...)
				case "subject_prefix":
					if len(vals) != 1 {
						return nil, d.ArgErr()
					}
					jwks.SubjectPrefix = vals[0]
				case "restrict":
					for _, p := range vals {
						e.AccessRestrictions = append(e.AccessRestrictions, identity.AccessRestriction{Plugin: p})
					}
				default:
					return nil, d.Errf("unrecognized jwks option %s", opt)
				}
			}
			app.ExternalAccess = append(app.ExternalAccess, e)
		case "legacy_key":
			if len(args) != 1 {
				return nil, d.ArgErr()
			}
			app.Keys = append(app.Keys, identity.LegacyKey{Secret: args[0]})
		case "key_set_ca_files":
			if len(args) < 1 {
				return nil, d.ArgErr()
			}
			app.KeySetCAFiles = append(app.KeySetCAFiles, args...)
		case "rate_limit_distributed":
			if len(args) != 0 {
				return nil, d.ArgErr()
			}
			dist, err := parseRateLimitDistributed(d)
			if err != nil {
				return nil, err
			}
			app.RateLimit = &RateLimitSettings{Distributed: dist}
		case "dangerously_disable_default_auth_policy":
			if len(args) != 0 {
				return nil, d.ArgErr()
			}
			app.DangerouslyDisableDefaultAuthPolicy = true
		default:
			return nil, d.Errf("unrecognized backstage option %s", sub)
		}
	}
	raw, err := json.Marshal(app)
	if err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "backstage", Value: raw}, nil
}

// Interface guards
var _ caddyhttp.MiddlewareHandler = (*Handler)(nil)
