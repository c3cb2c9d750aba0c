package backstageproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// flatRoutes replaces each route whose only handler is backstage_dispatch
// by the dispatcher's routes, so that adapted JSON can be compared route by
// route with the Caddyfile's, which emits the endpoint routes directly.
func flatRoutes(t testing.TB, routes []json.RawMessage) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for _, r := range routes {
		var route struct {
			Handle []struct {
				Handler string            `json:"handler"`
				Routes  []json.RawMessage `json:"routes"`
			} `json:"handle"`
		}
		if err := json.Unmarshal(r, &route); err != nil {
			t.Fatal(err)
		}
		if len(route.Handle) == 1 && route.Handle[0].Handler == "backstage_dispatch" {
			out = append(out, flatRoutes(t, route.Handle[0].Routes)...)
			continue
		}
		out = append(out, r)
	}
	return out
}

func TestPathSegment(t *testing.T) {
	for _, c := range []struct {
		mount, path, want string
		ok                bool
	}{
		{"/api/proxy", "/api/proxy/catalog", "catalog", true},
		{"/api/proxy", "/api/proxy/Catalog/deep/er", "catalog", true},
		{"/api/proxy", "/API/Proxy/X", "x", true},
		{"/api/proxy", "/api/proxy", "", false},          // the mount itself: any segment
		{"/api/proxy", "/api/proxy/", "", false},         // empty first segment
		{"/api/proxy", "/api/proxy//x", "", false},       // empty first segment
		{"/api/proxy", "/api", "", false},                // above the mount
		{"/api/proxy", "/api/proxyx/a", "", false},       // beside it
		{"/api/proxy", "/other/a", "", false},            // beside it
		{"/api/proxy", "/api/proxy/a%20b", "", false},    // compared escaped
		{"/api/proxy", "/api/proxy/a/%C3%A9", "", false}, // compared escaped
		{"/custom", "/custom/a", "a", true},
		{"", "/a/b", "a", true}, // mount "/" (trimmed)
	} {
		got, ok := pathSegment(c.mount, c.path)
		if got != c.want || ok != c.ok {
			t.Errorf("pathSegment(%q, %q) = %q, %v; want %q, %v", c.mount, c.path, got, ok, c.want, c.ok)
		}
	}
}

func TestRequestSegment(t *testing.T) {
	for _, c := range []struct {
		target, seg string
		under       bool
	}{
		{"/api/proxy/catalog/x", "catalog", true},
		{"/API/PROXY/Catalog", "Catalog", true},
		{"/api/proxy", "", true},
		{"/api/proxy/", "", true},
		{"/api/proxy//x", "", true},
		{"/api/proxyx", "", false},
		{"/api/catalog/entities", "", false},
		{"/", "", false},
		{"/api/proxy/a%2Fb/c", "a%2Fb", true}, // as received: %2F does not split
		{"/api/proxy/caf%C3%A9/x", "café", true},
	} {
		r := httptest.NewRequest(http.MethodGet, c.target, nil)
		seg, under := requestSegment("/api/proxy", r)
		if seg != c.seg || under != c.under {
			t.Errorf("requestSegment(%q) = %q, %v; want %q, %v", c.target, seg, under, c.seg, c.under)
		}
	}
}

// dispatchTestRoutes are routes whose handlers answer their own name:
// indexed endpoints, overlapping ones, one at the mount itself, ones the
// index cannot read (other matchers, escaped paths, two matcher sets, a
// non-terminal route), and the barrier's place.
const dispatchTestRoutes = `[
 {"match": [{"backstage_route": {"paths": ["/api/proxy/nested"]}, "method": ["GET"]}], "handle": [{"handler": "static_response", "body": "nested-get"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/nested/inner"]}}], "handle": [{"handler": "static_response", "body": "nested-inner"}], "terminal": true},
 {"match": [{"path": ["/api/proxy/pathonly/*"]}], "handle": [{"handler": "static_response", "body": "pathonly"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/Case"]}}], "handle": [{"handler": "static_response", "body": "case"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/a%20b"]}}], "handle": [{"handler": "static_response", "body": "escaped"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/two"]}}, {"backstage_route": {"paths": ["/api/proxy/sets"]}}], "handle": [{"handler": "static_response", "body": "two-sets"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/multi", "/api/proxy/multi/deeper"]}}], "handle": [{"handler": "static_response", "body": "multi"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/tag"]}}], "handle": [{"handler": "headers", "response": {"set": {"X-Tag": ["1"]}}}]},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/methods"]}, "method": ["POST"]}], "handle": [{"handler": "static_response", "body": "methods-post"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/late"]}}], "handle": [{"handler": "static_response", "body": "late"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy"]}}, {"backstage_route": {"paths": ["/elsewhere"]}}], "handle": [{"handler": "static_response", "body": "mount"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/never"]}}], "handle": [{"handler": "static_response", "body": "never"}], "terminal": true}
]`

