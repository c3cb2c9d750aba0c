package identity

// Config is the Backstage identity configuration: which credentials are
// valid. It is the `backend.auth` part of an app-config, with the key set
// locations resolved.
type Config struct {
	// UserTokens verifies Backstage user tokens; nil: none are valid.
	UserTokens *UserTokens
	// PluginTokens verifies plugin-to-plugin tokens; nil: none are valid.
	PluginTokens *PluginTokens
	// ExternalAccess lists the external-access entries, tried in order.
	ExternalAccess []ExternalAccess
	// Keys are the deprecated backend.auth.keys shared secrets.
	Keys []LegacyKey
	// KeySetCAFiles are PEM files of CA certificates trusted, in addition
	// to the system's, when key sets are fetched over https.
	KeySetCAFiles []string
}

// UserTokens configures verification of Backstage user tokens.
type UserTokens struct {
	// JWKSURL is the auth backend's key set, normally
	// `<auth base URL>/.well-known/jwks.json`. Placeholders are resolved once.
	JWKSURL string `json:"jwks_url,omitempty"`

	// Algorithms the signature may use. Default: `ES256`, the algorithm of
	// Backstage's auth backend; list others (RS256, RS384, RS512, PS256, PS384,
	// PS512, ES384, ES512, EdDSA, Ed25519) if `auth.identityTokenAlgorithm` is
	// set. HMAC and `none` are never accepted.
	Algorithms []string `json:"algorithms,omitempty"`
}

// PluginTokens configures verification of plugin-to-plugin tokens.
type PluginTokens struct {
	// JWKSURL is the template of a plugin's key set URL. `{plugin}` is replaced
	// by the calling plugin's id (the token's `sub`, checked against
	// `^[a-z0-9_-]+$` before use), e.g.
	// `http://backstage:7007/api/{plugin}/.backstage/auth/v1/jwks.json`.
	// Optional when Endpoints is set.
	JWKSURL string `json:"jwks_url,omitempty"`

	// Plugins, if set, is the allowlist of calling plugin ids (ignoring
	// case). Tokens from other plugins are refused before any key is fetched.
	Plugins []string `json:"plugins,omitempty"`

	// Endpoints maps plugin ids (ignoring case) to their key set URLs,
	// overriding JWKSURL for them: Backstage's per-plugin
	// `discovery.endpoints`. Their checks are never charged to the fetch
	// budget of unnamed plugins. With Endpoints and no JWKSURL, only these
	// plugins' tokens can be verified, and other ids never cause a fetch.
	Endpoints map[string]string `json:"endpoints,omitempty"`

	// Algorithms the signature may use. Default: `ES256`, the default of
	// Backstage's plugin key store. HMAC and `none` are never accepted.
	Algorithms []string `json:"algorithms,omitempty"`
}

// ExternalAccess is one `backend.auth.externalAccess` entry. Exactly one of
// Static, Legacy and JWKS is set: the entry's kind (Backstage's `type`), with
// the options of that kind. String options accept Caddy placeholders such as
// `{env.STATIC_TOKEN}`, resolved once at provision time, so secrets need not
// appear in the JSON.
type ExternalAccess struct {
	// Static accepts one static token (Backstage `type: static`).
	Static *StaticAccess `json:"static,omitempty"`

	// Legacy accepts HS256 tokens signed with a shared secret (Backstage
	// `type: legacy`).
	Legacy *LegacyAccess `json:"legacy,omitempty"`

	// JWKS accepts tokens signed by a key in a JSON Web Key Set (Backstage
	// `type: jwks`).
	JWKS *JWKSAccess `json:"jwks,omitempty"`

	// AccessRestrictions limits the entry to some plugins. When set and no
	// restriction names plugin `proxy`, the proxy answers 403.
	AccessRestrictions []AccessRestriction `json:"access_restrictions,omitempty"`
}

// Kind is the entry's kind: `static`, `legacy` or `jwks`, or "" when not
// exactly one is set.
func (e ExternalAccess) Kind() string {
	kind, n := "", 0
	if e.Static != nil {
		kind, n = "static", n+1
	}
	if e.Legacy != nil {
		kind, n = "legacy", n+1
	}
	if e.JWKS != nil {
		kind, n = "jwks", n+1
	}
	if n != 1 {
		return ""
	}
	return kind
}

// StaticAccess is the option set of a `static` external-access entry.
type StaticAccess struct {
	// Token is the static token, at least 8 characters, without spaces.
	Token string `json:"token,omitempty"`
	// Subject is the subject of the principal, without spaces.
	Subject string `json:"subject,omitempty"`
}

// LegacyAccess is the option set of a `legacy` external-access entry.
type LegacyAccess struct {
	// Secret is the base64-encoded HMAC secret.
	Secret string `json:"secret,omitempty"`
	// Subject is the subject of the principal, without spaces.
	Subject string `json:"subject,omitempty"`
}

// JWKSAccess is the option set of a `jwks` external-access entry.
type JWKSAccess struct {
	// URL is the key set's URL (http or https).
	URL string `json:"url,omitempty"`
	// Issuers lists the accepted `iss` values; none: not checked. Items may
	// hold several values separated by spaces or commas, as in Backstage.
	Issuers []string `json:"issuers,omitempty"`
	// Audiences lists the accepted `aud` values; none: not checked. Items
	// may hold several values, as Issuers.
	Audiences []string `json:"audiences,omitempty"`
	// Algorithms lists the accepted signature algorithms. Default: every
	// asymmetric algorithm (RS*, PS*, ES256/384/512, EdDSA, Ed25519); HMAC
	// and `none` are never accepted.
	Algorithms []string `json:"algorithms,omitempty"`
	// SubjectPrefix makes the subject `external:<prefix>:<sub>`.
	SubjectPrefix string `json:"subject_prefix,omitempty"`
}

// AccessRestriction is one `accessRestrictions` entry.
type AccessRestriction struct {
	// Plugin is the plugin id the token may be used for.
	Plugin string `json:"plugin"`
	// Permissions, if set, limits the permissions (Backstage `permission`;
	// not checked by the proxy, which makes no permission checks).
	Permissions []string `json:"permissions,omitempty"`
	// PermissionAttributes, if set, limits permission attributes (Backstage
	// `permissionAttribute`, e.g. `{"action": ["read"]}`; not checked by the
	// proxy).
	PermissionAttributes map[string][]string `json:"permission_attributes,omitempty"`
}

// LegacyKey is one deprecated `backend.auth.keys` entry.
type LegacyKey struct {
	// Secret is the base64-encoded HMAC secret.
	Secret string `json:"secret"`

	// AccessRestrictions limits the key to some plugins, as for ExternalAccess.
	AccessRestrictions []AccessRestriction `json:"access_restrictions,omitempty"`
}
