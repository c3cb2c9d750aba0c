package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unsafe"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/policy"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"go.uber.org/zap"
)

// Principal types, as Backstage names them (BackstagePrincipalTypes).
const (
	PrincipalUser    = "user"
	PrincipalService = "service"
)

// principal is who a verified credential belongs to.
type Principal struct {
	// Type is "user" or "service".
	Type string
	// Subject is the user entity ref for users ("user:default/alice"), "plugin:<id>"
	// for plugin tokens, or the configured or prefixed subject of external access.
	Subject string
	// Actor is the plugin that acts on behalf of a user (plugin tokens with obo), or "".
	Actor string
	// Method names how the credential was verified: "user", "plugin", "static",
	// "legacy", "jwks". It is exposed as a placeholder and never contains secrets.
	Method string

	// subjectValue is Subject boxed once (when the principal is cached or
	// built at provision time), so that setting the placeholder on every
	// request allocates nothing.
	subjectValue any
	// view is the principal as allow policies check it, with its entity
	// refs folded: built once per verified credential (and cached with it),
	// so that a check allocates nothing.
	view *policy.Principal
}

// withView returns p with its policy view; ownership is the user token's
// `ent` claim (nil for service principals and for tokens without one).
func (p Principal) withView(ownership []string) Principal {
	v := &policy.Principal{User: p.Type == PrincipalUser, Subject: p.Subject, Actor: p.Actor}
	if v.User {
		v.Ref = policy.FoldRef(p.Subject)
		if len(ownership) > 0 {
			v.Ownership = make([]string, len(ownership))
			for i, ref := range ownership {
				v.Ownership[i] = policy.FoldRef(ref)
			}
		}
	}
	p.view = v
	return p
}

// PolicyView returns the principal as allow policies check it. Principals
// from the Verifier carry it ready; for others it is built here (and
// allocates).
func (p *Principal) PolicyView() *policy.Principal {
	if p.view != nil {
		return p.view
	}
	return p.withView(nil).view
}

// SubjectValue returns the subject for its placeholder, boxed without
// allocating for the common (cached or static) case.
func (p *Principal) SubjectValue() any {
	if p.subjectValue != nil {
		return p.subjectValue
	}
	return p.Subject
}

// authError is a rejected credential. Its name and message are those Backstage
// uses (AuthenticationError, NotAllowedError), so clients see the same JSON body.
// It never contains any part of a token, except the calling plugin's id (checked
// against ^[a-z0-9_-]+$) in Backstage's "does not have a JWKS endpoint" message.
type Error struct {
	// Status is the HTTP status: 401 or 403.
	Status int
	// Name is Backstage's error name: AuthenticationError or NotAllowedError.
	Name string
	// Message is Backstage's message.
	Message string
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

func errAuthentication(msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Name: "AuthenticationError", Message: msg}
}

func NotAllowed(msg string) *Error {
	return &Error{Status: http.StatusForbidden, Name: "NotAllowedError", Message: msg}
}

// Rejections, with Backstage's messages (backend-defaults' auth/*TokenHandler.ts, auth/external/
// and httpAuth/), allocated once.
var (
	ErrMissingCredentials  = errAuthentication("Missing credentials")
	ErrIllegalToken        = errAuthentication("Illegal token")
	ErrMultipleAuthHeaders = errAuthentication("Multiple Authorization headers")
	errFailedUser          = errAuthentication("Failed user token verification")
	errNoUserSub           = errAuthentication("No user sub found in token")
	errIllegalLimited      = errAuthentication("Illegal limited user token")
	errUserMissingExp      = errAuthentication("User token is missing expiration")
	errFailedPlugin        = errAuthentication("Failed plugin token verification")
	errPluginSubFormat     = errAuthentication("Invalid plugin token: forbidden subject format")
	errPluginMissingSub    = errAuthentication("Invalid plugin token: missing subject")
	errInvalidObo          = errAuthentication("Invalid user token in plugin token obo claim")
	// errFailedLegacy replaces Backstage's 500 with the jose error and the token
	// payload in the body (README "Differences from Backstage" D4).
	errFailedLegacy = errAuthentication("Failed legacy token verification")
)

func PluginWithoutKeySet(pluginID string) *Error {
	return errAuthentication("Received a plugin token where the source '" + pluginID +
		"' plugin unexpectedly does not have a JWKS endpoint. The target plugin needs to be migrated to be installed in an app using the new backend system.")
}

// Token types and fixed claim values (Backstage's tokenTypes and DefaultAuthService).
const (
	TypeUser        = "vnd.backstage.user"
	TypeLimitedUser = "vnd.backstage.limited-user"
	TypePlugin      = "vnd.backstage.plugin"
	userAudience    = "backstage"
	ownPluginID     = "proxy"
	legacySub       = "backstage-server"
	keysSubject     = "external:backstage-plugin"
)

const (
	// maxTokenBytes: longer bearer tokens are refused without being parsed.
	maxTokenBytes = 16 << 10
	// clockSkew is the tolerance on exp and nbf: 0, like Backstage's jose calls.
	clockSkew = 0
	// verifiedCacheSize and verifiedCacheTTL bound the cache of successful
	// verifications (keyed by the token's SHA-256). An entry never outlives the
	// token's exp.
	verifiedCacheSize = 1 << 14
	verifiedCacheTTL  = 60 * time.Second
	// maxSignatureChecks bounds the signature checks one token may cost
	// across every verifier it is tried with (plugin, user, each external
	// access entry): each jwks entry may match up to jwksMaxCandidates keys
	// chosen by the attacker's iss, aud and kid.
	maxSignatureChecks = 16
)

// errCheckBudget: the token used up maxSignatureChecks.
var errCheckBudget = errors.New("too many signature checks for one token")

// signatureChecks counts signature verifications (all token types but static).
var signatureChecks atomic.Int64

// SignatureChecks is how many signature verifications this process has made
// (every token type but static): benchmarks report it per request.
func SignatureChecks() int64 { return signatureChecks.Load() }

// authenticator verifies a bearer token the way Backstage's AuthService.authenticate
// does (backend-defaults' auth/DefaultAuthService.ts): plugin tokens, then user tokens, then external
// access entries in order, else "Illegal token".
type authenticator interface {
	Authenticate(ctx context.Context, token string) (Principal, *Error)
}

