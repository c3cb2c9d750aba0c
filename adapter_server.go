package backstageproxy

// The server around the proxy routes: the top-level `caddy:` key (settings
// Backstage ignores), backend.baseUrl and backend.https.

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// caddyOptions is the top-level `caddy:` key of app-config.yaml. Backstage
// ignores it; a plain Backstage config (without it) works as it is.
//
//	caddy:
//	  # The admin API address, or "off". Default: Caddy's (localhost:2019).
//	  admin: localhost:2019
//	  # The listen address. Default: backend.listen (":7007"), or ":443"
//	  # with caddy.https.
//	  listen: ":7007"
//	  # The Backstage backend behind Caddy: every request that is not for
//	  # /api/proxy goes there, so Caddy can replace the backend's port as a
//	  # drop-in. Token keys are then fetched from it directly
//	  # (<backend>/api/auth/.well-known/jwks.json, <backend>/api/<plugin>/...)
//	  # unless discovery.endpoints or authBaseUrl say otherwise.
//	  backend: http://localhost:7008
//	  # The auth plugin's base URL, for the user-token key set
//	  # (<authBaseUrl>/.well-known/jwks.json). Overrides everything else.
//	  authBaseUrl: http://auth.internal:7007/api/auth
//	  # PEM files of CAs to trust (besides the system's) when token key sets
//	  # are fetched over https: for auth backends behind a private CA. A
//	  # path or a list; relative paths are relative to the config file.
//	  keySetCaFiles: [/etc/ssl/private-ca.pem]
//	  # Automatic HTTPS for the public host: true (the host of
//	  # backend.baseUrl), or an object. Listens on :443 (and :80 for redirects
//	  # and ACME challenges).
//	  https:
//	    domain: backstage.example.com   # or a list; default: backend.baseUrl's host
//	    email: ops@example.com          # ACME account email
//	    internal: false                 # true: Caddy's own CA (no ACME)
//	  # Access logs for every request (Authorization and cookies redacted).
//	  accessLog: true
//	  # Caddy's own HTTP metrics (caddy_http_*) on the admin API's /metrics,
//	  # besides the proxy's (caddy_backstage_proxy_*), which are always on.
//	  metrics: true
//	  # Settings of the endpoints' rate limits (each endpoint's own limit is
//	  # its caddy.rateLimit). distributed: the Caddy instances that share
//	  # caddy.storage share their counts (true, or the intervals; default:
//	  # each instance counts alone).
//	  rateLimit:
//	    distributed: {readInterval: 5s, writeInterval: 5s, purgeAge: 1h}
//	  # Caddy's storage (its top-level `storage`, as in Caddy JSON): where
//	  # the distributed rate-limit counts (and certificates) are kept.
//	  # Default: Caddy's data directory on this machine.
//	  storage: {module: file_system, root: /var/lib/caddy-shared}
//	  # Raw Caddy JSON, deep-merged into the generated config last: objects
//	  # merge key by key, anything else (lists too) replaces. Strings from
//	  # ${VAR} become {env.VAR}. (null cannot delete a key: Backstage's config
//	  # loader drops null values before the adapter sees them.)
//	  json:
//	    apps:
//	      http:
//	        servers:
//	          backstage:
//	            idle_timeout: 2m
type caddyOptions struct {
	node        *appconfig.Node
	backend     *url.URL
	authBaseURL string
	keySetCAs   []string
	https       *autoHTTPS
	accessLog   bool
	metrics     bool
	json        *appconfig.Node
	// noWatch is caddy.watch: false: the running server does not reload
	// when the config files change.
	noWatch bool
	// rateLimit is caddy.rateLimit (distributed mode), storage is
	// caddy.storage (Caddy's storage module, JSON).
	rateLimit *RateLimitSettings
	storage   json.RawMessage
}

// autoHTTPS is caddy.https.
type autoHTTPS struct {
	domains  []string
	email    string
	internal bool
	node     *appconfig.Node
}

var caddyKnownKeys = map[string]bool{
	"admin": true, "listen": true, "backend": true, "authBaseUrl": true,
	"https": true, "accessLog": true, "json": true, "keySetCaFiles": true, "watch": true,
	"metrics":   true,
	"rateLimit": true, "storage": true,
}

