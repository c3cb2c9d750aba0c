package backstageproxy

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkHandlerParallel is BenchmarkHandlerNoopNext from many goroutines
// at once (b.RunParallel: GOMAXPROCS goroutines, set with -cpu), each with
// its own request, as a server's connections are. Run it with
// -cpu 1,8,32: a lock or a shared counter on the path shows as time per
// request growing with the number of goroutines. On a machine with fewer
// cores than goroutines the figures show contention, not speed-up
// (BENCHMARKS.md).
//
//	user-token-cached: every goroutine sends the same token (one hot
//	verification cache entry: the worst case for a shared lock).
//	user-tokens-cached: each goroutine its own token.
func BenchmarkHandlerParallel(b *testing.B) {
	f := newUserTokenFixture(b)
	app := benchUserAndStaticApp(b, f)
	shared := "Bearer " + f.token(b, "user:default/alice")
	var tokens []string
	for i := range 64 {
		tokens = append(tokens, "Bearer "+f.token(b, fmt.Sprintf("user:default/u%d", i)))
	}
	for _, c := range []struct {
		name  string
		h     caddyhttp.MiddlewareHandler
		token func(g int) string
	}{
		{"open", benchHandler(b, CredentialsDangerouslyAllowUnauthenticated, &App{}), func(int) string { return "" }},
		{"static", benchHandler(b, CredentialsRequire, app), func(int) string { return "Bearer static-token-0123456789" }},
		{"user-token-cached", benchHandler(b, CredentialsRequire, app), func(int) string { return shared }},
		{"user-tokens-cached", benchHandler(b, CredentialsRequire, app), func(g int) string { return tokens[g%len(tokens)] }},
	} {
		b.Run(c.name, func(b *testing.B) {
			var goroutines atomic.Int64
			// verify (and cache) every token once
			for g := range len(tokens) {
				w := &benchWriter{hdr: make(http.Header, 16)}
				if err := c.h.ServeHTTP(w, benchRequest(c.token(g)), noopNext); err != nil || w.status != 0 {
					b.Fatalf("status %d, %v", w.status, err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := benchRequest(c.token(int(goroutines.Add(1) - 1)))
				w := &benchWriter{hdr: make(http.Header, 16)}
				for pb.Next() {
					resetReplacer(r)
					if err := c.h.ServeHTTP(w, r, noopNext); err != nil {
						b.Error(err)
						return
					}
				}
				if w.status != 0 {
					b.Errorf("status %d", w.status)
				}
			})
		})
	}
}