// bearerToken extracts the token from the request's Authorization header with
// Backstage's rule /^Bearer[ ]+(\S+)$/i (httpAuth/httpAuthServiceFactory.ts). Anything
// else is no usable bearer token, which Backstage treats as no credentials at
// all. Several Authorization headers are refused outright: which one a
// downstream server would read is ambiguous, so we fail closed.
func BearerToken(h http.Header) (token string, authErr *Error) {
	values := h["Authorization"]
	switch len(values) {
	case 0:
		return "", ErrMissingCredentials
	case 1:
	default:
		return "", ErrMultipleAuthHeaders
	}
	v := values[0]
	end := len(v)
	for end > 0 && (v[end-1] == ' ' || v[end-1] == '\t') {
		end--
	}
	v = v[:end]
	if len(v) < 7 || v[6] != ' ' || !strings.EqualFold(v[:6], "bearer") {
		return "", ErrMissingCredentials
	}
	start := 7
	for start < len(v) && v[start] == ' ' {
		start++
	}
	v = v[start:]
	if v == "" || hasJSWhitespace(v) {
		return "", ErrMissingCredentials
	}
	return v, nil
}

// hasJSWhitespace reports whether s has a byte of jsWhitespace. A short
// string (a static token) is scanned once with a table; a long one (a JWT)
// is searched once per byte value: IndexByte is vectorised, several times
// faster than a byte loop over a 1 KiB JWT.
func hasJSWhitespace(s string) bool {
	if len(s) <= 64 {
		for i := 0; i < len(s); i++ {
			if isJSWhitespace[s[i]] {
				return true
			}
		}
		return false
	}
	for i := 0; i < len(jsWhitespace); i++ {
		if strings.IndexByte(s, jsWhitespace[i]) >= 0 {
			return true
		}
	}
	return false
}

// jsWhitespace is JavaScript's \s as Node sees a latin1 header value, NBSP
// (0xA0) included.
const jsWhitespace = " \t\n\r\v\f\xa0"

var isJSWhitespace = func() (t [256]bool) {
	for i := 0; i < len(jsWhitespace); i++ {
		t[jsWhitespace[i]] = true
	}
	return t
}()

// jwtClock makes jwx validation use the injectable clock.
type jwtClock struct{}

func (jwtClock) Now() time.Time { return now() }

// baseValidation checks exp and nbf when present, with no skew, and nothing
// else: like jose's jwtVerify, a future iat is not an error.
func baseValidation(extra ...jwt.ValidateOption) []jwt.ValidateOption {
	opts := []jwt.ValidateOption{
		jwt.WithClock(jwtClock{}),
		jwt.WithAcceptableSkew(clockSkew),
		jwt.WithResetValidators(true),
		jwt.WithValidator(jwt.IsExpirationValid()),
		jwt.WithValidator(jwt.IsNbfValid()),
	}
	return append(opts, extra...)
}

func requireClaims(names ...string) []jwt.ValidateOption {
	out := make([]jwt.ValidateOption, len(names))
	for i, n := range names {
		out[i] = jwt.WithRequiredClaim(n)
	}
	return out
}

// issuerIn requires iss to be one of list (jose's issuer option).
func issuerIn(list []string) jwt.ValidateOption {
	return jwt.WithValidator(jwt.ValidatorFunc(func(_ context.Context, t jwt.Token) error {
		iss, ok := t.Issuer()
		if !ok {
			return errors.New(`missing required "iss" claim`)
		}
		if slices.Contains(list, iss) {
			return nil
		}
		return errors.New(`unexpected "iss" claim value`)
	}))
}

// audienceIn requires aud to contain one of list (jose's audience option).
func audienceIn(list []string) jwt.ValidateOption {
	return jwt.WithValidator(jwt.ValidatorFunc(func(_ context.Context, t jwt.Token) error {
		aud, ok := t.Audience()
		if !ok {
			return errors.New(`missing required "aud" claim`)
		}
		for _, a := range aud {
			if slices.Contains(list, a) {
				return nil
			}
		}
		return errors.New(`unexpected "aud" claim value`)
	}))
}

// jwtPeek is the unverified content of a compact JWS, read only to dispatch the
// token to a handler the way Backstage does (jose decodeProtectedHeader and
// decodeJwt). Nothing read here is trusted until the signature is verified.
type jwtPeek struct {
	token      string
	payloadB64 string
	headerOK   bool
	header     struct {
		Alg any `json:"alg"`
		Typ any `json:"typ"`
		Kid any `json:"kid"`
	}
	claimsDone bool
	claimsOK   bool
	claims     struct {
		Sub any `json:"sub"`
		Aud any `json:"aud"`
		Iss any `json:"iss"`
		Iat any `json:"iat"`
	}
}

func peekJWT(token string) *jwtPeek {
	p := &jwtPeek{token: token}
	h, rest, ok := strings.Cut(token, ".")
	if !ok {
		return p
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sig, ".") {
		return p
	}
	p.payloadB64 = payload
	if b, err := base64.RawURLEncoding.DecodeString(h); err == nil {
		p.headerOK = decodeMembersStrict(b, func(name string) *any {
			switch name {
			case "alg":
				return &p.header.Alg
			case "typ":
				return &p.header.Typ
			case "kid":
				return &p.header.Kid
			}
			return nil
		})
	}
	return p
}

// decodeClaims decodes the payload's dispatch claims; false if the payload is
// not a base64url JSON object, or names a claim twice.
func (p *jwtPeek) decodeClaims() bool {
	if !p.claimsDone {
		p.claimsDone = true
		if b, err := base64.RawURLEncoding.DecodeString(p.payloadB64); err == nil {
			p.claimsOK = decodeMembersStrict(b, func(name string) *any {
				switch name {
				case "sub":
					return &p.claims.Sub
				case "aud":
					return &p.claims.Aud
				case "iss":
					return &p.claims.Iss
				case "iat":
					return &p.claims.Iat
				}
				return nil
			})
		}
	}
	return p.claimsOK
}

// maxStrictMembersLinear is how many member names decodeMembersStrict
// compares linearly before it switches to a set; real JWTs have about ten.
const maxStrictMembersLinear = 16