// readCaddyOptions reads and checks the `caddy:` key.
func (ad *adaptation) readCaddyOptions() (*caddyOptions, error) {
	o := &caddyOptions{}
	n := ad.root.Get("caddy")
	if n == nil || n.IsNull() {
		return o, nil
	}
	if n.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(n, "caddy must be an object of Caddy settings, got %s", n.TypeName())
	}
	o.node = n
	for i, k := range n.Keys {
		if !caddyKnownKeys[k] {
			ad.warn(n.Values[i], "caddy", "caddy.%s is not a known setting and is ignored (known: accessLog, admin, authBaseUrl, backend, https, json, keySetCaFiles, listen, metrics, rateLimit, storage, watch)", k)
		}
	}
	if b := n.Get("backend"); b != nil && !jsFalsy(b) {
		s, ok := b.String()
		if !ok {
			return nil, appconfig.ErrorAt(b, "caddy.backend must be the URL of the Backstage backend, got %s", b.TypeName())
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return nil, appconfig.ErrorAt(b, "caddy.backend must be an http or https URL with no path, query or credentials, such as http://localhost:7008; got %q", s)
		}
		o.backend = u
	}
	if a := n.Get("authBaseUrl"); a != nil && !jsFalsy(a) {
		s, ok := a.String()
		u, err := url.Parse(s)
		if !ok || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, appconfig.ErrorAt(a, "caddy.authBaseUrl must be the http or https base URL of the auth plugin, such as http://backstage:7007/api/auth")
		}
		o.authBaseURL = strings.TrimRight(s, "/")
	}
	if c := n.Get("keySetCaFiles"); c != nil && !c.IsNull() {
		items := []*appconfig.Node{c}
		if c.Kind == appconfig.KindSeq {
			items = c.Items
		}
		for _, item := range items {
			s, ok := item.String()
			if !ok || s == "" {
				return nil, appconfig.ErrorAt(item, "caddy.keySetCaFiles must be the path of a PEM file or a list of them")
			}
			if !filepath.IsAbs(s) && !strings.HasPrefix(s, "{env.") {
				s = filepath.Join(configDir(item.File), s)
			}
			o.keySetCAs = append(o.keySetCAs, s)
		}
	}
	if h := n.Get("https"); h != nil && !jsFalsy(h) {
		https, err := ad.readAutoHTTPS(h)
		if err != nil {
			return nil, err
		}
		o.https = https
	}
	if w := n.Get("watch"); w != nil {
		v, ok := w.Bool()
		if !ok {
			return nil, appconfig.ErrorAt(w, "caddy.watch must be a boolean, got %s", w.TypeName())
		}
		o.noWatch = !v
	}
	if l := n.Get("accessLog"); l != nil {
		v, ok := l.Bool()
		if !ok {
			return nil, appconfig.ErrorAt(l, "caddy.accessLog must be a boolean, got %s", l.TypeName())
		}
		o.accessLog = v
	}
	if m := n.Get("metrics"); m != nil {
		v, ok := m.Bool()
		if !ok {
			return nil, appconfig.ErrorAt(m, "caddy.metrics must be a boolean, got %s", m.TypeName())
		}
		o.metrics = v
	}
	if r := n.Get("rateLimit"); r != nil && !r.IsNull() {
		s, err := ad.readRateLimitSettings(r)
		if err != nil {
			return nil, err
		}
		o.rateLimit = s
	}
	if st := n.Get("storage"); st != nil && !st.IsNull() {
		raw, err := ad.readStorage(st)
		if err != nil {
			return nil, err
		}
		o.storage = raw
	}
	if j := n.Get("json"); j != nil && !j.IsNull() {
		if j.Kind != appconfig.KindMap {
			return nil, appconfig.ErrorAt(j, "caddy.json must be an object of Caddy JSON config, got %s", j.TypeName())
		}
		o.json = j
	}
	return o, nil
}

