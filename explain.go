package backstageproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Explain answers what the proxy does with one request, without sending it
// upstream: `caddy backstage explain` (explain_command.go) for a config file,
// and `POST /backstage/explain` on the admin API (explain_admin.go) for the
// running config.
//
// It does not reimplement any decision. The request runs through the
// server's own compiled routes and error routes, the handlers the server
// runs, with an explainRecording in its context. The only difference is at
// the transport: UpstreamTransport (`backstage_http`, the transport of every
// generated endpoint) sees the recording and, instead of dialing, records
// the upstream request (method, URL, header names) and answers an empty 200.
// A refusal comes back as the handler error that the error routes render, as
// on the server; the route and the principal are read from the placeholders
// the handlers set.
//
// Nothing else may reach an upstream. A reverse_proxy with another transport
// would send the request: the command replaces such transports with
// explainOnlyTransport (its config is its own), and the admin endpoint, which
// explains on the live handlers, refuses to explain on a server that has one.

// explainsRunning counts the explanations in progress in this process. The
// transport looks for a recording in a request's context only while it is
// not zero, so the feature costs the proxy one atomic load per upstream
// request.
var explainsRunning atomic.Int32

type explainCtxKey struct{}

// explainRecording marks an explain request (it is the context value), and
// receives what the transport would have sent. Only names are kept, never a
// header value.
type explainRecording struct {
	mu      sync.Mutex
	reached bool
	method  string
	url     string
	// sent are the header names of the upstream request; setByRoute the
	// ones the route's transport set (headers:, Basic credentials).
	sent       []string
	setByRoute []string
}

// isExplain reports whether r is an explanation's request. Metrics and the
// audit log leave those out: nothing was sent, and an operator's question
// is not a caller's request.
func isExplain(r *http.Request) bool {
	return explainsRunning.Load() != 0 && explainRecordingFrom(r.Context()) != nil
}

// explainRecordingFrom returns the recording of an explain request, or nil.
func explainRecordingFrom(ctx context.Context) *explainRecording {
	rec, _ := ctx.Value(explainCtxKey{}).(*explainRecording)
	return rec
}

// answer records req, the request as it would leave for the upstream, and
// returns an empty 200 in place of the upstream's response.
func (rec *explainRecording) answer(req *http.Request, setByRoute []string) (*http.Response, error) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
	rec.mu.Lock()
	rec.reached = true
	rec.method = req.Method
	rec.url = upstreamURL(req.URL)
	rec.sent = rec.sent[:0]
	for name, vals := range req.Header {
		// reverse_proxy sets an empty User-Agent, which is not sent
		if slices.ContainsFunc(vals, func(v string) bool { return v != "" }) {
			rec.sent = append(rec.sent, name)
		}
	}
	rec.setByRoute = setByRoute
	rec.mu.Unlock()
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody, Request: req,
	}, nil
}

// upstreamURL is the full URL of an upstream request: scheme, host (without
// the scheme's default port), path as sent and query.
func upstreamURL(u *url.URL) string {
	host := u.Host
	if h, port, err := net.SplitHostPort(host); err == nil &&
		((u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443")) {
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	uri := u.EscapedPath()
	if uri == "" {
		uri = "/"
	}
	if u.RawQuery != "" || u.ForceQuery {
		uri += "?" + maskCredentialQuery(u.RawQuery)
	}
	return u.Scheme + "://" + host + uri
}

// maskCredentialQuery replaces the values of the query parameters whose
// names look like credentials (the secure-route lint's rule for header
// names: token, key, secret, password, auth) with `…`: a target such as
// `https://api/v1?api_key=${KEY}` puts a secret there, and explain never
// prints one. The rest of the query is kept as sent.
func maskCredentialQuery(rawQuery string) string {
	if rawQuery == "" {
		return rawQuery
	}
	parts := strings.Split(rawQuery, "&")
	for i, p := range parts {
		name, _, hasValue := strings.Cut(p, "=")
		if !hasValue {
			continue
		}
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if isCredentialName(name) {
			parts[i] = p[:strings.IndexByte(p, '=')+1] + "…"
		}
	}
	return strings.Join(parts, "&")
}

// explainOnlyTransport replaces, in a config provisioned for `caddy
// backstage explain`, a reverse_proxy transport that is not
// UpstreamTransport: it records the request and never sends anything.
type explainOnlyTransport struct {
	inner http.RoundTripper
}

func (t explainOnlyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := explainRecordingFrom(req.Context())
	if rec == nil {
		return nil, errors.New("this configuration was loaded to explain requests; it sends nothing upstream")
	}
	if s, ok := t.inner.(interface{ SetScheme(*http.Request) }); ok {
		s.SetScheme(req)
	} else if req.URL.Scheme == "" {
		req.URL.Scheme = "http"
	}
	return rec.answer(req, nil)
}

// walkRoutes calls fn for every route of routes, and of the routes nested in
// their handlers (subroute, backstage_dispatch, reverse_proxy's
// handle_response), with the route's handlers.
func walkRoutes(routes caddyhttp.RouteList, fn func(*caddyhttp.Route)) {
	for i := range routes {
		r := &routes[i]
		fn(r)
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *caddyhttp.Subroute:
				walkRoutes(h.Routes, fn)
			case *Dispatch:
				walkRoutes(h.Routes, fn)
			case *reverseproxy.Handler:
				for _, hr := range h.HandleResponse {
					walkRoutes(hr.Routes, fn)
				}
			}
		}
	}
}

