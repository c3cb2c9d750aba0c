package backstageproxy

import (
	"net/http"
	"testing"
)

// TestCaddyfileBlockComposes: the block form, with reverse_proxy's own
// subdirectives, served by a real Caddy next to a catch-all handle block:
// the endpoints are not hidden, reverse_proxy options apply, and unknown
// paths under the mount get the barrier's answer.
func TestCaddyfileBlockComposes(t *testing.T) {
	skipIfShort(t)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen", r.Header.Get("X-From-Caddyfile")+" "+r.URL.RequestURI())
	}))
	loadTestCaddy(t, `{
	admin localhost:`+testAdminPort+`
	http_port `+testListenPort+`
	grace_period 1ns
}
:`+testListenPort+` {
	handle {
		respond "backend" 200
	}
	backstage_proxy {
		endpoint /open `+up.URL+`/base {
			credentials dangerously-allow-unauthenticated
			allowed_headers X-Seen
			header_up X-From-Caddyfile yes
			lb_retries 1
		}
	}
}
`, "caddyfile")
	if res := ciRaw(t, "GET", "/api/proxy/open/x", nil, ""); res.Status != 200 || res.Header.Get("X-Seen") != "yes /base/x" {
		t.Errorf("endpoint: %d %v %q", res.Status, res.Header, res.Body)
	}
	if res := ciRaw(t, "GET", "/api/proxy/other", nil, ""); res.Status != 401 {
		t.Errorf("barrier: %d %q", res.Status, res.Body)
	}
	if res := ciRaw(t, "GET", "/elsewhere", nil, ""); res.Status != 200 || string(res.Body) != "backend" {
		t.Errorf("catch-all: %d %q", res.Status, res.Body)
	}
}
