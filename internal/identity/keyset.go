package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"go.uber.org/zap"
)

// Key sets (JWKS) are fetched over HTTP and cached. The caches live in a
// Pool (Caddy's UsagePool, lent by the app) keyed by URL, so a config reload (which
// provisions the new config before cleaning up the old one) neither refetches
// keys nor fails a request. Each cache owns a context of its own, cancelled
// when the last config using it is cleaned up.
//
// Fetch policy:
//   - Provision never touches the network. The first request that needs a key
//     set fetches it synchronously (singleflight, jwksFetchTimeout).
//   - A token whose kid is unknown forces one synchronous refetch, shared by all
//     concurrent requests (singleflight), and rate-limited: at most
//     jwksForcedMax per jwksForcedWindow, and at most one per jwksForcedMinGap
//     unless the token was issued after the last fetch started (a freshly
//     rotated key). A key rotation therefore costs no failed request.
//   - Keys are refreshed in the background every jwksDefaultRefresh, or the
//     response's Cache-Control max-age clamped to [jwksMinRefresh,
//     jwksMaxRefresh]: by a timer, and on use once they are older than that.
//   - When the endpoint is down or serves garbage, the last good keys are kept
//     (a Warn is logged once per outage, an Info when it recovers); failed
//     fetches back off from jwksRetryMin to jwksRetryMax. Without any key ever
//     fetched, tokens are refused (fail closed).
const (
	jwksFetchTimeout   = 5 * time.Second
	jwksDialTimeout    = 3 * time.Second
	jwksMaxBodyBytes   = 1 << 20
	jwksMaxKeys        = 256
	jwksDefaultRefresh = 10 * time.Minute
	jwksMinRefresh     = 1 * time.Minute
	jwksMaxRefresh     = 1 * time.Hour
	jwksForcedMinGap   = 10 * time.Second
	jwksForcedWindow   = 60 * time.Second
	jwksForcedMax      = 10
	jwksRetryMin       = 1 * time.Second
	jwksRetryMax       = 30 * time.Second
	// jwksMaxCandidates bounds the signature checks spent on one token when
	// several keys match it (a token without kid).
	jwksMaxCandidates = 8
	// jwksMaxRedirects bounds the redirects a key set fetch follows; only
	// redirects to the key set URL's own origin (scheme, host and port) are
	// followed, so neither another host nor an https->http downgrade can
	// supply keys.
	jwksMaxRedirects = 3
	// rsaMaxBits and rsaMaxExponent refuse RSA keys that make one signature
	// check cost a hostile key set's choice of CPU time: 8,192 bits is
	// crypto/tls's limit, and 65537 the exponent every signer uses (an
	// exponent must also be odd and at least 3).
	rsaMaxBits     = 8192
	rsaMaxExponent = 65537

	// maxPluginKeySets bounds how many distinct calling plugins' key sets are
	// kept. When the table is full, a newly confirmed plugin evicts one: a
	// plugin none of whose tokens ever verified goes first (oldest first),
	// else the one whose last verified token is oldest. So no input, however
	// many ids it names, can keep a plugin out: at worst a plugin's key set
	// is fetched again.
	maxPluginKeySets = 1024
	// pluginNegativeTTL is how long a plugin id whose key set could not be
	// fetched (404, no keys, unreachable, garbage) is refused without a
	// fetch; maxPluginNegative bounds how many such ids are remembered
	// (expired ones are dropped first, then arbitrary ones: forgetting one
	// costs at most one more fetch, within pluginCheckBudget).
	pluginNegativeTTL = 30 * time.Second
	maxPluginNegative = 4096
	// maxPluginChecksInFlight bounds the key set checks of plugins not named
	// by the config (no `plugins` allowlist) that run at once: forged tokens
	// naming made-up ids cannot open a connection each.
	maxPluginChecksInFlight = 8
	// pluginCheckBudget is the number of key set checks of plugins not named
	// by the config that may start per pluginCheckWindow, across all ids.
	// Checks of plugins named in the `plugins` allowlist are not charged
	// (there are only as many as the config names, and the negative cache
	// bounds their rate), and confirmed plugins need no check at all, so
	// anonymous input cannot exhaust the budget for them.
	pluginCheckBudget = 60
	pluginCheckWindow = time.Minute
)

// clock is the injectable time source for token validation (exp, nbf), the
// verification cache and the key-cache schedule. Tests swap it with setClock.
var clock atomic.Pointer[func() time.Time]

// SetClock makes token validation, the verification cache and the key
// caches' schedule read now instead of the system clock, until restore is
// called. For tests of the packages that use this one.
func SetClock(now func() time.Time) (restore func()) {
	clock.Store(&now)
	return func() { clock.Store(nil) }
}