// newTestDispatch provisions a dispatcher over routes (JSON).
func newTestDispatch(t *testing.T, mount, routes string) *Dispatch {
	t.Helper()
	d := &Dispatch{MountPath: mount}
	if err := json.Unmarshal([]byte(routes), &d.Routes); err != nil {
		t.Fatal(err)
	}
	if err := d.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	return d
}

// serveTest sends method target through h (with Caddy's request setup when
// prepared) and returns status, X-Tag and body.
func serveTest(t *testing.T, h func(http.ResponseWriter, *http.Request, caddyhttp.Handler) error, method, target string, prepared bool) string {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, target, nil)
	if prepared {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, new(caddyhttp.Server))
	} else {
		// only what the handlers need
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		_, err := w.Write([]byte("next"))
		return err
	})
	if err := h(w, r, next); err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return fmt.Sprintf("%d %s %s", w.Code, w.Header().Get("X-Tag"), w.Body.String())
}

// TestDispatchSameAsRouteList: for every request, the dispatcher answers
// what the same routes, compiled as one list and tried in order, answer.
func TestDispatchSameAsRouteList(t *testing.T) {
	d := newTestDispatch(t, "", dispatchTestRoutes)
	reference := func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
		return d.Routes.Compile(next).ServeHTTP(w, r)
	}
	want := map[string]string{
		"GET /api/proxy/nested/inner/x":  "200  nested-get",
		"POST /api/proxy/nested/inner/x": "200  nested-inner",
		"POST /api/proxy/nested/x":       "200  mount",
		"GET /API/PROXY/NESTED":          "200  nested-get",
		"GET /api/proxy/case/x":          "200  case",
		"GET /api/proxy/CASE":            "200  case",
		"GET /api/proxy/cases":           "200  mount",
		"GET /api/proxy/pathonly/x":      "200  pathonly",
		"GET /api/proxy/a%20b/x":         "200  escaped",
		"GET /api/proxy/two/x":           "200  two-sets",
		"GET /api/proxy/Sets":            "200  two-sets",
		"GET /api/proxy/multi/deeper/x":  "200  multi",
		"GET /api/proxy/tag/x":           "200 1 mount",
		"GET /api/proxy/methods":         "200  mount",
		"POST /api/proxy/methods":        "200  methods-post",
		"GET /api/proxy/late":            "200  late",
		"GET /api/proxy":                 "200  mount",
		"GET /api/proxy/":                "200  mount",
		"GET /api/proxy//late":           "200  mount",
		"GET /api/proxy/" + longSegment:  "200  mount",
		"GET /elsewhere/x":               "200  mount",
		"GET /api/catalog/x":             "200  next",
		"GET /api/proxyx/late":           "200  next",
		"GET /api/proxy/never":           "200  mount",
		"GET /api/proxy/caf%C3%A9/x":     "200  mount",
		"GET /api/proxy/%6Cate":          "200  mount", // %6C is l: not the same path as received
		"GET /api/proxy/late%2Fx":        "200  mount",
	}
	for req, w := range want {
		method, target, _ := strings.Cut(req, " ")
		for _, prepared := range []bool{true, false} {
			got := serveTest(t, d.ServeHTTP, method, target, prepared)
			ref := serveTest(t, reference, method, target, prepared)
			if got != ref || got != w {
				t.Errorf("%s (vars %v): dispatcher %q, route list %q, want %q", req, prepared, got, ref, w)
			}
		}
	}
}

var longSegment = strings.Repeat("x", 300)

