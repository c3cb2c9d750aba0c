// Package policy compiles and evaluates per-route access policies: the
// `allow` patterns that say which verified principals may call a route. It
// knows Backstage's principal naming (entity refs, `plugin:<id>`, external
// subjects) but not how credentials are verified, and it never imports Caddy.
//
// Patterns are compiled once, at provision time, into sets that a request
// checks without allocating; principals carry their case-folded entity refs,
// computed once per verified token (internal/identity caches them).
package policy
