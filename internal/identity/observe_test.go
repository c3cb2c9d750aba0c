package identity

import (
	"context"
	"encoding/base64"
	"sync"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// recordingObserver records what the verifier reports.
type recordingObserver struct {
	mu     sync.Mutex
	checks []string
	cache  []bool
}

func (o *recordingObserver) CredentialChecked(m CheckMethod, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := "rejected"
	if ok {
		r = "ok"
	}
	o.checks = append(o.checks, m.String()+" "+r)
}

func (o *recordingObserver) VerificationCacheLookup(hit bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cache = append(o.cache, hit)
}

// TestObserver checks that each kind of credential is reported under its
// method, accepted or not, with the cache lookups of JWTs, and that the key
// sets are reported under their configured URLs.
func TestObserver(t *testing.T) {
	f := newPluginFixture(t, nil) // for its user and plugin key servers
	ext := testkit.NewRSAKey(t, "ext-obs")
	extSrv := testkit.NewJWKSServer(t, ext)
	legacySecret := []byte("observer-legacy-secret-0123456789")
	obs := &recordingObserver{}
	v, release, err := New(Config{
		UserTokens:   &UserTokens{JWKSURL: f.users.KeySetURL()},
		PluginTokens: &PluginTokens{JWKSURL: f.plugins.Template()},
		ExternalAccess: []ExternalAccess{
			{Static: &StaticAccess{Token: "observer-static-token", Subject: "s"}},
			{Legacy: &LegacyAccess{Secret: base64.StdEncoding.EncodeToString(legacySecret), Subject: "l"}},
			{JWKS: &JWKSAccess{URL: extSrv.KeySetURL()}},
		},
	}, Options{Pool: testPool, KeySetLogger: testKeySetLogger, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	clk := f.clk
	user := f.userKey.Sign(t, f.userKey.Hdr(TypeUser), map[string]any{"sub": "user:default/a", "iat": clk.Unix(), "exp": clk.At(time.Hour)})
	plugin := f.catalog.Sign(t, f.catalog.Hdr(TypePlugin), f.claims("catalog"))
	legacy := testkit.HS256(t, legacySecret, map[string]any{"alg": "HS256"}, map[string]any{"sub": "backstage-server", "exp": clk.At(time.Hour)})
	jwks := ext.Sign(t, ext.Hdr(""), map[string]any{"sub": "x", "iat": clk.Unix(), "exp": clk.At(time.Hour)})
	expired := f.userKey.Sign(t, f.userKey.Hdr(TypeUser), map[string]any{"sub": "user:default/a", "iat": clk.Unix(), "exp": clk.At(-time.Minute)})
	for _, tc := range []struct {
		name, token, check string
		cache              []bool // nil: no lookup
	}{
		{"user", user, "user ok", []bool{false}},
		{"user again: cached", user, "user ok", []bool{true}},
		{"user expired", expired, "user rejected", []bool{false}},
		{"plugin", plugin, "plugin ok", []bool{false}},
		{"static", "observer-static-token", "static ok", nil},
		{"legacy", legacy, "legacy ok", []bool{false}},
		{"jwks", jwks, "jwks ok", []bool{false}},
		{"nobody's", "not-a-known-token", "none rejected", []bool{false}},
		{"empty", "", "none rejected", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs.checks, obs.cache = nil, nil
			_, _ = v.Authenticate(context.Background(), tc.token)
			if len(obs.checks) != 1 || obs.checks[0] != tc.check {
				t.Errorf("checks %q, want [%q]", obs.checks, tc.check)
			}
			if len(obs.cache) != len(tc.cache) || (len(tc.cache) == 1 && obs.cache[0] != tc.cache[0]) {
				t.Errorf("cache lookups %v, want %v", obs.cache, tc.cache)
			}
		})
	}
	clk.Advance(30 * time.Second)
	got := map[string]KeySetStats{}
	v.KeySets(func(s KeySetStats) { got[s.Name] = s })
	for name, want := range map[string]int64{f.users.KeySetURL(): 1, extSrv.KeySetURL(): 1, f.plugins.Template(): 1} {
		s, ok := got[name]
		if !ok {
			t.Errorf("no key set %q in %v", name, got)
			continue
		}
		if s.Fetches != want || s.Failures != 0 {
			t.Errorf("%s: %d fetches, %d failures; want %d, 0", name, s.Fetches, s.Failures, want)
		}
		if age, ok := s.Age(); !ok || age != 30*time.Second {
			t.Errorf("%s: age %v %v, want 30s", name, age, ok)
		}
	}
	if len(got) != 3 {
		t.Errorf("key sets %v, want 3", got)
	}
}