// decodeMembersStrict decodes a JSON object the way jwx and JavaScript's
// JSON.parse read it, and stricter: member names match exactly (encoding/json
// alone matches them ignoring case and keeps the last of duplicates, so
// {"sub":"catalog","SUB":"evil"} would read as "evil"), and an object that
// names any member twice is refused, so every reader of the token agrees on
// every claim. field returns where to decode the member of that name, or nil
// to skip it. False if b is not exactly one JSON object or has a duplicate.
func decodeMembersStrict(b []byte, field func(name string) *any) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return false
	}
	var names []string
	var set map[string]struct{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return false
		}
		name, ok := t.(string)
		if !ok {
			return false
		}
		if set != nil {
			if _, dup := set[name]; dup {
				return false
			}
			set[name] = struct{}{}
		} else {
			if slices.Contains(names, name) {
				return false
			}
			if names = append(names, name); len(names) > maxStrictMembersLinear {
				set = make(map[string]struct{}, 2*len(names))
				for _, n := range names {
					set[n] = struct{}{}
				}
			}
		}
		if dst := field(name); dst != nil {
			err = dec.Decode(dst)
		} else {
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return false
		}
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return false
	}
	// Nothing may follow the object (json.Unmarshal's rule).
	_, err := dec.Token()
	return err == io.EOF
}

func (p *jwtPeek) typ() string {
	s, _ := p.header.Typ.(string)
	return s
}

func (p *jwtPeek) alg() string {
	s, _ := p.header.Alg.(string)
	return s
}

// kid is the header kid when it is a string (jose ignores other kids).
func (p *jwtPeek) kid() (string, bool) {
	s, ok := p.header.Kid.(string)
	return s, ok
}

// iat is the unverified issue time, a hint for the key refresh policy only.
func (p *jwtPeek) iat() (int64, bool) {
	if !p.decodeClaims() {
		return 0, false
	}
	f, ok := p.claims.Iat.(float64)
	if !ok || f < 0 || f > 1e15 {
		return 0, false
	}
	return int64(f), true
}

// truthy is JavaScript truthiness of a decoded JSON value.
func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case string:
		return x != ""
	case float64:
		return x != 0
	case json.Number:
		f, err := x.Float64()
		return err != nil || f != 0
	}
	return true
}

