package backstageproxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddyconfig.RegisterAdapter("backstage", Adapter{})
}

// Adapter adapts a Backstage `app-config.yaml` to Caddy JSON: one route per
// proxy endpoint, in config order, behind the `backstage_proxy` policy handler,
// plus the `backstage` identity app built from `backend.auth`.
//
//	caddy run --adapter backstage --config app-config.yaml
//
// It reads what Backstage reads: the config files (app-config.yaml, then
// app-config.local.yaml and app-config.<BACKSTAGE_ENV>[.local].yaml next to it,
// or the files in CADDY_BACKSTAGE_CONFIG_FILES; APP_CONFIG_* last), `proxy`
// (both layouts, every http-proxy-middleware option YAML can express: mapped,
// or warned about with file and line), `backend.listen`, `backend.baseUrl`,
// `backend.https`, `backend.cors`, `backend.auth` and `discovery.endpoints`.
// Settings Backstage has no key for live under the top-level `caddy:` key,
// which Backstage ignores (see caddyOptions): admin, listen, backend,
// authBaseUrl, https, accessLog and json.
//
// Secrets that come from ${VAR} stay {env.VAR} placeholders in the JSON.
// Errors name the file and line, the route, and what is wrong; nothing is
// adapted then, so a `caddy reload` or `POST /load` with an invalid config
// leaves the running one in place (divergence D7).
type Adapter struct{}

// Adapt converts the Backstage config in body to Caddy JSON. options may be
// nil (admin API `POST /load` with `Content-Type: text/backstage`); its
// "filename" names the file, which resolves relative paths and default config
// discovery. Errors name the file (or "request body" when there is none), the
// line, the route and what is wrong; nothing is adapted then.
func (Adapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	filename, _ := options["filename"].(string)
	out, warnings, _, err := adaptFile(body, filename)
	return out, warnings, err
}

// adaptFile is Adapt for the config body read from filename ("" when it
// came from no file), with the files the load read or looked for: the
// `backstage` app watches them (watch.go), and after a failed reload it
// keeps watching those of the attempt too.
func adaptFile(body []byte, filename string) (out []byte, warns []caddyconfig.Warning, files []string, err error) {
	seen := map[string]bool{}
	// Paths stay as given (relative to the directory Caddy runs in), so the
	// adapted JSON is the same on every machine.
	addFile := func(p string) {
		p = filepath.Clean(p)
		if !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
	}
	if filename != "" {
		addFile(filename)
	}
	root, warnings, err := appconfig.Load(appconfig.Options{
		MainBody: body,
		MainFile: filename,
		Env:      os.LookupEnv,
		Environ:  os.Environ(),
		OnFile:   addFile,
	})
	// Warnings about keys the proxy never reads (an unset variable in
	// integrations.github[0].token) are not ours to give: a real app-config
	// has dozens of them, and Backstage's own backend reports them.
	var caddyWarnings []caddyconfig.Warning
	removed := map[string]string{}
	templates := map[string]string{}
	for _, w := range warnings {
		if top, _, _ := strings.Cut(w.Path, "."); w.Path != "" && !readTopLevelKeys[top] {
			continue
		}
		if w.Path != "" {
			removed[w.Path] = w.Message
			if w.Template != "" && isEndpointHeaderPath(w.Path) {
				// The header is kept as a placeholder: whether its
				// variable is set is decided where Caddy runs.
				w.Message = strings.Replace(w.Message, "; the value is removed (as Backstage does)",
					"; the header is kept as a placeholder, sent only if the variable is set where Caddy runs", 1)
				templates[w.Path] = w.Template
			}
		}
		caddyWarnings = append(caddyWarnings, caddyconfig.Warning{File: w.File, Line: w.Line, Message: w.Message})
	}
	if err != nil {
		return nil, labelWarnings(caddyWarnings, filename), files, labelError(err, filename)
	}
	ad := &adaptation{root: root, warnings: caddyWarnings, file: filename, removed: removed, removedTemplates: templates}
	if filename != "" {
		ad.watchFiles = files
	}
	out, err = ad.adapt()
	return out, labelWarnings(ad.warnings, filename), files, labelError(err, filename)
}

// unnamedSource names the config in messages when Caddy gave no file name.
const unnamedSource = "request body"

// labelError makes an error about an unnamed config (admin API) say so.
func labelError(err error, filename string) error {
	var ce *appconfig.Error
	if err == nil || filename != "" || !errors.As(err, &ce) || ce.File != "" || !strings.HasPrefix(ce.Source, "line ") {
		return err
	}
	labelled := *ce
	labelled.File = unnamedSource
	labelled.Source = unnamedSource + ":" + strings.TrimPrefix(ce.Source, "line ")
	return &labelled
}

func labelWarnings(ws []caddyconfig.Warning, filename string) []caddyconfig.Warning {
	if filename != "" {
		return ws
	}
	for i := range ws {
		if ws[i].File == "" && ws[i].Line > 0 {
			ws[i].File = unnamedSource
		}
	}
	return ws
}

// readTopLevelKeys are the top-level app-config keys the adapter reads.
var readTopLevelKeys = map[string]bool{"proxy": true, "backend": true, "caddy": true, "discovery": true, "auth": true}

// adaptation is the state of one Adapt call.
type adaptation struct {
	root     *appconfig.Node
	file     string
	warnings []caddyconfig.Warning
	// corsOpts is backend.cors, read once (corsRead).
	corsRead bool
	corsOpts *corsOptions
	corsErr  error
	// watchFiles are the files the running server watches: the config was
	// read from a file. Nil for a config from the admin API.
	watchFiles []string
	// removed maps the path of each value the loader removed (an unset
	// variable) to its warning, so that an error about the missing key can
	// say why it is missing.
	removed map[string]string
	// removedTemplates maps the path of each endpoint header removed for
	// an unset variable to its template ("Bearer {env.TOKEN}"): the header
	// stays in the JSON, and the transport sends it only if the variable is
	// set in the server's environment, so that adapting in a shell without
	// the secret (caddy reload) runs like adapting in the server (POST /load).
	removedTemplates map[string]string
	caddy            *caddyOptions
	// protected is set when a route needs credentials.
	protected bool
	// rateLimited is set when an endpoint has caddy.rateLimit.
	rateLimited bool
	// anonymousAll is backend.auth.dangerouslyDisableDefaultAuthPolicy.
	anonymousAll bool
}

