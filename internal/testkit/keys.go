// Package testkit holds the fixtures that the tests of several packages
// share: real signing keys and signatures, real key-set servers that count
// requests, a fake clock. It is imported only by tests, and must never import
// the packages it helps test (the identity tests use it from inside
// package identity).
package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var b64 = base64.RawURLEncoding

// Key is a signing key with its public JWK.
type Key struct {
	KID  string
	Alg  string
	Priv crypto.Signer
	JWK  map[string]any
}

func NewECKey(t testing.TB, kid string) *Key {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return ECKeyFrom(t, priv, kid)
}

func ECKeyFrom(t testing.TB, priv *ecdsa.PrivateKey, kid string) *Key {
	t.Helper()
	pub, err := priv.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	raw := pub.Bytes() // 0x04 || X || Y
	return &Key{KID: kid, Alg: "ES256", Priv: priv, JWK: map[string]any{
		"kty": "EC", "crv": "P-256", "x": b64.EncodeToString(raw[1:33]), "y": b64.EncodeToString(raw[33:]),
		"kid": kid, "alg": "ES256", "use": "sig",
	}}
}

func NewRSAKey(t testing.TB, kid string) *Key {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{KID: kid, Alg: "RS256", Priv: priv, JWK: map[string]any{
		"kty": "RSA", "n": b64.EncodeToString(priv.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(priv.E)).Bytes()),
		"kid": kid, "alg": "RS256", "use": "sig",
	}}
}

func NewEdKey(t testing.TB, kid string) *Key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{KID: kid, Alg: "EdDSA", Priv: priv, JWK: map[string]any{
		"kty": "OKP", "crv": "Ed25519", "x": b64.EncodeToString(pub), "kid": kid,
	}}
}

// JWKWithout returns the key's JWK without the given members.
func (k *Key) JWKWithout(members ...string) map[string]any {
	out := map[string]any{}
	for n, v := range k.JWK {
		out[n] = v
	}
	for _, m := range members {
		delete(out, m)
	}
	return out
}

func EncodeSegment(t testing.TB, v any) string {
	t.Helper()
	if s, ok := v.(string); ok { // a raw JSON text
		return b64.EncodeToString([]byte(s))
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64.EncodeToString(b)
}

// Sign signs header.claims with key k using the header's alg as written.
func (k *Key) Sign(t testing.TB, header, claims any) string {
	t.Helper()
	input := EncodeSegment(t, header) + "." + EncodeSegment(t, claims)
	return input + "." + b64.EncodeToString(k.Signature(t, input))
}

func (k *Key) Signature(t testing.TB, input string) []byte {
	t.Helper()
	h := sha256.Sum256([]byte(input))
	switch priv := k.Priv.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, priv, h[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return sig
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, priv, crypto.SHA256, h[:])
		if err != nil {
			t.Fatal(err)
		}
		return sig
	case ed25519.PrivateKey:
		return ed25519.Sign(priv, []byte(input))
	}
	t.Fatalf("unsupported key %T", k.Priv)
	return nil
}

// HS256 signs header.claims with an HMAC secret.
func HS256(t testing.TB, secret []byte, header, claims any) string {
	t.Helper()
	input := EncodeSegment(t, header) + "." + EncodeSegment(t, claims)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + b64.EncodeToString(m.Sum(nil))
}

// Hdr is a JWS header for key k with the given typ ("" for none).
func (k *Key) Hdr(typ string) map[string]any {
	h := map[string]any{"alg": k.Alg, "kid": k.KID}
	if typ != "" {
		h["typ"] = typ
	}
	return h
}

// FakeClock is the injectable clock, advanced by tests.
type FakeClock struct {
	ns atomic.Int64
}

func (c *FakeClock) Now() time.Time            { return time.Unix(0, c.ns.Load()) }
func (c *FakeClock) Advance(d time.Duration)   { c.ns.Add(int64(d)) }
func (c *FakeClock) Unix() int64               { return c.Now().Unix() }
func (c *FakeClock) At(d time.Duration) int64  { return c.Now().Add(d).Unix() }
func (c *FakeClock) Set(t time.Time)           { c.ns.Store(t.UnixNano()) }
func (c *FakeClock) String() string            { return c.Now().UTC().Format(time.RFC3339) }
func (c *FakeClock) Since(t time.Time) float64 { return c.Now().Sub(t).Seconds() }

// useFakeClock installs a fake clock, at a fixed whole second, for the test.

// Nonce makes every test server's URLs unique, even when a port is
// reused: key caches are shared by URL, and a running Caddy may still hold the
// cache of a server from an earlier test.
var Nonce atomic.Int64