// walkServer is walkRoutes over every route of srv: its routes, error routes
// and named routes.
func walkServer(srv *caddyhttp.Server, fn func(*caddyhttp.Route)) {
	walkRoutes(srv.Routes, fn)
	if srv.Errors != nil {
		walkRoutes(srv.Errors.Routes, fn)
	}
	for _, r := range srv.NamedRoutes {
		walkRoutes(caddyhttp.RouteList{*r}, fn)
	}
}

// proxiesOf returns the reverse_proxy handlers of srv.
func proxiesOf(srv *caddyhttp.Server) []*reverseproxy.Handler {
	var out []*reverseproxy.Handler
	walkServer(srv, func(r *caddyhttp.Route) {
		for _, h := range r.Handlers {
			if rp, ok := h.(*reverseproxy.Handler); ok {
				out = append(out, rp)
			}
		}
	})
	return out
}

// sealTransports makes every reverse_proxy of srv unable to send anything:
// transports that are not UpstreamTransport are replaced. Only for a config
// provisioned to explain, never for a running one.
func sealTransports(srv *caddyhttp.Server) {
	for _, rp := range proxiesOf(srv) {
		if _, ok := rp.Transport.(*UpstreamTransport); !ok {
			rp.Transport = explainOnlyTransport{inner: rp.Transport}
		}
	}
}

// unsealedProxy returns an error naming a reverse_proxy of srv that would
// send an explain request upstream (its transport is not backstage_http).
func unsealedProxy(srvName string, srv *caddyhttp.Server) error {
	for _, rp := range proxiesOf(srv) {
		switch rp.Transport.(type) {
		case *UpstreamTransport, explainOnlyTransport:
			continue
		}
		var dial string
		if len(rp.Upstreams) > 0 {
			dial = rp.Upstreams[0].Dial
		}
		return fmt.Errorf("server %s has a reverse_proxy (upstream %q) whose transport is not backstage_http: it would send the request, so requests are not explained on this server", srvName, dial)
	}
	return nil
}

// explainEndpoint is one endpoint route of a server, for the report.
type explainEndpoint struct {
	handler  *Handler
	route    *caddyhttp.Route
	matchers []*MatchRoutePath
	methods  []string // nil: any method
}

// endpointsOf lists the endpoint routes of srv: routes matched by
// backstage_route whose handlers (or the variants of their subroute) include
// a backstage_proxy handler.
func endpointsOf(srv *caddyhttp.Server) []explainEndpoint {
	var out []explainEndpoint
	walkServer(srv, func(r *caddyhttp.Route) {
		h := firstPolicyHandler(r.Handlers)
		if h == nil {
			return
		}
		ep := explainEndpoint{handler: h, route: r}
		for _, set := range r.MatcherSets {
			for _, m := range set {
				switch m := m.(type) {
				case *MatchRoutePath:
					ep.matchers = append(ep.matchers, m)
				case *caddyhttp.MatchMethod:
					ep.methods = append(ep.methods, *m...)
				}
			}
		}
		if len(ep.matchers) > 0 {
			out = append(out, ep)
		}
	})
	return out
}

