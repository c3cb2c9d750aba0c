package identity

import (
	"net/url"
	"strings"
	"time"
)

// CheckMethod is the kind of credential a check was decided by, for
// Observer.
type CheckMethod uint8

// The credential kinds, as Principal.Method names them; CheckNone is a
// token that no configured kind claimed (or that is not a token at all).
const (
	CheckUser CheckMethod = iota
	CheckPlugin
	CheckStatic
	CheckLegacy
	CheckJWKS
	CheckNone
	NumCheckMethods
)

// String returns the method's name: user, plugin, static, legacy, jwks or
// none.
func (m CheckMethod) String() string {
	return [...]string{"user", "plugin", "static", "legacy", "jwks", "none", "?"}[min(m, NumCheckMethods)]
}

func checkMethodOf(kind string) CheckMethod {
	switch kind {
	case "user":
		return CheckUser
	case "plugin":
		return CheckPlugin
	case "static":
		return CheckStatic
	case "legacy":
		return CheckLegacy
	case "jwks":
		return CheckJWKS
	}
	return CheckNone
}

// Observer is told what the verifier decided, for metrics. Its methods are
// called on the request path, concurrently: they must be cheap, must not
// block, and must not allocate. A nil Observer costs a nil check.
type Observer interface {
	// CredentialChecked is called once per Authenticate call: the kind of
	// credential that decided it, and whether it was accepted.
	CredentialChecked(method CheckMethod, ok bool)
	// VerificationCacheLookup is called when a JWT is looked up in the
	// cache of verified tokens (static tokens are not cached).
	VerificationCacheLookup(hit bool)
}

// KeySetStats describes one key set, or, for plugin tokens, all the key
// sets of one URL template, for metrics. The counts are since the key
// cache was created; caches are shared across config reloads, so they do
// not restart with a reload.
type KeySetStats struct {
	// Name is the key set's URL as configured, without userinfo: the
	// user-token and `jwks` URLs, and the plugin-token template (with
	// `{plugin}`), or "plugin endpoints" when only endpoints are set. It
	// comes from the config, never from a request.
	Name string
	// Fetches and Failures count fetch attempts and the failed ones.
	Fetches, Failures int64
	// FetchedAt is when the current keys were fetched (for plugins: the
	// oldest of their key sets); zero if none ever was.
	FetchedAt time.Time
}

// Age is how long ago the current keys of s were fetched, on the
// verifier's clock, and false if none ever was.
func (s KeySetStats) Age() (time.Duration, bool) {
	if s.FetchedAt.IsZero() {
		return 0, false
	}
	return now().Sub(s.FetchedAt), true
}

// KeySets calls visit with the statistics of each key set the verifier
// uses, once per distinct Name.
func (a *Verifier) KeySets(visit func(KeySetStats)) {
	seen := map[string]bool{}
	emit := func(s KeySetStats) {
		if !seen[s.Name] {
			seen[s.Name] = true
			visit(s)
		}
	}
	if a.user != nil {
		emit(a.user.keys.stats())
	}
	for i := range a.external {
		if e := &a.external[i]; e.keys != nil {
			emit(e.keys.stats())
		}
	}
	if a.plugin != nil {
		emit(a.plugin.sets.stats())
	}
}

func (c *keyCache) stats() KeySetStats {
	s := KeySetStats{Name: redactURL(c.url), Fetches: c.fetches.Load(), Failures: c.failed.Load()}
	if ks := c.keys.Load(); ks != nil {
		s.FetchedAt = ks.fetchedAt
	}
	return s
}

func (p *pluginKeySets) stats() KeySetStats {
	s := KeySetStats{Name: redactURL(p.template)}
	if p.template == "" {
		s.Name = "plugin endpoints"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// A plugin's first fetch is its check: counted once here (a
	// confirmed plugin's cache counts it too, so its own count is
	// reduced by one).
	s.Fetches = p.fetches.Load() + p.retiredFetches
	s.Failures = p.checkFailures + p.retiredFailures
	for _, e := range p.confirmed {
		cs := e.cache.stats()
		s.Fetches += cs.Fetches - 1
		s.Failures += cs.Failures
		if !cs.FetchedAt.IsZero() && (s.FetchedAt.IsZero() || cs.FetchedAt.Before(s.FetchedAt)) {
			s.FetchedAt = cs.FetchedAt
		}
	}
	return s
}

// redactURL returns a key-set URL for display (logs, metric labels) without
// its userinfo; a URL template keeps its `{plugin}`. A URL that does not
// parse is never shown: it may hold a password in a form url.Parse does not
// know.
func redactURL(raw string) string {
	const mark = "plugin-id-placeholder"
	u, err := url.Parse(strings.ReplaceAll(raw, "{plugin}", mark))
	if err != nil {
		return "<invalid URL>"
	}
	u.User = nil
	return strings.ReplaceAll(u.String(), mark, "{plugin}")
}