// KeySetRetryMin is the shortest wait before a key set whose fetch failed
// is fetched again.
const KeySetRetryMin = jwksRetryMin

func now() time.Time {
	if f := clock.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

// jwksHTTPClient fetches key sets: bounded dial, handshake and total time, few
// redirects, same origin only. Response bodies are capped at jwksMaxBodyBytes
// by fetchKeySet. Configs that trust extra CAs get a client of their own
// (newKeySetClient).
var jwksHTTPClient = newKeySetClient(nil)

// newKeySetClient builds a key set client; tlsConf nil: Go's defaults.
func newKeySetClient(tlsConf *tls.Config) *http.Client {
	return &http.Client{
		Timeout: jwksFetchTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: jwksDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       tlsConf,
			TLSHandshakeTimeout:   jwksFetchTimeout,
			ResponseHeaderTimeout: jwksFetchTimeout,
			MaxIdleConnsPerHost:   2,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: checkKeySetRedirect,
	}
}

// checkKeySetRedirect follows a redirect only to the origin (scheme, host,
// port) of the key set URL, at most jwksMaxRedirects times. Backstage (jose)
// follows none; a same-origin redirect (say, to a versioned path) is served
// by the same server the config trusts, so it is followed.
func checkKeySetRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= jwksMaxRedirects {
		return fmt.Errorf("stopped after %d redirects", jwksMaxRedirects)
	}
	if origin(req.URL) != origin(via[0].URL) {
		return errors.New("redirect to another origin refused")
	}
	return nil
}

