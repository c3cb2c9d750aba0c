package backstageproxy

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(UpstreamTransport{})
}

// Defaults of the follow-redirects package that http-proxy uses for HPM's
// `followRedirects`.
const (
	defaultMaxRedirects = 21
	maxRedirectBody     = 10 << 20
)

// UpstreamTransport is Caddy's `http` transport for `reverse_proxy` plus two
// upstream behaviours of Backstage's proxy (http-proxy) that the standard
// transport lacks. The config adapter and the `backstage_proxy` Caddyfile
// directive use it for every endpoint: it is also what lets `caddy backstage
// explain` record the upstream request instead of sending it. Every `http`
// transport option applies as well.
//
//   - `set_headers` (Backstage `headers:`): set on the upstream request,
//     overriding any the request has, by the transport itself on a copy of
//     the request, so that no logger sees the values: reverse_proxy logs,
//     at DEBUG, the request it hands the transport, and redacts only
//     Authorization and cookies. Values are Caddy placeholder strings
//     (secrets as `{env.VAR}`), resolved per request like header ops.
//   - `basic_auth` (HPM `auth: "user:password"`): sent as
//     `Authorization: Basic …` unless the upstream request already carries an
//     Authorization header (from the caller under `credentials: forward`, or
//     from `headers:`), as Node does. Placeholders such as `{env.PASSWORD}` are
//     resolved once at provision time, so secrets need not be in the JSON.
//   - `follow_redirects` (HPM `followRedirects: true`): a 3xx response with a
//     Location on the upstream's own scheme, host and port is followed
//     server-side, up to `max_redirects` times (default 21), and only the final
//     response is returned. As follow-redirects does, 301/302 turn POST into
//     GET and 303 turns anything but GET/HEAD into GET (dropping the body and
//     its Content-* headers); other redirects repeat the method and the body
//     (a copy is kept up to 10 MiB while the body is sent, and dropped as
//     soon as the upstream's answer is not a redirect to follow; a body
//     declared larger is not copied at all; a larger or unfinished body is
//     not replayed and the redirect is returned as is). Redirects to any
//     other host are
//     returned to the client as they are (Backstage would follow them to any
//     host, which lets an upstream steer the proxy anywhere).
type UpstreamTransport struct {
	reverseproxy.HTTPTransport

	// SetHeaders are set on every upstream request, where no log sees them.
	SetHeaders http.Header `json:"set_headers,omitempty"`

	// unsetHeaders are SetHeaders names not sent because a variable their
	// value names is unset: removed from the request instead.
	unsetHeaders []string

	// BasicAuth is `user:password` for HTTP Basic authentication upstream.
	BasicAuth string `json:"basic_auth,omitempty"`

	// FollowRedirects follows same-host redirects server-side.
	FollowRedirects bool `json:"follow_redirects,omitempty"`

	// MaxRedirects bounds FollowRedirects. Default: 21.
	MaxRedirects int `json:"max_redirects,omitempty"`

	authorization string
}

// CaddyModule returns the Caddy module information.
func (UpstreamTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.backstage_http",
		New: func() caddy.Module { return new(UpstreamTransport) },
	}
}

// UnmarshalCaddyfile sets up the transport from Caddyfile tokens. Syntax:
//
//	transport backstage_http {
//		basic_auth <user>:<password>
//		follow_redirects
//		max_redirects <n>
//		<options of the http transport...>
//	}
//
// Every option but the first three is the `http` transport's, parsed by its
// own Caddyfile parser. In a `backstage_proxy` endpoint, they apply on top of
// the transport derived from the target and the endpoint's options.
func (t *UpstreamTransport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // transport name
	at := d.Token()
	var rest []caddyfile.Segment
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "basic_auth":
			if !d.NextArg() || !strings.Contains(d.Val(), ":") {
				return d.Err("basic_auth takes one <user>:<password> argument")
			}
			t.BasicAuth = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "follow_redirects":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.FollowRedirects = true
		case "max_redirects":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 {
				return d.Errf("max_redirects: invalid count %q", d.Val())
			}
			t.MaxRedirects = n
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			rest = append(rest, d.NextSegment())
		}
	}
	if len(rest) == 0 {
		return nil
	}
	return t.HTTPTransport.UnmarshalCaddyfile(blockDispenser(at, at.Text, rest))
}

