package backstageproxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Dispatch{})
}

// Dispatch runs the routes under a mount path (the proxy endpoints, then the
// credentials barrier) the way Caddy's `subroute` would, in their order, but
// without trying every route on every request: at provision it indexes the
// routes by the first path segment after the mount that their
// `backstage_route` matchers allow, and a request only runs the routes that
// can match its first segment, still in config order. The cost of routing is
// one map lookup, whatever the number of endpoints (issue #14).
//
// The index never changes which route serves a request; it only skips routes
// that cannot match it:
//
//   - a route is indexed under segment S when every one of its matcher sets
//     has a `backstage_route` matcher whose paths are all plain (see
//     isPlainPath) and under the mount, at `<mount>/S` or deeper; S is compared
//     ASCII-case-insensitively, as the matcher compares;
//   - every other route (the barrier, an endpoint at the mount itself, a
//     route with other matchers only, a path with percent-escapes) can match
//     any segment: it is tried for every request, in its place in the order;
//   - a request that is not under the mount runs every route in order.
//
// Each of these route lists is compiled once, at provision (Caddy's
// `subroute` compiles its routes on every request), when all its routes are
// terminal (or have no handlers), as the generated ones are: then a request
// reaches the end of the list only when no handler has run, and the
// dispatcher calls its next handler itself after the list returns, which is
// what the list compiled with next would have done. A list with a
// non-terminal route (hand-written JSON) is compiled per request with next,
// like a `subroute`.
//
// JSON: `{"handler": "backstage_dispatch", "mount_path": "/api/proxy",
// "routes": [...]}`; the routes are Caddy routes, one per endpoint.
type Dispatch struct {
	// MountPath is the path the indexed segments follow; default
	// /api/proxy.
	MountPath string `json:"mount_path,omitempty"`
	// Routes are tried in order, as in a `subroute`.
	Routes caddyhttp.RouteList `json:"routes,omitempty"`

	mount string
	// indexed is false when the mount path is not plain: then every
	// request under it runs every route.
	indexed bool
	// all runs every route; catchAll the routes that can match any first
	// segment; bySegment the routes for one (lowercased) first segment.
	all       *routeChain
	catchAll  *routeChain
	bySegment map[string]*routeChain
	maxKey    int
}

// routeChain is one ordered list of the dispatcher's routes.
type routeChain struct {
	routes caddyhttp.RouteList
	// compiled ends in fellThrough; nil when the list must be compiled per
	// request, with the request's next handler.
	compiled caddyhttp.Handler
	// methodRoutes are the routes with allowedMethods, for counting the
	// requests that fell through because of their method.
	methodRoutes []methodRoute
}

// errFellThrough is returned by a compiled list when no route ended the
// request; it never leaves ServeHTTP.
var errFellThrough = errors.New("backstage_dispatch: no route ended the request")

var fellThrough = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return errFellThrough })

func newRouteChain(routes caddyhttp.RouteList) *routeChain {
	c := &routeChain{routes: routes, methodRoutes: methodRoutes(routes)}
	for _, r := range routes {
		if !r.Terminal && len(r.Handlers) > 0 {
			return c
		}
	}
	c.compiled = routes.Compile(fellThrough)
	return c
}

// serve runs the list, then next when no route ended the request.
func (c *routeChain) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if c.compiled == nil {
		return c.routes.Compile(next).ServeHTTP(w, r)
	}
	err := c.compiled.ServeHTTP(w, r)
	if err == errFellThrough {
		return next.ServeHTTP(w, r)
	}
	return err
}

// CaddyModule returns the Caddy module information.
func (Dispatch) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backstage_dispatch",
		New: func() caddy.Module { return new(Dispatch) },
	}
}

// Provision provisions the routes, builds the index and compiles the route
// lists.
func (d *Dispatch) Provision(ctx caddy.Context) error {
	mount := d.MountPath
	if mount == "" {
		mount = DefaultMountPath
	}
	if mount[0] != '/' {
		return fmt.Errorf("backstage_dispatch: mount_path %q must start with /", d.MountPath)
	}
	d.mount = strings.TrimRight(mount, "/")
	d.indexed = isPlainPath(d.mount)
	// The route table, read from the routes' JSON before provisioning
	// consumes it, and logged once they provisioned: once per config
	// load, as the dispatcher sees every endpoint of its mount.
	table := summarizeRoutes(d.Routes)
	if err := d.Routes.Provision(ctx); err != nil {
		return fmt.Errorf("backstage_dispatch: %v", err)
	}
	if err := logDispatchRoutes(ctx, d.mount, table); err != nil {
		return err
	}

	keys := make([][]string, len(d.Routes)) // nil: any segment
	var order []string
	seen := map[string]bool{}
	for i := range d.Routes {
		if !d.indexed {
			continue
		}
		keys[i] = routeSegments(d.mount, d.Routes[i].MatcherSets)
		for _, k := range keys[i] {
			if !seen[k] {
				seen[k] = true
				order = append(order, k)
			}
		}
	}
	var catchAll caddyhttp.RouteList
	lists := make(map[string]caddyhttp.RouteList, len(order))
	for i, r := range d.Routes {
		if keys[i] == nil {
			catchAll = append(catchAll, r)
			for _, k := range order {
				lists[k] = append(lists[k], r)
			}
			continue
		}
		for _, k := range keys[i] {
			lists[k] = append(lists[k], r)
		}
	}
	d.all = newRouteChain(d.Routes)
	d.attachBarriers()
	d.catchAll = newRouteChain(catchAll)
	d.bySegment = make(map[string]*routeChain, len(lists))
	for k, l := range lists {
		d.bySegment[k] = newRouteChain(l)
		d.maxKey = max(d.maxKey, len(k))
	}
	return nil
}

