package urlpath

import "strings"

// writeCollapsed writes s to sb, whose last byte is last (0: sb is empty),
// dropping every `/` that would follow another. It copies the runs between
// doubled slashes whole, and returns the new last byte.
func writeCollapsed(sb *strings.Builder, last byte, s string) byte {
	for len(s) > 0 {
		if s[0] == '/' && last == '/' {
			s = s[1:]
			continue
		}
		i := strings.Index(s, "//")
		if i < 0 {
			sb.WriteString(s)
			return s[len(s)-1]
		}
		sb.WriteString(s[:i+1])
		last = '/'
		s = s[i+1:]
	}
	return last
}

// JoinCollapse joins the non-empty path parts a and b with `/` and collapses
// runs of `/` (http-proxy's urlJoin); the result always starts with `/`. When
// q1 (with q2 after sep) is non-empty, `?` and the query follow. It returns the
// URI and where its path ends, building both in one allocation.
func JoinCollapse(a, b, q1, sep, q2 string) (string, int) {
	return JoinCollapseAfter(CollapsedPrefix(a), a != "", b, q1, sep, q2)
}

// CollapsedPrefix is what JoinCollapse makes of a before b is joined: `/`
// and a, slashes collapsed.
func CollapsedPrefix(a string) string {
	var sb strings.Builder
	sb.Grow(len(a) + 1)
	sb.WriteByte('/')
	writeCollapsed(&sb, '/', a)
	return sb.String()
}

// JoinCollapseAfter is JoinCollapse with a already made into prefix by
// CollapsedPrefix (aSet: a was not empty).
func JoinCollapseAfter(prefix string, aSet bool, b, q1, sep, q2 string) (string, int) {
	var sb strings.Builder
	sb.Grow(len(prefix) + len(b) + len(q1) + len(sep) + len(q2) + 2)
	sb.WriteString(prefix)
	var last byte
	if prefix != "" {
		last = prefix[len(prefix)-1]
	}
	if b != "" {
		if aSet {
			last = writeCollapsed(&sb, last, "/")
		}
		writeCollapsed(&sb, last, b)
	}
	pathEnd := sb.Len()
	if q1 != "" || q2 != "" {
		sb.WriteByte('?')
		sb.WriteString(q1)
		sb.WriteString(sep)
		sb.WriteString(q2)
	}
	return sb.String(), pathEnd
}