// validPluginID is Backstage's ALLOWED_PLUGIN_ID_PATTERN, /^[a-z0-9_-]+$/i.
// It is checked before a plugin id is put into a URL. The pattern is
// case-insensitive, so ids are folded to lower case (foldPluginID) before
// they name a key set, an allowlist entry or a principal.
func validPluginID(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// foldPluginID lower-cases a valid plugin id, without allocating when it
// already is.
func foldPluginID(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// verifySigned checks the signature of token with each candidate key, then
// decodes and validates its claims. budget is what is left of the token's
// maxSignatureChecks; each check spends one.
func verifySigned(token string, ai algInfo, keys []*verifyKey, opts []jwt.ValidateOption, budget *int) (jwt.Token, error) {
	if len(keys) == 0 {
		return nil, errNoMatchingKey
	}
	b := []byte(token)
	var payload []byte
	var err error
	for _, k := range keys {
		if *budget <= 0 {
			return nil, errCheckBudget
		}
		*budget--
		signatureChecks.Add(1)
		if payload, err = jws.VerifyCompactFast(k.key, b, ai.sig); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return validateClaims(payload, opts)
}

func validateClaims(payload []byte, opts []jwt.ValidateOption) (jwt.Token, error) {
	tok := jwt.New()
	if err := json.Unmarshal(payload, tok); err != nil {
		return nil, err
	}
	if err := jwt.Validate(tok, opts...); err != nil {
		return nil, err
	}
	return tok, nil
}

// userVerifier verifies Backstage user tokens (UserTokenHandler).
type userVerifier struct {
	keys        *keyCache
	algs        map[string]algInfo
	typedOpts   []jwt.ValidateOption
	untypedOpts []jwt.ValidateOption
}

// pluginVerifier verifies plugin-to-plugin tokens (PluginTokenHandler).
type pluginVerifier struct {
	sets  *pluginKeySets
	allow map[string]bool // nil: any plugin
	algs  map[string]algInfo
	opts  []jwt.ValidateOption
}

// externalEntry is one backend.auth.externalAccess entry, or one
// backend.auth.keys entry (kind "legacy").
type externalEntry struct {
	kind     string // "static", "legacy" or "jwks"
	subject  string // static and legacy
	restrict *accessRestriction

	// static: the token's SHA-256, for the general path (JWT-shaped
	// static tokens), and the token, for the fast path (staticByHash)
	digest [sha256.Size]byte
	token  []byte
	view   *policy.Principal // static: the principal's policy view, built once

	secret []byte // legacy
	opts   []jwt.ValidateOption

	keys      *keyCache // jwks
	algs      map[string]algInfo
	issuers   []string
	audiences []string
	prefix    string
}

// identityAuthenticator is the authenticator built from the backstage app.
type Verifier struct {
	user     *userVerifier   // nil: user tokens cannot be verified
	plugin   *pluginVerifier // nil: plugin tokens cannot be verified
	external []externalEntry
	cache    *verifiedCache
	logger   *zap.Logger
	observer Observer // nil: nothing is reported

	// staticByHash maps a keyed hash of each static token to the first
	// static entry with that token. A token that is not shaped like a JWT can
	// only ever match a static entry (every other handler needs a JWT), so
	// such tokens skip JWT parsing, and SHA-256, entirely. The hash (maphash,
	// with a random seed nobody sees) only picks the candidate; the decision
	// is the constant-time comparison of the whole token, so neither the
	// token's bytes nor its length show in the timing of a refusal.
	staticSeed   maphash.Seed
	staticByHash map[uint64]*staticFastEntry
}

type staticFastEntry struct {
	token    []byte
	p        Principal
	restrict *accessRestriction
}

func (a *Verifier) debug(msg string, fields ...zap.Field) {
	if ce := a.logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(fields...)
	}
}

// Authenticate verifies token and returns its principal, or Backstage's
// error. With an Observer, the check and its cache lookup are reported.
func (a *Verifier) Authenticate(ctx context.Context, token string) (Principal, *Error) {
	if a.observer == nil {
		return a.authenticate(ctx, token, nil)
	}
	method := CheckNone
	p, err := a.authenticate(ctx, token, &method)
	a.observer.CredentialChecked(method, err == nil)
	return p, err
}

// authenticate is Authenticate. When method is not nil, it is set to the
// kind of credential that decided the check (left alone when none did),
// and cache lookups are reported to the observer.
func (a *Verifier) authenticate(ctx context.Context, token string, method *CheckMethod) (Principal, *Error) {
	if token == "" || len(token) > maxTokenBytes {
		return Principal{}, ErrIllegalToken
	}
	tokenBytes := readOnlyBytes(token)
	// A static token is not JWT-shaped, and only JWTs are cached: look it
	// up first.
	if a.staticByHash != nil && strings.Count(token, ".") != 2 {
		if e := a.staticByHash[maphash.String(a.staticSeed, token)]; e != nil && subtle.ConstantTimeCompare(tokenBytes, e.token) == 1 {
			if method != nil {
				*method = CheckStatic
			}
			if err := e.restrict.check(); err != nil {
				return Principal{}, err
			}
			return e.p, nil
		}
	}
	digest := sha256.Sum256(tokenBytes)
	p, hit := a.cache.get(digest, now())
	if method != nil {
		a.observer.VerificationCacheLookup(hit)
		if hit {
			*method = checkMethodOf(p.Method)
		}
	}
	if hit {
		return p, nil
	}
	jt := peekJWT(token)
	budget := maxSignatureChecks

	// 1. Plugin tokens.
	if jt.headerOK && jt.typ() == TypePlugin {
		if method != nil {
			*method = CheckPlugin
		}
		p, exp, err := a.verifyPluginToken(ctx, jt, &budget)
		if err != nil {
			return Principal{}, err
		}
		a.cache.put(digest, p, exp, now())
		return p, nil
	}

	// 2. User tokens.
	if res, applies, err := a.verifyUserToken(ctx, jt, &budget); applies {
		if method != nil {
			*method = CheckUser
		}
		if err != nil {
			return Principal{}, err
		}
		if res.limited {
			return Principal{}, errIllegalLimited
		}
		if !res.hasExp {
			return Principal{}, errUserMissingExp
		}
		p := Principal{Type: PrincipalUser, Subject: res.sub, Method: "user"}.withView(res.ent)
		a.cache.put(digest, p, res.exp, now())
		return p, nil
	}

	// 3. External access, in order.
	for i := range a.external {
		e := &a.external[i]
		p, exp, matched, err := a.verifyExternal(ctx, e, jt, &digest, &budget)
		if method != nil && (err != nil || matched) {
			*method = checkMethodOf(e.kind)
		}
		if err != nil {
			return Principal{}, err
		}
		if !matched {
			continue
		}
		if err := e.restrict.check(); err != nil {
			return Principal{}, err
		}
		if e.kind != "static" {
			a.cache.put(digest, p, exp, now())
		}
		return p, nil
	}
	return Principal{}, ErrIllegalToken
}

// readOnlyBytes returns the bytes of s without copying them, for functions
// that only read their argument (sha256.Sum256, subtle.ConstantTimeCompare).
// The result must never be written to, kept, or handed to anything that
// might do either: the bytes belong to an immutable string. This is the only
// use of unsafe in the module. A plain []byte(token) conversion escapes to
// the heap here: one allocation of the token's size on every request, cached
// tokens included (BenchmarkAuthenticate/ES256-cached: 0 → 240 B and 1
// allocation; a Backstage user token with its claims is about 1 KiB).
func readOnlyBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

type userResult struct {
	sub string
	// ent is the token's ownership entity refs (`ent` claim), nil when the
	// claim is absent or not a list of strings (a limited user token never
	// has one: Backstage keeps only sub, iat and exp in it).
	ent     []string
	exp     time.Time
	hasExp  bool
	limited bool
}

// verifyUserToken is UserTokenHandler.verifyToken: applies reports whether the
// token is a user token at all (typ user or limited-user, or aud "backstage").
func (a *Verifier) verifyUserToken(ctx context.Context, jt *jwtPeek, budget *int) (res userResult, applies bool, authErr *Error) {
	if !jt.headerOK {
		return res, false, nil
	}
	uv := a.user
	var opts func(*userVerifier) []jwt.ValidateOption
	switch jt.typ() {
	case TypeUser:
		opts = func(u *userVerifier) []jwt.ValidateOption { return u.typedOpts }
	case TypeLimitedUser:
		opts = func(u *userVerifier) []jwt.ValidateOption { return u.typedOpts }
		res.limited = true
	default:
		if !jt.decodeClaims() {
			return res, false, nil
		}
		if aud, ok := jt.claims.Aud.(string); !ok || aud != userAudience {
			return res, false, nil
		}
		opts = func(u *userVerifier) []jwt.ValidateOption { return u.untypedOpts }
	}
	if uv == nil {
		a.debug("user token refused: no user_tokens configured")
		return res, true, errFailedUser
	}
	ai, ok := uv.algs[jt.alg()]
	if !ok {
		a.debug("user token refused: algorithm not allowed")
		return res, true, errFailedUser
	}
	kid, hasKid := jt.kid()
	iat, hasIat := jt.iat()
	keys, err := uv.keys.lookup(ctx, ai, kid, hasKid, iat, hasIat)
	if err != nil {
		a.debug("user token refused", zap.Error(err))
		return res, true, errFailedUser
	}
	tok, err := verifySigned(jt.token, ai, keys, opts(uv), budget)
	if err != nil {
		a.debug("user token refused", zap.Error(err))
		return res, true, errFailedUser
	}
	res.sub, _ = tok.Subject()
	if res.sub == "" {
		return res, true, errNoUserSub
	}
	res.exp, res.hasExp = tok.Expiration()
	res.ent = ownershipClaim(tok)
	return res, true, nil
}

// ownershipClaim reads a verified token's `ent` claim: a list of entity
// refs. Anything else counts as no ownership (Backstage's user info service
// refuses such a claim, so no ownership pattern may match it); the token
// itself stays valid, as it is for Backstage's proxy.
func ownershipClaim(tok jwt.Token) []string {
	if !tok.Has("ent") {
		return nil
	}
	var raw any
	if err := tok.Get("ent", &raw); err != nil {
		return nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil
	}
	ent := make([]string, 0, len(list))
	for _, v := range list {
		s, ok := v.(string)
		if !ok {
			return nil
		}
		ent = append(ent, s)
	}
	return ent
}

// verifyPluginToken is PluginTokenHandler.verifyToken plus the obo handling of
// DefaultAuthService.authenticate. exp is when the resulting principal expires.
//
// The plugin id is folded to lower case: ids differing only in case are one
// plugin for key lookup, for the allowlist and for the principal's subject
// (`plugin:<id>` in lower case), so rate limits keyed on the subject see one
// caller. The error message names the id as the token wrote it.
func (a *Verifier) verifyPluginToken(ctx context.Context, jt *jwtPeek, budget *int) (p Principal, exp time.Time, authErr *Error) {
	if !jt.decodeClaims() {
		return p, exp, errFailedPlugin
	}
	sub, _ := jt.claims.Sub.(string)
	if sub == "" {
		return p, exp, errPluginMissingSub
	}
	if !validPluginID(sub) {
		return p, exp, errPluginSubFormat
	}
	pv := a.plugin
	if pv == nil {
		a.debug("plugin token refused: no plugin_tokens configured")
		return p, exp, PluginWithoutKeySet(sub)
	}
	id := foldPluginID(sub)
	if pv.allow != nil && !pv.allow[id] {
		a.debug("plugin token refused: plugin not in plugin_tokens.plugins", zap.String("plugin", sub))
		return p, exp, errFailedPlugin
	}
	// The algorithm is checked before any key set is fetched, so a token
	// that could never verify (alg none, HS256) costs no fetch.
	ai, ok := pv.algs[jt.alg()]
	if !ok {
		a.debug("plugin token refused: algorithm not allowed", zap.String("plugin", sub))
		return p, exp, errFailedPlugin
	}
	entry, err := pv.sets.get(ctx, id, pv.allow != nil || pv.sets.endpoints[id] != "")
	if err != nil {
		if errors.Is(err, errPluginNoKeySet) {
			return p, exp, PluginWithoutKeySet(sub)
		}
		a.debug("plugin token refused", zap.String("plugin", sub), zap.Error(err))
		return p, exp, errFailedPlugin
	}
	kid, hasKid := jt.kid()
	iat, hasIat := jt.iat()
	keys, err := entry.cache.lookup(ctx, ai, kid, hasKid, iat, hasIat)
	if err != nil {
		a.debug("plugin token refused", zap.String("plugin", sub), zap.Error(err))
		return p, exp, errFailedPlugin
	}
	tok, err := verifySigned(jt.token, ai, keys, pv.opts, budget)
	if err != nil {
		a.debug("plugin token refused", zap.String("plugin", sub), zap.Error(err))
		return p, exp, errFailedPlugin
	}
	// The key set was chosen by the sub read above; the principal is named by
	// the sub jwx read from the verified payload. Both come from one strict
	// decoding rule, and they must agree: a token whose key set belongs to
	// one plugin can never name another.
	vsub, _ := tok.Subject()
	if vsub != sub {
		a.debug("plugin token refused: verified subject differs from the one that chose the key set", zap.String("plugin", sub))
		return p, exp, errFailedPlugin
	}
	entry.verified()
	exp, _ = tok.Expiration()
	var obo any
	if tok.Has("obo") {
		_ = tok.Get("obo", &obo)
	}
	if !truthy(obo) {
		return Principal{Type: PrincipalService, Subject: "plugin:" + id, Method: "plugin"}.withView(nil), exp, nil
	}
	// The obo claim is a (limited) user token, verified as one; limited tokens are fine here.
	s, ok := obo.(string)
	if !ok {
		return p, exp, errInvalidObo
	}
	res, applies, uerr := a.verifyUserToken(ctx, peekJWT(s), budget)
	if !applies {
		return p, exp, errInvalidObo
	}
	if uerr != nil {
		return p, exp, uerr
	}
	if !res.hasExp {
		return p, exp, errUserMissingExp
	}
	if res.exp.Before(exp) {
		exp = res.exp
	}
	return Principal{Type: PrincipalUser, Subject: res.sub, Actor: "plugin:" + id, Method: "plugin"}.withView(res.ent), exp, nil
}

// verifyExternal tries one external-access entry. matched=false means "not
// mine": the next entry is tried. An error stops the chain (legacy tokens with
// the right key that fail validation).
func (a *Verifier) verifyExternal(ctx context.Context, e *externalEntry, jt *jwtPeek, digest *[sha256.Size]byte, budget *int) (p Principal, exp time.Time, matched bool, authErr *Error) {
	switch e.kind {
	case "static":
		if subtle.ConstantTimeCompare(digest[:], e.digest[:]) == 1 {
			return Principal{Type: PrincipalService, Subject: e.subject, Method: "static", view: e.view}, exp, true, nil
		}
	case "legacy":
		if !jt.headerOK || jt.alg() != "HS256" || !jt.decodeClaims() {
			return
		}
		if sub, _ := jt.claims.Sub.(string); sub != legacySub || truthy(jt.claims.Aud) {
			return
		}
		if *budget <= 0 {
			return
		}
		*budget--
		signatureChecks.Add(1)
		payload, err := jws.VerifyCompactFast(e.secret, []byte(jt.token), jwa.HS256())
		if err != nil {
			if errors.Is(err, jws.VerificationError()) {
				return // another key: try the next entry
			}
			a.debug("legacy token refused", zap.Error(err))
			return p, exp, false, errFailedLegacy
		}
		tok, err := validateClaims(payload, e.opts)
		if err != nil {
			a.debug("legacy token refused", zap.Error(err))
			return p, exp, false, errFailedLegacy
		}
		exp, _ = tok.Expiration()
		return Principal{Type: PrincipalService, Subject: e.subject, Method: "legacy"}.withView(nil), exp, true, nil
	case "jwks":
		if !jt.headerOK {
			return
		}
		ai, ok := e.algs[jt.alg()]
		if !ok || !jt.decodeClaims() {
			return
		}
		// Cheap checks of the unverified claims first, so that tokens meant
		// for another entry cost no key fetch. Verification repeats them.
		if len(e.issuers) > 0 {
			iss, _ := jt.claims.Iss.(string)
			if !slices.Contains(e.issuers, iss) {
				return
			}
		}
		if len(e.audiences) > 0 && !audienceMatches(jt.claims.Aud, e.audiences) {
			return
		}
		kid, hasKid := jt.kid()
		iat, hasIat := jt.iat()
		keys, err := e.keys.lookup(ctx, ai, kid, hasKid, iat, hasIat)
		if err != nil {
			return
		}
		tok, err := verifySigned(jt.token, ai, keys, e.opts, budget)
		if err != nil {
			return
		}
		sub, _ := tok.Subject()
		if sub == "" {
			return
		}
		exp, _ = tok.Expiration()
		subject := "external:" + sub
		if e.prefix != "" {
			subject = "external:" + e.prefix + ":" + sub
		}
		return Principal{Type: PrincipalService, Subject: subject, Method: "jwks"}.withView(nil), exp, true, nil
	}
	return
}

// audienceMatches is jose's audience check on an unverified aud claim.
func audienceMatches(aud any, list []string) bool {
	switch x := aud.(type) {
	case string:
		return slices.Contains(list, x)
	case []any:
		for _, v := range x {
			if s, ok := v.(string); ok && slices.Contains(list, s) {
				return true
			}
		}
	}
	return false
}

// accessRestriction limits an external-access entry to some plugins
// (backend-defaults' auth/external/ExternalAuthTokenHandler.ts, accessRestrictions). The proxy only cares whether
// plugin "proxy" is among them.
type accessRestriction struct {
	plugins []string
}

// check returns a 403 unless the restriction allows the proxy plugin.
func (a *accessRestriction) check() *Error {
	if a == nil {
		return nil
	}
	for _, p := range a.plugins {
		if p == ownPluginID {
			return nil
		}
	}
	quoted := make([]string, len(a.plugins))
	for i, p := range a.plugins {
		quoted[i] = "'" + p + "'"
	}
	return NotAllowed("This token's access is restricted to plugin(s) " + strings.Join(quoted, ", "))
}

// newAccessRestriction validates accessRestrictions like Backstage's
// readAccessRestrictionsFromConfig. An empty list means no restriction.
func newAccessRestriction(rs []AccessRestriction) (*accessRestriction, error) {
	if len(rs) == 0 {
		return nil, nil
	}
	seen := make(map[string]bool, len(rs))
	out := &accessRestriction{}
	for _, r := range rs {
		if r.Plugin == "" {
			return nil, fmt.Errorf("accessRestrictions: missing required value 'plugin'")
		}
		if seen[r.Plugin] {
			return nil, fmt.Errorf("attempted to declare 'accessRestrictions' twice for plugin '%s', which is not permitted", r.Plugin)
		}
		seen[r.Plugin] = true
		for k, vs := range r.PermissionAttributes {
			if k != "action" {
				return nil, fmt.Errorf("invalid key '%s' in 'permissionAttribute' config, expected 'action'", k)
			}
			for _, v := range SplitList(vs) {
				switch v {
				case "create", "read", "update", "delete":
				default:
					return nil, fmt.Errorf("invalid value '%s' at 'action' in 'permissionAttributes' config, valid values are 'create', 'read', 'update', 'delete'", v)
				}
			}
		}
		out.plugins = append(out.plugins, r.Plugin)
	}
	return out, nil
}

// noSpace is Backstage's /^\S+$/ check.
func noSpace(s string) bool {
	return s != "" && strings.IndexFunc(s, unicode.IsSpace) < 0
}

// checkURL validates a key set URL: absolute http(s), no whitespace.
func checkURL(raw string) (string, error) {
	if !noSpace(raw) {
		return "", fmt.Errorf("must be a set of non-space characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("invalid URL: %v", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("must be an absolute http or https URL")
	}
	return raw, nil
}

// decodeSecret decodes a legacy secret. Node's Buffer.from(s, 'base64')
// accepts both alphabets, with or without padding; so do we, but unlike Node
// we refuse anything else instead of silently dropping characters.
func decodeSecret(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) == 0 {
				break
			}
			return b, nil
		}
	}
	//lint:ignore ST1005 Backstage's message, word for word (backend-defaults' auth/external/legacy.ts)
	return nil, fmt.Errorf("Illegal secret, must be a valid base64 string")
}

