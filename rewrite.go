package backstageproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
)

// UpstreamRewrite computes the upstream request path and query from the
// original request, the way Backstage (http-proxy-middleware plus http-proxy's
// urlJoin in lib/http-proxy/common.js) does, on the escaped URL so that `%2F`,
// `%20` and the query reach the upstream byte for byte:
//
//  1. rewrite: by default the matched prefix (mount path + route key) and one
//     slash after it are replaced by `/`, whatever their case (divergence D2);
//     with PathRewrite rules, the first rule whose pattern matches the full
//     original URL (path and query) replaces its first match, as
//     http-proxy-middleware does; an empty, non-null rule list disables
//     rewriting;
//  2. join: the target's path is prepended (a bare target path gains a
//     trailing `/`), runs of `/` are collapsed;
//  3. query: the target's own query comes first, then the request's (divergence
//     D3; Backstage glues the target query before the path).
//
// It is a handler option rather than Caddy's `rewrite` handler because
// `rewrite` applies every `path_regexp` in turn, only to the path, and
// re-encodes query strings; Backstage applies the first matching rule to path
// and query together and keeps the bytes.
type UpstreamRewrite struct {
	// StripPrefix is the prefix the default rewrite replaces by `/`:
	// the mount path plus the route key, e.g. `/api/proxy/catalog`. Matched
	// case-insensitively on a segment boundary.
	StripPrefix string `json:"strip_prefix,omitempty"`

	// PathRewrite are Backstage `pathRewrite` rules, in order (JSON
	// `path_rewrites`). When non-nil it replaces the default rewrite; an
	// empty list (`"path_rewrites": []`) means no rewriting at all, so the
	// full original path is appended to the target path.
	PathRewrite []PathRewriteRule `json:"-"`

	// TargetPath is the escaped path of the target URL, prepended to the
	// rewritten path (`/` for a bare origin).
	TargetPath string `json:"target_path,omitempty"`

	// TargetQuery is the raw query of the target URL, put before the request's.
	TargetQuery string `json:"target_query,omitempty"`

	// IgnorePath drops the request path and query (http-proxy `ignorePath`):
	// the upstream gets the target's path and query only.
	IgnorePath bool `json:"ignore_path,omitempty"`

	// NoPrependPath drops the target path (http-proxy `prependPath: false`).
	NoPrependPath bool `json:"no_prepend_path,omitempty"`

	// custom is true when PathRewrite was given (even empty).
	custom   bool
	stripLen int
	// targetPrefix is the start of every upstream path: `/` and the target
	// path (unless NoPrependPath), slashes collapsed, built once.
	targetPrefix string
}

// rewriteFields is UpstreamRewrite without its methods, for its JSON form.
type rewriteFields UpstreamRewrite

// MarshalJSON writes PathRewrite as `path_rewrites`, present (possibly
// empty) exactly when PathRewrite is non-nil.
func (u UpstreamRewrite) MarshalJSON() ([]byte, error) {
	var rules *[]PathRewriteRule
	if u.PathRewrite != nil {
		rules = &u.PathRewrite
	}
	return json.Marshal(struct {
		rewriteFields
		PathRewrites *[]PathRewriteRule `json:"path_rewrites,omitempty"`
	}{rewriteFields(u), rules})
}

// UnmarshalJSON reads the form MarshalJSON writes, refusing unknown fields
// as Caddy does.
func (u *UpstreamRewrite) UnmarshalJSON(b []byte) error {
	v := struct {
		*rewriteFields
		PathRewrites *[]PathRewriteRule `json:"path_rewrites,omitempty"`
	}{rewriteFields: (*rewriteFields)(u)}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	if v.PathRewrites != nil {
		u.PathRewrite = *v.PathRewrites
		if u.PathRewrite == nil {
			u.PathRewrite = []PathRewriteRule{}
		}
	}
	return nil
}