// TestDispatchIndex: which routes each list holds.
func TestDispatchIndex(t *testing.T) {
	d := newTestDispatch(t, "", dispatchTestRoutes)
	bodies := func(l caddyhttp.RouteList) string {
		var names []string
		for _, r := range l {
			name := "tag"
			if sr, ok := r.Handlers[0].(*caddyhttp.StaticResponse); ok {
				name = sr.Body
			}
			names = append(names, name)
		}
		return strings.Join(names, ",")
	}
	const catchAll = "pathonly,escaped,mount"
	if got := bodies(d.catchAll.routes); got != catchAll {
		t.Errorf("catch-all: %s, want %s", got, catchAll)
	}
	for seg, want := range map[string]string{
		"nested": "nested-get,nested-inner,pathonly,escaped,mount",
		"case":   "pathonly,case,escaped,mount",
		"two":    "pathonly,escaped,two-sets,mount",
		"sets":   "pathonly,escaped,two-sets,mount",
		"multi":  "pathonly,escaped,multi,mount",
		"tag":    "pathonly,escaped,tag,mount",
		"never":  "pathonly,escaped,mount,never",
	} {
		if got := bodies(d.bySegment[seg].routes); got != want {
			t.Errorf("segment %s: %s, want %s", seg, got, want)
		}
	}
	if len(d.bySegment) != 9 {
		t.Errorf("%d segment lists, want 9", len(d.bySegment))
	}
	// Lists of terminal routes are compiled once; a list with the
	// non-terminal "tag" route is compiled per request, with next.
	if d.bySegment["late"].compiled == nil || d.catchAll.compiled == nil || d.bySegment["tag"].compiled != nil || d.all.compiled != nil {
		t.Errorf("compiled once: late %v, catch-all %v, tag %v, all %v", d.bySegment["late"].compiled != nil,
			d.catchAll.compiled != nil, d.bySegment["tag"].compiled != nil, d.all.compiled != nil)
	}
	if d.maxKey != len("methods") {
		t.Errorf("maxKey %d", d.maxKey)
	}
}

// TestDispatchUnindexedMount: a mount path with escapes is not indexed;
// every request runs every route.
func TestDispatchUnindexedMount(t *testing.T) {
	d := newTestDispatch(t, "/a%20b", `[
 {"match": [{"backstage_route": {"paths": ["/a%20b/x"]}}], "handle": [{"handler": "static_response", "body": "x"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/a%20b"]}}], "handle": [{"handler": "static_response", "body": "mount"}], "terminal": true}
]`)
	if d.indexed || len(d.bySegment) != 0 {
		t.Fatalf("indexed %v, %d lists", d.indexed, len(d.bySegment))
	}
	for target, want := range map[string]string{"/a%20b/X/y": "200  x", "/a%20b/z": "200  mount", "/c": "200  next"} {
		if got := serveTest(t, d.ServeHTTP, "GET", target, true); got != want {
			t.Errorf("%s: %q, want %q", target, got, want)
		}
	}
}

// TestDispatchNoAllocs: choosing the list allocates nothing, whatever the
// segment's case.
func TestDispatchNoAllocs(t *testing.T) {
	d := newTestDispatch(t, "", dispatchTestRoutes)
	for _, target := range []string{"/api/proxy/nested/inner/x", "/API/PROXY/NESTED/x", "/api/catalog/x", "/api/proxy/unknown"} {
		r := httptest.NewRequest("GET", target, nil)
		if n := testing.AllocsPerRun(100, func() { _ = d.chain(r) }); n != 0 {
			t.Errorf("%s: %v allocations", target, n)
		}
	}
}

