package backstageproxy

// backend.cors: Backstage's root `cors` middleware (the `cors` npm package,
// configured by backend-defaults' readCorsOptions), which runs before
// authentication on every request (packages/backend-defaults/src/entrypoints/
// rootHttpRouter/http/readCorsOptions.ts and MiddlewareFactory.ts).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
)

// corsOptions are the options readCorsOptions passes to the cors package.
type corsOptions struct {
	origins            []string // nil: not configured (every origin, "*")
	methods            []string // nil: the cors default
	allowedHeaders     []string // nil: reflect Access-Control-Request-Headers
	exposedHeaders     []string
	credentials        bool
	maxAge             string // "" when unset
	preflightContinue  bool
	successStatus      int
	originNode         *appconfig.Node
	allowedHeadersNode *appconfig.Node
}

var corsKnownKeys = map[string]bool{
	"origin": true, "methods": true, "allowedHeaders": true, "exposedHeaders": true,
	"credentials": true, "maxAge": true, "preflightContinue": true, "optionsSuccessStatus": true,
}

// readCorsOptions reads backend.cors as backend-defaults' readCorsOptions
// does. nil means CORS is off.
func (ad *adaptation) readCorsOptions() (*corsOptions, error) {
	cc := ad.root.Lookup("backend.cors")
	if cc == nil || cc.IsNull() {
		return nil, nil
	}
	if cc.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(cc, "Invalid type in config for key 'backend.cors', got %s, wanted object", cc.TypeName())
	}
	for i, k := range cc.Keys {
		if !corsKnownKeys[k] {
			ad.warn(cc.Values[i], "backend.cors", "backend.cors.%s is not a CORS option Backstage reads; it is ignored", k)
		}
	}
	o := &corsOptions{successStatus: http.StatusNoContent}
	var err error
	if o.origins, err = corsStringArray(cc, "origin"); err != nil {
		return nil, err
	}
	o.originNode = cc.Get("origin")
	if o.methods, err = corsStringArray(cc, "methods"); err != nil {
		return nil, err
	}
	if o.allowedHeaders, err = corsStringArray(cc, "allowedHeaders"); err != nil {
		return nil, err
	}
	o.allowedHeadersNode = cc.Get("allowedHeaders")
	if o.exposedHeaders, err = corsStringArray(cc, "exposedHeaders"); err != nil {
		return nil, err
	}
	for _, b := range []struct {
		key string
		dst *bool
	}{{"credentials", &o.credentials}, {"preflightContinue", &o.preflightContinue}} {
		if n := cc.Get(b.key); n != nil {
			v, ok := n.Bool()
			if !ok {
				return nil, appconfig.ErrorAt(n, "Unable to convert config value for key 'backend.cors.%s' to a boolean", b.key)
			}
			*b.dst = v
		}
	}
	if n := cc.Get("maxAge"); n != nil {
		f, ok := n.Number()
		if !ok {
			return nil, appconfig.ErrorAt(n, "Unable to convert config value for key 'backend.cors.maxAge' to a number")
		}
		o.maxAge = appconfig.JSNumberString(f)
	}
	if n := cc.Get("optionsSuccessStatus"); n != nil {
		f, ok := n.Number()
		if !ok || f != float64(int(f)) || f < 200 || f > 599 {
			return nil, appconfig.ErrorAt(n, "backend.cors.optionsSuccessStatus must be an HTTP status code from 200 to 599")
		}
		o.successStatus = int(f)
	}
	return o, nil
}

// corsStringArray is readCorsOptions' readStringArray: a string is a list of
// one, a falsy value is unset, an array must hold non-empty strings.
func corsStringArray(cc *appconfig.Node, key string) ([]string, error) {
	n := cc.Get(key)
	if s, ok := n.String(); ok && s != "" {
		return []string{s}, nil
	}
	if jsFalsy(n) {
		return nil, nil
	}
	if n.Kind != appconfig.KindSeq {
		return nil, appconfig.ErrorAt(n, "Invalid type in config for key 'backend.cors.%s', got %s, wanted string-array", key, n.TypeName())
	}
	out := []string{}
	for _, item := range n.Items {
		s, ok := item.String()
		if !ok || s == "" {
			return nil, appconfig.ErrorAt(item, "Invalid type in config for key 'backend.cors.%s', got %s, wanted string-array", key, item.TypeName())
		}
		out = append(out, s)
	}
	return out, nil
}

