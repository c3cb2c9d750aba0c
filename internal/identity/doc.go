// Package identity verifies Backstage credentials as Backstage's auth service
// does: user tokens, plugin tokens (with on-behalf-of), static, legacy and
// external JWKS tokens, with the key-set caches and the verification cache
// they need. It must never import Caddy: the `backstage` app lends it Caddy's
// UsagePool, logger and placeholder resolution through Options.
package identity
