package policy

import (
	"fmt"
	"strings"
)

// Principal is what an Allow policy checks: a verified caller as Backstage
// names it. The folded fields are computed once per verified credential
// (FoldRef), so that a check compares strings and allocates nothing.
type Principal struct {
	// User is true for user principals (user tokens, and plugin tokens on
	// behalf of a user), false for service principals.
	User bool
	// Subject is the principal's subject exactly as Backstage names it: a
	// user entity ref, `plugin:<id>` (id in lower case), a static or legacy
	// entry's subject, `external:<prefix>:<sub>` for jwks entries,
	// `external:backstage-plugin` for backend.auth.keys.
	Subject string
	// Actor is `plugin:<id>` (lower case) for a plugin acting on behalf of
	// a user, else "".
	Actor string
	// Ref is the user's entity ref, folded with FoldRef (users only).
	Ref string
	// Ownership holds the user's ownership entity refs (the user token's
	// `ent` claim), each folded with FoldRef (users only).
	Ownership []string
}

// DefaultNamespace is the namespace of an entity ref that names none, as
// Backstage's parseEntityRef assumes.
const DefaultNamespace = "default"

// FoldRef returns the form of an entity ref that Allow compares: lower case
// (Backstage compares entity refs case-insensitively), with the default
// namespace made explicit (`group:sre` is `group:default/sre`, as
// Backstage's parseEntityRef reads it). A string that is not of the form
// `kind:name` or `kind:namespace/name` is only lower-cased. It returns ref
// itself, without allocating, when it is already folded.
func FoldRef(ref string) string {
	kind, rest, ok := strings.Cut(ref, ":")
	if ok && kind != "" && rest != "" && !strings.Contains(rest, "/") && !strings.Contains(rest, ":") {
		ref = kind + ":" + DefaultNamespace + "/" + rest
	}
	for i := 0; i < len(ref); i++ {
		if c := ref[i]; c >= 'A' && c <= 'Z' || c >= 0x80 {
			return strings.ToLower(ref)
		}
	}
	return ref
}

// Allow is a compiled `allow` list. The zero value and nil allow nobody;
// a route without `allow` has no Allow at all.
type Allow struct {
	anyUser, anyService bool
	// subjects are compared exactly with a service principal's subject:
	// every entry but the keywords, as written (plugin entries folded).
	subjects stringSet
	// plugins are `plugin:<id>` entries, folded, compared with the actor of
	// a user principal (on-behalf-of tokens).
	plugins stringSet
	// users are user entity refs, folded, compared with a user's Ref.
	users stringSet
	// owners are the other entity refs, folded, compared with each of a
	// user's Ownership refs.
	owners stringSet
}

// stringSet is a set of exact strings and of prefixes (entries that ended
// in `*`). Small sets are searched linearly, which beats hashing for short
// lists; larger ones use a map.
type stringSet struct {
	exact    []string
	index    map[string]struct{}
	prefixes []string
}

// maxLinearSet is the size above which a set uses a map.
const maxLinearSet = 8

func (s *stringSet) add(v string, prefix bool) {
	if prefix {
		s.prefixes = append(s.prefixes, v)
		return
	}
	s.exact = append(s.exact, v)
}

func (s *stringSet) seal() {
	if len(s.exact) > maxLinearSet {
		s.index = make(map[string]struct{}, len(s.exact))
		for _, v := range s.exact {
			s.index[v] = struct{}{}
		}
	}
}

func (s *stringSet) empty() bool { return len(s.exact) == 0 && len(s.prefixes) == 0 }

func (s *stringSet) has(v string) bool {
	if s.index != nil {
		if _, ok := s.index[v]; ok {
			return true
		}
	} else {
		for _, e := range s.exact {
			if e == v {
				return true
			}
		}
	}
	for _, p := range s.prefixes {
		if strings.HasPrefix(v, p) {
			return true
		}
	}
	return false
}

// Parse compiles allow patterns. Each entry is one of:
//
//   - `user`: any user principal; `service`: any service principal.
//   - `plugin:<id>`: the plugin's own tokens, and the acting plugin of an
//     on-behalf-of token. Case-insensitive, as plugin ids are.
//   - `external:<subject>`: a jwks or backend.auth.keys principal, exactly.
//   - An entity ref `<kind>:[<namespace>/]<name>` (namespace `default` when
//     omitted): `user:` refs match a user's subject, other kinds the user
//     token's ownership refs (`ent`). Case-insensitive.
//   - Any other word: the subject of a static or legacy entry, exactly.
//
// Every entry but the keywords also matches a service principal whose
// subject is exactly the entry. A trailing `*` makes an entry a prefix
// (`external:ci-*`, `group:default/*`, `group:*`); an entity ref's prefix
// must name the namespace unless it is the whole ref (`group:sre*` is
// refused: it would mean `group:sre…` in any namespace, not
// `group:default/sre…`).
func Parse(entries []string) (*Allow, error) {
	a := &Allow{}
	for i, e := range entries {
		if err := a.add(e); err != nil {
			return nil, fmt.Errorf("entry %d %q: %v", i, e, err)
		}
	}
	for _, s := range []*stringSet{&a.subjects, &a.plugins, &a.users, &a.owners} {
		s.seal()
	}
	return a, nil
}