func (ad *adaptation) warn(n *appconfig.Node, directive, format string, args ...any) {
	// hostile input must not produce unbounded output
	switch {
	case len(ad.warnings) > appconfig.MaxWarnings:
		return
	case len(ad.warnings) == appconfig.MaxWarnings:
		format, args = "too many warnings; the rest are not shown", nil
	}
	w := caddyconfig.Warning{Directive: directive, Message: fmt.Sprintf(format, args...)}
	if n != nil {
		w.File, w.Line = n.File, n.Line
		if w.File == "" && n.Source != "" && !strings.HasPrefix(n.Source, "line ") {
			w.File = n.Source
		}
	}
	if w.File == "" {
		w.File = ad.file
	}
	ad.warnings = append(ad.warnings, w)
}

// adapt builds the Caddy JSON.
func (ad *adaptation) adapt() ([]byte, error) {
	cfg, err := ad.config()
	if err != nil {
		return nil, err
	}
	out, err := json.Marshal(cfg)
	if err != nil || ad.caddy.json == nil {
		return out, err
	}
	if err := checkJSONNode(ad.caddy.json); err != nil {
		return nil, err
	}
	return mergeRawJSON(out, ad.caddy.json)
}

// config builds the whole Caddy config.
func (ad *adaptation) config() (*caddy.Config, error) {
	opts, err := ad.readCaddyOptions()
	if err != nil {
		return nil, err
	}
	ad.caddy = opts
	listen, err := ad.listenFor(opts)
	if err != nil {
		return nil, err
	}
	if opts.backend != nil && backendIsListener(opts.backend, listen) {
		return nil, appconfig.ErrorAt(ad.root.Lookup("caddy.backend"),
			"caddy.backend (%s) is the address Caddy would listen on (%s): Caddy would proxy to itself, or fail to bind next to Backstage. When one app-config is read by both, set caddy.listen to the public address for Caddy and keep backend.listen and caddy.backend for Backstage behind it",
			opts.backend.Host, listen)
	}
	if _, _, err := ad.baseURL(); err != nil {
		return nil, err
	}
	identity, err := ad.identity()
	if err != nil {
		return nil, err
	}
	proxyRoutes, err := ad.proxyRoutes()
	if err != nil {
		return nil, err
	}
	// With a Backstage backend behind Caddy, it answers CORS on its own paths.
	var corsScope caddy.ModuleMap
	if opts.backend != nil {
		corsScope = caddy.ModuleMap{"backstage_route": caddyconfig.JSON(MatchRoutePath{Paths: []string{DefaultMountPath}}, &ad.warnings)}
	}
	routes, err := ad.corsRoutes(corsScope)
	if err != nil {
		return nil, err
	}
	routes = append(routes, proxyRoutes...)
	if ad.protected && identity.UserTokens == nil && !identity.DangerouslyDisableDefaultAuthPolicy {
		where := ad.root.Get("backend")
		if where == nil {
			where = ad.root
		}
		ad.warn(where, "backend.baseUrl", "backend.baseUrl is not set (Backstage requires it): user and plugin tokens cannot be verified, only backend.auth.externalAccess and backend.auth.keys tokens; set backend.baseUrl, caddy.backend or caddy.authBaseUrl")
	}
	if opts.backend != nil {
		routes = append(routes, ad.backendRoute(opts.backend))
	} else {
		// Everything outside the proxy mount: nothing here serves it.
		routes = append(routes, caddyhttp.Route{
			HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(
				caddyhttp.StaticResponse{StatusCode: caddyhttp.WeakString("404")}, "handler", "static_response", &ad.warnings)},
		})
	}
	server := &caddyhttp.Server{
		Listen: []string{listen},
		Routes: routes,
		// Refusals and upstream failures are handler errors; this renders
		// them as Backstage does.
		Errors:    &caddyhttp.HTTPErrorConfig{Routes: caddyhttp.RouteList{buildErrorRouteFor(ErrorHandler{Backend: opts.backend != nil}, &ad.warnings)}},
		AutoHTTPS: &caddyhttp.AutoHTTPSConfig{Disabled: true},
	}
	if opts.accessLog {
		server.Logs = &caddyhttp.ServerLogConfig{}
	}
	apps := caddy.ModuleMap{}
	if err := ad.serverTLS(opts, server, apps); err != nil {
		return nil, err
	}
	httpApp := caddyhttp.App{Servers: map[string]*caddyhttp.Server{"backstage": server}}
	if opts.metrics {
		// Caddy's HTTP metrics (caddy_http_*), for every server.
		httpApp.Metrics = &caddyhttp.Metrics{}
	}
	if ad.watchFiles != nil && !opts.noWatch {
		identity.Watch = &WatchConfig{ConfigFile: ad.watchFiles[0], Files: ad.watchFiles}
	}
	ad.applyRateLimitSettings(opts, identity)
	apps["backstage"] = caddyconfig.JSON(identity, &ad.warnings)
	apps["http"] = caddyconfig.JSON(httpApp, &ad.warnings)
	cfg := &caddy.Config{AppsRaw: apps, StorageRaw: opts.storage}
	if err := ad.adminConfig(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// adminConfig applies `caddy.admin`: the admin endpoint's address, or "off".
// Default: Caddy's default (localhost:2019).
func (ad *adaptation) adminConfig(cfg *caddy.Config) error {
	n := ad.root.Lookup("caddy.admin")
	if n == nil {
		return nil
	}
	s, ok := n.String()
	if !ok {
		return appconfig.ErrorAt(n, "caddy.admin must be a listen address or \"off\", got %s", n.TypeName())
	}
	if s == "off" {
		cfg.Admin = &caddy.AdminConfig{Disabled: true}
		return nil
	}
	if _, err := caddy.ParseNetworkAddress(s); err != nil {
		return appconfig.ErrorAt(n, "caddy.admin: %v", err)
	}
	cfg.Admin = &caddy.AdminConfig{Listen: s}
	return nil
}

// listenAddress reads `backend.listen` as Backstage does (backend-defaults'
// rootHttpRouter/http/config.ts).
func (ad *adaptation) listenAddress() (string, error) {
	if n := ad.root.Lookup("caddy.listen"); n != nil {
		s, ok := n.String()
		if !ok {
			return "", appconfig.ErrorAt(n, "caddy.listen must be a listen address such as \":7007\", got %s", n.TypeName())
		}
		if _, err := caddy.ParseNetworkAddress(s); err != nil {
			return "", appconfig.ErrorAt(n, "caddy.listen: %v", err)
		}
		return s, nil
	}
	n := ad.root.Lookup("backend.listen")
	host, port := "", "7007"
	switch {
	case n == nil || n.IsNull():
	case n.Kind == appconfig.KindMap:
		if h := n.Get("host"); h != nil {
			s, ok := h.String()
			if !ok {
				return "", appconfig.ErrorAt(h, "Invalid type in config for key 'backend.listen.host', got %s, wanted string", h.TypeName())
			}
			host = s
		}
		if p := n.Get("port"); p != nil {
			f, ok := p.Number()
			if !ok || f != float64(int(f)) || f < 0 || f > 65535 {
				return "", appconfig.ErrorAt(p, "Invalid type in config for key 'backend.listen.port', got %s, wanted number", p.TypeName())
			}
			port = strconv.Itoa(int(f))
		}
	case n.Kind == appconfig.KindScalar && n.Tag == "!!str":
		s := n.Value
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i+1:]
		} else {
			port = s
		}
		if strings.ContainsAny(host, "[]:") {
			return "", appconfig.ErrorAt(n, "Unable to parse listen address %s", s)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", appconfig.ErrorAt(n, "Unable to parse listen address %s", s)
		}
	default:
		return "", appconfig.ErrorAt(n, "Invalid type in config for key 'backend.listen', got %s, wanted object", n.TypeName())
	}
	return net.JoinHostPort(host, port), nil
}