// firstPolicyHandler is the first backstage_proxy handler (not a barrier)
// among hs or in their subroutes.
func firstPolicyHandler(hs []caddyhttp.MiddlewareHandler) *Handler {
	for _, h := range hs {
		switch h := h.(type) {
		case *Handler:
			if !h.barrier {
				return h
			}
		case *caddyhttp.Subroute:
			for _, r := range h.Routes {
				if p := firstPolicyHandler(r.Handlers); p != nil {
					return p
				}
			}
		}
	}
	return nil
}

// ResponseHeadersAllowed are the response header names h lets back to the
// client, lower-case and sorted.
func (h *Handler) ResponseHeadersAllowed() []string {
	return lowerNames(h.respAllowNames)
}

// explanation is the answer, in the shape of the `--json` output and of the
// admin endpoint's response.
type explanation struct {
	// Route is the route key of the endpoint that handled the request; nil
	// when none did.
	Route *string `json:"route"`
	// Decision is "proxy" (sent upstream), "deny" (refused or not found by
	// the proxy itself, status >= 400) or "respond" (answered by the proxy
	// itself with a success, e.g. the plugin key set).
	Decision string `json:"decision"`
	// Status is the proxy's own status when it does not proxy; null when
	// the request goes upstream (the upstream answers).
	Status          *int                     `json:"status"`
	Principal       *explainedPrincipal      `json:"principal"`
	Upstream        *explainedUpstream       `json:"upstream"`
	RequestHeaders  explainedRequestHeaders  `json:"request_headers"`
	ResponseHeaders explainedResponseHeaders `json:"response_headers"`
	Reason          string                   `json:"reason"`
}

type explainedPrincipal struct {
	Subject string `json:"subject"`
	Type    string `json:"type"`
	Method  string `json:"method"`
}

type explainedUpstream struct {
	Method string `json:"method"`
	URL    string `json:"url"`
}

type explainedRequestHeaders struct {
	Forwarded []string `json:"forwarded"`
	Dropped   []string `json:"dropped"`
	Injected  []string `json:"injected"`
}

type explainedResponseHeaders struct {
	Allowed []string `json:"allowed"`
}

// explainInput is the request to explain. URL is absolute or a path (then
// the host is the server's first listener).
type explainInput struct {
	Method string
	URL    string
	Header http.Header
}

// explainer explains requests on the servers of one provisioned http app.
type explainer struct {
	app *caddyhttp.App
	// live is true for the running config: its transports cannot be
	// replaced, so servers with a foreign one are refused.
	live bool
}

// explain runs in through the server that would receive it.
func (e explainer) explain(ctx context.Context, in explainInput) (*explanation, error) {
	u, err := url.Parse(in.URL)
	if err != nil {
		return nil, fmt.Errorf("invalid URL %q: %v", in.URL, err)
	}
	if u.Path == "" && u.Opaque == "" {
		u.Path = "/"
	}
	if u.Opaque != "" || !strings.HasPrefix(u.EscapedPath(), "/") {
		return nil, fmt.Errorf("invalid URL %q: want an absolute URL or a path starting with /", in.URL)
	}
	method := strings.ToUpper(in.Method)
	if method == "" || strings.ContainsAny(method, " \t\r\n") {
		return nil, fmt.Errorf("invalid method %q", in.Method)
	}
	srvName, srv, host, scheme, err := e.server(u)
	if err != nil {
		return nil, err
	}
	if e.live {
		if err := unsealedProxy(srvName, srv); err != nil {
			return nil, err
		}
	} else {
		sealTransports(srv)
	}

	header := http.Header{}
	for name, vals := range in.Header {
		for _, v := range vals {
			if strings.EqualFold(name, "Host") {
				host = v
				continue
			}
			header.Add(name, v)
		}
	}
	r := &http.Request{
		Method:     method,
		URL:        &url.URL{Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery, ForceQuery: u.ForceQuery},
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     header,
		Body:       http.NoBody,
		Host:       host,
		RemoteAddr: "127.0.0.1:0",
	}
	r.RequestURI = r.URL.RequestURI()
	if scheme == "https" {
		r.TLS = &tls.ConnectionState{HandshakeComplete: true, ServerName: hostOnly(host)}
	}
	return runExplain(ctx, srv, r), nil
}