// corsRoutes answers preflights and adds the CORS headers to every other
// response, exactly as the cors package does with Backstage's options:
//
//   - An OPTIONS request whose Origin is allowed (any request when no origin
//     is configured) is a preflight: Access-Control-Allow-Origin (the request's
//     Origin, or `*`), Vary, Allow-Credentials, Allow-Methods, Allow-Headers
//     (the configured list, or the request's Access-Control-Request-Headers),
//     Max-Age and Expose-Headers, then 204 (optionsSuccessStatus) with an
//     empty body, before any authentication; with preflightContinue the
//     request goes on to the routes instead.
//   - Any other request with an allowed Origin gets Allow-Origin, Vary,
//     Allow-Credentials and Expose-Headers, set before the proxy runs: the
//     `backstage_proxy` handler keeps them on its error responses and on
//     proxied responses, unless the upstream's header of the same name is in
//     allowedHeaders.
//   - A disallowed Origin gets no CORS header and OPTIONS reaches the routes.
//
// scope limits them to some paths (the proxy mount, when the Backstage
// backend behind Caddy answers everything else itself).
func (ad *adaptation) corsRoutes(scope caddy.ModuleMap) ([]caddyhttp.Route, error) {
	o, err := ad.cors()
	if o == nil || err != nil {
		return nil, err
	}
	var w []caddyconfig.Warning
	defer func() { ad.warnings = append(ad.warnings, w...) }()

	base := func() caddy.ModuleMap {
		m := caddy.ModuleMap{}
		for k, v := range scope {
			m[k] = v
		}
		return m
	}
	headerRE := caddyhttp.MatchHeaderRE{}
	if o.origins != nil {
		if len(o.origins) == 0 {
			ad.warn(o.originNode, "backend.cors", "backend.cors.origin is an empty list: no origin is allowed, so no CORS headers are sent")
			return nil, nil
		}
		pattern, err := originPattern(o.origins)
		if err != nil {
			return nil, appconfig.ErrorAt(o.originNode, "backend.cors.origin: %v", err)
		}
		headerRE["Origin"] = &caddyhttp.MatchRegexp{Pattern: pattern}
	}
	withHeaders := func(m caddy.ModuleMap, extra map[string]string) caddy.ModuleMap {
		re := caddyhttp.MatchHeaderRE{}
		for k, v := range headerRE {
			re[k] = v
		}
		for k, v := range extra {
			re[k] = &caddyhttp.MatchRegexp{Pattern: v}
		}
		if len(re) > 0 {
			m["header_regexp"] = caddyconfig.JSON(re, &w)
		}
		return m
	}
	setHeaders := func(set http.Header) json.RawMessage {
		return caddyconfig.JSONModuleObject(headers.Handler{
			Response: &headers.RespHeaderOps{HeaderOps: &headers.HeaderOps{Set: set}},
		}, "handler", "headers", &w)
	}
	list := func(v []string) string { return appconfig.EscapeCaddyPlaceholders(strings.Join(v, ",")) }

	allowOrigin, vary := "*", []string(nil)
	if o.origins != nil {
		allowOrigin, vary = "{http.request.header.Origin}", []string{"Origin"}
	}
	common := http.Header{"Access-Control-Allow-Origin": {allowOrigin}}
	if o.credentials {
		common["Access-Control-Allow-Credentials"] = []string{"true"}
	}
	if len(o.exposedHeaders) > 0 && list(o.exposedHeaders) != "" {
		common["Access-Control-Expose-Headers"] = []string{list(o.exposedHeaders)}
	}

	// Preflight.
	preflight := http.Header{}
	for k, v := range common {
		preflight[k] = v
	}
	methods := "GET,HEAD,PUT,PATCH,POST,DELETE"
	if o.methods != nil {
		methods = list(o.methods)
	}
	if methods != "" {
		preflight["Access-Control-Allow-Methods"] = []string{methods}
	}
	preflightVary := vary
	reflect := o.allowedHeaders == nil
	if reflect {
		preflightVary = append(append([]string{}, vary...), "Access-Control-Request-Headers")
	} else if list(o.allowedHeaders) != "" {
		preflight["Access-Control-Allow-Headers"] = []string{list(o.allowedHeaders)}
	}
	if len(preflightVary) > 0 {
		preflight["Vary"] = []string{strings.Join(preflightVary, ", ")}
	}
	if o.maxAge != "" {
		preflight["Access-Control-Max-Age"] = []string{o.maxAge}
	}
	options := func() caddy.ModuleMap {
		m := base()
		m["method"] = caddyconfig.JSON(caddyhttp.MatchMethod{http.MethodOptions}, &w)
		return m
	}
	routes := []caddyhttp.Route{{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{withHeaders(options(), nil)},
		HandlersRaw:    []json.RawMessage{setHeaders(preflight)},
	}}
	if reflect {
		routes = append(routes, caddyhttp.Route{
			MatcherSetsRaw: caddyhttp.RawMatcherSets{withHeaders(options(), map[string]string{"Access-Control-Request-Headers": "."})},
			HandlersRaw: []json.RawMessage{setHeaders(http.Header{
				"Access-Control-Allow-Headers": {"{http.request.header.Access-Control-Request-Headers}"},
			})},
		})
	}
	if !o.preflightContinue {
		routes = append(routes, caddyhttp.Route{
			MatcherSetsRaw: caddyhttp.RawMatcherSets{withHeaders(options(), nil)},
			HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(caddyhttp.StaticResponse{
				StatusCode: caddyhttp.WeakString(strconv.Itoa(o.successStatus)),
				Headers:    http.Header{"Content-Length": {"0"}},
			}, "handler", "static_response", &w)},
			Terminal: true,
		})
	}

	// Every other request.
	actual := http.Header{}
	for k, v := range common {
		actual[k] = v
	}
	if len(vary) > 0 {
		actual["Vary"] = vary
	}
	m := base()
	m["not"] = caddyconfig.JSON(caddyhttp.MatchNot{MatcherSetsRaw: []caddy.ModuleMap{{
		"method": caddyconfig.JSON(caddyhttp.MatchMethod{http.MethodOptions}, &w),
	}}}, &w)
	routes = append(routes, caddyhttp.Route{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{withHeaders(m, nil)},
		HandlersRaw:    []json.RawMessage{setHeaders(actual)},
	})
	return routes, nil
}