// proxyEntry is one route key and its value, in config order.
type proxyEntry struct {
	key  string
	node *appconfig.Node
}

// readProxyConfig picks the endpoint map as Backstage's readProxyConfig does
// (plugins/proxy-backend/src/service/router.ts): `proxy.endpoints` when present, else the
// deprecated root-level keys starting with `/`.
func (ad *adaptation) readProxyConfig() ([]proxyEntry, error) {
	proxy := ad.root.Get("proxy")
	if proxy == nil || proxy.IsNull() {
		return nil, nil
	}
	if proxy.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(proxy, "Invalid type in config for key 'proxy', got %s, wanted object", proxy.TypeName())
	}
	var entries []proxyEntry
	if ep := proxy.Get("endpoints"); ep != nil && !ep.IsNull() {
		if ep.Kind != appconfig.KindMap {
			return nil, appconfig.ErrorAt(ep, "Invalid type in config for key 'proxy.endpoints', got %s, wanted object", ep.TypeName())
		}
		for i, k := range ep.Keys {
			entries = append(entries, proxyEntry{k, ep.Values[i]})
		}
		return entries, nil
	}
	for i, k := range proxy.Keys {
		if strings.HasPrefix(k, "/") {
			entries = append(entries, proxyEntry{k, proxy.Values[i]})
		}
	}
	if len(entries) > 0 {
		ad.warn(proxy, "proxy", "Configuring proxy endpoints in the root 'proxy' configuration is deprecated. Move this configuration to 'proxy.endpoints' instead.")
	}
	return entries, nil
}

// proxyRoutes builds the routes under the mount path: the plugin JWKS route,
// then one route holding the endpoints in config order and the barrier
// (buildDispatchRoute).
func (ad *adaptation) proxyRoutes() ([]caddyhttp.Route, error) {
	entries, err := ad.readProxyConfig()
	if err != nil {
		return nil, err
	}
	skipInvalid := false
	if n := ad.root.Lookup("proxy.skipInvalidProxies"); n != nil {
		v, ok := n.Bool()
		if !ok {
			return nil, appconfig.ErrorAt(n, "Unable to convert config value for key 'proxy.skipInvalidProxies' to a boolean")
		}
		skipInvalid = v
	}
	mount := DefaultMountPath
	var routes []caddyhttp.Route
	var open []string
	seen := map[string]string{}
	for _, e := range entries {
		spec, err := ad.endpoint(e.key, e.node)
		if err == nil {
			if prev, dup := seen[strings.ToLower(spec.routeKey())]; dup {
				//lint:ignore ST1005 worded like Backstage's proxy config errors around it, which start with "Proxy"
				err = fmt.Errorf("Proxy route %q is the same route as %q (route keys are case-insensitive and a trailing slash does not matter)", e.key, prev)
			}
		}
		var route caddyhttp.Route
		if err == nil {
			route, err = buildEndpointRoute(spec, &ad.warnings)
		}
		if err == nil {
			err = ad.lintEndpoint(route, e.node)
		}
		if err == nil {
			if expose := ad.corsExposeHandler(spec); expose != nil {
				route.HandlersRaw = append([]json.RawMessage{expose}, route.HandlersRaw...)
			}
		}
		if err != nil {
			if skipInvalid {
				ad.warn(e.node, e.key, "skipped configuring %s due to %s", e.key, err)
				continue
			}
			var positioned *appconfig.Error
			if errors.As(err, &positioned) {
				return nil, err // the secure-route lint's, at the key it is about
			}
			return nil, &appconfig.Error{File: e.node.File, Line: e.node.Line, Source: e.node.Source,
				Msg: fmt.Sprintf("proxy route %s: %s", e.key, err)}
		}
		seen[strings.ToLower(spec.routeKey())] = e.key
		if spec.Credentials == CredentialsDangerouslyAllowUnauthenticated {
			open = append(open, spec.routeKey())
		} else {
			ad.protected = true
		}
		if spec.AllowedMethods != nil && len(spec.AllowedMethods) == 0 {
			ad.warn(e.node, e.key, "allowedMethods is empty: no request can use route %s", e.key)
			continue
		}
		routes = append(routes, route)
	}
	routes = append(routes, buildBarrierRoutes(mount, open, &ad.warnings)...)
	// One route for the whole mount: requests outside it pay one matcher,
	// requests under it one lookup (the dispatcher's index), whatever the
	// number of endpoints.
	return []caddyhttp.Route{buildPluginJWKSRoute(mount, &ad.warnings), buildDispatchRoute(mount, routes, &ad.warnings)}, nil
}

