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