// cors is readCorsOptions, read once per adaptation (its warnings too).
func (ad *adaptation) cors() (*corsOptions, error) {
	if !ad.corsRead {
		ad.corsRead = true
		ad.corsOpts, ad.corsErr = ad.readCorsOptions()
	}
	return ad.corsOpts, ad.corsErr
}

// corsSafelistedResponseHeaders are the response headers a browser lets a
// cross-origin script read without Access-Control-Expose-Headers
// (https://fetch.spec.whatwg.org/#cors-safelisted-response-header-name).
var corsSafelistedResponseHeaders = map[string]bool{
	"Cache-Control": true, "Content-Language": true, "Content-Length": true, "Content-Type": true,
	"Expires": true, "Last-Modified": true, "Pragma": true,
}

// corsExposeHandler is the handler that, with backend.cors on, exposes to
// cross-origin scripts the response headers the endpoint lets through
// (allowedHeaders) that browsers hide otherwise: without it a browser
// cannot read the Link or ETag a route allows (backstage/backstage#28407).
// Nil when there is nothing to expose.
func (ad *adaptation) corsExposeHandler(s endpointSpec) json.RawMessage {
	o, err := ad.cors()
	if o == nil || err != nil {
		return nil
	}
	already := map[string]bool{}
	for _, h := range o.exposedHeaders {
		already[http.CanonicalHeaderKey(strings.TrimSpace(h))] = true
	}
	var names []string
	for _, h := range s.AllowedHeaders {
		c := http.CanonicalHeaderKey(h)
		if corsSafelistedResponseHeaders[c] || already[c] || c == "*" {
			continue
		}
		already[c] = true
		names = append(names, c)
	}
	if len(names) == 0 {
		return nil
	}
	return caddyconfig.JSONModuleObject(headers.Handler{
		Response: &headers.RespHeaderOps{HeaderOps: &headers.HeaderOps{
			Add: http.Header{"Access-Control-Expose-Headers": {appconfig.EscapeCaddyPlaceholders(strings.Join(names, ", "))}},
		}},
	}, "handler", "headers", &ad.warnings)
}

// originPattern converts Backstage's origin patterns (minimatch globs with
// nocase and noglobstar, matched against the whole Origin header) to one
// case-insensitive RE2 pattern.
func originPattern(globs []string) (string, error) {
	alts := make([]string, 0, len(globs))
	for _, g := range globs {
		re, err := globRegexp(g)
		if err != nil {
			return "", fmt.Errorf("pattern %q: %v", g, err)
		}
		alts = append(alts, re)
	}
	return "(?i)^(?:" + strings.Join(alts, "|") + ")/?$", nil
}