// endpointOptions says what the adapter does with each key of an endpoint
// object: everything but `credentials`,
// `allowedMethods` and `allowedHeaders` is an http-proxy-middleware option
// that Backstage passes through.
var endpointOptions = map[string]optionSupport{
	"target": optMapped, "credentials": optMapped, "allowedMethods": optMapped,
	"allowedHeaders": optMapped, "headers": optMapped, "changeOrigin": optMapped,
	"pathRewrite": optMapped, "xfwd": optMapped, "ws": optMapped, "secure": optMapped,
	"proxyTimeout": optMapped, "ignorePath": optMapped, "prependPath": optMapped,
	"method": optMapped, "followRedirects": optMapped, "router": optMapped,
	"autoRewrite": optMapped, "hostRewrite": optMapped, "protocolRewrite": optMapped,
	"cookieDomainRewrite": optMapped, "cookiePathRewrite": optMapped, "ca": optMapped,
	"auth": optMapped, "localAddress": optMapped,

	// Settings Backstage has no words for, under the endpoint's own `caddy:`
	// key (Backstage ignores it).
	"caddy": optMapped,

	// Backstage itself ignores these: it forces logLevel to debug, and the
	// router never reads reviveRequestBody.
	"logLevel": optIgnoredByBackstage, "reviveRequestBody": optIgnoredByBackstage,

	// http-proxy options with no equivalent here.
	"timeout": optUnsupported, "preserveHeaderKeyCase": optUnsupported,
	"toProxy": optUnsupported, "forward": optUnsupported,
	"selfHandleResponse": optUnsupported, "buffer": optUnsupported,
	"agent": optUnsupported, "ssl": optUnsupported,

	// Functions in http-proxy-middleware; YAML cannot express them (Backstage
	// overwrites logProvider and onProxyRes anyway).
	"onError": optFunction, "onProxyReq": optFunction, "onProxyReqWs": optFunction,
	"onProxyRes": optFunction, "onOpen": optFunction, "onClose": optFunction,
	"logProvider": optFunction, "context": optFunction, "filter": optFunction,
}

type optionSupport int

const (
	optUnknown optionSupport = iota
	optMapped
	optIgnoredByBackstage
	optUnsupported
	optFunction
)

// unsupportedOptionHints explain, in the warning, what to use instead.
var unsupportedOptionHints = map[string]string{
	"timeout":               "it is http-proxy's per-request socket timeout on the client connection; use proxyTimeout to bound the wait for the upstream, and caddy.json to set the server's read/idle timeouts",
	"preserveHeaderKeyCase": "header names are sent in canonical case; HTTP header names are case-insensitive",
	"toProxy":               "it sends absolute request URIs, for chaining to another proxy",
	"forward":               "it would also send every request to a second URL",
	"selfHandleResponse":    "in Backstage it makes every request hang, as no handler writes the response",
	"buffer":                "request bodies are streamed",
	"agent":                 "connection pooling is Caddy's transport",
	"ssl":                   "it configures an https server in http-proxy; use backend.https or caddy.https",
}

