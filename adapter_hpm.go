package backstageproxy

// Reading the http-proxy-middleware options of an endpoint that go beyond the
// basics (Backstage passes them to http-proxy-middleware 2 and http-proxy as
// written): router, redirect and cookie rewriting,
// followRedirects' companions, ca and auth.

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
)

// routerEntries reads HPM's `router` map (http-proxy-middleware router.js):
// in map order, a key without `/` is an exact client Host, a key starting
// with `/` a prefix of the original request-target, and `host/path` both. The
// value is the new target; an empty value matches but keeps the target.
func (ad *adaptation) routerEntries(route string, n *appconfig.Node) ([]routerEntry, error) {
	if n.Kind != appconfig.KindMap {
		if !jsFalsy(n) {
			ad.warn(n, route+".router", "proxy route %s: router must be a map of host and/or path to target; a %s is ignored, as http-proxy-middleware ignores it", route, n.TypeName())
		}
		return nil, nil
	}
	var out []routerEntry
	for i, key := range n.Keys {
		v := n.Values[i]
		e := routerEntry{Key: key}
		switch {
		case !strings.Contains(key, "/"):
			e.Host = key
		case strings.HasPrefix(key, "/"):
			e.PathPrefix = key
		default:
			slash := strings.IndexByte(key, '/')
			e.Host, e.PathPrefix = key[:slash], key[slash:]
		}
		if e.Host == "" && e.PathPrefix == "" {
			return nil, fmt.Errorf("router key %q matches no request", key)
		}
		s, ok := v.String()
		switch {
		case !ok && !jsFalsy(v):
			return nil, fmt.Errorf("router target for %q must be a URL string, got %s", key, v.TypeName())
		case ok && s != "":
			u, err := parseTarget(route, s)
			if err != nil {
				return nil, fmt.Errorf("router target for %q: %v", key, err)
			}
			e.Target = u
		}
		out = append(out, e)
	}
	return out, nil
}

// locationRewriteOption reads autoRewrite, hostRewrite and protocolRewrite.
// http-proxy tests them for truthiness.
func locationRewriteOption(lr *locationRewrite, key string, v *appconfig.Node) error {
	if key == "autoRewrite" {
		b, ok := v.Bool()
		if !ok {
			return fmt.Errorf("autoRewrite must be a boolean, got %s", v.TypeName())
		}
		lr.AutoRewrite = b
		return nil
	}
	if jsFalsy(v) {
		return nil
	}
	s, ok := v.String()
	if !ok {
		return fmt.Errorf("%s must be a string, got %s", key, v.TypeName())
	}
	if strings.ContainsAny(s, "/?#@\r\n\x00 ") || (key == "protocolRewrite" && strings.Contains(strings.TrimSuffix(s, ":"), ":")) {
		return fmt.Errorf("%s %q is not a valid %s", key, s, map[string]string{"hostRewrite": "host[:port]", "protocolRewrite": "scheme"}[key])
	}
	if key == "hostRewrite" {
		lr.HostRewrite = s
	} else {
		lr.ProtocolRewrite = s
	}
	return nil
}

// cookieRewriteOption reads cookieDomainRewrite or cookiePathRewrite: a
// string (for every value) or a map from the current value (`*`: any other)
// to the new one; "" removes the attribute. false or null is off.
func cookieRewriteOption(v *appconfig.Node, key string) ([]cookieRewrite, error) {
	if s, ok := v.String(); ok {
		return []cookieRewrite{{From: "*", To: s}}, nil
	}
	if v.Kind == appconfig.KindMap {
		out := []cookieRewrite{}
		for i, from := range v.Keys {
			to := v.Values[i]
			if to.Kind != appconfig.KindScalar {
				return nil, fmt.Errorf("%s %q: the new value must be a string, got %s", key, from, to.TypeName())
			}
			value := to.Value
			if jsFalsy(to) {
				value = ""
			}
			if strings.ContainsAny(value, ";\r\n\x00") || strings.ContainsAny(from, "\x00") {
				return nil, fmt.Errorf("%s %q: %q cannot be a cookie attribute value", key, from, value)
			}
			out = append(out, cookieRewrite{From: from, To: value})
		}
		return out, nil
	}
	if jsFalsy(v) {
		return nil, nil
	}
	return nil, fmt.Errorf("%s must be a string or an object, got %s", key, v.TypeName())
}

// caOption reads `ca`: PEM certificates (a string or a list), which become
// the only roots trusted for the target, or the path of a PEM file (relative
// to the config file).
func (ad *adaptation) caOption(v *appconfig.Node) (certs, files []string, err error) {
	var items []*appconfig.Node
	switch {
	case v.Kind == appconfig.KindSeq:
		items = v.Items
	case jsFalsy(v):
		return nil, nil, nil
	default:
		items = []*appconfig.Node{v}
	}
	for _, item := range items {
		s, ok := item.String()
		if !ok || s == "" {
			return nil, nil, fmt.Errorf("ca must be PEM certificates or the path of a PEM file, got %s", item.TypeName())
		}
		if !strings.Contains(s, "-----BEGIN") {
			p := s
			if !filepath.IsAbs(p) {
				p = filepath.Join(configDir(item.File), p)
			}
			data, err := readBoundedRegularFile(p, maxCAFileBytes)
			if err != nil {
				return nil, nil, fmt.Errorf("ca is neither PEM certificates nor a readable file: %v", err)
			}
			if _, err := pemCertificates(string(data)); err != nil {
				return nil, nil, fmt.Errorf("ca file %s: %v", p, err)
			}
			files = append(files, p)
			continue
		}
		der, err := pemCertificates(s)
		if err != nil {
			return nil, nil, fmt.Errorf("ca: %v", err)
		}
		certs = append(certs, der...)
	}
	return certs, files, nil
}