// JWKSServer serves a key set (at any path) and counts requests.
type JWKSServer struct {
	*httptest.Server
	Hits  atomic.Int64 // requests served
	nonce string

	mu           sync.Mutex
	keys         []map[string]any
	status       int           // 0: 200
	body         string        // if set, served instead of the key set
	cacheControl string        // set with SetCacheControl
	gate         chan struct{} // if set, each request waits for a receive
	paths        []string
}

func NewJWKSServer(t testing.TB, keys ...*Key) *JWKSServer {
	t.Helper()
	s := &JWKSServer{nonce: fmt.Sprintf("/n%d", Nonce.Add(1))}
	s.SetKeys(keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *JWKSServer) serve(w http.ResponseWriter, r *http.Request) {
	s.Hits.Add(1)
	s.mu.Lock()
	gate := s.gate
	s.paths = append(s.paths, r.URL.Path)
	s.mu.Unlock()
	if gate != nil {
		<-gate
	}
	s.mu.Lock()
	status, body, cc := s.status, s.body, s.cacheControl
	keys := s.keys
	s.mu.Unlock()
	if cc != "" {
		w.Header().Set("Cache-Control", cc)
	}
	w.Header().Set("Content-Type", "application/json")
	if status != 0 {
		w.WriteHeader(status)
	}
	if body != "" {
		_, _ = w.Write([]byte(body))
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
}

// JWKList is the public JWKs of keys, as a key set lists them.
func JWKList(keys ...*Key) []map[string]any {
	list := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		list = append(list, k.JWK)
	}
	return list
}

func (s *JWKSServer) SetKeys(keys ...*Key) {
	s.SetJWKs(JWKList(keys...)...)
}

func (s *JWKSServer) SetJWKs(list ...map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = list
}

// Hold makes every request wait, from now on, until the returned channel is
// closed.
func (s *JWKSServer) Hold() chan struct{} {
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	return gate
}

func (s *JWKSServer) Fail(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *JWKSServer) RequestPaths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

// KeySetURL is the key set URL.
func (s *JWKSServer) KeySetURL() string { return s.URL + s.nonce + "/.well-known/jwks.json" }

// PluginTemplate is a plugin key set URL template on this server.
func (s *JWKSServer) PluginTemplate() string {
	return s.URL + s.nonce + "/api/{plugin}/.backstage/auth/v1/jwks.json"
}

// PluginServer serves key sets per plugin: /api/<id>/.backstage/auth/v1/jwks.json.
type PluginServer struct {
	*httptest.Server
	nonce string
	mu    sync.Mutex
	sets  map[string]string // plugin → body ("" = 404)
	hits  map[string]int
	All   atomic.Int64 // requests served, for any plugin
}

func NewPluginServer(t testing.TB) *PluginServer {
	t.Helper()
	s := &PluginServer{sets: map[string]string{}, hits: map[string]int{}, nonce: fmt.Sprintf("/n%d", Nonce.Add(1))}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.All.Add(1)
		id := strings.TrimPrefix(r.URL.Path, s.nonce+"/api/")
		id, ok := strings.CutSuffix(id, "/.backstage/auth/v1/jwks.json")
		s.mu.Lock()
		s.hits[id]++
		body, found := s.sets[id]
		s.mu.Unlock()
		if !ok || !found {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *PluginServer) Set(id string, keys ...*Key) {
	b, _ := json.Marshal(map[string]any{"keys": JWKList(keys...)})
	s.SetBody(id, string(b))
}

func (s *PluginServer) SetBody(id, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets[id] = body
}

func (s *PluginServer) HitsFor(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[id]
}

func (s *PluginServer) Template() string {
	return s.URL + s.nonce + "/api/{plugin}/.backstage/auth/v1/jwks.json"
}

// AssertNoTokenContent fails if msg contains any segment of token.
func AssertNoTokenContent(t testing.TB, token, msg string) {
	t.Helper()
	for _, part := range strings.Split(token, ".") {
		if len(part) >= 8 && strings.Contains(msg, part) {
			t.Fatalf("error message %q contains token content %q", msg, part)
		}
	}
}

func Without(m map[string]any, names ...string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for _, n := range names {
		delete(out, n)
	}
	return out
}

func With(m map[string]any, kv ...any) map[string]any {
	out := Without(m)
	for i := 0; i < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

// SetCacheControl makes the server send this Cache-Control header.
func (s *JWKSServer) SetCacheControl(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cacheControl = v
}

// Plugins lists the plugin ids whose key sets were requested.
func (s *PluginServer) Plugins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.hits))
	for id := range s.hits {
		out = append(out, id)
	}
	return out
}

// CaseVariants returns the 2^len(s) upper/lower case spellings of s.
func CaseVariants(s string) []string {
	out := []string{""}
	for _, c := range s {
		var next []string
		for _, p := range out {
			next = append(next, p+strings.ToLower(string(c)), p+strings.ToUpper(string(c)))
		}
		out = next
	}
	return out
}