// endpoint reads one endpoint value as Backstage's buildMiddleware does
// (plugins/proxy-backend/src/service/router.ts). Errors carry Backstage's
// messages.
func (ad *adaptation) endpoint(route string, n *appconfig.Node) (endpointSpec, error) {
	spec := endpointSpec{Route: route, Credentials: CredentialsRequire, ChangeOrigin: true}
	if !strings.HasPrefix(route, "/") || (len(route) > 1 && strings.HasSuffix(route, "/")) {
		ad.warn(n, route, "route key %q is served as %q (Backstage would ignore a key without a leading '/' and demand credentials under a trailing '/')", route, normalizeRouteKey(route))
	}
	if s, ok := n.String(); ok {
		u, err := parseTarget(route, s)
		if err != nil {
			return spec, err
		}
		spec.Target = u
		return spec, nil
	}
	if n.Kind != appconfig.KindMap {
		// numbers, arrays and booleans take Backstage's object path
		//lint:ignore ST1005 Backstage's message, word for word (plugins/proxy-backend/src/service/router.ts)
		return spec, fmt.Errorf("Proxy target for route \"%s\" must be a string, but is of type undefined", route)
	}

	if c := n.Get("credentials"); c != nil {
		v, isString := c.String()
		switch v {
		case CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated:
			spec.Credentials = v
		default:
			if !isString && !c.IsNull() {
				//lint:ignore ST1005 Backstage's message (router.ts), adapted to name the type of a non-string policy
				return spec, fmt.Errorf("Unknown credentials policy of type %s for proxy route '%s'; expected one of '%s', '%s', '%s'",
					c.TypeName(), route, CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated)
			}
			if !c.IsNull() {
				//lint:ignore ST1005 Backstage's message, word for word (plugins/proxy-backend/src/service/router.ts)
				return spec, fmt.Errorf("Unknown credentials policy '%s' for proxy route '%s'; expected one of '%s', '%s', '%s'",
					c.Value, route, CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated)
			}
		}
	}
	t := n.Get("target")
	ts, ok := t.String()
	if !ok {
		typ := "undefined"
		if t != nil {
			switch t.TypeName() {
			case "number", "nan":
				typ = "number"
			case "boolean":
				typ = "boolean"
			case "null", "array", "object":
				typ = "object"
			}
		}
		if t == nil {
			for _, p := range endpointKeyPaths(route, "target") {
				if why, ok := ad.removed[p]; ok {
					//lint:ignore ST1005 Backstage's message, word for word (plugins/proxy-backend/src/service/router.ts), then why the value is missing
					return spec, fmt.Errorf("Proxy target for route \"%s\" must be a string, but is of type undefined: %s", route, why)
				}
			}
		}
		//lint:ignore ST1005 Backstage's message, word for word (plugins/proxy-backend/src/service/router.ts)
		return spec, fmt.Errorf("Proxy target for route \"%s\" must be a string, but is of type %s", route, typ)
	}
	u, err := parseTarget(route, ts)
	if err != nil {
		return spec, err
	}
	spec.Target = u

	for i, key := range n.Keys {
		v := n.Values[i]
		switch endpointOptions[key] {
		case optUnknown:
			ad.warn(v, route+"."+key, "proxy route %s: unknown option %q is ignored", route, key)
			continue
		case optIgnoredByBackstage:
			continue
		case optFunction:
			ad.warn(v, route+"."+key, "proxy route %s: option %q is a function in http-proxy-middleware; it cannot be configured in YAML and is ignored", route, key)
			continue
		case optUnsupported:
			if jsFalsy(v) {
				continue // off, as http-proxy reads it: nothing is lost
			}
			ad.warn(v, route+"."+key, "proxy route %s: option %q is not supported and is ignored (%s)", route, key, unsupportedOptionHints[key])
			continue
		}
		var err error
		switch key {
		case "allowedMethods":
			spec.AllowedMethods, err = stringList(v, "allowedMethods")
			if spec.AllowedMethods == nil && err == nil {
				spec.AllowedMethods = []string{}
			}
			for _, m := range spec.AllowedMethods {
				if m != strings.ToUpper(m) {
					ad.warn(v, route+".allowedMethods", "method %q is not upper case and never matches (methods are compared exactly, as in Backstage)", m)
				}
			}
		case "caddy":
			err = ad.endpointCaddyOptions(&spec, v)
		case "allowedHeaders":
			spec.AllowedHeaders, err = stringList(v, "allowedHeaders")
			for _, name := range spec.AllowedHeaders {
				if err == nil && !headerNameRE.MatchString(name) {
					err = fmt.Errorf("allowedHeaders: invalid header name %q", name)
				}
			}
		case "headers":
			spec.Headers, err = headerValues(v)
			spec.Headers = append(spec.Headers, ad.removedHeaders(route)...)
			for _, hv := range v.Values {
				ad.checkInlinedSecret(hv, route+".headers")
			}
		case "changeOrigin":
			spec.ChangeOrigin, err = boolOption(v, "changeOrigin")
		case "xfwd":
			spec.XForwarded, err = boolOption(v, "xfwd")
		case "ws":
			spec.WebSocket, err = boolOption(v, "ws")
		case "secure":
			var secure bool
			secure, err = boolOption(v, "secure")
			spec.InsecureSkipVerify = !secure
		case "ignorePath":
			spec.IgnorePath, err = boolOption(v, "ignorePath")
		case "prependPath":
			var prepend bool
			prepend, err = boolOption(v, "prependPath")
			spec.NoPrependPath = !prepend
		case "proxyTimeout":
			f, ok := v.Number()
			if !ok || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
				err = fmt.Errorf("proxyTimeout must be a number of milliseconds, got %s", v.TypeName())
			}
			spec.ProxyTimeout = time.Duration(f * float64(time.Millisecond))
		case "method":
			m, ok := v.String()
			if !ok || !headerNameRE.MatchString(m) {
				err = fmt.Errorf("method must be an HTTP method name")
			}
			spec.Method = strings.ToUpper(m)
		case "pathRewrite":
			spec.PathRewrite, err = pathRewriteRules(v)
			spec.CustomRewrite = true
		case "followRedirects":
			spec.FollowRedirects, err = boolOption(v, "followRedirects")
		case "router":
			spec.Router, err = ad.routerEntries(route, v)
		case "autoRewrite", "hostRewrite", "protocolRewrite":
			if spec.LocationRewrite == nil {
				spec.LocationRewrite = &locationRewrite{}
			}
			err = locationRewriteOption(spec.LocationRewrite, key, v)
		case "cookieDomainRewrite":
			spec.CookieDomainRewrite, err = cookieRewriteOption(v, key)
		case "cookiePathRewrite":
			spec.CookiePathRewrite, err = cookieRewriteOption(v, key)
		case "ca":
			spec.CACerts, spec.CAFiles, err = ad.caOption(v)
		case "auth":
			spec.BasicAuth, err = ad.authOption(route, v)
		case "localAddress":
			s, ok := v.String()
			if !ok || net.ParseIP(s) == nil {
				err = fmt.Errorf("localAddress must be an IP address of this host, got %s", v.TypeName())
			}
			spec.LocalAddress = s
		}
		if err != nil {
			// an error at a value inside this option names that value's line
			src := v.Source
			if at := (*appconfig.Error)(nil); errors.As(err, &at) && at.Source != "" {
				src, err = at.Source, errors.New(at.Msg)
			}
			return spec, fmt.Errorf("%s (%s)", err, src)
		}
	}
	if err := ad.checkAccess(&spec, n); err != nil {
		return spec, err
	}
	ad.checkEndpoint(&spec, n)
	return spec, nil
}

func boolOption(n *appconfig.Node, name string) (bool, error) {
	v, ok := n.Bool()
	if !ok {
		return false, fmt.Errorf("%s must be a boolean, got %s", name, n.TypeName())
	}
	return v, nil
}

func stringList(n *appconfig.Node, name string) ([]string, error) {
	if n.Kind != appconfig.KindSeq {
		return nil, fmt.Errorf("%s must be a list of strings, got %s", name, n.TypeName())
	}
	var out []string
	for _, item := range n.Items {
		s, ok := item.String()
		if !ok {
			return nil, fmt.Errorf("%s must be a list of strings, but has a %s", name, item.TypeName())
		}
		out = append(out, s)
	}
	return out, nil
}

// headerValues reads `headers:`. Values that came from ${VAR} substitutions
// are emitted as {env.VAR} placeholders, so the secret stays out of the JSON.
func headerValues(n *appconfig.Node) ([]headerValue, error) {
	if n.Kind != appconfig.KindMap {
		return nil, fmt.Errorf("headers must be an object, got %s", n.TypeName())
	}
	var out []headerValue
	for i, name := range n.Keys {
		v := n.Values[i]
		if !headerNameRE.MatchString(name) {
			return nil, fmt.Errorf("invalid header name %q", name)
		}
		if v.Kind != appconfig.KindScalar || v.IsNull() {
			return nil, fmt.Errorf("header %s must be a string, got %s", name, v.TypeName())
		}
		if strings.ContainsAny(v.Value, "\r\n\x00") {
			return nil, fmt.Errorf("header %s has a line break or NUL in its value", name)
		}
		value := v.EnvTemplate
		if value == "" {
			value = appconfig.EscapeCaddyPlaceholders(v.Value)
		}
		out = append(out, headerValue{Name: name, Value: value, Secret: v.EnvTemplate != "" || v.FromFile})
	}
	return out, nil
}

// pathRewriteRules converts `pathRewrite` (JavaScript regular expressions
// with String.replace replacements) to Go rules. Syntax RE2 cannot express
// (look-around, back-references) is an error, never silently different.
func pathRewriteRules(n *appconfig.Node) ([]PathRewriteRule, error) {
	if n.Kind != appconfig.KindMap {
		return nil, fmt.Errorf("[HPM] Invalid pathRewrite config. Expecting object with pathRewrite config or a rewrite function")
	}
	rules := []PathRewriteRule{}
	for i, find := range n.Keys {
		v := n.Values[i]
		if v.Kind != appconfig.KindScalar || v.IsNull() {
			return nil, fmt.Errorf("pathRewrite %q: the replacement must be a string, got %s", find, v.TypeName())
		}
		re, err := regexp.Compile(find)
		if err != nil {
			return nil, fmt.Errorf("pathRewrite %q is not a regular expression this proxy can run (JavaScript-only syntax such as look-around or back-references has no RE2 equivalent): %v", find, err)
		}
		repl, err := jsReplacement(v.Value, re.NumSubexp())
		if err != nil {
			return nil, fmt.Errorf("pathRewrite %q: %v", find, err)
		}
		rules = append(rules, PathRewriteRule{Find: find, Replace: repl})
	}
	return rules, nil
}