// pemCertificates returns the base64 DER of every certificate in s.
func pemCertificates(s string) ([]string, error) {
	var out []string
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("invalid certificate: %v", err)
		}
		out = append(out, base64.StdEncoding.EncodeToString(block.Bytes))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no PEM certificate found")
	}
	return out, nil
}

// authOption reads `auth: "user:password"`. The value is a secret: when it
// came from ${VAR} it stays an {env.VAR} placeholder.
func (ad *adaptation) authOption(route string, v *appconfig.Node) (string, error) {
	if jsFalsy(v) {
		return "", nil
	}
	s, ok := v.String()
	if !ok {
		return "", fmt.Errorf("auth must be a \"user:password\" string, got %s", v.TypeName())
	}
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", fmt.Errorf("auth must not contain line breaks")
	}
	ad.checkInlinedSecret(v, route+".auth")
	return secretValue(v), nil
}

// checkEndpoint warns about options that have no effect in the combination
// given, and settles the ones that depend on each other.
func (ad *adaptation) checkEndpoint(s *endpointSpec, n *appconfig.Node) {
	allowed := func(name string) bool {
		for _, h := range s.AllowedHeaders {
			if strings.EqualFold(h, name) {
				return true
			}
		}
		return false
	}
	first := func(keys ...string) *appconfig.Node {
		for _, k := range keys {
			if v := n.Get(k); v != nil {
				return v
			}
		}
		return n
	}
	if lr := s.LocationRewrite; lr != nil {
		if !lr.AutoRewrite && lr.HostRewrite == "" && lr.ProtocolRewrite == "" {
			s.LocationRewrite = nil
		} else if !allowed("Location") {
			ad.warn(first("autoRewrite", "hostRewrite", "protocolRewrite"), s.Route, "proxy route %s: autoRewrite/hostRewrite/protocolRewrite have no effect: Location is not in allowedHeaders, so redirects reach the client without it (as in Backstage)", s.Route)
		}
	}
	if s.RewriteLocation != nil {
		where := n.Get("caddy").Get("rewriteLocation")
		if !allowed("Location") {
			ad.warn(where, s.Route, "proxy route %s: caddy.rewriteLocation has no effect: Location is not in allowedHeaders, so redirects reach the client without it", s.Route)
		}
		if s.LocationRewrite != nil {
			ad.warn(where, s.Route, "proxy route %s: caddy.rewriteLocation replaces autoRewrite/hostRewrite/protocolRewrite, which are ignored", s.Route)
			s.LocationRewrite = nil
		}
	}
	if (s.CookieDomainRewrite != nil || s.CookiePathRewrite != nil) && !allowed("Set-Cookie") {
		ad.warn(first("cookieDomainRewrite", "cookiePathRewrite"), s.Route, "proxy route %s: cookieDomainRewrite/cookiePathRewrite have no effect: Set-Cookie is not in allowedHeaders (as in Backstage)", s.Route)
	}
	if s.BasicAuth != "" {
		for _, hv := range s.Headers {
			if strings.EqualFold(hv.Name, "Authorization") {
				ad.warn(n.Get("auth"), s.Route, "proxy route %s: auth is ignored: headers sets Authorization (as in Backstage)", s.Route)
				s.BasicAuth = ""
				break
			}
		}
	}
	if len(s.CACerts)+len(s.CAFiles) > 0 {
		https := s.Target.Scheme == "https"
		for _, re := range s.Router {
			https = https || (re.Target != nil && re.Target.Scheme == "https")
		}
		if !https {
			ad.warn(n.Get("ca"), s.Route, "proxy route %s: ca has no effect: the target is not https", s.Route)
		}
	}
	for i := range s.Router {
		if s.Router[i].Target == nil {
			s.Router[i].Target = s.Target
		}
	}
}

// checkInlinedSecret warns when a secret from the environment had to be
// written into the JSON (see appconfig.Node.SecretInlined).
func (ad *adaptation) checkInlinedSecret(n *appconfig.Node, what string) {
	if n != nil && n.SecretInlined {
		ad.warn(n, what, "%s: the value from the environment cannot be kept as an {env.*} placeholder (it has surrounding whitespace, or the variable name is not one Caddy can read), so it is written into the Caddy JSON, where the admin API shows it", what)
	}
}

// jsFalsy reports whether n is falsy in JavaScript: absent, null, false, 0,
// NaN or "".
func jsFalsy(n *appconfig.Node) bool {
	if n == nil {
		return true
	}
	if n.Kind != appconfig.KindScalar {
		return false
	}
	switch n.Tag {
	case "!!null":
		return true
	case "!!bool":
		return n.Value != "true"
	case "!!int", "!!float":
		f, ok := n.Number()
		return !ok || f == 0 || math.IsNaN(f)
	}
	return n.Value == ""
}

// maxCAFileBytes bounds a `ca` file: a few thousand certificates at most.
const maxCAFileBytes = 10 << 20

// readBoundedRegularFile reads a regular file of at most limit bytes; devices,
// pipes and larger files are refused, so a config cannot make the adapter
// block or exhaust memory.
func readBoundedRegularFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if info.Size() > limit {
		return nil, fmt.Errorf("%s is larger than %d MiB", path, limit>>20)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d MiB", path, limit>>20)
	}
	return data, nil
}