func algMap(list []algInfo) map[string]algInfo {
	m := make(map[string]algInfo, len(list))
	for _, ai := range list {
		m[ai.name] = ai
	}
	return m
}

var loggedKeysDeprecation atomic.Bool

// Options are what the host (the Caddy app) lends the verifier.
type Options struct {
	// Pool holds the key caches shared across config reloads, keyed by
	// PoolKey. Caddy's UsagePool, adapted; required.
	Pool Pool
	// Logger receives the debug lines of refused tokens (never a token).
	// Nil: no log.
	Logger *zap.Logger
	// KeySetLogger returns the logger of the key caches. It is called when a
	// message is written, so a cache that outlives the config that created it
	// follows the current log configuration. Nil: no log.
	KeySetLogger func() *zap.Logger
	// Resolve expands placeholders in the config's strings (Caddy's
	// {env.VAR}), once. Nil: strings are used as written.
	Resolve func(string) string
	// Observer is told about every credential check, for metrics. Nil:
	// nothing is reported, at the cost of a nil check.
	Observer Observer
}

// Destructor is what Pool holds: a value with a Destruct method, called
// when the last user of the value releases it (caddy.Destructor).
type Destructor interface {
	Destruct() error
}

// Pool is a reference-counted map of shared values (caddy.UsagePool).
type Pool interface {
	// LoadOrNew returns the value of key, or stores and returns the one
	// construct makes, counting one more reference.
	LoadOrNew(key any, construct func() (Destructor, error)) (value any, loaded bool, err error)
	// Delete drops one reference to key; the last destructs the value.
	Delete(key any) (deleted bool, err error)
}