// jsReplacement converts a JavaScript String.replace replacement to Go's
// regexp.Expand template: $n and $nn → ${n}, $& → ${0}, $<name> → ${name},
// $$ → $$, any other $ → a literal $.
func jsReplacement(s string, groups int) (string, error) {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			if c == '$' {
				sb.WriteString("$$")
			} else {
				sb.WriteByte(c)
			}
			continue
		}
		next := s[i+1]
		switch {
		case next == '$':
			sb.WriteString("$$")
			i++
		case next == '&':
			sb.WriteString("${0}")
			i++
		case next == '`' || next == '\'':
			return "", fmt.Errorf("the replacement pattern $%c is not supported", next)
		case next == '<':
			end := strings.IndexByte(s[i:], '>')
			if end < 0 {
				sb.WriteString("$$")
				continue
			}
			sb.WriteString("${" + s[i+2:i+end] + "}")
			i += end
		case next >= '0' && next <= '9':
			n := int(next - '0')
			width := 1
			if i+2 < len(s) && s[i+2] >= '0' && s[i+2] <= '9' {
				if two := n*10 + int(s[i+2]-'0'); two >= 1 && two <= groups {
					n, width = two, 2
				}
			}
			if n < 1 || n > groups {
				// JavaScript keeps it literally
				sb.WriteString("$$")
				continue
			}
			sb.WriteString("${" + strconv.Itoa(n) + "}")
			i += width
		default:
			sb.WriteString("$$")
		}
	}
	return sb.String(), nil
}

// identity builds the `backstage` app from `backend.auth` and discovery.
func (ad *adaptation) identity() (*App, error) {
	app := &App{}
	auth := ad.root.Lookup("backend.auth")
	if n := auth.Get("dangerouslyDisableDefaultAuthPolicy"); n != nil {
		v, ok := n.Bool()
		if !ok {
			return nil, appconfig.ErrorAt(n, "Unable to convert config value for key 'backend.auth.dangerouslyDisableDefaultAuthPolicy' to a boolean")
		}
		app.DangerouslyDisableDefaultAuthPolicy = v
		ad.anonymousAll = v
		if v {
			ad.warn(n, "backend.auth", "dangerouslyDisableDefaultAuthPolicy is true: every proxy route is open to anonymous callers")
		}
	}
	if ea := auth.Get("externalAccess"); ea != nil && !ea.IsNull() {
		if ea.Kind != appconfig.KindSeq {
			return nil, appconfig.ErrorAt(ea, "Invalid type in config for key 'backend.auth.externalAccess', got %s, wanted array", ea.TypeName())
		}
		for i, item := range ea.Items {
			for _, key := range []string{"token", "secret"} {
				ad.checkInlinedSecret(item.Lookup("options."+key), "backend.auth.externalAccess")
			}
			entry, err := externalAccessEntry(item, i)
			if err == nil {
				err = ad.checkExternalAccessValues(item, i)
			}
			if err != nil {
				return nil, err
			}
			app.ExternalAccess = append(app.ExternalAccess, entry)
		}
	}
	if keys := auth.Get("keys"); keys != nil && keys.Kind == appconfig.KindSeq {
		ad.warn(keys, "backend.auth.keys", "backend.auth.keys is deprecated; use backend.auth.externalAccess with type 'legacy'")
		for _, k := range keys.Items {
			s := k.Get("secret")
			if _, ok := s.String(); !ok {
				return nil, appconfig.ErrorAt(k, "backend.auth.keys entry must have a string secret")
			}
			ad.checkInlinedSecret(s, "backend.auth.keys")
			app.Keys = append(app.Keys, identity.LegacyKey{Secret: secretValue(s)})
		}
	}
	if ad.caddy != nil {
		app.KeySetCAFiles = ad.caddy.keySetCAs
	}
	authBase := ad.pluginBaseURL("auth")
	if authBase != "" {
		app.UserTokens = &identity.UserTokens{JWKSURL: authBase + "/.well-known/jwks.json"}
		// The auth backend signs user tokens with auth.identityTokenAlgorithm
		// (default ES256); accept that algorithm, not just the default.
		if alg, err := ad.algorithmSetting(ad.root.Lookup("auth.identityTokenAlgorithm")); err != nil {
			return nil, err
		} else if alg != "" {
			app.UserTokens.Algorithms = []string{alg}
		}
	}
	endpoints := ad.namedPluginKeySets()
	if tmpl := ad.pluginBaseURL("{plugin}"); tmpl != "" || len(endpoints) > 0 {
		app.PluginTokens = &identity.PluginTokens{Endpoints: endpoints}
		if tmpl != "" {
			app.PluginTokens.JWKSURL = tmpl + "/.backstage/auth/v1/jwks.json"
		}
		// Plugins sign with their key store's algorithm (static key stores
		// name it per key; the database store uses ES256).
		if keys := ad.root.Lookup("backend.auth.pluginKeyStore.static.keys"); keys != nil && keys.Kind == appconfig.KindSeq {
			seen := map[string]bool{}
			for _, k := range keys.Items {
				alg, err := ad.algorithmSetting(k.Get("algorithm"))
				if err != nil {
					return nil, err
				}
				if alg == "" {
					alg = "ES256"
				}
				if !seen[alg] {
					seen[alg] = true
					app.PluginTokens.Algorithms = append(app.PluginTokens.Algorithms, alg)
				}
			}
		}
	}
	return app, nil
}

// algorithmSetting reads a JWS algorithm name setting ("" when absent).
func (ad *adaptation) algorithmSetting(n *appconfig.Node) (string, error) {
	if n == nil || n.IsNull() {
		return "", nil
	}
	s, ok := n.String()
	if !ok || !regexp.MustCompile(`^(ES|RS|PS)(256|384|512)$|^EdDSA$`).MatchString(s) {
		return "", appconfig.ErrorAt(n, "%q is not a signature algorithm this proxy can verify (ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA)", n.Value)
	}
	return s, nil
}