// PathRewriteRule is one `pathRewrite` entry: a regular expression (RE2
// syntax, matched against the original URL including the query) and its
// replacement, in which `$1` or `${1}` refer to capture groups.
type PathRewriteRule struct {
	Find    string `json:"find"`
	Replace string `json:"replace"`

	re *regexp.Regexp
}

func (u *UpstreamRewrite) provision() error {
	for i := range u.PathRewrite {
		re, err := regexp.Compile(u.PathRewrite[i].Find)
		if err != nil {
			return fmt.Errorf("pathRewrite %q: %v", u.PathRewrite[i].Find, err)
		}
		u.PathRewrite[i].re = re
	}
	u.custom = u.PathRewrite != nil
	u.StripPrefix = strings.TrimRight(u.StripPrefix, "/")
	u.stripLen = len(u.StripPrefix)
	if u.TargetPath == "" {
		u.TargetPath = "/"
	}
	u.targetPrefix = urlpath.CollapsedPrefix(u.target())
	if _, err := url.ParseQuery(u.TargetQuery); err != nil && u.TargetQuery != "" {
		return fmt.Errorf("target query %q: %v", u.TargetQuery, err)
	}
	return nil
}

// apply returns the upstream escaped path and raw query for the original
// escaped path and raw query.
func (u *UpstreamRewrite) apply(escapedPath, rawQuery string, hasQuery bool) (path, query string) {
	uri, pathEnd := u.applyURI(escapedPath, rawQuery, hasQuery)
	if pathEnd < len(uri) {
		return uri[:pathEnd], uri[pathEnd+1:]
	}
	return uri, ""
}

// applyURI is apply returning the upstream request URI (path, then `?` and
// the query when there is one) in one string, and where the path ends.
func (u *UpstreamRewrite) applyURI(escapedPath, rawQuery string, hasQuery bool) (uri string, pathEnd int) {
	var reqPath, reqQuery string
	switch {
	case u.IgnorePath:
		// nothing of the request
	case u.custom:
		full := escapedPath
		if hasQuery {
			full += "?" + rawQuery
		}
		for i := range u.PathRewrite {
			rule := &u.PathRewrite[i]
			loc := rule.re.FindStringSubmatchIndex(full)
			if loc == nil {
				continue
			}
			var b []byte
			b = append(b, full[:loc[0]]...)
			b = rule.re.ExpandString(b, rule.Replace, full, loc)
			b = append(b, full[loc[1]:]...)
			full = string(b)
			break
		}
		reqPath, reqQuery, hasQuery = cutQuery(full)
	default:
		reqPath, reqQuery = u.stripDefault(escapedPath), rawQuery
	}

	target, prefix := u.target(), u.targetPrefix
	if prefix == "" { // not provisioned
		prefix = urlpath.CollapsedPrefix(target)
	}
	query := reqQuery
	sep := ""
	if u.TargetQuery != "" {
		query = u.TargetQuery
		if hasQuery && reqQuery != "" {
			sep = "&"
		} else {
			reqQuery = ""
		}
	} else {
		reqQuery = ""
	}
	return urlpath.JoinCollapseAfter(prefix, target != "", reqPath, query, sep, reqQuery)
}

// target is the target path prepended to upstream paths, or "".
func (u *UpstreamRewrite) target() string {
	if u.NoPrependPath {
		return ""
	}
	return u.TargetPath
}

func cutQuery(s string) (path, query string, hasQuery bool) {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

// stripDefault applies Backstage's default rule `^<mount><route>/?` → `/`,
// case-insensitively (divergence D2).
func (u *UpstreamRewrite) stripDefault(p string) string {
	n := u.stripLen
	if n == 0 || len(p) < n || !strings.EqualFold(p[:n], u.StripPrefix) {
		return p
	}
	rest := p[n:]
	switch {
	case rest == "":
		return "/"
	case rest[0] == '/':
		return rest
	default:
		// not on a segment boundary: the route matcher should not have let
		// this through; leave it alone rather than guess
		return p
	}
}