// New turns the identity configuration into a verifier. It does no network
// I/O: key sets are fetched on first use. The returned release function gives
// back the shared key caches; it is never nil when err is nil, and calling it
// more than once is harmless.
func New(cfg Config, opts Options) (*Verifier, func(), error) {
	resolve := opts.Resolve
	if resolve == nil {
		resolve = func(s string) string { return s }
	}
	logger := opts.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	keyLog := opts.KeySetLogger
	if keyLog == nil {
		keyLog = zap.NewNop
	}
	if opts.Pool == nil {
		return nil, nil, errors.New("identity: no key cache pool")
	}
	pool := &keyPool{pool: opts.Pool, log: keyLog}
	if len(cfg.KeySetCAFiles) > 0 {
		files := make([]string, len(cfg.KeySetCAFiles))
		for i, f := range cfg.KeySetCAFiles {
			files[i] = resolve(f)
		}
		tlsConf, caID, err := NewKeySetTLS(files)
		if err != nil {
			return nil, nil, fmt.Errorf("key_set_ca_files: %v", err)
		}
		pool.client, pool.caID = newKeySetClient(tlsConf), caID
	}
	auth := &Verifier{cache: newVerifiedCache(verifiedCacheSize), logger: logger, observer: opts.Observer}

	var releases []func()
	var once sync.Once
	release := func() {
		once.Do(func() {
			for _, r := range releases {
				r()
			}
		})
	}
	fail := func(format string, args ...any) (*Verifier, func(), error) {
		release()
		return nil, nil, fmt.Errorf(format, args...)
	}

	if u := cfg.UserTokens; u != nil {
		rawURL, err := checkURL(resolve(u.JWKSURL))
		if err != nil {
			return fail("user_tokens: jwks_url: %v", err)
		}
		algs, err := parseAlgorithms(u.Algorithms, []string{"ES256"})
		if err != nil {
			return fail("user_tokens: algorithms: %v", err)
		}
		kc, rel, err := pool.keyCache(rawURL)
		if err != nil {
			return fail("user_tokens: %v", err)
		}
		releases = append(releases, rel)
		auth.user = &userVerifier{
			keys:        kc,
			algs:        algMap(algs),
			typedOpts:   baseValidation(requireClaims("iat", "exp", "sub")...),
			untypedOpts: baseValidation(jwt.WithAudience(userAudience)),
		}
	}

	if pt := cfg.PluginTokens; pt != nil {
		template := resolve(pt.JWKSURL)
		if template != "" || len(pt.Endpoints) == 0 {
			if !strings.Contains(template, "{plugin}") {
				return fail("plugin_tokens: jwks_url: must contain the placeholder {plugin}, replaced by the calling plugin's id")
			}
			if _, err := checkURL(strings.ReplaceAll(template, "{plugin}", "plugin")); err != nil {
				return fail("plugin_tokens: jwks_url: %v", err)
			}
		}
		var endpoints map[string]string
		for id, u := range pt.Endpoints {
			if !validPluginID(id) {
				return fail("plugin_tokens: endpoints: '%s' is not a valid plugin id (^[a-z0-9_-]+$)", id)
			}
			raw, err := checkURL(resolve(u))
			if err != nil {
				return fail("plugin_tokens: endpoints: %s: %v", id, err)
			}
			if endpoints == nil {
				endpoints = map[string]string{}
			}
			endpoints[foldPluginID(id)] = raw
		}
		algs, err := parseAlgorithms(pt.Algorithms, []string{"ES256"})
		if err != nil {
			return fail("plugin_tokens: algorithms: %v", err)
		}
		var allow map[string]bool
		if pt.Plugins != nil {
			allow = map[string]bool{}
			for i, id := range pt.Plugins {
				if !validPluginID(id) {
					return fail("plugin_tokens: plugins[%d]: '%s' is not a valid plugin id (^[a-z0-9_-]+$)", i, id)
				}
				allow[foldPluginID(id)] = true
			}
		}
		sets, rel, err := pool.pluginKeySets(template, endpoints)
		if err != nil {
			return fail("plugin_tokens: %v", err)
		}
		releases = append(releases, rel)
		auth.plugin = &pluginVerifier{
			sets:  sets,
			allow: allow,
			algs:  algMap(algs),
			opts:  baseValidation(append(requireClaims("iat", "exp", "sub", "aud"), jwt.WithAudience(ownPluginID))...),
		}
	}

	for i, e := range cfg.ExternalAccess {
		kind := e.Kind()
		if kind == "" {
			return fail("external_access[%d]: exactly one of 'static', 'legacy' and 'jwks' must be set", i)
		}
		where := fmt.Sprintf("external_access[%d] (type '%s')", i, kind)
		restrict, err := newAccessRestriction(e.AccessRestrictions)
		if err != nil {
			return fail("%s: %v", where, err)
		}
		entry := externalEntry{kind: kind, restrict: restrict}
		switch kind {
		case "static":
			token, subject := resolve(e.Static.Token), resolve(e.Static.Subject)
			switch {
			case !noSpace(token):
				return fail("%s: Illegal token, must be a set of non-space characters", where)
			case len(token) < 8:
				return fail("%s: Illegal token, must be at least 8 characters length", where)
			case !noSpace(subject):
				return fail("%s: Illegal subject, must be a set of non-space characters", where)
			}
			entry.digest = sha256.Sum256([]byte(token))
			entry.token = []byte(token)
			entry.subject = subject
		case "legacy":
			secret, subject := resolve(e.Legacy.Secret), resolve(e.Legacy.Subject)
			if !noSpace(secret) {
				return fail("%s: Illegal secret, must be a valid base64 string", where)
			}
			key, err := decodeSecret(secret)
			if err != nil {
				return fail("%s: %v", where, err)
			}
			if !noSpace(subject) {
				return fail("%s: Illegal subject, must be a set of non-space characters", where)
			}
			entry.secret, entry.subject, entry.opts = key, subject, baseValidation()
		case "jwks":
			raw := resolve(e.JWKS.URL)
			if raw == "" {
				return fail("%s: missing required option 'url'", where)
			}
			rawURL, err := checkURL(raw)
			if err != nil {
				return fail("%s: Illegal JWKS URL, %v", where, err)
			}
			algs, err := parseAlgorithms(e.JWKS.Algorithms, allAsymmetricAlgNames)
			if err != nil {
				return fail("%s: algorithms: %v", where, err)
			}
			entry.algs = algMap(algs)
			entry.issuers = SplitList(e.JWKS.Issuers)
			entry.audiences = SplitList(e.JWKS.Audiences)
			entry.prefix = resolve(e.JWKS.SubjectPrefix)
			var extra []jwt.ValidateOption
			if len(entry.issuers) > 0 {
				extra = append(extra, issuerIn(entry.issuers))
			}
			if len(entry.audiences) > 0 {
				extra = append(extra, audienceIn(entry.audiences))
			}
			entry.opts = baseValidation(extra...)
			kc, rel, err := pool.keyCache(rawURL)
			if err != nil {
				return fail("%s: %v", where, err)
			}
			releases = append(releases, rel)
			entry.keys = kc
		}
		auth.external = append(auth.external, entry)
	}

	if len(cfg.Keys) > 0 && loggedKeysDeprecation.CompareAndSwap(false, true) {
		logger.Warn("DEPRECATION WARNING: The backend.auth.keys config has been replaced by backend.auth.externalAccess, see https://backstage.io/docs/auth/service-to-service-auth")
	}
	for i, k := range cfg.Keys {
		where := fmt.Sprintf("keys[%d] (type 'legacy')", i)
		restrict, err := newAccessRestriction(k.AccessRestrictions)
		if err != nil {
			return fail("%s: %v", where, err)
		}
		secret := resolve(k.Secret)
		if !noSpace(secret) {
			return fail("%s: Illegal secret, must be a valid base64 string", where)
		}
		key, err := decodeSecret(secret)
		if err != nil {
			return fail("%s: %v", where, err)
		}
		auth.external = append(auth.external, externalEntry{
			kind: "legacy", subject: keysSubject, restrict: restrict, secret: key, opts: baseValidation(),
		})
	}
	for i := range auth.external {
		if e := &auth.external[i]; e.kind == "static" {
			e.view = Principal{Type: PrincipalService, Subject: e.subject}.withView(nil).view
		}
	}
	auth.staticSeed = maphash.MakeSeed()
	for i := range auth.external {
		e := &auth.external[i]
		if e.kind != "static" {
			continue
		}
		if auth.staticByHash == nil {
			auth.staticByHash = make(map[uint64]*staticFastEntry)
		}
		k := maphash.Bytes(auth.staticSeed, e.token)
		if other, taken := auth.staticByHash[k]; taken {
			if !bytes.Equal(other.token, e.token) {
				// two different tokens with one hash (one chance in 2^64):
				// the general path tells them apart
				auth.staticByHash = nil
				break
			}
			continue // the first entry with this token wins, as in Backstage
		}
		auth.staticByHash[k] = &staticFastEntry{
			token:    e.token,
			p:        Principal{Type: PrincipalService, Subject: e.subject, Method: "static", subjectValue: e.subject, view: e.view},
			restrict: e.restrict,
		}
	}
	return auth, release, nil
}