// server picks the server that would receive a request for u, and the Host
// and scheme of the request: for an absolute URL, the server listening on
// its port, or else (a public URL in front of a load balancer) the first
// server; for a path, the first server, on its first address.
func (e explainer) server(u *url.URL) (name string, srv *caddyhttp.Server, host, scheme string, err error) {
	listeners := e.listeners()
	if len(listeners) == 0 {
		return "", nil, "", "", errors.New("no HTTP server of the config listens on a TCP port")
	}
	if u.Host != "" {
		scheme = strings.ToLower(u.Scheme)
		port := u.Port()
		if port == "" {
			port = "80"
			if scheme == "https" {
				port = "443"
			}
		}
		p, _ := strconv.ParseUint(port, 10, 16)
		for _, l := range listeners {
			if uint(p) >= l.addr.StartPort && uint(p) <= l.addr.EndPort {
				return l.name, l.srv, u.Host, scheme, nil
			}
		}
		return listeners[0].name, listeners[0].srv, u.Host, scheme, nil
	}
	l := listeners[0]
	scheme = "http"
	if len(l.srv.TLSConnPolicies) > 0 {
		scheme = "https"
	}
	h := l.addr.Host
	if h == "" {
		h = "localhost"
	}
	return l.name, l.srv, net.JoinHostPort(h, strconv.FormatUint(uint64(l.addr.StartPort), 10)), scheme, nil
}

// explainListener is one TCP listen address of a server.
type explainListener struct {
	name string
	srv  *caddyhttp.Server
	addr caddy.NetworkAddress
}

// listeners are the TCP listen addresses of the app's servers, by server
// name, then in the order of their `listen`.
func (e explainer) listeners() []explainListener {
	names := make([]string, 0, len(e.app.Servers))
	for n := range e.app.Servers {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []explainListener
	for _, n := range names {
		for _, l := range e.app.Servers[n].Listen {
			na, err := caddy.ParseNetworkAddress(l)
			if err == nil && !na.IsUnixNetwork() {
				out = append(out, explainListener{n, e.app.Servers[n], na})
			}
		}
	}
	return out
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// explainWriter is the response writer of an explain request: it keeps the
// status and discards the body.
type explainWriter struct {
	header http.Header
	status int
}

func (w *explainWriter) Header() http.Header { return w.header }
func (w *explainWriter) WriteHeader(status int) {
	if w.status == 0 && status >= 200 {
		w.status = status
	}
}

func (w *explainWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}
func (w *explainWriter) Flush() {}

// ReadFrom keeps reverse_proxy from looking further for a writer to copy to.
func (w *explainWriter) ReadFrom(r io.Reader) (int64, error) {
	w.WriteHeader(http.StatusOK)
	return io.Copy(io.Discard, r)
}

var explainEnd = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// runExplain serves r as srv would (routes, then error routes on an error)
// with a recording in its context, and reports.
func runExplain(ctx context.Context, srv *caddyhttp.Server, r *http.Request) (ex *explanation) {
	rec := &explainRecording{}
	explainsRunning.Add(1)
	defer explainsRunning.Add(-1)

	clientNames := make([]string, 0, len(r.Header))
	for name := range r.Header {
		clientNames = append(clientNames, name)
	}
	method, target := r.Method, r.RequestURI
	repl := caddy.NewReplacer()
	w := &explainWriter{header: http.Header{}}
	r = caddyhttp.PrepareRequest(r.WithContext(context.WithValue(ctx, explainCtxKey{}, rec)), repl, w, srv)

	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("a handler panicked: %v", p))
			}
		}()
		err = srv.Routes.Compile(explainEnd).ServeHTTP(w, r)
	}()
	if err != nil {
		status := http.StatusInternalServerError
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		}
		if srv.Errors != nil && len(srv.Errors.Routes) > 0 {
			if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
				r.Method, r.RequestURI = orig.Method, orig.RequestURI
				*r.URL = *orig.URL
			}
			_ = srv.Errors.Routes.Compile(explainEnd).ServeHTTP(w, srv.Errors.WithError(r, err))
		}
		w.WriteHeader(status)
	}
	w.WriteHeader(http.StatusOK)

	ex = &explanation{
		RequestHeaders:  explainedRequestHeaders{Forwarded: []string{}, Dropped: []string{}, Injected: []string{}},
		ResponseHeaders: explainedResponseHeaders{Allowed: []string{}},
	}
	var handler *Handler
	endpoints := endpointsOf(srv)
	if route, _ := repl.GetString(placeholderRoute); route != "" {
		ex.Route = &route
		for _, ep := range endpoints {
			if ep.handler.Route == route {
				handler = ep.handler
				break
			}
		}
		if handler != nil {
			ex.ResponseHeaders.Allowed = handler.ResponseHeadersAllowed()
		}
	}
	if sub, _ := repl.GetString(placeholderUserID); sub != "" {
		typ, _ := repl.GetString(placeholderPrincipalType)
		how, _ := repl.GetString(placeholderPrincipalMethod)
		ex.Principal = &explainedPrincipal{Subject: sub, Type: typ, Method: how}
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.reached && err == nil {
		ex.Decision = "proxy"
		ex.Upstream = &explainedUpstream{Method: rec.method, URL: rec.url}
		ex.RequestHeaders = compareHeaders(clientNames, rec.sent, rec.setByRoute)
		ex.Reason = proxyReason(ex, handler)
		return ex
	}
	status := w.status
	ex.Status = &status
	ex.RequestHeaders.Dropped = lowerNames(clientNames)
	if status < 400 {
		ex.Decision = "respond"
		ex.Reason = fmt.Sprintf("The proxy answers %d itself; nothing is sent upstream.", status)
		return ex
	}
	ex.Decision = "deny"
	why := ""
	if err != nil {
		why, _ = repl.GetString(placeholderError)
		if why == "" {
			why = err.Error()
			var he caddyhttp.HandlerError
			if errors.As(err, &he) && he.Err != nil {
				why = he.Err.Error()
			}
		}
	}
	switch {
	case ex.Route != nil && why != "":
		ex.Reason = fmt.Sprintf("Route %s refuses the request with %d: %s.", *ex.Route, status, strings.TrimSuffix(why, "."))
	case ex.Route != nil:
		ex.Reason = fmt.Sprintf("Route %s answers %d; nothing is sent upstream.", *ex.Route, status)
	default:
		ex.Reason = fmt.Sprintf("No route matched %s %s (%s)", method, target, nearestCandidates(endpoints, r))
		if why != "" {
			ex.Reason += fmt.Sprintf("; the proxy refuses it with %d: %s.", status, strings.TrimSuffix(why, "."))
		} else {
			ex.Reason += fmt.Sprintf("; the proxy answers %d.", status)
		}
	}
	return ex
}