// Provision sets up the embedded HTTP transport and resolves BasicAuth.
func (t *UpstreamTransport) Provision(ctx caddy.Context) error {
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	if t.BasicAuth != "" {
		creds := caddy.NewReplacer().ReplaceKnown(t.BasicAuth, "")
		t.authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte(creds))
	}
	if t.MaxRedirects <= 0 {
		t.MaxRedirects = defaultMaxRedirects
	}
	if len(t.SetHeaders) > 0 {
		canon := make(http.Header, len(t.SetHeaders))
		for name, vals := range t.SetHeaders {
			// Backstage's rule for a value whose variable is unset: the key
			// is absent. It is applied here, in the server's environment,
			// so that where the config was adapted does not matter.
			if unset := unsetEnvPlaceholders(vals); unset != "" {
				ctx.Logger().Warn("a header is not sent: its environment variable is not set where Caddy runs",
					zap.String("header", name), zap.String("variable", unset))
				// Absent, not the client's: the route lets the name through
				// only because the config sets it.
				t.unsetHeaders = append(t.unsetHeaders, http.CanonicalHeaderKey(name))
				continue
			}
			canon[http.CanonicalHeaderKey(name)] = vals
		}
		t.SetHeaders = canon
	}
	return nil
}

// envPlaceholderRE finds {env.NAME} placeholders that are not escaped.
var envPlaceholderRE = regexp.MustCompile(`(^|[^\\])\{env\.([^{}]+)\}`)

// unsetEnvPlaceholders is the first variable an {env.NAME} placeholder in
// vals names that is not set in the environment, or "".
func unsetEnvPlaceholders(vals []string) string {
	for _, v := range vals {
		for _, m := range envPlaceholderRE.FindAllStringSubmatch(v, -1) {
			if _, ok := os.LookupEnv(m[2]); !ok {
				return m[2]
			}
		}
	}
	return ""
}

// withHeaders returns a copy of req, with a header map of its own, carrying
// SetHeaders and the Basic credentials. The caller's request (the one
// reverse_proxy logs) is left as it was.
func (t *UpstreamTransport) withHeaders(req *http.Request) *http.Request {
	r2 := new(http.Request)
	*r2 = *req
	r2.Header = req.Header.Clone()
	if r2.Header == nil {
		r2.Header = http.Header{}
	}
	if len(t.SetHeaders) > 0 {
		repl, _ := req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			repl = caddy.NewReplacer()
		}
		for name, vals := range t.SetHeaders {
			out := make([]string, len(vals))
			for i, v := range vals {
				out[i] = repl.ReplaceKnown(v, "")
			}
			r2.Header[name] = []string{strings.Join(out, ",")}
		}
	}
	for _, name := range t.unsetHeaders {
		delete(r2.Header, name)
	}
	if t.authorization != "" && len(r2.Header["Authorization"]) == 0 {
		r2.Header.Set("Authorization", t.authorization)
	}
	return r2
}

// RoundTrip implements http.RoundTripper.
func (t *UpstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if explainsRunning.Load() != 0 {
		if rec := explainRecordingFrom(req.Context()); rec != nil {
			req2 := t.withHeaders(req)
			t.SetScheme(req2)
			return rec.answer(req2, t.routeSetHeaders(req))
		}
	}
	if len(t.SetHeaders) > 0 || len(t.unsetHeaders) > 0 || (t.authorization != "" && len(req.Header["Authorization"]) == 0) {
		req = t.withHeaders(req)
	}
	if !t.FollowRedirects {
		return t.HTTPTransport.RoundTrip(req)
	}
	return t.follow(req, t.HTTPTransport.RoundTrip)
}

// routeSetHeaders are the names of the headers this transport sets on
// req: the route's headers and the Basic credentials (for explain).
func (t *UpstreamTransport) routeSetHeaders(req *http.Request) []string {
	names := make([]string, 0, len(t.SetHeaders)+1)
	for name := range t.SetHeaders {
		names = append(names, name)
	}
	if t.authorization != "" && len(req.Header["Authorization"]) == 0 {
		names = append(names, "Authorization")
	}
	return names
}

// follow sends req with roundTrip and follows the redirects to be followed.
// The request body is copied as it is sent, so that a redirect that keeps
// the method can replay it; the copy is dropped once the first answer is in,
// unless that answer is such a redirect.
func (t *UpstreamTransport) follow(req *http.Request, roundTrip func(*http.Request) (*http.Response, error)) (*http.Response, error) {
	var rec *recordingBody
	if req.Body != nil && req.Body != http.NoBody {
		rec = &recordingBody{rc: req.Body}
		// A body declared larger than a redirect can replay is not copied.
		rec.overflow = req.ContentLength > maxRedirectBody
		req.Body = rec
	}
	res, err := roundTrip(req)
	for redirects := 0; err == nil; redirects++ {
		next, follow := t.redirect(req, res, rec)
		if rec != nil {
			rec.stop()
		}
		if !follow {
			return res, nil
		}
		if redirects >= t.MaxRedirects {
			drain(res)
			return nil, fmt.Errorf("more than %d redirects from upstream %s", t.MaxRedirects, req.URL.Host)
		}
		drain(res)
		req, rec = next, nil
		res, err = roundTrip(req)
	}
	if rec != nil {
		rec.stop()
	}
	return res, err
}