// allAsymmetricAlgNames is the default algorithm list of jwks entries: any
// asymmetric algorithm the key allows, like jose without an algorithms option
// (HMAC excepted: key sets never hold shared secrets for us).
var allAsymmetricAlgNames = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}

// verifiedCache remembers successful verifications, keyed by the SHA-256 of
// the token, so a client that keeps sending the same token costs one
// signature check per verifiedCacheTTL. Only positive results are stored;
// an entry never outlives the token's exp.
//
// It is a set-associative table: a token's digest picks one set of up to
// cacheWays slots, and each slot holds an immutable entry behind an atomic
// pointer. A lookup reads at most cacheWays pointers and writes nothing, so
// cached tokens scale with cores (no lock, no shared counter). Stores, which
// follow a signature check, are serialised by a mutex; a full set evicts an
// expired entry, or else its oldest one. The table holds at most size
// entries.
type verifiedCache struct {
	slots []atomic.Pointer[cachedPrincipal] // sets of ways slots
	ways  int
	mask  uint64 // number of sets - 1 (a power of two)

	mu  sync.Mutex // serialises put
	seq uint64     // insertion order, for eviction
}

// cacheWays is the number of slots a token may occupy.
const cacheWays = 8

type cachedPrincipal struct {
	key     [sha256.Size]byte
	p       Principal
	expires time.Time
	seq     uint64
}