// proxyReason is the sentence for a request sent upstream.
func proxyReason(ex *explanation, h *Handler) string {
	to := ex.Upstream.Method + " " + ex.Upstream.URL
	switch {
	case ex.Route == nil:
		return "A route that is not a Backstage proxy endpoint sends the request to " + to + "."
	case ex.Principal != nil:
		policy := ""
		if h != nil {
			policy = fmt.Sprintf(" (credentials: %s)", h.Credentials)
		}
		return fmt.Sprintf("Route %s%s accepts %s, a %s verified by %s token, and sends the request to %s.",
			*ex.Route, policy, ex.Principal.Subject, ex.Principal.Type, ex.Principal.Method, to)
	case h != nil && h.Credentials == CredentialsDangerouslyAllowUnauthenticated:
		return fmt.Sprintf("Route %s allows unauthenticated requests (credentials: %s) and sends the request to %s.", *ex.Route, h.Credentials, to)
	default:
		return fmt.Sprintf("Route %s checks no credentials for this request and sends it to %s.", *ex.Route, to)
	}
}

// compareHeaders sorts the client's header names into forwarded and
// dropped, and names the ones the proxy set (injected): set by the route,
// or sent upstream though the client did not send them.
func compareHeaders(client, sent, setByRoute []string) explainedRequestHeaders {
	lower := func(names []string) map[string]bool {
		m := make(map[string]bool, len(names))
		for _, n := range names {
			m[strings.ToLower(n)] = true
		}
		return m
	}
	c, s, set := lower(client), lower(sent), lower(setByRoute)
	out := explainedRequestHeaders{Forwarded: []string{}, Dropped: []string{}, Injected: []string{}}
	for n := range c {
		if s[n] && !set[n] {
			out.Forwarded = append(out.Forwarded, n)
		} else {
			out.Dropped = append(out.Dropped, n)
		}
	}
	for n := range s {
		if set[n] || !c[n] {
			out.Injected = append(out.Injected, n)
		}
	}
	slices.Sort(out.Forwarded)
	slices.Sort(out.Dropped)
	slices.Sort(out.Injected)
	return out
}