// routeSegments returns the distinct lowercased first segments after mount
// that a route with these matcher sets can match, or nil when it can match
// any.
func routeSegments(mount string, sets caddyhttp.MatcherSets) []string {
	if len(sets) == 0 {
		return nil
	}
	var keys []string
	for _, set := range sets {
		var m *MatchRoutePath
		for _, matcher := range set {
			if mp, ok := matcher.(*MatchRoutePath); ok {
				m = mp
				break
			}
		}
		if m == nil || len(m.Paths) == 0 {
			return nil
		}
		for _, p := range m.Paths {
			k, ok := pathSegment(mount, p)
			if !ok {
				return nil
			}
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// pathSegment returns the lowercased first segment after mount of the
// requests a backstage_route path p can match, and false when that is not a
// single non-empty segment: p is at or above the mount, beside it, or not
// plain (compared in its escaped form, which the index does not read).
func pathSegment(mount, p string) (string, bool) {
	if !isPlainPath(p) || len(p) <= len(mount)+1 || p[len(mount)] != '/' || !strings.EqualFold(p[:len(mount)], mount) {
		return "", false
	}
	seg := p[len(mount)+1:]
	if i := strings.IndexByte(seg, '/'); i >= 0 {
		seg = seg[:i]
	}
	if seg == "" {
		return "", false
	}
	return strings.ToLower(seg), true
}

// requestSegment returns the first segment after mount of the request path
// as Match reads it, whether the path is under mount, and whether it has a
// segment at all (a path equal to the mount, or `<mount>/`, has none).
func requestSegment(mount string, r *http.Request) (seg string, under bool) {
	p := r.URL.RawPath
	if p == "" {
		p = r.URL.Path
	}
	if !urlpath.HasSegmentPrefixFold(p, mount) {
		return "", false
	}
	seg = p[len(mount):]
	if seg == "" {
		return "", true
	}
	seg = seg[1:]
	if i := strings.IndexByte(seg, '/'); i >= 0 {
		seg = seg[:i]
	}
	return seg, true
}

// chain picks the compiled route list for the request.
func (d *Dispatch) chain(r *http.Request) *routeChain {
	if !d.indexed {
		return d.all
	}
	seg, under := requestSegment(d.mount, r)
	if !under {
		return d.all
	}
	if seg == "" || len(seg) > d.maxKey {
		return d.catchAll
	}
	// The keys are lowercase ASCII: fold the segment's ASCII letters in
	// a stack buffer (the map lookup of string(buf) does not allocate).
	var buf [128]byte
	var key []byte
	if len(seg) <= len(buf) {
		key = buf[:len(seg)]
	} else {
		key = make([]byte, len(seg))
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		key[i] = c
	}
	if h, ok := d.bySegment[string(key)]; ok {
		return h
	}
	return d.catchAll
}

// ServeHTTP runs the routes that can match the request, in order, then
// next if none of them ended the request.
func (d *Dispatch) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return d.chain(r).serve(w, r, next)
}

// buildDispatchRoute is the route of everything under mount: one
// `backstage_route` matcher for the mount, and a dispatcher holding routes
// (the endpoints, then the barrier), so that requests outside the mount pay
// one matcher and requests under it one lookup.
func buildDispatchRoute(mount string, routes []caddyhttp.Route, warnings *[]caddyconfig.Warning) caddyhttp.Route {
	// Marshalled as a struct, not through JSONModuleObject's map, so
	// that each route keeps Caddy's field order (match, handle, terminal).
	d := Dispatch{Routes: routes}
	if mount != DefaultMountPath {
		d.MountPath = mount
	}
	return caddyhttp.Route{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{{
			"backstage_route": caddyconfig.JSON(MatchRoutePath{Paths: []string{mount}}, warnings),
		}},
		HandlersRaw: []json.RawMessage{caddyconfig.JSON(struct {
			Handler string `json:"handler"`
			Dispatch
		}{"backstage_dispatch", d}, warnings)},
		Terminal: true,
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Dispatch)(nil)
	_ caddyhttp.MiddlewareHandler = (*Dispatch)(nil)
)