// redirect returns the request that follows res, if res is a redirect to be
// followed.
func (t *UpstreamTransport) redirect(req *http.Request, res *http.Response, rec *recordingBody) (*http.Request, bool) {
	loc := res.Header.Get("Location")
	if res.StatusCode < 300 || res.StatusCode >= 400 || loc == "" {
		return nil, false
	}
	target, err := req.URL.Parse(loc)
	if err != nil || target.Scheme != req.URL.Scheme || !sameHostPort(target, req.URL) {
		return nil, false
	}
	next := req.Clone(req.Context())
	next.URL.Path, next.URL.RawPath = target.Path, target.RawPath
	next.URL.RawQuery, next.URL.ForceQuery = target.RawQuery, target.ForceQuery
	next.URL.Fragment, next.URL.RawFragment = "", ""
	next.RequestURI = ""
	if lu, err := url.Parse(loc); err == nil && lu.Host != "" {
		// follow-redirects sends the host of an absolute Location; a
		// relative one keeps the Host header
		next.Host = lu.Host
	}

	method := req.Method
	if ((res.StatusCode == 301 || res.StatusCode == 302) && method == http.MethodPost) ||
		(res.StatusCode == 303 && method != http.MethodGet && method != http.MethodHead) {
		next.Method = http.MethodGet
		next.Body, next.ContentLength, next.GetBody = http.NoBody, 0, nil
		for name := range next.Header {
			if strings.HasPrefix(strings.ToLower(name), "content-") {
				delete(next.Header, name)
			}
		}
		next.TransferEncoding = nil
		return next, true
	}
	if rec == nil {
		if req.GetBody != nil && req.ContentLength > 0 {
			// a body replayed from an earlier redirect: replay it again
			body, err := req.GetBody()
			if err != nil {
				return nil, false
			}
			next.Body = body
			return next, true
		}
		next.Body, next.GetBody = http.NoBody, nil
		return next, true
	}
	body, ok := rec.recorded()
	if !ok {
		return nil, false
	}
	next.Body = io.NopCloser(bytes.NewReader(body))
	next.ContentLength = int64(len(body))
	next.TransferEncoding = nil
	next.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return next, true
}

// sameHostPort reports whether a and b name the same host and port, with the
// scheme's default port when none is given.
func sameHostPort(a, b *url.URL) bool {
	hostport := func(u *url.URL) string {
		port := u.Port()
		if port == "" {
			port = "80"
			if u.Scheme == "https" {
				port = "443"
			}
		}
		return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
	}
	return hostport(a) == hostport(b)
}

// drain discards a little of a response body, so the connection can be
// reused, and closes it.
func drain(res *http.Response) {
	_, _ = io.CopyN(io.Discard, res.Body, 4<<10)
	_ = res.Body.Close()
}

// recordingBody keeps a copy of a request body as it is sent, so that a
// redirect that keeps the method can send it again.
type recordingBody struct {
	rc       io.ReadCloser
	mu       sync.Mutex
	buf      bytes.Buffer
	eof      bool
	overflow bool
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.mu.Lock()
	if !b.overflow {
		if b.buf.Len()+n > maxRedirectBody {
			b.overflow = true
			b.buf = bytes.Buffer{}
		} else {
			b.buf.Write(p[:n])
		}
	}
	if err == io.EOF {
		b.eof = true
	}
	b.mu.Unlock()
	return n, err
}

func (b *recordingBody) Close() error { return b.rc.Close() }

// recorded returns the whole body, if it was read to the end and fits. Once
// read to the end the body is never written to again, so the bytes are the
// caller's.
func (b *recordingBody) recorded() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.eof || b.overflow {
		return nil, false
	}
	return b.buf.Bytes(), true
}

// stop ends the recording and drops the copy (the transport may still be
// sending the rest of the body).
func (b *recordingBody) stop() {
	b.mu.Lock()
	b.overflow = true
	b.buf = bytes.Buffer{}
	b.mu.Unlock()
}

// buffered is how many bytes of the body are kept.
func (b *recordingBody) buffered() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Cap()
}

// Interface guards
var (
	_ caddy.Provisioner         = (*UpstreamTransport)(nil)
	_ caddyfile.Unmarshaler     = (*UpstreamTransport)(nil)
	_ caddy.CleanerUpper        = (*UpstreamTransport)(nil)
	_ http.RoundTripper         = (*UpstreamTransport)(nil)
	_ reverseproxy.TLSTransport = (*UpstreamTransport)(nil)
)
