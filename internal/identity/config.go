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

// ExternalAccess is one `backend.auth.externalAccess` entry.
type ExternalAccess struct {
	// Type is `static`, `legacy` or `jwks`.
	Type string `json:"type"`

	// Options are the entry's options; which apply depends on Type.
	Options ExternalAccessOptions `json:"options"`

	// AccessRestrictions limits the entry to some plugins. When set and no
	// restriction names plugin `proxy`, the proxy answers 403.
	AccessRestrictions []AccessRestriction `json:"access_restrictions,omitempty"`
}

// ExternalAccessOptions are the options of an external-access entry.
// String options accept Caddy placeholders such as `{env.STATIC_TOKEN}`,
// resolved once at provision time, so secrets need not appear in the JSON.
type ExternalAccessOptions struct {
	// Token is the static token (type `static`), at least 8 characters.
	Token string `json:"token,omitempty"`
	// Subject is the subject of the principal (types `static` and `legacy`).
	Subject string `json:"subject,omitempty"`
	// Secret is the base64-encoded HMAC secret (type `legacy`).
	Secret string `json:"secret,omitempty"`
	// URL is the JWKS URL (type `jwks`).
	URL string `json:"url,omitempty"`
	// Issuer lists the accepted `iss` values (type `jwks`); none: not checked.
	// Items may hold several values separated by spaces or commas, as in Backstage.
	Issuer []string `json:"issuer,omitempty"`
	// Audience lists the accepted `aud` values (type `jwks`); none: not checked.
	Audience []string `json:"audience,omitempty"`
	// Algorithm lists the accepted signature algorithms (type `jwks`). Default:
	// every asymmetric algorithm (RS*, PS*, ES256/384/512, EdDSA, Ed25519); HMAC
	// and `none` are never accepted.
	Algorithm []string `json:"algorithm,omitempty"`
	// SubjectPrefix makes the subject `external:<prefix>:<sub>` (type `jwks`).
	SubjectPrefix string `json:"subject_prefix,omitempty"`
}

// AccessRestriction is one `accessRestrictions` entry.
type AccessRestriction struct {
	// Plugin is the plugin id the token may be used for.
	Plugin string `json:"plugin"`
	// Permission, if set, limits the permissions (not checked by the proxy,
	// which makes no permission checks).
	Permission []string `json:"permission,omitempty"`
	// PermissionAttribute, if set, limits permission attributes (not checked by
	// the proxy).
	PermissionAttribute map[string][]string `json:"permission_attribute,omitempty"`
}

// LegacyKey is one deprecated `backend.auth.keys` entry.
type LegacyKey struct {
	// Secret is the base64-encoded HMAC secret.
	Secret string `json:"secret"`

	// AccessRestrictions limits the key to some plugins, as for ExternalAccess.
	AccessRestrictions []AccessRestriction `json:"access_restrictions,omitempty"`
}
