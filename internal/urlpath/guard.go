package urlpath

import (
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxDecodeRounds bounds how many layers of percent-encoding the path guard
// peels off (`%252e` is `%2e` encoded again, which some upstreams decode twice).
const maxDecodeRounds = 3

// pathIsSafe is the path-traversal guard (Backstage's, in
// plugins/proxy-backend/src/service/router.ts, since 0.6.18; README
// Differences D10). Given the escaped request path, it reports false when:
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
func IsSafe(escaped string) bool {
	// Fast path: nothing that could encode or form a traversal. The classes
	// are bits, gathered without a branch per byte.
	var classes uint8
	for i := 0; i < len(escaped); i++ {
		classes |= pathByteClass[escaped[i]]
	}
	if classes&pathByteRefused != 0 {
		return false
	}
	if classes == 0 {
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
		var decoded string
		if round == 0 {
			var err error
			decoded, err = url.PathUnescape(p)
			if err != nil {
				// a malformed escape in the path as received is a 400, as in
				// Backstage
				return false
			}
		} else {
			// after a decoding round, a malformed escape is a literal '%'
			// (an upstream that decodes again may tolerate it): decode what
			// is valid and keep the rest, so `%252e%252e/%25zz` is still seen
			decoded = unescapeLenient(p)
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

// Classes of the bytes of an escaped path, for pathIsSafe's fast path: bits,
// none for an ordinary byte.
const (
	pathByteSuspicious = 1 << iota // may encode or form a traversal: %, ., \, ;
	pathByteRefused                // a control byte
)

var pathByteClass = func() (t [256]uint8) {
	for c := 0; c < 0x20; c++ {
		t[c] = pathByteRefused
	}
	t[0x7f] = pathByteRefused
	for _, c := range "%.\\;" {
		t[c] = pathByteSuspicious
	}
	return t
}()

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

// escapedPathOf is u.EscapedPath(). When Go kept no RawPath and no byte of
// Path needs escaping, which is the common case, Path is the answer; the
// bytes are checked with a table rather than net/url's per-byte switch.
func Escaped(u *url.URL) string {
	if u.RawPath == "" {
		p := u.Path
		for i := 0; i < len(p); i++ {
			if pathByteEscaped[p[i]] {
				return u.EscapedPath()
			}
		}
		return p
	}
	return u.EscapedPath()
}

// pathByteEscaped is which bytes EscapedPath escapes in a path, learnt from
// net/url itself so that the two cannot disagree.
var pathByteEscaped = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		p := "/" + string([]byte{byte(c)})
		t[c] = (&url.URL{Path: p}).EscapedPath() != p
	}
	return t
}()

// setEscapedPath sets u's path from its escaped form, keeping the escaping
// (so `%2F` stays `%2F` on the wire).
func SetEscaped(u *url.URL, escaped string) {
	if strings.IndexByte(escaped, '%') < 0 {
		// nothing to decode
		u.Path, u.RawPath = escaped, escaped
		return
	}
	p, err := url.PathUnescape(escaped)
	if err != nil {
		u.Path, u.RawPath = escaped, ""
		return
	}
	u.Path, u.RawPath = p, escaped
}

// unescapeLenient decodes the valid %XX escapes of s and keeps everything
// else as it is.
func unescapeLenient(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			if b == nil {
				b = append(make([]byte, 0, len(s)), s[:i]...)
			}
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		if b != nil {
			b = append(b, c)
		}
	}
	if b == nil {
		return s
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// HasSegmentPrefixFold reports whether p starts with prefix, case-insensitively,
// on a path segment boundary. The prefix `/` matches everything.
func HasSegmentPrefixFold(p, prefix string) bool {
	if prefix == "/" || prefix == "" {
		return true
	}
	// The boundary first: it rejects most other routes' paths in one
	// comparison (routes mostly share the mount path and differ after it).
	n := len(prefix)
	if len(p) < n || (len(p) > n && p[n] != '/') || lowerASCII(p[n-1]) != lowerASCII(prefix[n-1]) {
		return false
	}
	return strings.EqualFold(p[:n], prefix)
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