func (ad *adaptation) readAutoHTTPS(h *appconfig.Node) (*autoHTTPS, error) {
	a := &autoHTTPS{node: h}
	switch {
	case h.Kind == appconfig.KindMap:
		for i, k := range h.Keys {
			if k != "domain" && k != "email" && k != "internal" {
				ad.warn(h.Values[i], "caddy.https", "caddy.https.%s is not a known setting and is ignored (known: domain, email, internal)", k)
			}
		}
		if d := h.Get("domain"); d != nil {
			if s, ok := d.String(); ok && s != "" {
				a.domains = []string{s}
			} else if list, err := stringList(d, "caddy.https.domain"); err == nil && len(list) > 0 {
				a.domains = list
			} else {
				return nil, appconfig.ErrorAt(d, "caddy.https.domain must be a host name or a list of them")
			}
		}
		if e := h.Get("email"); e != nil {
			s, ok := e.String()
			if !ok || !strings.Contains(s, "@") {
				return nil, appconfig.ErrorAt(e, "caddy.https.email must be an email address")
			}
			a.email = s
		}
		if in := h.Get("internal"); in != nil {
			v, ok := in.Bool()
			if !ok {
				return nil, appconfig.ErrorAt(in, "caddy.https.internal must be a boolean")
			}
			a.internal = v
		}
	default:
		v, ok := h.Bool()
		if !ok || !v {
			return nil, appconfig.ErrorAt(h, "caddy.https must be true or an object {domain, email, internal}, got %s", h.TypeName())
		}
	}
	if a.domains == nil {
		base, _, err := ad.baseURL()
		if err != nil {
			return nil, err
		}
		if base == nil {
			return nil, appconfig.ErrorAt(h, "caddy.https needs a domain: set caddy.https.domain or backend.baseUrl")
		}
		a.domains = []string{base.Hostname()}
	}
	for _, d := range a.domains {
		if strings.ContainsAny(d, "/:@ ") || d == "" {
			return nil, appconfig.ErrorAt(h, "caddy.https.domain %q must be a host name without scheme, port or path", d)
		}
	}
	return a, nil
}

// baseURL reads backend.baseUrl: nil when absent.
func (ad *adaptation) baseURL() (*url.URL, *appconfig.Node, error) {
	n := ad.root.Lookup("backend.baseUrl")
	if n == nil {
		return nil, nil, nil
	}
	s, ok := n.String()
	if !ok {
		return nil, n, appconfig.ErrorAt(n, "Invalid type in config for key 'backend.baseUrl', got %s, wanted string", n.TypeName())
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return nil, n, appconfig.ErrorAt(n, "backend.baseUrl config value '%s' does not appear to be a valid URL.", s)
	}
	return u, n, nil
}