// secretValue is the value to put in the JSON for a secret: its {env.VAR}
// placeholder form when it came from the environment.
func secretValue(n *appconfig.Node) string {
	if n.EnvTemplate != "" {
		return n.EnvTemplate
	}
	return appconfig.EscapeCaddyPlaceholders(n.Value)
}

func externalAccessEntry(n *appconfig.Node, i int) (identity.ExternalAccess, error) {
	var e identity.ExternalAccess
	if n.Kind != appconfig.KindMap {
		return e, appconfig.ErrorAt(n, "backend.auth.externalAccess[%d] must be an object", i)
	}
	typ, _ := n.Get("type").String()
	switch typ {
	case "static", "legacy", "jwks":
	default:
		where := n.Get("type")
		if where == nil {
			where = n
		}
		return e, appconfig.ErrorAt(where, "Unknown type '%s' in backend.auth.externalAccess, expected one of 'static', 'legacy', 'jwks'", typ)
	}
	opts := n.Get("options")
	str := func(key string) string {
		if v := opts.Get(key); v != nil {
			if _, ok := v.String(); ok {
				return secretValue(v)
			}
		}
		return ""
	}
	list := func(key string) []string {
		v := opts.Get(key)
		if v == nil {
			return nil
		}
		var raw []string
		if s, ok := v.String(); ok {
			raw = []string{s}
		} else if v.Kind == appconfig.KindSeq {
			for _, it := range v.Items {
				if s, ok := it.String(); ok {
					raw = append(raw, s)
				}
			}
		}
		return identity.SplitList(raw)
	}
	// Backstage's option names (singular for lists) become the JSON's.
	switch typ {
	case "static":
		e.Static = &identity.StaticAccess{Token: str("token"), Subject: str("subject")}
	case "legacy":
		e.Legacy = &identity.LegacyAccess{Secret: str("secret"), Subject: str("subject")}
	case "jwks":
		e.JWKS = &identity.JWKSAccess{
			URL: str("url"), Issuers: list("issuer"), Audiences: list("audience"), Algorithms: list("algorithm"),
			SubjectPrefix: str("subjectPrefix"),
		}
	}
	if ar := n.Get("accessRestrictions"); ar != nil && ar.Kind == appconfig.KindSeq {
		e.AccessRestrictions = []identity.AccessRestriction{}
		for _, r := range ar.Items {
			plugin, _ := r.Get("plugin").String()
			restriction := identity.AccessRestriction{Plugin: plugin}
			if p := r.Get("permission"); p != nil {
				if s, ok := p.String(); ok {
					restriction.Permissions = strings.FieldsFunc(s, func(c rune) bool { return c == ' ' || c == ',' })
				} else if p.Kind == appconfig.KindSeq {
					for _, it := range p.Items {
						if s, ok := it.String(); ok {
							restriction.Permissions = append(restriction.Permissions, s)
						}
					}
				}
			}
			e.AccessRestrictions = append(e.AccessRestrictions, restriction)
		}
	}
	return e, nil
}

// pluginBaseURL resolves a plugin's internal base URL as Backstage discovery
// does: a `discovery.endpoints` entry naming the plugin (the last one), else
// one for `*`; else, here, caddy.backend (the backend behind Caddy) + `/api/<plugin>`,
// else `backend.baseUrl` + `/api/<plugin>`. caddy.authBaseUrl overrides all of
// them for the auth plugin. plugin may be "{plugin}" to get a template (then
// only `*` entries apply). "" when nothing says.
func (ad *adaptation) pluginBaseURL(plugin string) string {
	if plugin == "auth" && ad.caddy != nil && ad.caddy.authBaseURL != "" {
		return ad.caddy.authBaseURL
	}
	if eps := ad.root.Lookup("discovery.endpoints"); eps != nil && eps.Kind == appconfig.KindSeq {
		var exact, wildcard string
		for _, ep := range eps.Items {
			target := ep.Get("target")
			if target != nil && target.Kind == appconfig.KindMap {
				target = target.Get("internal")
			}
			t, ok := target.String()
			if !ok || t == "" {
				continue
			}
			t = discoveryPluginIDRE.ReplaceAllLiteralString(t, plugin)
			if plugins := ep.Get("plugins"); plugins != nil && plugins.Kind == appconfig.KindSeq {
				for _, p := range plugins.Items {
					switch s, _ := p.String(); s {
					case plugin:
						exact = t
					case "*":
						wildcard = t
					}
				}
			}
		}
		if exact != "" {
			return exact
		}
		if wildcard != "" {
			return wildcard
		}
	}
	if ad.caddy != nil && ad.caddy.backend != nil {
		return strings.TrimRight(ad.caddy.backend.String(), "/") + "/api/" + plugin
	}
	base, _ := ad.root.Lookup("backend.baseUrl").String()
	if base == "" {
		return ""
	}
	return strings.TrimRight(base, "/") + "/api/" + plugin
}

// namedPluginKeySets maps the plugins that `discovery.endpoints` names one
// by one (not `*`) to their key set URLs (the last entry naming a plugin
// wins, as in pluginBaseURL). nil when there are none.
func (ad *adaptation) namedPluginKeySets() map[string]string {
	eps := ad.root.Lookup("discovery.endpoints")
	if eps == nil || eps.Kind != appconfig.KindSeq {
		return nil
	}
	var out map[string]string
	for _, ep := range eps.Items {
		plugins := ep.Get("plugins")
		if plugins == nil || plugins.Kind != appconfig.KindSeq {
			continue
		}
		for _, p := range plugins.Items {
			id, _ := p.String()
			if id == "*" || !pluginIDRE.MatchString(id) {
				continue // Backstage refuses tokens of such ids anyway
			}
			if u := ad.pluginBaseURL(id); u != "" {
				if out == nil {
					out = map[string]string{}
				}
				out[id] = u + "/.backstage/auth/v1/jwks.json"
			}
		}
	}
	return out
}

// pluginIDRE is Backstage's ALLOWED_PLUGIN_ID_PATTERN.
var pluginIDRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// discoveryPluginIDRE is HostDiscovery's placeholder for the plugin id.
var discoveryPluginIDRE = regexp.MustCompile(`\{\{\s*pluginId\s*\}\}`)