// origin is a URL's scheme, host and port (the scheme's default if none).
func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// NewKeySetTLS returns the TLS configuration of key set fetches that trust
// the CA certificates in the given PEM files, in addition to the system's,
// and a fingerprint of them (so key caches built with different CAs are
// never shared). No files: nil, "".
func NewKeySetTLS(files []string) (*tls.Config, string, error) {
	if len(files) == 0 {
		return nil, "", nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	h := sha256.New()
	for _, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, "", fmt.Errorf("reading CA file: %v", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("CA file %s: no PEM certificate found", f)
		}
		h.Write(pem)
		h.Write([]byte{0})
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, hex.EncodeToString(h.Sum(nil)), nil
}

// keyPool hands out the key caches shared across config reloads, from the
// host's Pool.
type keyPool struct {
	pool   Pool
	log    func() *zap.Logger
	client *http.Client // key set fetches
	caID   string       // fingerprint of the extra CAs client trusts, or ""
}

// PoolKey identifies a shared key cache in the Pool: a JWKS URL, or a plugin
// JWKS URL template (for the set of per-plugin caches).
type PoolKey struct {
	Kind string // "jwks" or "plugin-jwks"
	URL  string
	CA   string // fingerprint of the extra CAs trusted for it, or ""
}

// algInfo describes an accepted signature algorithm. HMAC and "none" are
// deliberately absent: key sets only ever hold public keys.
type algInfo struct {
	name string
	sig  jwa.SignatureAlgorithm
	kty  string // JWK kty the key must have
	crv  string // JWK crv the key must have, or ""
}

var asymmetricAlgs = map[string]algInfo{
	"RS256":   {"RS256", jwa.RS256(), "RSA", ""},
	"RS384":   {"RS384", jwa.RS384(), "RSA", ""},
	"RS512":   {"RS512", jwa.RS512(), "RSA", ""},
	"PS256":   {"PS256", jwa.PS256(), "RSA", ""},
	"PS384":   {"PS384", jwa.PS384(), "RSA", ""},
	"PS512":   {"PS512", jwa.PS512(), "RSA", ""},
	"ES256":   {"ES256", jwa.ES256(), "EC", "P-256"},
	"ES384":   {"ES384", jwa.ES384(), "EC", "P-384"},
	"ES512":   {"ES512", jwa.ES512(), "EC", "P-521"},
	"EdDSA":   {"EdDSA", jwa.EdDSA(), "OKP", "Ed25519"}, //nolint:staticcheck // the JOSE name Backstage's jose accepts
	"Ed25519": {"Ed25519", jwa.EdDSAEd25519(), "OKP", "Ed25519"},
}

// supportedAlgNames lists asymmetricAlgs in a stable order, for messages.
const supportedAlgNames = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, Ed25519"

// parseAlgorithms validates a configured algorithm list (items may themselves
// be space- or comma-separated, as in Backstage). An empty result means def.
func parseAlgorithms(list []string, def []string) ([]algInfo, error) {
	names := SplitList(list)
	if len(names) == 0 {
		names = def
	}
	out := make([]algInfo, 0, len(names))
	for _, n := range names {
		ai, ok := asymmetricAlgs[n]
		if !ok {
			u := strings.ToUpper(n)
			if strings.HasPrefix(u, "HS") || u == "NONE" {
				return nil, fmt.Errorf("algorithm '%s' is not allowed: only asymmetric algorithms (%s) can be verified against a key set", n, supportedAlgNames)
			}
			return nil, fmt.Errorf("unknown algorithm '%s', expected one of %s", n, supportedAlgNames)
		}
		out = append(out, ai)
	}
	return out, nil
}

// splitList splits every item on spaces and commas and removes duplicates and
// empty strings, like Backstage's readStringOrStringArrayFromConfig.
func SplitList(list []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, item := range list {
		for _, v := range strings.FieldsFunc(item, func(r rune) bool { return r == ' ' || r == ',' }) {
			if !seen[v] {
				seen[v] = true
				out = append(out, v)
			}
		}
	}
	return out
}

// verifyKey is one usable public key of a key set.
type verifyKey struct {
	kid    string
	hasKid bool
	alg    string // the key's declared alg, or ""
	kty    string // "EC", "RSA" or "OKP"
	crv    string // "P-256", "P-384", "P-521", "Ed25519", or "" for RSA
	key    any    // *ecdsa.PublicKey, *rsa.PublicKey or ed25519.PublicKey
}

// keySet is an immutable snapshot of a fetched key set.
type keySet struct {
	keys         []verifyKey
	fetchedAt    time.Time // when the fetch that produced it started
	refreshAfter time.Time // refresh in the background once now passes this
}

// match returns the keys a token signed with alg and carrying kid (if hasKid)
// may be verified with, following jose's JWKS key selection: same kty (and
// curve), same kid when the token names one, same alg when the key declares
// one. Unusable keys (use other than sig, key_ops without verify) were
// dropped when the set was parsed. A token that names a kid which several
// keys match gets no key at all (ambiguous): jose refuses it
// (JWKSMultipleMatchingKeys), and so do we.
func (ks *keySet) match(ai algInfo, kid string, hasKid bool) (out []*verifyKey, ambiguous bool) {
	for i := range ks.keys {
		k := &ks.keys[i]
		if k.kty != ai.kty || (ai.crv != "" && k.crv != ai.crv) {
			continue
		}
		if hasKid && (!k.hasKid || k.kid != kid) {
			continue
		}
		if k.alg != "" && k.alg != ai.name {
			continue
		}
		if hasKid && len(out) == 1 {
			return nil, true
		}
		out = append(out, k)
		if len(out) == jwksMaxCandidates {
			break
		}
	}
	return out, false
}

var (
	errKeysUnavailable = errors.New("key set unavailable")
	errNoMatchingKey   = errors.New("no matching key in key set")
	errAmbiguousKid    = errors.New("several keys of the key set match the token's kid")
)

// fetchKeySet downloads and parses a key set. The response must be 200 with a
// JSON object holding a "keys" array. Keys that cannot be parsed or used
// (symmetric keys, RSA below 2048 bits, use other than sig…) are skipped; a
// set whose keys are all unusable is an error, so garbage never replaces good
// keys. maxAge is the response's Cache-Control max-age (or 0 with
// no-cache/no-store), hasMaxAge whether there was one. client nil:
// jwksHTTPClient.
func fetchKeySet(ctx context.Context, client *http.Client, rawURL string) (keys []verifyKey, maxAge time.Duration, hasMaxAge bool, err error) {
	if client == nil {
		client = jwksHTTPClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, 0, false, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, 0, false, fmt.Errorf("unexpected HTTP status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBodyBytes+1))
	if err != nil {
		return nil, 0, false, fmt.Errorf("reading response: %v", err)
	}
	if len(body) > jwksMaxBodyBytes {
		return nil, 0, false, fmt.Errorf("response larger than %d bytes", jwksMaxBodyBytes)
	}
	keys, err = parseKeySet(body)
	if err != nil {
		return nil, 0, false, err
	}
	maxAge, hasMaxAge = cacheMaxAge(resp.Header.Values("Cache-Control"))
	return keys, maxAge, hasMaxAge, nil
}

// parseKeySet parses a JWKS document into usable public keys.
func parseKeySet(body []byte) ([]verifyKey, error) {
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("invalid key set: not a JSON object with a keys array")
	}
	if doc.Keys == nil {
		return nil, fmt.Errorf("invalid key set: no keys member")
	}
	raws := *doc.Keys
	if len(raws) > jwksMaxKeys {
		raws = raws[:jwksMaxKeys]
	}
	keys := make([]verifyKey, 0, len(raws))
	for _, raw := range raws {
		if k, ok := parseVerifyKey(raw); ok {
			keys = append(keys, k)
		}
	}
	if len(raws) > 0 && len(keys) == 0 {
		return nil, fmt.Errorf("invalid key set: none of its %d keys is a usable public signature key", len(raws))
	}
	return keys, nil
}

func parseVerifyKey(raw []byte) (verifyKey, bool) {
	k, err := jwk.ParseKey(raw)
	if err != nil {
		return verifyKey{}, false
	}
	if use, ok := k.KeyUsage(); ok && use != "sig" {
		return verifyKey{}, false
	}
	if ops, ok := k.KeyOps(); ok {
		verify := false
		for _, op := range ops {
			if op == jwk.KeyOpVerify {
				verify = true
			}
		}
		if !verify {
			return verifyKey{}, false
		}
	}
	pub, err := k.PublicKey()
	if err != nil {
		return verifyKey{}, false
	}
	var rawKey any
	if err := jwk.Export(pub, &rawKey); err != nil {
		return verifyKey{}, false
	}
	vk := verifyKey{}
	switch pk := rawKey.(type) {
	case *ecdsa.PublicKey:
		vk.kty, vk.crv, vk.key = "EC", pk.Curve.Params().Name, pk
	case *rsa.PublicKey:
		if bits := pk.N.BitLen(); bits < 2048 || bits > rsaMaxBits || pk.E < 3 || pk.E > rsaMaxExponent || pk.E%2 == 0 {
			return verifyKey{}, false
		}
		vk.kty, vk.key = "RSA", pk
	case ed25519.PublicKey:
		vk.kty, vk.crv, vk.key = "OKP", "Ed25519", pk
	default:
		return verifyKey{}, false
	}
	vk.kid, vk.hasKid = k.KeyID()
	if alg, ok := k.Algorithm(); ok {
		vk.alg = alg.String()
	}
	return vk, true
}

// duplicateKid returns a kid that two different keys of keys share, or
// false. Tokens naming it are refused (see match); the cache warns once.
func duplicateKid(keys []verifyKey) (string, bool) {
	for i := range keys {
		if !keys[i].hasKid {
			continue
		}
		for j := i + 1; j < len(keys); j++ {
			if keys[j].hasKid && keys[j].kid == keys[i].kid && !sameKey(keys[i].key, keys[j].key) {
				return keys[i].kid, true
			}
		}
	}
	return "", false
}

func sameKey(a, b any) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := a.(equaler); ok {
		return e.Equal(b)
	}
	return false
}

// cacheMaxAge reads max-age from Cache-Control header values.
func cacheMaxAge(values []string) (time.Duration, bool) {
	for _, v := range values {
		for _, d := range strings.Split(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			switch {
			case d == "no-store" || d == "no-cache":
				return 0, true
			case strings.HasPrefix(d, "max-age="):
				n, err := strconv.ParseInt(strings.Trim(d[len("max-age="):], `"`), 10, 64)
				if err == nil && n >= 0 {
					if n > int64(jwksMaxRefresh/time.Second) {
						n = int64(jwksMaxRefresh / time.Second)
					}
					return time.Duration(n) * time.Second, true
				}
			}
		}
	}
	return 0, false
}

func refreshInterval(maxAge time.Duration, hasMaxAge bool) time.Duration {
	if !hasMaxAge {
		return jwksDefaultRefresh
	}
	return min(max(maxAge, jwksMinRefresh), jwksMaxRefresh)
}

// fetchCall is one in-flight fetch, shared by everyone who needs its result.
type fetchCall struct {
	done    chan struct{}
	started time.Time
	err     error
}

// keyCache caches one JWKS URL.
type keyCache struct {
	url    string
	ctx    context.Context
	cancel context.CancelFunc
	log    func() *zap.Logger
	client *http.Client // nil: jwksHTTPClient

	keys    atomic.Pointer[keySet] // last good key set, nil until the first success
	fetches atomic.Int64           // completed fetch attempts (counted once their outcome is recorded and logged)
	failed  atomic.Int64           // the failed ones among them
	// refreshGate is the earliest time (UnixNano) at which a request that
	// finds the keys due for a refresh may try to start one: math.MaxInt64
	// while a fetch is in flight, retryAt after a failure, 0 otherwise.
	// Requests read it without the mutex, so that neither a refresh in
	// flight nor an outage makes every request take the mutex; only the
	// request whose CompareAndSwap wins takes it. Otherwise it is written
	// with mu held.
	refreshGate atomic.Int64

	mu          sync.Mutex
	inflight    *fetchCall
	lastAttempt time.Time // start of the latest fetch attempt
	retryAt     time.Time // after a failure, no on-demand fetch before this
	failures    int
	forced      []time.Time // forced refreshes within jwksForcedWindow
	interval    time.Duration
	outage      bool
	timerOn     bool
	dupWarned   bool // the duplicate-kid warning was logged
}

func newKeyCache(parent context.Context, rawURL string, log func() *zap.Logger, client *http.Client) *keyCache {
	ctx, cancel := context.WithCancel(parent)
	return &keyCache{url: rawURL, ctx: ctx, cancel: cancel, log: log, client: client, interval: jwksDefaultRefresh}
}

// Destruct implements Destructor: it stops background refreshes.
func (c *keyCache) Destruct() error {
	c.cancel()
	return nil
}

// redactedURL is the URL for log messages, without userinfo.
func (c *keyCache) redactedURL() string { return redactURL(c.url) }

// startFetchLocked starts a fetch in the background. c.mu must be held and no
// fetch must be in flight.
func (c *keyCache) startFetchLocked() *fetchCall {
	call := &fetchCall{done: make(chan struct{}), started: now()}
	c.inflight = call
	c.lastAttempt = call.started
	c.refreshGate.Store(math.MaxInt64)
	go c.run(call)
	return call
}

func (c *keyCache) run(call *fetchCall) {
	ctx, cancel := context.WithTimeout(c.ctx, jwksFetchTimeout)
	keys, maxAge, hasMaxAge, err := fetchKeySet(ctx, c.client, c.url)
	cancel()
	c.finish(call, keys, maxAge, hasMaxAge, err)
}

// finish records the outcome of a fetch and wakes up everyone waiting for it.
func (c *keyCache) finish(call *fetchCall, keys []verifyKey, maxAge time.Duration, hasMaxAge bool, err error) {
	var logFn func()
	c.mu.Lock()
	if err == nil {
		c.interval = refreshInterval(maxAge, hasMaxAge)
		c.keys.Store(&keySet{keys: keys, fetchedAt: call.started, refreshAfter: call.started.Add(c.interval)})
		c.failures, c.retryAt = 0, time.Time{}
		c.refreshGate.Store(0)
		if c.outage {
			c.outage = false
			n := len(keys)
			logFn = func() { c.log().Info("key set fetched again", zap.String("url", c.redactedURL()), zap.Int("keys", n)) }
		}
		if kid, dup := duplicateKid(keys); dup && !c.dupWarned {
			c.dupWarned = true
			prev := logFn
			logFn = func() {
				if prev != nil {
					prev()
				}
				c.log().Warn("key set publishes different keys under one kid; tokens naming that kid are refused",
					zap.String("url", c.redactedURL()), zap.String("kid", kid))
			}
		}
		if !c.timerOn && c.ctx.Err() == nil {
			c.timerOn = true
			go c.refreshLoop()
		}
	} else {
		c.failed.Add(1)
		c.failures++
		backoff := jwksRetryMin << min(c.failures-1, 5)
		c.retryAt = now().Add(min(backoff, jwksRetryMax))
		c.refreshGate.Store(c.retryAt.UnixNano())
		if c.ctx.Err() == nil {
			last := c.keys.Load()
			if !c.outage {
				c.outage = true
				logFn = func() {
					if last == nil {
						c.log().Warn("cannot fetch key set; tokens it should verify are refused until it can be fetched",
							zap.String("url", c.redactedURL()), zap.Error(err))
					} else {
						c.log().Warn("cannot refresh key set; keeping the last good keys",
							zap.String("url", c.redactedURL()), zap.Int("keys", len(last.keys)),
							zap.Time("fetched_at", last.fetchedAt), zap.Error(err))
					}
				}
			} else {
				logFn = func() { c.log().Debug("key set still unavailable", zap.String("url", c.redactedURL()), zap.Error(err)) }
			}
		}
	}
	call.err = err
	c.inflight = nil
	c.mu.Unlock()
	if logFn != nil {
		logFn()
	}
	c.fetches.Add(1)
	close(call.done)
}

// refreshLoop refreshes the key set periodically until the cache is destroyed.
func (c *keyCache) refreshLoop() {
	for {
		c.mu.Lock()
		d := c.interval
		c.mu.Unlock()
		t := time.NewTimer(d)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c.mu.Lock()
		if c.inflight == nil {
			c.startFetchLocked()
		}
		c.mu.Unlock()
	}
}

func waitFetch(ctx context.Context, call *fetchCall) error {
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// current returns the key set, fetching it synchronously if none was ever
// fetched, and starting a background refresh if it is due. With keys, it
// takes no lock: atomic loads, and one CompareAndSwap when a refresh is due
// and may start.
func (c *keyCache) current(ctx context.Context) (*keySet, error) {
	if ks := c.keys.Load(); ks != nil {
		if t := now(); !t.Before(ks.refreshAfter) {
			if g := c.refreshGate.Load(); t.UnixNano() >= g && c.refreshGate.CompareAndSwap(g, math.MaxInt64) {
				c.refreshDue()
			}
		}
		return ks, nil
	}
	c.mu.Lock()
	if ks := c.keys.Load(); ks != nil {
		c.mu.Unlock()
		return ks, nil
	}
	call := c.inflight
	if call == nil {
		if now().Before(c.retryAt) {
			c.mu.Unlock()
			return nil, errKeysUnavailable
		}
		call = c.startFetchLocked()
	}
	c.mu.Unlock()
	_ = waitFetch(ctx, call)
	if ks := c.keys.Load(); ks != nil {
		return ks, nil
	}
	return nil, errKeysUnavailable
}

// lookup returns the keys that may verify a token signed with ai and carrying
// kid (if hasKid), issued at iat (if hasIat). On a miss it refetches the key
// set once, synchronously, if the rate limit allows.
// refreshDue starts a refresh if one is still due, for the request that
// closed the refresh gate, and reopens the gate otherwise.
func (c *keyCache) refreshDue() {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := now()
	switch ks := c.keys.Load(); {
	case c.inflight != nil:
		// finish reopens the gate
	case t.Before(c.retryAt):
		c.refreshGate.Store(c.retryAt.UnixNano())
	case ks != nil && t.Before(ks.refreshAfter):
		c.refreshGate.Store(0) // refreshed meanwhile
	default:
		c.startFetchLocked()
	}
}

func (c *keyCache) lookup(ctx context.Context, ai algInfo, kid string, hasKid bool, iat int64, hasIat bool) ([]*verifyKey, error) {
	ks, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	if m, amb := ks.match(ai, kid, hasKid); len(m) > 0 {
		return m, nil
	} else if amb {
		return nil, errAmbiguousKid
	}
	c.mu.Lock()
	call := c.inflight
	if call == nil && c.mayForceLocked(iat, hasIat) {
		call = c.startFetchLocked()
	}
	c.mu.Unlock()
	if call == nil {
		return nil, errNoMatchingKey
	}
	_ = waitFetch(ctx, call)
	if ks = c.keys.Load(); ks != nil {
		if m, amb := ks.match(ai, kid, hasKid); len(m) > 0 {
			return m, nil
		} else if amb {
			return nil, errAmbiguousKid
		}
	}
	return nil, errNoMatchingKey
}

// mayForceLocked decides whether a key miss may trigger a refetch. c.mu must
// be held.
func (c *keyCache) mayForceLocked(iat int64, hasIat bool) bool {
	t := now()
	if t.Before(c.retryAt) {
		return false
	}
	// A token issued after the last fetch started may be signed with a key
	// published since: refetch even if that fetch was recent.
	issuedSince := hasIat && iat >= c.lastAttempt.Unix()
	if t.Sub(c.lastAttempt) < jwksForcedMinGap && !issuedSince {
		return false
	}
	cut := t.Add(-jwksForcedWindow)
	kept := c.forced[:0]
	for _, f := range c.forced {
		if f.After(cut) {
			kept = append(kept, f)
		}
	}
	c.forced = kept
	if len(c.forced) >= jwksForcedMax {
		return false
	}
	c.forced = append(c.forced, t)
	return true
}

// acquireKeyCache gets the shared cache of a JWKS URL from the pool. The
// returned release function must be called exactly once.
func (kp *keyPool) keyCache(rawURL string) (*keyCache, func(), error) {
	key := PoolKey{Kind: "jwks", URL: rawURL, CA: kp.caID}
	v, _, err := kp.pool.LoadOrNew(key, func() (Destructor, error) {
		return newKeyCache(context.Background(), rawURL, kp.log, kp.client), nil
	})
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return v.(*keyCache), func() { once.Do(func() { _, _ = kp.pool.Delete(key) }) }, nil
}

// pluginKeySets holds the key caches of calling plugins for one plugin JWKS
// URL template. A plugin's cache is created once its key set has been fetched
// successfully: that first fetch is Backstage's "does the source plugin have a
// JWKS endpoint" check, and its positive result is kept (in a table of at
// most maxPluginKeySets plugins, with eviction). Ids are lower case (the
// caller folds them): plugin ids differing only in case are one plugin.
//
// Unlike Backstage, which fetches once per request for an unknown id, a
// failed check is remembered for pluginNegativeTTL, and checks of ids the
// config does not name are bounded: maxPluginChecksInFlight at once,
// pluginCheckBudget per pluginCheckWindow.
type pluginKeySets struct {
	template  string            // "": only the plugins of endpoints
	endpoints map[string]string // plugin id → its key set URL, overriding template
	ctx       context.Context
	cancel    context.CancelFunc
	log       func() *zap.Logger
	client    *http.Client // nil: jwksHTTPClient

	// confirmedRead mirrors confirmed for lookups without the mutex: a
	// confirmed plugin's tokens (the common case) take no lock shared by
	// all plugins. Writes happen under mu, with confirmed.
	confirmedRead sync.Map // id → *pluginEntry

	mu           sync.Mutex
	confirmed    map[string]*pluginEntry
	checks       map[string]*pluginCheck
	negative     map[string]time.Time // id → refused without a fetch until then
	unnamed      int                  // checks in flight of ids the config does not name
	budgetStart  time.Time            // start of the current pluginCheckWindow
	budgetUsed   int                  // checks of unnamed ids started in it
	evictWarned  bool
	budgetWarned bool

	fetches atomic.Int64 // checks started (for tests and KeySets)
	// checkFailures counts the failed checks; retiredFetches and
	// retiredFailures the refreshes and failures of evicted plugins' caches
	// (KeySets' counts never go down). Guarded by mu.
	checkFailures, retiredFetches, retiredFailures int64
}

// pluginEntry is a confirmed plugin's key cache, with when a token last
// verified with it (unix ns, 0: never), which orders eviction.
type pluginEntry struct {
	cache       *keyCache
	confirmedAt time.Time
	lastOK      atomic.Int64
}

// verified records that a token of the plugin verified.
func (e *pluginEntry) verified() { e.lastOK.Store(now().UnixNano()) }

type pluginCheck struct {
	done  chan struct{}
	entry *pluginEntry
	named bool
}

func newPluginKeySets(template string, endpoints map[string]string, log func() *zap.Logger, client *http.Client) *pluginKeySets {
	ctx, cancel := context.WithCancel(context.Background())
	return &pluginKeySets{
		template: template, endpoints: endpoints, ctx: ctx, cancel: cancel, log: log, client: client,
		confirmed: map[string]*pluginEntry{}, checks: map[string]*pluginCheck{}, negative: map[string]time.Time{},
	}
}

// Destruct implements Destructor.
func (p *pluginKeySets) Destruct() error {
	p.cancel()
	return nil
}

// pluginURL builds a plugin's key set URL, "" if it has none. id must
// already have been checked against pluginIDPattern, so it needs no escaping.
func (p *pluginKeySets) pluginURL(id string) string {
	if u, ok := p.endpoints[id]; ok {
		return u
	}
	if p.template == "" {
		return ""
	}
	return strings.ReplaceAll(p.template, "{plugin}", id)
}

// Why get found no key set.
var (
	errPluginNoKeySet = errors.New("plugin has no usable key set")
	errPluginBusy     = errors.New("too many plugin key set checks; try again later")
)

// get returns the key cache entry of plugin id (lower case), or
// errPluginNoKeySet if the plugin has no usable key set (404, no keys member,
// unreachable, garbage; remembered for pluginNegativeTTL), or errPluginBusy
// if a check was needed but the limits on checks of ids the config does not
// name refused it. named says the config names id (the `plugins`
// allowlist): its checks are not charged to those limits. Checks of the same
// plugin are shared.
func (p *pluginKeySets) get(ctx context.Context, id string, named bool) (*pluginEntry, error) {
	if e, ok := p.confirmedRead.Load(id); ok {
		return e.(*pluginEntry), nil
	}
	p.mu.Lock()
	if e := p.confirmed[id]; e != nil {
		p.mu.Unlock()
		return e, nil
	}
	chk := p.checks[id]
	if chk == nil {
		if p.pluginURL(id) == "" {
			// endpoints only, and id is not among them: no fetch at all
			p.mu.Unlock()
			return nil, errPluginNoKeySet
		}
		t := now()
		if until, ok := p.negative[id]; ok {
			if t.Before(until) {
				p.mu.Unlock()
				return nil, errPluginNoKeySet
			}
			delete(p.negative, id)
		}
		if !named {
			if t.Sub(p.budgetStart) >= pluginCheckWindow || t.Before(p.budgetStart) {
				p.budgetStart, p.budgetUsed = t, 0
			}
			if p.unnamed >= maxPluginChecksInFlight || p.budgetUsed >= pluginCheckBudget {
				warn := !p.budgetWarned
				p.budgetWarned = true
				p.mu.Unlock()
				if warn {
					p.log().Warn("plugin key set checks limited; tokens of plugins not yet seen are refused until the limit allows a check (set plugin_tokens.plugins to exempt known plugins)",
						zap.Int("in_flight_limit", maxPluginChecksInFlight), zap.Int("per_minute_limit", pluginCheckBudget))
				}
				return nil, errPluginBusy
			}
			p.budgetUsed++
			p.unnamed++
		}
		chk = &pluginCheck{done: make(chan struct{}), named: named}
		p.checks[id] = chk
		p.fetches.Add(1)
		go p.check(id, chk)
	}
	p.mu.Unlock()
	select {
	case <-chk.done:
		if chk.entry == nil {
			return nil, errPluginNoKeySet
		}
		return chk.entry, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *pluginKeySets) check(id string, chk *pluginCheck) {
	u := p.pluginURL(id)
	started := now()
	ctx, cancel := context.WithTimeout(p.ctx, jwksFetchTimeout)
	keys, maxAge, hasMaxAge, err := fetchKeySet(ctx, p.client, u)
	cancel()
	var e *pluginEntry
	if err == nil {
		c := newKeyCache(p.ctx, u, p.log, p.client)
		c.mu.Lock()
		call := &fetchCall{done: make(chan struct{}), started: started}
		c.inflight, c.lastAttempt = call, started
		c.mu.Unlock()
		c.finish(call, keys, maxAge, hasMaxAge, nil)
		e = &pluginEntry{cache: c, confirmedAt: started}
	} else if p.ctx.Err() == nil {
		p.log().Debug("plugin key set check failed", zap.String("plugin", id), zap.Error(err))
	}
	var evicted string
	p.mu.Lock()
	delete(p.checks, id)
	if !chk.named {
		p.unnamed--
	}
	if e != nil {
		if len(p.confirmed) >= maxPluginKeySets {
			evicted = p.evictLocked()
		}
		p.confirmed[id] = e
		p.confirmedRead.Store(id, e)
	} else {
		p.checkFailures++
		if p.ctx.Err() == nil {
			p.rememberFailureLocked(id, now())
		}
	}
	warn := evicted != "" && !p.evictWarned
	if warn {
		p.evictWarned = true
	}
	chk.entry = e
	p.mu.Unlock()
	if warn {
		p.log().Warn("too many distinct calling plugins; evicting the key sets of plugins whose tokens have not verified recently",
			zap.Int("limit", maxPluginKeySets), zap.String("evicted", evicted))
	}
	close(chk.done)
}

// evictLocked drops one confirmed plugin: one whose tokens never verified
// (the oldest confirmed), else the one that verified least recently. p.mu
// must be held.
func (p *pluginKeySets) evictLocked() string {
	var victim string
	var vNever bool
	var vTime int64
	for id, e := range p.confirmed {
		last := e.lastOK.Load()
		never := last == 0
		t := last
		if never {
			t = e.confirmedAt.UnixNano()
		}
		if victim == "" || (never && !vNever) || (never == vNever && t < vTime) {
			victim, vNever, vTime = id, never, t
		}
	}
	if victim != "" {
		cs := p.confirmed[victim].cache.stats()
		p.retiredFetches += cs.Fetches - 1
		p.retiredFailures += cs.Failures
		p.confirmed[victim].cache.cancel()
		delete(p.confirmed, victim)
		p.confirmedRead.Delete(victim)
	}
	return victim
}

// rememberFailureLocked puts id in the negative cache. p.mu must be held.
func (p *pluginKeySets) rememberFailureLocked(id string, t time.Time) {
	if len(p.negative) >= maxPluginNegative {
		for k, until := range p.negative {
			if !t.Before(until) {
				delete(p.negative, k)
			}
		}
		for k := range p.negative {
			if len(p.negative) < maxPluginNegative {
				break
			}
			delete(p.negative, k)
		}
	}
	p.negative[id] = t.Add(pluginNegativeTTL)
}

// acquirePluginKeySets gets the shared plugin caches of a URL template.
func (kp *keyPool) pluginKeySets(template string, endpoints map[string]string) (*pluginKeySets, func(), error) {
	id := template
	if len(endpoints) > 0 {
		ids := make([]string, 0, len(endpoints))
		for p := range endpoints {
			ids = append(ids, p)
		}
		slices.Sort(ids)
		for _, p := range ids {
			id += " " + p + "=" + endpoints[p]
		}
	}
	key := PoolKey{Kind: "plugin-jwks", URL: id, CA: kp.caID}
	v, _, err := kp.pool.LoadOrNew(key, func() (Destructor, error) {
		return newPluginKeySets(template, endpoints, kp.log, kp.client), nil
	})
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return v.(*pluginKeySets), func() { once.Do(func() { _, _ = kp.pool.Delete(key) }) }, nil
}