// serverTLS applies backend.https (Backstage's own HTTPS: `true` for a
// certificate for the baseUrl host, here from Caddy's internal CA; or
// `{certificate: {cert, key}}` PEM) or caddy.https (automatic HTTPS with
// publicly trusted certificates) to the server and the apps.
func (ad *adaptation) serverTLS(o *caddyOptions, server *caddyhttp.Server, apps caddy.ModuleMap) error {
	bh := ad.root.Lookup("backend.https")
	if bh != nil && (bh.IsNull() || (bh.Tag == "!!bool" && bh.Value == "false")) {
		bh = nil
	}
	if bh != nil && o.https != nil {
		return appconfig.ErrorAt(o.https.node, "caddy.https and backend.https cannot both be set: caddy.https replaces Backstage's HTTPS with automatic HTTPS")
	}
	switch {
	case o.https != nil:
		return ad.automaticHTTPS(o, server, apps)
	case bh == nil:
		return nil
	case bh.Tag == "!!bool" && bh.Value == "true":
		base, _, err := ad.baseURL()
		if err != nil {
			return err
		}
		if base == nil {
			return appconfig.ErrorAt(bh, "Missing required config value at 'backend.baseUrl' (backend.https: true makes a certificate for its host)")
		}
		host := base.Hostname()
		tlsApp := caddytls.TLS{
			CertificatesRaw: caddy.ModuleMap{"automate": caddyconfig.JSON([]string{host}, &ad.warnings)},
			Automation: &caddytls.AutomationConfig{Policies: []*caddytls.AutomationPolicy{{
				SubjectsRaw: []string{host},
				IssuersRaw:  []json.RawMessage{caddyconfig.JSONModuleObject(caddytls.InternalIssuer{}, "module", "internal", &ad.warnings)},
			}}},
		}
		apps["tls"] = caddyconfig.JSON(tlsApp, &ad.warnings)
		installTrust := false
		apps["pki"] = caddyconfig.JSON(caddypki.PKI{CAs: map[string]*caddypki.CA{
			caddypki.DefaultCAID: {InstallTrust: &installTrust},
		}}, &ad.warnings)
		// clients that send no SNI (IP addresses) get the baseUrl host's certificate
		server.TLSConnPolicies = caddytls.ConnectionPolicies{{FallbackSNI: host}}
		return nil
	case bh.Kind == appconfig.KindMap:
		cert, key := bh.Lookup("certificate.cert"), bh.Lookup("certificate.key")
		for _, c := range []struct {
			n    *appconfig.Node
			name string
		}{{cert, "cert"}, {key, "key"}} {
			if s, ok := c.n.String(); !ok || s == "" {
				return appconfig.ErrorAt(bh, "Missing required config value at 'backend.https.certificate.%s' (a PEM string)", c.name)
			}
		}
		if cert.EnvTemplate == "" && key.EnvTemplate == "" {
			if _, err := tls.X509KeyPair([]byte(cert.Value), []byte(key.Value)); err != nil {
				return appconfig.ErrorAt(bh, "backend.https.certificate: the cert and key are not a valid PEM certificate and private key: %v", err)
			}
		}
		ad.checkInlinedSecret(key, "backend.https.certificate.key")
		if key.EnvTemplate == "" {
			ad.warn(key, "backend.https", "backend.https.certificate.key is written into the Caddy JSON, where the admin API shows it; give it as ${VAR} to keep it out")
		}
		tlsApp := caddytls.TLS{CertificatesRaw: caddy.ModuleMap{
			"load_pem": caddyconfig.JSON(caddytls.PEMLoader{{
				CertificatePEM: secretValue(cert),
				KeyPEM:         secretValue(key),
				Tags:           []string{"backstage"},
			}}, &ad.warnings),
		}}
		apps["tls"] = caddyconfig.JSON(tlsApp, &ad.warnings)
		server.TLSConnPolicies = caddytls.ConnectionPolicies{{
			CertSelection: &caddytls.CustomCertSelectionPolicy{AnyTag: []string{"backstage"}},
		}}
		return nil
	default:
		return appconfig.ErrorAt(bh, "Invalid type in config for key 'backend.https', got %s, wanted object", bh.TypeName())
	}
}

// automaticHTTPS serves the routes for the public host(s) with Caddy's
// automatic HTTPS: certificates from Let's Encrypt/ZeroSSL (or Caddy's internal
// CA), HTTP redirected to HTTPS.
func (ad *adaptation) automaticHTTPS(o *caddyOptions, server *caddyhttp.Server, apps caddy.ModuleMap) error {
	server.AutoHTTPS = nil
	server.Routes = caddyhttp.RouteList{{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{{
			"host": caddyconfig.JSON(caddyhttp.MatchHost(o.https.domains), &ad.warnings),
		}},
		HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(
			caddyhttp.Subroute{Routes: server.Routes}, "handler", "subroute", &ad.warnings)},
		Terminal: true,
	}}
	if o.backend == nil && o.authBaseURL == "" && ad.root.Lookup("discovery.endpoints") == nil {
		if base, _, _ := ad.baseURL(); base != nil {
			for _, d := range o.https.domains {
				if strings.EqualFold(d, base.Hostname()) {
					ad.warn(o.https.node, "caddy.https", "caddy.https makes Caddy the server of backend.baseUrl's host, which only serves /api/proxy here: user and plugin token keys (%s/api/...) would be fetched from Caddy itself; set caddy.backend (the Backstage backend behind Caddy) or caddy.authBaseUrl", strings.TrimRight(base.String(), "/"))
					break
				}
			}
		}
	}
	if o.https.email == "" && !o.https.internal {
		return nil
	}
	var issuer json.RawMessage
	if o.https.internal {
		issuer = caddyconfig.JSONModuleObject(caddytls.InternalIssuer{}, "module", "internal", &ad.warnings)
	} else {
		issuer = caddyconfig.JSONModuleObject(caddytls.ACMEIssuer{Email: o.https.email}, "module", "acme", &ad.warnings)
	}
	apps["tls"] = caddyconfig.JSON(caddytls.TLS{Automation: &caddytls.AutomationConfig{
		Policies: []*caddytls.AutomationPolicy{{SubjectsRaw: o.https.domains, IssuersRaw: []json.RawMessage{issuer}}},
	}}, &ad.warnings)
	return nil
}