func (a *Allow) add(e string) error {
	if e == "" {
		return fmt.Errorf("empty entry")
	}
	if strings.ContainsFunc(e, isSpaceOrControl) {
		return fmt.Errorf("contains white space or a control character")
	}
	body, prefix := strings.CutSuffix(e, "*")
	if strings.Contains(body, "*") {
		return fmt.Errorf("'*' is only allowed at the end")
	}
	if body == "" {
		return fmt.Errorf("'*' alone would allow every principal: use 'user' and 'service', or no allow at all")
	}
	if !prefix {
		switch strings.ToLower(body) {
		case "user":
			a.anyUser = true
			return nil
		case "service":
			a.anyService = true
			return nil
		}
	}
	kind, rest, hasKind := strings.Cut(body, ":")
	if !hasKind {
		// A static or legacy entry's subject (any non-space word).
		a.subjects.add(body, prefix)
		return nil
	}
	if !validKind(kind) {
		return fmt.Errorf("unknown kind %q: expected user, service, plugin:<id>, external:<subject>, an entity ref <kind>:<namespace>/<name>, or a static or legacy subject", kind)
	}
	switch strings.ToLower(kind) {
	case "plugin":
		id := strings.ToLower(rest)
		if !validPluginIDPart(id, prefix) {
			return fmt.Errorf("malformed plugin id %q: letters, digits, '_' and '-' only", rest)
		}
		a.subjects.add("plugin:"+id, prefix)
		a.plugins.add("plugin:"+id, prefix)
		return nil
	case "external":
		if rest == "" && !prefix {
			return fmt.Errorf("external: needs a subject")
		}
		a.subjects.add(body, prefix)
		return nil
	}
	ref, err := parseRefPattern(kind, rest, prefix)
	if err != nil {
		return err
	}
	a.subjects.add(body, prefix)
	if strings.EqualFold(kind, "user") {
		a.users.add(ref, prefix)
	} else {
		a.owners.add(ref, prefix)
	}
	return nil
}

// parseRefPattern checks the part of an entity-ref entry after `kind:`
// and returns the folded ref (or prefix).
func parseRefPattern(kind, rest string, prefix bool) (string, error) {
	kind = strings.ToLower(kind)
	ns, name, hasNS := strings.Cut(rest, "/")
	if !hasNS {
		switch {
		case prefix && rest == "":
			return kind + ":", nil // `group:*`: any namespace
		case prefix:
			return "", fmt.Errorf("ambiguous wildcard: write <kind>:<namespace>/<name-prefix>* (e.g. %s:%s/%s*) or %s:*", kind, DefaultNamespace, strings.ToLower(rest), kind)
		}
		ns, name = DefaultNamespace, rest
	}
	if !validRefPart(ns, false) {
		return "", fmt.Errorf("malformed entity ref: namespace %q must be letters, digits, '-', '_' or '.'", ns)
	}
	if !validRefPart(name, prefix) {
		return "", fmt.Errorf("malformed entity ref: name %q must be letters, digits, '-', '_' or '.'", name)
	}
	return strings.ToLower(kind + ":" + ns + "/" + name), nil
}

// validKind is Backstage's kind syntax: a letter, then letters or digits.
func validKind(k string) bool {
	if k == "" || !isLetter(k[0]) {
		return false
	}
	for i := 1; i < len(k); i++ {
		if !isLetter(k[i]) && !isDigit(k[i]) {
			return false
		}
	}
	return true
}

// validRefPart checks a namespace or name: letters, digits, `-`, `_`, `.`;
// empty only as a prefix (`group:default/*`).
func validRefPart(s string, prefix bool) bool {
	return validWord(s, prefix, func(c byte) bool { return isLetter(c) || isDigit(c) || c == '-' || c == '_' || c == '.' })
}

// validPluginIDPart is identity's plugin id syntax (lower-cased); empty
// only as a prefix (`plugin:*`).
func validPluginIDPart(s string, prefix bool) bool {
	return validWord(s, prefix, func(c byte) bool { return c >= 'a' && c <= 'z' || isDigit(c) || c == '-' || c == '_' })
}

// validWord reports whether every byte of s is allowed; empty only as a
// prefix.
func validWord(s string, prefix bool, allowed func(byte) bool) bool {
	if s == "" {
		return prefix
	}
	for i := 0; i < len(s); i++ {
		if !allowed(s[i]) {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

func isSpaceOrControl(r rune) bool {
	return r <= ' ' || r == 0x7f || r == 0x85 || r == 0xa0 || r == 0x2028 || r == 0x2029 || r == 0xfeff
}

// Allows reports whether p may pass. It allocates nothing.
func (a *Allow) Allows(p *Principal) bool {
	if !p.User {
		return a.anyService || a.subjects.has(p.Subject)
	}
	if a.anyUser {
		return true
	}
	if p.Actor != "" && !a.plugins.empty() && a.plugins.has(p.Actor) {
		return true
	}
	if !a.users.empty() && a.users.has(p.Ref) {
		return true
	}
	if !a.owners.empty() {
		for _, o := range p.Ownership {
			if a.owners.has(o) {
				return true
			}
		}
	}
	return false
}
