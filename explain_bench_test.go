package backstageproxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// BenchmarkTransportRoundTrip compares one upstream round trip (to a local
// server) through Caddy's `http` transport and through `backstage_http`
// without options, which every endpoint now uses: the difference is what
// explain's check costs a proxied request (one atomic load).
func BenchmarkTransportRoundTrip(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	b.Cleanup(up.Close)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	plain := &reverseproxy.HTTPTransport{}
	ours := &UpstreamTransport{}
	for _, tc := range []struct {
		name string
		rt   interface {
			http.RoundTripper
			Provision(caddy.Context) error
		}
	}{{"http", plain}, {"backstage_http", ours}} {
		if err := tc.rt.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, up.URL+"/x", nil)
			req.RequestURI = ""
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := tc.rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
}
