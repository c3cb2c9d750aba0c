package backstageproxy

import (
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxDecodeRounds bounds how many layers of percent-encoding the path guard
// peels off (`%252e` is `%2e` encoded again, which some upstreams decode twice).
const maxDecodeRounds = 3

// pathIsSafe is the path-traversal guard (backstage-proxy.md §1.11, divergence
// D10). Given the escaped request path, it reports false when:
//
//   - a percent-escape is malformed (Backstage: decodeURIComponent throws);
//   - the decoded path is not valid UTF-8 (Backstage: decodeURIComponent
//     throws; this also catches overlong encodings of `.` and `/`);
//   - the decoded path contains a control byte (NUL, CR, LF, …);
//   - a segment, split on `/` or `\`, is `..` once its `;` parameters are
//     removed, in the path as received or after up to three rounds of
//     percent-decoding (`%2e%2e`, `..%2f`, `..%5c`, `%252e%252e`, `..;`).
//
// `..` in the query and `...` segments are allowed, as in Backstage.
func pathIsSafe(escaped string) bool {
	// Fast path: nothing that could encode or form a traversal.
	suspicious := false
	for i := 0; i < len(escaped); i++ {
		switch c := escaped[i]; {
		case c == '%' || c == '.' || c == '\\' || c == ';':
			suspicious = true
		case c < 0x20 || c == 0x7f:
			return false
		}
	}
	if !suspicious {
		return true
	}
	p := escaped
	for round := 0; ; round++ {
		if !segmentsSafe(p) {
			return false
		}
		if !strings.Contains(p, "%") || round == maxDecodeRounds {
			return true
		}
		decoded, err := url.PathUnescape(p)
		if err != nil {
			// a malformed escape in the path as received is a 400, as in
			// Backstage; after a decoding round it is just a literal '%'
			return round > 0
		}
		if !utf8.ValidString(decoded) {
			return false
		}
		for i := 0; i < len(decoded); i++ {
			if c := decoded[i]; c < 0x20 || c == 0x7f {
				return false
			}
		}
		p = decoded
	}
}

// segmentsSafe reports whether no `/`- or `\`-separated segment of p is `..`
// once `;` parameters are removed.
func segmentsSafe(p string) bool {
	start := 0
	for i := 0; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' && p[i] != '\\' {
			continue
		}
		seg := p[start:i]
		if j := strings.IndexByte(seg, ';'); j >= 0 {
			seg = seg[:j]
		}
		if seg == ".." {
			return false
		}
		start = i + 1
	}
	return true
}

// setEscapedPath sets u's path from its escaped form, keeping the escaping
// (so `%2F` stays `%2F` on the wire).
func setEscapedPath(u *url.URL, escaped string) {
	p, err := url.PathUnescape(escaped)
	if err != nil {
		u.Path, u.RawPath = escaped, ""
		return
	}
	u.Path, u.RawPath = p, escaped
}