// TestIntegrationDispatchThousandEndpoints: through a real Caddy, with 1,000
// endpoints, the first endpoint in config order wins, a method that is not
// allowed falls through to a later overlapping endpoint, route keys match
// case-insensitively on a segment boundary, unknown paths meet the
// credentials barrier, and an admin-API edit inside the dispatcher applies.
func TestIntegrationDispatchThousandEndpoints(t *testing.T) {
	skipIfShort(t)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(r.Method + " " + r.URL.Path))
	}))
	var sb strings.Builder
	sb.WriteString("caddy:\n  admin: localhost:2999\nbackend:\n  listen: {port: 9080}\nproxy:\n  endpoints:\n")
	for i := 0; i < 1000; i++ {
		key, path, extra := fmt.Sprintf("/r%d", i), fmt.Sprintf("/t%d", i), ""
		switch i {
		case 10:
			key, path = "/team/a", "/team-a"
		case 300:
			key, path, extra = "/nested", "/outer", "      allowedMethods: [GET]\n"
		case 500:
			key, path = "/Mixed-Case", "/mixed"
		case 700:
			key, path = "/team", "/team"
		case 998:
			key, path = "/nested/inner", "/inner"
		}
		fmt.Fprintf(&sb, "    %s:\n      target: %s%s\n      credentials: dangerously-allow-unauthenticated\n%s", key, up.URL, path, extra)
	}
	loadTestCaddy(t, sb.String(), "backstage")

	get := func(method, target string) string {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+testListen+target, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK {
			return strconv.Itoa(res.StatusCode)
		}
		return string(b)
	}
	cases := []struct{ method, target, want string }{
		{"GET", "/api/proxy/r999/x", "GET /t999/x"}, // the last endpoint
		{"GET", "/api/proxy/r0", "GET /t0/"},
		{"GET", "/API/PROXY/R999/X", "GET /t999/X"}, // case-insensitive key
		{"GET", "/api/proxy/mixed-case/q", "GET /mixed/q"},
		{"GET", "/api/proxy/MIXED-CASE", "GET /mixed/"},
		{"GET", "/api/proxy/r1/x", "GET /t1/x"},
		{"GET", "/api/proxy/r1x", "401"}, // not on a segment boundary: the barrier
		{"GET", "/api/proxy/r1000", "401"},
		{"GET", "/api/proxy", "401"},
		{"GET", "/api/proxy/team/a/b", "GET /team-a/b"}, // first in config order
		{"GET", "/api/proxy/TEAM/A", "GET /team-a/"},
		{"GET", "/api/proxy/team/ab", "GET /team/ab"},
		{"GET", "/api/proxy/team", "GET /team/"},
		{"GET", "/api/proxy/nested/inner/x", "GET /outer/inner/x"},
		{"POST", "/api/proxy/nested/inner/x", "POST /inner/x"}, // method falls through
		{"POST", "/api/proxy/Nested/Inner", "POST /inner/"},
		{"POST", "/api/proxy/nested/x", "404"},  // under an open route: no credentials asked
		{"GET", "/api/catalog/entities", "404"}, // outside the mount
	}
	for _, c := range cases {
		if got := get(c.method, c.target); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.method, c.target, got, c.want)
		}
	}

	// The endpoints are routes of the dispatcher, one per entry: an
	// admin-API edit of one of them applies like any config change.
	edit := `{"match": [{"backstage_route": {"paths": ["/api/proxy/r999"]}}], "handle": [{"handler": "static_response", "body": "edited"}], "terminal": true}`
	req, _ := http.NewRequest(http.MethodPut, testAdmin+"/config/apps/http/servers/backstage/routes/1/handle/0/routes/0", strings.NewReader(edit))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("admin PUT: %d %s", res.StatusCode, b)
	}
	if got := get("GET", "/api/proxy/r999/x"); got != "edited" {
		t.Errorf("after the edit: %q, want edited", got)
	}
	if got := get("GET", "/api/proxy/r997/x"); got != "GET /t997/x" {
		t.Errorf("after the edit, r997: %q", got)
	}
}

// TestDispatchFallThrough: a list compiled once (terminal routes only) that
// no route ends hands the request to next, unchanged.
func TestDispatchFallThrough(t *testing.T) {
	d := newTestDispatch(t, "", `[
 {"match": [{"backstage_route": {"paths": ["/api/proxy/x"]}, "method": ["GET"]}], "handle": [{"handler": "static_response", "body": "x"}], "terminal": true},
 {"match": [{"backstage_route": {"paths": ["/api/proxy/y"]}}], "handle": [{"handler": "static_response", "body": "y"}], "terminal": true}
]`)
	if d.all.compiled == nil || d.bySegment["x"].compiled == nil || d.catchAll.compiled == nil {
		t.Fatal("terminal routes: every list should be compiled once")
	}
	for req, want := range map[string]string{
		"GET /api/proxy/x/1":  "200  x",
		"POST /api/proxy/x/1": "200  next",
		"GET /api/proxy/Y":    "200  y",
		"GET /api/proxy/z":    "200  next",
		"GET /api/proxy":      "200  next",
		"GET /other":          "200  next",
	} {
		method, target, _ := strings.Cut(req, " ")
		if got := serveTest(t, d.ServeHTTP, method, target, true); got != want {
			t.Errorf("%s: %q, want %q", req, got, want)
		}
	}
}