func lowerNames(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, strings.ToLower(n))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// nearestCandidates says why the endpoints closest to r's path did not
// match it: a method they do not allow, a path they do not cover, or a path
// that only matches after percent-decoding (routes match the path as
// received; letter case never matters, as in Backstage).
func nearestCandidates(endpoints []explainEndpoint, r *http.Request) string {
	escaped := urlpath.Escaped(r.URL)
	type candidate struct {
		score  int
		reason string
	}
	var cands []candidate
	for _, ep := range endpoints {
		for _, m := range ep.matchers {
			for _, prefix := range m.Paths {
				route := ep.handler.Route
				switch {
				case m.Match(r):
					if ep.methods != nil && !slices.Contains(ep.methods, r.Method) {
						cands = append(cands, candidate{1 << 20, fmt.Sprintf("route %s matches the path but not the method %s: it allows %s", route, r.Method, strings.Join(ep.methods, ", "))})
					}
				case urlpath.HasSegmentPrefixFold(r.URL.Path, prefix):
					cands = append(cands, candidate{1 << 19, fmt.Sprintf("route %s: %s is under its prefix %s only after percent-decoding, and routes match the path as received (letter case does not matter)", route, escaped, prefix)})
				case strings.HasPrefix(strings.ToLower(escaped), strings.ToLower(prefix)):
					cands = append(cands, candidate{1 << 18, fmt.Sprintf("route %s: %s is not under its prefix %s (a prefix ends at a /)", route, escaped, prefix)})
				default:
					// only routes that share more than the mount path
					score := commonSegments(strings.ToLower(escaped), strings.ToLower(prefix))
					if score <= commonSegments(ep.handler.MountPath, ep.handler.MountPath) {
						continue
					}
					cands = append(cands, candidate{score, fmt.Sprintf("route %s: the path is not under its prefix %s", route, prefix)})
				}
			}
		}
	}
	if len(cands) == 0 {
		return "no endpoint covers this path"
	}
	slices.SortStableFunc(cands, func(a, b candidate) int { return b.score - a.score })
	best := cands[0].score
	var parts []string
	for _, c := range cands {
		if c.score < best || len(parts) == 3 {
			break
		}
		parts = append(parts, c.reason)
	}
	return "nearest: " + strings.Join(parts, "; ")
}

// commonSegments is the number of leading path segments a and b share.
func commonSegments(a, b string) int {
	as, bs := strings.Split(strings.Trim(a, "/"), "/"), strings.Split(strings.Trim(b, "/"), "/")
	n := 0
	for n < len(as) && n < len(bs) && as[n] == bs[n] {
		n++
	}
	return n
}

// text is the readable report of ex.
func (ex *explanation) text() string {
	var b strings.Builder
	orNone := func(s []string) string {
		if len(s) == 0 {
			return "-"
		}
		return strings.Join(s, ", ")
	}
	route := "(none)"
	if ex.Route != nil {
		route = *ex.Route
	}
	fmt.Fprintf(&b, "Route:      %s\n", route)
	fmt.Fprintf(&b, "Decision:   %s", ex.Decision)
	if ex.Status != nil {
		fmt.Fprintf(&b, " (%d %s)", *ex.Status, http.StatusText(*ex.Status))
	}
	b.WriteString("\n")
	if ex.Principal != nil {
		fmt.Fprintf(&b, "Principal:  %s (%s, verified by %s)\n", ex.Principal.Subject, ex.Principal.Type, ex.Principal.Method)
	} else {
		b.WriteString("Principal:  (none)\n")
	}
	if ex.Upstream != nil {
		fmt.Fprintf(&b, "Upstream:   %s %s\n", ex.Upstream.Method, ex.Upstream.URL)
	} else {
		b.WriteString("Upstream:   (not sent)\n")
	}
	b.WriteString("Request headers:\n")
	fmt.Fprintf(&b, "  forwarded: %s\n", orNone(ex.RequestHeaders.Forwarded))
	fmt.Fprintf(&b, "  dropped:   %s\n", orNone(ex.RequestHeaders.Dropped))
	fmt.Fprintf(&b, "  injected:  %s\n", orNone(ex.RequestHeaders.Injected))
	fmt.Fprintf(&b, "Response headers allowed: %s\n", orNone(ex.ResponseHeaders.Allowed))
	fmt.Fprintf(&b, "Reason:     %s\n", ex.Reason)
	return b.String()
}
