package backstageproxy

// Browser ergonomics: compression as Backstage's root router does it, and
// CORS exposure of the headers a route lets through.

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestIntegrationCompression: on a route that lets Accept-Encoding through,
// responses are compressed as Backstage's root router does (gzip from 1 KiB,
// compressible types, never twice); elsewhere they pass as the upstream sent
// them.
func TestIntegrationCompression(t *testing.T) {
	skipIfShort(t)
	big := `{"items":"` + strings.Repeat("backstage ", 500) + `"}` // about 5 KB of JSON
	var pre bytes.Buffer
	zw := gzip.NewWriter(&pre)
	_, _ = io.WriteString(zw, big)
	_ = zw.Close()
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/small"):
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"ok":true}`)
		case strings.HasSuffix(r.URL.Path, "/png"):
			w.Header().Set("Content-Type", "image/png")
			_, _ = io.WriteString(w, big)
		case strings.HasSuffix(r.URL.Path, "/pre"):
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(pre.Bytes())
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, big)
		}
	}))
	loadTestCaddy(t, staticTokenConfig(testStaticToken, "s", `    /zip:
      target: `+up.URL+`
      credentials: dangerously-allow-unauthenticated
      allowedHeaders: [accept-encoding]
    /plain:
      target: `+up.URL+`
      credentials: dangerously-allow-unauthenticated
`), "backstage")

	get := func(path, acceptEncoding string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+testListen+path, nil)
		if acceptEncoding != "" {
			req.Header.Set("Accept-Encoding", acceptEncoding)
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableCompression: true}}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res, b
	}
	gunzip := func(b []byte) string {
		t.Helper()
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("not gzip: %v", err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	for _, tc := range []struct {
		name, path, acceptEncoding, wantEncoding string
	}{
		{"allowed route, client asks", "/api/proxy/zip/big", "gzip, deflate, br", "gzip"},
		{"allowed route, client asks zstd only", "/api/proxy/zip/big", "zstd", "zstd"},
		{"allowed route, client does not ask", "/api/proxy/zip/big", "", ""},
		{"allowed route, small body", "/api/proxy/zip/small", "gzip", ""},
		{"allowed route, incompressible type", "/api/proxy/zip/png", "gzip", ""},
		{"allowed route, upstream already encoded", "/api/proxy/zip/pre", "gzip", "gzip"},
		{"route without Accept-Encoding", "/api/proxy/plain/big", "gzip", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := get(tc.path, tc.acceptEncoding)
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, body)
			}
			if got := res.Header.Get("Content-Encoding"); got != tc.wantEncoding {
				t.Fatalf("Content-Encoding %q, want %q", got, tc.wantEncoding)
			}
			switch tc.wantEncoding {
			case "gzip":
				if got := gunzip(body); got != big {
					t.Fatalf("decoded body differs (%d bytes)", len(got))
				}
				if strings.HasSuffix(tc.path, "/pre") && !bytes.Equal(body, pre.Bytes()) {
					t.Fatal("an encoded upstream body was encoded again")
				}
			case "zstd":
				if len(body) >= len(big) {
					t.Fatalf("zstd body of %d bytes for %d", len(body), len(big))
				}
			default:
				if strings.HasSuffix(tc.path, "/small") {
					return
				}
				if string(body) != big {
					t.Fatalf("body changed (%d bytes)", len(body))
				}
			}
		})
	}
}

// TestIntegrationCORSExposesAllowedHeaders: with backend.cors on, a
// cross-origin script can read the response headers a route lets through
// (Link, ETag), not only the CORS-safelisted ones.
func TestIntegrationCORSExposesAllowedHeaders(t *testing.T) {
	skipIfShort(t)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", `<https://api.example.com/x?page=2>; rel="next"`)
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("X-Hidden", "dropped by the allowlist")
		_, _ = io.WriteString(w, `{}`)
	}))
	loadTestCaddy(t, `
caddy:
  admin: localhost:2999
backend:
  listen: {port: 9080}
  cors:
    origin: https://backstage.example.com
    exposedHeaders: [X-Total-Count]
proxy:
  endpoints:
    /gh:
      target: `+up.URL+`
      credentials: dangerously-allow-unauthenticated
      allowedHeaders: [Link, ETag]
    /plain:
      target: `+up.URL+`
      credentials: dangerously-allow-unauthenticated
`, "backstage")
	get := func(path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+testListen+path, nil)
		req.Header.Set("Origin", "https://backstage.example.com")
		res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	res := get("/api/proxy/gh/x")
	exposed := strings.Join(res.Header.Values("Access-Control-Expose-Headers"), ", ")
	if res.Header.Get("Access-Control-Allow-Origin") != "https://backstage.example.com" ||
		!strings.Contains(exposed, "X-Total-Count") || !strings.Contains(exposed, "Link") || !strings.Contains(strings.ToLower(exposed), "etag") {
		t.Fatalf("ACAO %q, exposed %q", res.Header.Get("Access-Control-Allow-Origin"), exposed)
	}
	if res.Header.Get("Link") == "" || res.Header.Get("ETag") == "" || res.Header.Get("X-Hidden") != "" {
		t.Fatalf("headers %v", res.Header)
	}
	if exposed := strings.Join(get("/api/proxy/plain/x").Header.Values("Access-Control-Expose-Headers"), ", "); exposed != "X-Total-Count" {
		t.Fatalf("route without allowed headers exposes %q", exposed)
	}
}

// TestIntegrationRewriteLocation: caddy.rewriteLocation keeps redirects to
// the target inside the proxy; other redirects pass unchanged.
func TestIntegrationRewriteLocation(t *testing.T) {
	skipIfShort(t)
	var upURL string
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/abs":
			w.Header().Set("Location", upURL+"/v1/next/page?x=1")
		case "/v1/rel":
			w.Header().Set("Location", "/v1/other")
		case "/v1/foreign":
			w.Header().Set("Location", "https://elsewhere.example.com/v1/x")
		case "/v1/sibling":
			w.Header().Set("Location", upURL+"/v10/x")
		}
		w.WriteHeader(http.StatusFound)
	}))
	upURL = up.URL
	loadTestCaddy(t, `
caddy:
  admin: localhost:2999
backend:
  baseUrl: https://backstage.example.com
  listen: {port: 9080}
proxy:
  endpoints:
    /gh:
      target: `+up.URL+`/v1
      credentials: dangerously-allow-unauthenticated
      allowedHeaders: [Location]
      caddy:
        rewriteLocation: true
    /plain:
      target: `+up.URL+`/v1
      credentials: dangerously-allow-unauthenticated
      allowedHeaders: [Location]
`, "backstage")
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: dontFollowRedirects}
	for _, tc := range []struct{ path, want string }{
		{"/api/proxy/gh/abs", "https://backstage.example.com/api/proxy/gh/next/page?x=1"},
		{"/api/proxy/gh/rel", "https://backstage.example.com/api/proxy/gh/other"},
		{"/api/proxy/gh/foreign", "https://elsewhere.example.com/v1/x"},
		{"/api/proxy/gh/sibling", up.URL + "/v10/x"},
		{"/api/proxy/plain/abs", up.URL + "/v1/next/page?x=1"},
	} {
		res, err := c.Get("http://" + testListen + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if got := res.Header.Get("Location"); res.StatusCode != http.StatusFound || got != tc.want {
			t.Errorf("%s: %d Location %q, want %q", tc.path, res.StatusCode, got, tc.want)
		}
	}
}
