package backstageproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

func TestSmokeAdapterThroughCaddy(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "1")
		_, _ = io.WriteString(w, r.Method+" "+r.RequestURI+" host="+r.Host+" auth="+r.Header.Get("Authorization"))
	}))
	defer upstream.Close()
	tester := caddytest.NewTester(t)
	tester.InitServer(`
caddy:
  admin: localhost:2999
backend:
  listen: {port: 9080}
  auth:
    externalAccess:
      - type: static
        options: {token: static-token-123, subject: static-subject}
proxy:
  endpoints:
    /simple: `+upstream.URL+`
    /open:
      target: `+upstream.URL+`/base
      credentials: dangerously-allow-unauthenticated
`, "backstage")
	tester.AssertGetResponse("http://localhost:9080/api/proxy/open/a%2Fb?q=%20x", 200,
		"GET /base/a%2Fb?q=%20x host="+strings.TrimPrefix(upstream.URL, "http://")+" auth=")
	req, _ := http.NewRequest("GET", "http://localhost:9080/api/proxy/simple/just-some-path", nil)
	req.Header.Set("Authorization", "Bearer static-token-123")
	res, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.HasPrefix(string(b), "GET /just-some-path host=127.0.0.1:") || strings.Contains(string(b), "Bearer") {
		t.Fatalf("unexpected upstream view: %s", b)
	}
	if res.Header.Get("X-Upstream") != "" {
		t.Fatalf("X-Upstream leaked")
	}
}