// globRegexp converts one minimatch glob (nocase, noglobstar) to RE2:
// `*` and `**` match within a path segment, `?` one character of it, `[...]`
// a character class, `{a,b}` alternatives and `{1..3}` ranges are expanded,
// and `@(a|b)`, `?(...)`, `+(...)`, `*(...)` are extglobs. A segment that
// starts with a wildcard does not match a leading dot. Negation (`!`) has no
// RE2 equivalent and is refused.
func globRegexp(g string) (string, error) {
	if strings.HasPrefix(g, "!") || strings.Contains(g, "!(") {
		return "", fmt.Errorf("negated patterns are not supported")
	}
	if strings.HasPrefix(g, "#") {
		return "", fmt.Errorf("a pattern starting with # is a comment in minimatch and matches nothing")
	}
	var sb strings.Builder
	segStart := true
	for i := 0; i < len(g); i++ {
		c := g[i]
		switch {
		case c == '\\' && i+1 < len(g):
			i++
			sb.WriteString(regexp.QuoteMeta(string(g[i])))
		case c == '/':
			sb.WriteByte('/')
			segStart = true
			continue
		case strings.IndexByte("?*+@", c) >= 0 && i+1 < len(g) && g[i+1] == '(':
			end := matchingParen(g, i+1)
			if end < 0 {
				return "", fmt.Errorf("unclosed %c(", c)
			}
			var parts []string
			for _, p := range splitTopLevel(g[i+2:end], '|') {
				re, err := globRegexp(p)
				if err != nil {
					return "", err
				}
				parts = append(parts, re)
			}
			sb.WriteString("(?:" + strings.Join(parts, "|") + ")")
			switch c {
			case '?':
				sb.WriteByte('?')
			case '*':
				sb.WriteByte('*')
			case '+':
				sb.WriteByte('+')
			}
			i = end
		case c == '*':
			for i+1 < len(g) && g[i+1] == '*' {
				i++ // noglobstar: ** is *
			}
			switch {
			case segStart && (i+1 == len(g) || g[i+1] == '/' || g[i+1] == '.'):
				// a segment never starts with a dot: here * cannot be empty
				sb.WriteString(`[^/.][^/]*`)
			case segStart:
				sb.WriteString(`(?:[^/.][^/]*)?`)
			default:
				sb.WriteString(`[^/]*`)
			}
		case c == '?':
			if segStart {
				sb.WriteString(`[^/.]`)
			} else {
				sb.WriteString(`[^/]`)
			}
		case c == '[':
			end := strings.IndexByte(g[i+1:], ']')
			if end < 0 {
				sb.WriteString(`\[`)
				break
			}
			class := g[i+1 : i+1+end]
			if end == 0 && i+2 < len(g) {
				// []...] : a ] first in the class is literal
				if e2 := strings.IndexByte(g[i+2:], ']'); e2 >= 0 {
					class = g[i+1 : i+2+e2]
					end = e2 + 1
				}
			}
			neg := strings.HasPrefix(class, "!") || strings.HasPrefix(class, "^")
			if neg {
				class = class[1:]
			}
			var cb strings.Builder
			cb.WriteByte('[')
			if neg {
				cb.WriteString("^/")
			}
			for _, r := range class {
				if strings.ContainsRune(`\^[]`, r) {
					cb.WriteByte('\\')
				}
				cb.WriteRune(r)
			}
			cb.WriteByte(']')
			if _, err := regexp.Compile(cb.String()); err != nil {
				return "", fmt.Errorf("invalid character class [%s]", class)
			}
			sb.WriteString(cb.String())
			i += end + 1
		case c == '{':
			end := matchingBrace(g, i)
			if end < 0 {
				sb.WriteString(`\{`)
				break
			}
			alts, err := braceAlternatives(g[i+1 : end])
			if err != nil {
				return "", err
			}
			var parts []string
			for _, a := range alts {
				re, err := globRegexp(a)
				if err != nil {
					return "", err
				}
				parts = append(parts, re)
			}
			sb.WriteString("(?:" + strings.Join(parts, "|") + ")")
			i = end
		default:
			sb.WriteString(regexp.QuoteMeta(string(c)))
		}
		segStart = false
	}
	return sb.String(), nil
}

func matchingParen(s string, open int) int {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

func matchingBrace(s string, open int) int {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

// splitTopLevel splits s at sep outside of (), {} and [].
func splitTopLevel(s string, sep byte) []string {
	var out []string
	depth, last := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '(', '{', '[':
			depth++
		case ')', '}', ']':
			depth--
		case sep:
			if depth == 0 {
				out = append(out, s[last:i])
				last = i + 1
			}
		}
	}
	return append(out, s[last:])
}

// braceAlternatives expands the inside of {...}: a comma list, or a numeric
// or single-letter range a..b.
func braceAlternatives(inner string) ([]string, error) {
	if parts := splitTopLevel(inner, ','); len(parts) > 1 {
		return parts, nil
	}
	if a, b, ok := strings.Cut(inner, ".."); ok {
		if x, err1 := strconv.Atoi(a); err1 == nil {
			if y, err2 := strconv.Atoi(b); err2 == nil {
				if x > y {
					x, y = y, x
				}
				if y-x > 1000 {
					return nil, fmt.Errorf("range {%s} is too large", inner)
				}
				var out []string
				for n := x; n <= y; n++ {
					out = append(out, strconv.Itoa(n))
				}
				return out, nil
			}
		}
		if len(a) == 1 && len(b) == 1 {
			x, y := a[0], b[0]
			if x > y {
				x, y = y, x
			}
			var out []string
			for c := x; c <= y; c++ {
				out = append(out, string(c))
			}
			return out, nil
		}
	}
	// not a brace expansion: literal braces
	return []string{"\\{" + inner + "\\}"}, nil
}