// configDir is the directory relative paths resolve from.
func configDir(filename string) string {
	if filename == "" {
		return "."
	}
	return filepath.Dir(filename)
}

// Interface guards
var _ caddyconfig.Adapter = (*Adapter)(nil)

// backendIsListener reports whether the backend URL names the address Caddy
// listens on: the same port, on a loopback or wildcard host, or on the
// listener's own host. A backend on another host (another pod, another
// machine) may well use the same port.
func backendIsListener(backend *url.URL, listen string) bool {
	na, err := caddy.ParseNetworkAddress(listen)
	if err != nil || na.StartPort != na.EndPort {
		return false
	}
	port := backend.Port()
	if port == "" {
		port = "80"
		if backend.Scheme == "https" {
			port = "443"
		}
	}
	if port != strconv.FormatUint(uint64(na.StartPort), 10) {
		return false
	}
	bh := strings.ToLower(backend.Hostname())
	if bh == strings.ToLower(na.Host) {
		return true
	}
	local := func(h string) bool {
		if h == "" || h == "localhost" || strings.HasSuffix(h, ".localhost") {
			return true
		}
		ip := net.ParseIP(h)
		return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
	}
	// Caddy on every interface, or both on loopback: the same socket.
	return local(bh) && (local(strings.ToLower(na.Host)) || na.Host == "")
}

// endpointCaddyKnownKeys are the settings of an endpoint's `caddy:` key.
var endpointCaddyKnownKeys = map[string]bool{"rewriteLocation": true, "allow": true, "upstreamAuthorization": true, "rateLimit": true, "acknowledgeRisk": true}

// endpointCaddyOptions reads an endpoint's `caddy:` key: settings of this
// proxy that Backstage has no words for (Backstage ignores the key).
func (ad *adaptation) endpointCaddyOptions(spec *endpointSpec, n *appconfig.Node) error {
	if n.IsNull() {
		return nil
	}
	if n.Kind != appconfig.KindMap {
		return fmt.Errorf("caddy must be an object of settings, got %s", n.TypeName())
	}
	for i, k := range n.Keys {
		if !endpointCaddyKnownKeys[k] {
			ad.warn(n.Values[i], spec.Route+".caddy", "proxy route %s: caddy.%s is not a known setting and is ignored (known: acknowledgeRisk, allow, rateLimit, rewriteLocation, upstreamAuthorization)", spec.Route, k)
		}
	}
	if v := n.Get("rateLimit"); v != nil {
		rl, err := endpointRateLimit(v)
		if err != nil {
			return err
		}
		spec.RateLimit = rl
		ad.rateLimited = true
	}
	if v := n.Get("acknowledgeRisk"); v != nil {
		reason, ok := v.String()
		if !ok || strings.TrimSpace(reason) == "" {
			return fmt.Errorf("caddy.acknowledgeRisk must be the reason the risk is accepted, a non-empty string, got %s", v.TypeName())
		}
		spec.AcknowledgeRisk = reason
	}
	if v := n.Get("rewriteLocation"); v != nil {
		on, err := boolOption(v, "caddy.rewriteLocation")
		if err != nil {
			return err
		}
		if on {
			base, _, err := ad.baseURL()
			if err != nil {
				return err
			}
			spec.RewriteLocation = &locationToProxy{}
			if base != nil {
				spec.RewriteLocation.PublicBase = strings.TrimRight(base.String(), "/")
			}
		}
	}
	return endpointAccessOptions(spec, n)
}

// checkExternalAccessValues checks, when the config is adapted, the values
// Backstage checks when it starts (a static token of at least 8
// non-space characters, non-space subjects and secrets), so that the error
// names the file, line and key, and the unset variable that removed the
// value, rather than surfacing at provision time without a position.
func (ad *adaptation) checkExternalAccessValues(n *appconfig.Node, i int) error {
	typ, _ := n.Get("type").String()
	opts := n.Get("options")
	check := func(key, what string, minLen int) error {
		path := fmt.Sprintf("backend.auth.externalAccess[%d].options.%s", i, key)
		v := opts.Get(key)
		s, ok := v.String()
		where := v
		if where == nil {
			if where = opts; where == nil {
				where = n
			}
		}
		switch {
		case !ok || s == "" || strings.IndexFunc(s, unicode.IsSpace) >= 0:
			msg := fmt.Sprintf("%s: Illegal %s, must be a set of non-space characters", path, what)
			if why, removed := ad.removed[path]; removed && v == nil {
				msg += " (" + why + ")"
			}
			return appconfig.ErrorAt(where, "%s", msg)
		case len(s) < minLen:
			return appconfig.ErrorAt(where, "%s: Illegal %s, must be at least %d characters length", path, what, minLen)
		}
		return nil
	}
	switch typ {
	case "static":
		if err := check("token", "token", 8); err != nil {
			return err
		}
		return check("subject", "subject", 0)
	case "legacy":
		if err := check("secret", "secret", 0); err != nil {
			return err
		}
		return check("subject", "subject", 0)
	}
	return nil
}

// endpointKeyPaths are the loader's paths of key under endpoint route, in
// both layouts: proxy.endpoints.<route>.<key>, and the old proxy.<route>.<key>.
func endpointKeyPaths(route, key string) [2]string {
	return [2]string{"proxy.endpoints." + route + "." + key, "proxy." + route + "." + key}
}

// isEndpointHeaderPath reports whether path is that of an endpoint's
// `headers:` entry (proxy.endpoints.<route>.headers.<name>, or the old
// proxy.<route>.headers.<name>).
func isEndpointHeaderPath(path string) bool {
	rest, ok := strings.CutPrefix(path, "proxy.")
	if !ok {
		return false
	}
	rest = strings.TrimPrefix(rest, "endpoints.")
	return strings.HasPrefix(rest, "/") && strings.Contains(rest, ".headers.")
}

// removedHeaders are the headers of route removed for an unset variable,
// as placeholders, in name order.
func (ad *adaptation) removedHeaders(route string) []headerValue {
	var out []headerValue
	for _, prefix := range endpointKeyPaths(route, "headers.") {
		for path, tpl := range ad.removedTemplates {
			if name, ok := strings.CutPrefix(path, prefix); ok && headerNameRE.MatchString(name) {
				out = append(out, headerValue{Name: name, Value: tpl, Secret: true})
			}
		}
	}
	slices.SortFunc(out, func(a, b headerValue) int { return strings.Compare(a.Name, b.Name) })
	return out
}
