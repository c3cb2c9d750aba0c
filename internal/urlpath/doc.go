// Package urlpath holds the path primitives of the proxy: the traversal
// guard, the escaped path of a URL, segment-boundary prefix matching and the
// upstream path join. It works on strings and net/url alone and must never
// import Caddy or any other package of this module.
package urlpath
