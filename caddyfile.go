package backstageproxy

import (
	"encoding/json"
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
)

func init() {
	httpcaddyfile.RegisterDirective("backstage_proxy", parseEndpointDirective)
	httpcaddyfile.RegisterDirectiveOrder("backstage_proxy", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterDirective("backstage_proxy_barrier", parseBarrierDirective)
	httpcaddyfile.RegisterDirectiveOrder("backstage_proxy_barrier", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterGlobalOption("backstage", parseIdentityOption)
}

const (
	stateOpenRoutes   = "backstage_proxy.open_routes"
	stateBarrierSeen  = "backstage_proxy.barrier_seen"
	stateErrorRoute   = "backstage_proxy.error_route"
	stateMountDefault = DefaultMountPath
)

// parseEndpointDirective parses one Backstage proxy endpoint. It produces
// exactly the route the `backstage` config adapter produces for the same
// endpoint in app-config.yaml. Syntax:
//
//	backstage_proxy <route> <target> {
//		credentials require|forward|dangerously-allow-unauthenticated
//		allowed_methods <METHOD...>
//		allowed_headers <name...>
//		header <name> <value>
//		change_origin true|false
//		path_rewrite <regexp> <replacement>
//		path_rewrite off
//		xfwd
//		ws
//		insecure_skip_verify
//		proxy_timeout <duration>
//		ignore_path
//		no_prepend_path
//		method <METHOD>
//		follow_redirects
//		basic_auth <user>:<password>
//		ca_file <pem file...>
//		local_address <address>
//		location_rewrite auto | host <host> | protocol http|https
//		cookie_domain_rewrite <from>|* <to>
//		cookie_path_rewrite <from>|* <to>
//		mount_path <path>
//	}
//
// `<route>` is the Backstage route key (e.g. `/catalog`), served under
// `/api/proxy`. Endpoints are tried in the order they are written. Put a
// `backstage_proxy_barrier` after the last endpoint of a site so unknown paths
// under `/api/proxy` answer like Backstage (401 anonymous, 404 otherwise).
func parseEndpointDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	h.Next() // directive name
	if !h.NextArg() {
		return nil, h.ArgErr()
	}
	route := h.Val()
	if !h.NextArg() {
		return nil, h.ArgErr()
	}
	target, err := parseTarget(route, h.Val())
	if err != nil {
		return nil, h.Errf("%v", err)
	}
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	spec := endpointSpec{Route: route, Target: target, Credentials: CredentialsRequire, ChangeOrigin: true}
	seen := map[string]bool{}
	rewriteOff, rewriteRules := false, 0
	for h.NextBlock(0) {
		sub := h.Val()
		if seen[sub] && sub != "header" && sub != "path_rewrite" && sub != "ca_file" &&
			sub != "location_rewrite" && sub != "cookie_domain_rewrite" && sub != "cookie_path_rewrite" {
			return nil, h.Errf("%s specified more than once", sub)
		}
		seen[sub] = true
		args := h.RemainingArgs()
		switch sub {
		case "credentials":
			if len(args) != 1 {
				return nil, h.ArgErr()
			}
			switch args[0] {
			case CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated:
				spec.Credentials = args[0]
			default:
				return nil, h.Errf("Unknown credentials policy '%s' for proxy route '%s'; expected one of '%s', '%s', '%s'",
					args[0], route, CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated)
			}
		case "allowed_methods":
			if len(args) == 0 {
				return nil, h.ArgErr()
			}
			spec.AllowedMethods = args
		case "allowed_headers":
			if len(args) == 0 {
				return nil, h.ArgErr()
			}
			for _, a := range args {
				if !headerNameRE.MatchString(a) {
					return nil, h.Errf("invalid header name %q", a)
				}
			}
			spec.AllowedHeaders = args
		case "header":
			if len(args) != 2 {
				return nil, h.ArgErr()
			}
			if !headerNameRE.MatchString(args[0]) {
				return nil, h.Errf("invalid header name %q", args[0])
			}
			spec.Headers = append(spec.Headers, headerValue{Name: args[0], Value: args[1]})
		case "change_origin":
			if len(args) != 1 {
				return nil, h.ArgErr()
			}
			v, err := strconv.ParseBool(args[0])
			if err != nil {
				return nil, h.Errf("change_origin must be true or false, got %q", args[0])
			}
			spec.ChangeOrigin = v
		case "path_rewrite":
			switch {
			case len(args) == 1 && args[0] == "off":
				if rewriteRules > 0 {
					return nil, h.Err("path_rewrite off cannot be combined with rules")
				}
				rewriteOff = true
				spec.PathRewrite = []PathRewriteRule{}
			case len(args) == 2:
				if rewriteOff {
					return nil, h.Err("path_rewrite off cannot be combined with rules")
				}
				rules, err := pathRewriteRules(&appconfig.Node{Kind: appconfig.KindMap, Keys: []string{args[0]},
					Values: []*appconfig.Node{{Kind: appconfig.KindScalar, Tag: "!!str", Value: args[1]}}})
				if err != nil {
					return nil, h.Errf("%v", err)
				}
				rewriteRules++
				spec.PathRewrite = append(spec.PathRewrite, rules...)
			default:
				return nil, h.ArgErr()
			}
			spec.CustomRewrite = true
		case "xfwd", "ws", "insecure_skip_verify", "ignore_path", "no_prepend_path":
			if len(args) != 0 {
				return nil, h.ArgErr()
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
			}
		case "proxy_timeout":
			if len(args) != 1 {
				return nil, h.ArgErr()
			}
			d, err := caddy.ParseDuration(args[0])
			if err != nil || d <= 0 {
				return nil, h.Errf("proxy_timeout: invalid duration %q", args[0])
			}
			spec.ProxyTimeout = time.Duration(d)
		case "method":
			if len(args) != 1 || !headerNameRE.MatchString(args[0]) {
				return nil, h.ArgErr()
			}
			spec.Method = strings.ToUpper(args[0])
		case "follow_redirects":
			if len(args) != 0 {
				return nil, h.ArgErr()
			}
			spec.FollowRedirects = true
		case "basic_auth":
			if len(args) != 1 || !strings.Contains(args[0], ":") {
				return nil, h.Errf("basic_auth takes one <user>:<password> argument")
			}
			spec.BasicAuth = args[0]
		case "ca_file":
			if len(args) == 0 {
				return nil, h.ArgErr()
			}
			spec.CAFiles = append(spec.CAFiles, args...)
		case "local_address":
			if len(args) != 1 {
				return nil, h.ArgErr()
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
				return nil, h.Errf("location_rewrite takes auto, host <host> or protocol http|https")
			}
		case "cookie_domain_rewrite", "cookie_path_rewrite":
			// <from> <to>, repeatable; from "*" is the fallback, to "" removes
			if len(args) != 2 {
				return nil, h.ArgErr()
			}
			rule := cookieRewrite{From: args[0], To: args[1]}
			if sub == "cookie_domain_rewrite" {
				spec.CookieDomainRewrite = append(spec.CookieDomainRewrite, rule)
			} else {
				spec.CookiePathRewrite = append(spec.CookiePathRewrite, rule)
			}
		case "mount_path":
			if len(args) != 1 || !strings.HasPrefix(args[0], "/") {
				return nil, h.Errf("mount_path must be one path starting with '/'")
			}
			spec.MountPath = args[0]
		default:
			return nil, h.Errf("unrecognized subdirective %s", sub)
		}
	}
	if h.BlockState[stateBarrierSeen] == true {
		return nil, h.Err("backstage_proxy must come before backstage_proxy_barrier in the same site block")
	}
	if spec.Credentials == CredentialsDangerouslyAllowUnauthenticated {
		open, _ := h.BlockState[stateOpenRoutes].(map[string][]string)
		if open == nil {
			open = map[string][]string{}
			h.BlockState[stateOpenRoutes] = open
		}
		open[spec.mountPath()] = append(open[spec.mountPath()], spec.routeKey())
	}
	var warnings []caddyconfig.Warning
	r, err := buildEndpointRoute(spec, &warnings)
	if err != nil {
		return nil, h.Errf("%v", err)
	}
	if spec.AllowedMethods != nil && len(spec.AllowedMethods) == 0 {
		return nil, nil
	}
	return append([]httpcaddyfile.ConfigValue{{Class: "route", Value: r}}, errorRouteValue(h, &warnings)...), nil
}

// errorRouteValue is the site's error route that renders backstage_proxy's
// errors as Backstage does, once per site block.
func errorRouteValue(h httpcaddyfile.Helper, warnings *[]caddyconfig.Warning) []httpcaddyfile.ConfigValue {
	if h.BlockState[stateErrorRoute] == true {
		return nil
	}
	h.BlockState[stateErrorRoute] = true
	return []httpcaddyfile.ConfigValue{{Class: "error_route", Value: &caddyhttp.Subroute{
		Routes: caddyhttp.RouteList{buildErrorRoute(warnings)},
	}}}
}

// parseBarrierDirective parses the credentials barrier that follows the
// endpoints of a site. Syntax:
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
	if h.BlockState[stateBarrierSeen] == true {
		return nil, h.Err("backstage_proxy_barrier specified more than once in this site block")
	}
	h.BlockState[stateBarrierSeen] = true
	open, _ := h.BlockState[stateOpenRoutes].(map[string][]string)
	var warnings []caddyconfig.Warning
	var values []httpcaddyfile.ConfigValue
	for _, r := range buildBarrierRoutes(mount, open[mount], &warnings) {
		values = append(values, httpcaddyfile.ConfigValue{Class: "route", Value: r})
	}
	return append(values, errorRouteValue(h, &warnings)...), nil
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