// newVerifiedCache makes a cache of at most size entries (size < 1:
// nothing is cached).
func newVerifiedCache(size int) *verifiedCache {
	if size < 1 {
		return &verifiedCache{}
	}
	ways := min(cacheWays, size)
	sets := 1
	for sets*2*ways <= size {
		sets *= 2
	}
	return &verifiedCache{slots: make([]atomic.Pointer[cachedPrincipal], sets*ways), ways: ways, mask: uint64(sets - 1)}
}

// set returns the slots key may occupy.
func (c *verifiedCache) set(k *[sha256.Size]byte) []atomic.Pointer[cachedPrincipal] {
	i := int(binary.LittleEndian.Uint64(k[:8])&c.mask) * c.ways
	return c.slots[i : i+c.ways]
}

func (c *verifiedCache) get(k [sha256.Size]byte, t time.Time) (Principal, bool) {
	if c.slots == nil {
		return Principal{}, false
	}
	set := c.set(&k)
	for i := range set {
		if e := set[i].Load(); e != nil && e.key == k {
			if !t.Before(e.expires) {
				return Principal{}, false
			}
			return e.p, true
		}
	}
	return Principal{}, false
}

// put stores p until exp (if set) or t+verifiedCacheTTL, whichever is first.
func (c *verifiedCache) put(k [sha256.Size]byte, p Principal, exp time.Time, t time.Time) {
	expires := t.Add(verifiedCacheTTL)
	if !exp.IsZero() && exp.Before(expires) {
		expires = exp
	}
	if !t.Before(expires) || c.slots == nil {
		return
	}
	p.subjectValue = p.Subject
	e := &cachedPrincipal{key: k, p: p, expires: expires}
	set := c.set(&k)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	e.seq = c.seq
	victim := -1
	for i := range set {
		old := set[i].Load()
		switch {
		case old == nil || old.key == k:
			set[i].Store(e)
			return
		case !t.Before(old.expires):
			victim = i
		case victim < 0 || (set[victim].Load().seq > old.seq && t.Before(set[victim].Load().expires)):
			victim = i
		}
	}
	set[victim].Store(e)
}

// len counts the entries (tests).
func (c *verifiedCache) len() int {
	n := 0
	for i := range c.slots {
		if c.slots[i].Load() != nil {
			n++
		}
	}
	return n
}