// backendRoute sends everything the proxy does not serve to the Backstage
// backend (caddy.backend), as a plain reverse proxy.
func (ad *adaptation) backendRoute(u *url.URL) caddyhttp.Route {
	transport := reverseproxy.HTTPTransport{}
	if u.Scheme == "https" {
		transport.TLS = &reverseproxy.TLSConfig{}
	}
	rp := reverseproxy.Handler{
		TransportRaw: caddyconfig.JSONModuleObject(transport, "protocol", "http", &ad.warnings),
		Upstreams:    reverseproxy.UpstreamPool{{Dial: targetDial(u)}},
		// Backstage's own WebSockets (e.g. signals) survive config reloads
		StreamCloseDelay: caddy.Duration(time.Hour),
	}
	if u.Scheme == "https" {
		// the client's Host, as for an http backend (Caddy would send the
		// backend's host:port to an https upstream)
		rp.Headers = &headers.Handler{Request: &headers.HeaderOps{Set: map[string][]string{
			"Host": {"{http.request.hostport}"},
		}}}
		if net.ParseIP(u.Hostname()) == nil {
			transport.TLS.ServerName = u.Hostname()
			rp.TransportRaw = caddyconfig.JSONModuleObject(transport, "protocol", "http", &ad.warnings)
		}
	}
	return caddyhttp.Route{
		HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", &ad.warnings)},
	}
}

// mergeRawJSON deep-merges caddy.json into the adapted config: objects merge
// key by key, anything else replaces.
func mergeRawJSON(adapted []byte, raw *appconfig.Node) ([]byte, error) {
	var base any
	if err := json.Unmarshal(adapted, &base); err != nil {
		return nil, err
	}
	merged := mergeJSONValue(base, nodeToJSON(raw))
	if merged == nil {
		merged = map[string]any{}
	}
	return json.Marshal(merged)
}

func mergeJSONValue(into, from any) any {
	fm, ok := from.(map[string]any)
	if !ok {
		return from
	}
	im, ok := into.(map[string]any)
	if !ok {
		im = map[string]any{}
	}
	for k, v := range fm {
		im[k] = mergeJSONValue(im[k], v)
	}
	return im
}

// nodeToJSON converts a config value to a JSON value. Strings that came from
// ${VAR} keep their {env.VAR} form, so secrets stay out of the JSON.
func nodeToJSON(n *appconfig.Node) any {
	switch n.Kind {
	case appconfig.KindMap:
		m := make(map[string]any, len(n.Keys))
		for i, k := range n.Keys {
			m[k] = nodeToJSON(n.Values[i])
		}
		return m
	case appconfig.KindSeq:
		s := make([]any, 0, len(n.Items))
		for _, it := range n.Items {
			s = append(s, nodeToJSON(it))
		}
		return s
	}
	switch n.Tag {
	case "!!null":
		return nil
	case "!!bool":
		return n.Value == "true"
	case "!!int", "!!float":
		if f, ok := n.Number(); ok {
			return f
		}
		return n.Value
	}
	if n.EnvTemplate != "" {
		return n.EnvTemplate
	}
	return n.Value
}

// checkJSONNode rejects caddy.json values JSON cannot hold.
func checkJSONNode(n *appconfig.Node) error {
	switch n.Kind {
	case appconfig.KindMap:
		for _, v := range n.Values {
			if err := checkJSONNode(v); err != nil {
				return err
			}
		}
	case appconfig.KindSeq:
		for _, v := range n.Items {
			if v.IsNull() {
				return appconfig.ErrorAt(v, "caddy.json: null inside a list is not allowed")
			}
			if err := checkJSONNode(v); err != nil {
				return err
			}
		}
	default:
		if n.Tag == "!!int" || n.Tag == "!!float" {
			if _, ok := n.Number(); !ok {
				return appconfig.ErrorAt(n, "caddy.json: %s is not a JSON number", n.Value)
			}
		}
	}
	return nil
}

// listenFor returns the server's listen address, with caddy.https's default.
func (ad *adaptation) listenFor(o *caddyOptions) (string, error) {
	if o.https != nil && ad.root.Lookup("caddy.listen") == nil {
		return ":443", nil
	}
	return ad.listenAddress()
}
