package backstageproxy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter, for *.caddyfiletest
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/ with the current output")

const goldenSeparator = "\n----------\n"

// TestAdaptGolden adapts every testdata/adapt/*.yamltest (app-config YAML) and
// testdata/caddyfile_adapt/*.caddyfiletest (Caddyfile) and compares the output
// with the expected JSON, or the expected error ("ERROR: <substring>"), and
// the expected warnings (after a second separator, one per line).
func TestAdaptGolden(t *testing.T) {
	t.Setenv("TEST_SECRET", "s3cr3t-value")
	t.Setenv("TEST_HOST", "upstream.internal")
	for _, dir := range []struct{ glob, adapter string }{
		{"testdata/adapt/*.yamltest", "backstage"},
		{"testdata/caddyfile_adapt/*.caddyfiletest", "caddyfile"},
	} {
		files, err := filepath.Glob(dir.glob)
		if err != nil || len(files) == 0 {
			t.Fatalf("no golden files for %s: %v", dir.glob, err)
		}
		for _, file := range files {
			t.Run(filepath.Base(file), func(t *testing.T) {
				raw, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				parts := strings.Split(string(raw), goldenSeparator)
				if len(parts) < 2 || len(parts) > 3 {
					t.Fatalf("%s: want input, separator, expected output [, separator, warnings]", file)
				}
				input, want := parts[0]+"\n", strings.TrimSpace(parts[1])
				wantWarnings := ""
				if len(parts) == 3 {
					wantWarnings = strings.TrimSpace(parts[2])
				}
				got, gotWarnings := adaptForTest(dir.adapter, file, []byte(input))
				if *update {
					out := parts[0] + goldenSeparator + got + "\n"
					if gotWarnings != "" {
						out += "----------\n" + gotWarnings + "\n"
					}
					if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				if strings.HasPrefix(want, "ERROR: ") {
					if !strings.HasPrefix(got, "ERROR: ") || !strings.Contains(got, strings.TrimPrefix(want, "ERROR: ")) {
						t.Fatalf("want error containing %q, got:\n%s", strings.TrimPrefix(want, "ERROR: "), got)
					}
				} else if got != want {
					t.Fatalf("adapted JSON differs (run go test -run TestAdaptGolden -update and review the diff)\n--- got:\n%s\n--- want:\n%s", got, want)
				}
				if gotWarnings != wantWarnings {
					t.Fatalf("warnings differ\n--- got:\n%s\n--- want:\n%s", gotWarnings, wantWarnings)
				}
			})
		}
	}
}

func adaptForTest(adapter, file string, input []byte) (out, warnings string) {
	a := caddyconfig.GetAdapter(adapter)
	if a == nil {
		return "ERROR: no adapter " + adapter, ""
	}
	js, warns, err := a.Adapt(input, map[string]any{"filename": file})
	var w []string
	for _, warn := range warns {
		w = append(w, fmt.Sprintf("%s:%d: %s", filepath.Base(warn.File), warn.Line, warn.Message))
	}
	if err != nil {
		return "ERROR: " + err.Error(), strings.Join(w, "\n")
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, js, "", "\t"); err != nil {
		return "ERROR: invalid JSON: " + err.Error(), ""
	}
	return buf.String(), strings.Join(w, "\n")
}

// TestYAMLAndCaddyfileProduceSameRoutes proves that the config adapter and
// the Caddyfile directive share one route builder: the same endpoints give
// byte-identical routes, barrier included.
func TestYAMLAndCaddyfileProduceSameRoutes(t *testing.T) {
	t.Setenv("UPSTREAM_TOKEN", "secret")
	yamlConfig := `
proxy:
  endpoints:
    /nested:
      target: http://localhost:9100/outer
      credentials: dangerously-allow-unauthenticated
      allowedMethods: [GET]
    /nested/inner:
      target: https://upstream.example.com/inner?key=abc
      credentials: forward
      allowedHeaders: [X-Foo, Set-Cookie]
      headers:
        Authorization: Bearer ${UPSTREAM_TOKEN}
      changeOrigin: false
      xfwd: true
      ws: true
      secure: false
      proxyTimeout: 1500
      pathRewrite:
        '^/api/proxy/nested/inner/(\w+)': /items/$1
    /empty-rewrite:
      target: http://localhost:9100
      pathRewrite: {}
`
	caddyfileConfig := `:9080 {
	backstage_proxy /nested http://localhost:9100/outer {
		credentials dangerously-allow-unauthenticated
		allowed_methods GET
	}
	backstage_proxy /nested/inner https://upstream.example.com/inner?key=abc {
		credentials forward
		allowed_headers X-Foo Set-Cookie
		header Authorization "Bearer {env.UPSTREAM_TOKEN}"
		change_origin false
		xfwd
		ws
		insecure_skip_verify
		proxy_timeout 1500ms
		path_rewrite ^/api/proxy/nested/inner/(\w+) /items/$1
	}
	backstage_proxy /empty-rewrite http://localhost:9100 {
		path_rewrite off
	}
	backstage_proxy_barrier
}
`
	routesOf := func(adapter, input string) []json.RawMessage {
		t.Helper()
		js, _, err := caddyconfig.GetAdapter(adapter).Adapt([]byte(input), nil)
		if err != nil {
			t.Fatalf("%s: %v", adapter, err)
		}
		var cfg struct {
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Routes []json.RawMessage `json:"routes"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(js, &cfg); err != nil {
			t.Fatal(err)
		}
		for _, srv := range cfg.Apps.HTTP.Servers {
			return srv.Routes
		}
		t.Fatalf("%s: no server", adapter)
		return nil
	}
	fromYAML := routesOf("backstage", yamlConfig)
	fromCaddyfile := routesOf("caddyfile", caddyfileConfig)
	// YAML: jwks route, 3 endpoints, barrier, non-proxy 404; Caddyfile: 3 endpoints, barrier
	if len(fromYAML) != 6 || len(fromCaddyfile) != 4 {
		t.Fatalf("unexpected route counts: yaml %d, caddyfile %d", len(fromYAML), len(fromCaddyfile))
	}
	for i := 0; i < 4; i++ {
		if !bytes.Equal(fromYAML[i+1], fromCaddyfile[i]) {
			t.Errorf("route %d differs:\nyaml:      %s\ncaddyfile: %s", i, fromYAML[i+1], fromCaddyfile[i])
		}
	}
}
