package backstageproxy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// runRoutesCommand runs `caddy backstage routes` in-process with args and
// returns what it printed on stdout.
func runRoutesCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRoutesCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

const routesCommandConfig = `backend:
  baseUrl: http://localhost:7007
proxy:
  endpoints:
    /pagerduty:
      target: https://api.pagerduty.com/api/v2?token=inurl
      headers:
        Authorization: Token token=${ROUTES_CMD_SECRET}
      allowedMethods: [GET]
    /feed:
      target: http://feed.internal:8080/v1
      credentials: dangerously-allow-unauthenticated
      ws: true
      headers:
        X-Feed-Key: ${ROUTES_CMD_SECRET}
      caddy:
        acknowledgeRisk: the feed key is read-only
    /catalog: http://catalog.internal
`

// TestRoutesCommand runs `caddy backstage routes` on an app-config.yaml:
// the aligned text table and the JSON rows, with the secret nowhere in the
// output.
func TestRoutesCommand(t *testing.T) {
	const secret = "routes-cmd-secret-9f3e"
	t.Setenv("ROUTES_CMD_SECRET", secret)
	dir := t.TempDir()
	file := filepath.Join(dir, "app-config.yaml")
	cfg := routesCommandConfig
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("json", func(t *testing.T) {
		out, err := runRoutesCommand(t, "--config", file, "--json")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, secret) || strings.Contains(out, "inurl") || strings.Contains(out, "/api/v2") {
			t.Errorf("the output shows a secret, a target path or query:\n%s", out)
		}
		var rows []map[string]any
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(rows) != 3 {
			t.Fatalf("rows %v", rows)
		}
		fields := []string{"route", "credentials", "anonymous", "allow", "methods", "target", "injected_headers",
			"credential_headers", "ws", "rate_limit", "upstream_authorization", "acknowledge_risk", "flags"}
		for _, row := range rows {
			var keys []string
			for k := range row {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			want := slices.Clone(fields)
			slices.Sort(want)
			if !slices.Equal(keys, want) {
				t.Errorf("row fields %v, want %v", keys, want)
			}
		}
		pd, feed, catalog := rows[0], rows[1], rows[2]
		if pd["route"] != "/pagerduty" || pd["target"] != "https://api.pagerduty.com" || pd["anonymous"] != false ||
			!slices.Equal(lintStrings(pd["methods"]), []string{"GET"}) || !slices.Equal(lintStrings(pd["injected_headers"]), []string{"Authorization"}) ||
			len(lintStrings(pd["flags"])) != 0 {
			t.Errorf("/pagerduty row %v", pd)
		}
		if feed["route"] != "/feed" || feed["target"] != "http://feed.internal:8080" || feed["anonymous"] != true || feed["ws"] != true ||
			feed["methods"] != nil || feed["acknowledge_risk"] != "the feed key is read-only" ||
			!slices.Equal(lintStrings(feed["credential_headers"]), []string{"X-Feed-Key"}) ||
			!slices.Equal(lintStrings(feed["flags"]), []string{lintFlagAcknowledged, lintFlagAnyMethod, lintFlagAnonymousWebSocket}) {
			t.Errorf("/feed row %v", feed)
		}
		if catalog["route"] != "/catalog" || catalog["credentials"] != CredentialsRequire || catalog["target"] != "http://catalog.internal" {
			t.Errorf("/catalog row %v", catalog)
		}
	})

	t.Run("text", func(t *testing.T) {
		out, err := runRoutesCommand(t, "--config", file)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, secret) {
			t.Errorf("the output shows the secret:\n%s", out)
		}
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 6 || !strings.HasPrefix(lines[0], "ROUTE ") || lines[4] != "" ||
			lines[5] != "Anonymous callers can reach: /api/proxy/feed" {
			t.Fatalf("output:\n%s", out)
		}
		// aligned: every column starts at the same offset on every line
		col := strings.Index(lines[0], "TARGET")
		for i, l := range lines[1:4] {
			want := []string{"https://api.pagerduty.com", "http://feed.internal:8080", "http://catalog.internal"}[i]
			if strings.Index(l, want) != col {
				t.Errorf("line %q: target not under TARGET (column %d)", l, col)
			}
		}
		for _, want := range []string{"/feed ", "dangerously-allow-unauthenticated", "X-Feed-Key", lintFlagAnonymousWebSocket, `"the feed key is read-only"`} {
			if !strings.Contains(lines[2], want) {
				t.Errorf("/feed line %q lacks %q", lines[2], want)
			}
		}
	})

	t.Run("a refused config is an error", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.yml")
		cfg := strings.Replace(cfg, "        acknowledgeRisk: the feed key is read-only\n", "        rewriteLocation: false\n", 1)
		if err := os.WriteFile(bad, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runRoutesCommand(t, "--config", bad, "--json")
		if err == nil || !strings.Contains(err.Error(), bad+":14: proxy route /feed injects a credential") {
			t.Errorf("err %v, output %s", err, out)
		}
		if strings.Contains(out, secret) || (err != nil && strings.Contains(err.Error(), secret)) {
			t.Error("the secret is shown")
		}
	})

	t.Run("a Caddyfile (Caddy's own adapter choice)", func(t *testing.T) {
		cf := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(cf, []byte(":8080 {\n\tbackstage_proxy {\n\t\tendpoint /a http://a.internal:81/x {\n\t\t\tallowed_methods GET\n\t\t}\n\t}\n}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runRoutesCommand(t, "--config", cf, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var rows []routeSummary
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].Route != "/a" || rows[0].Target != "http://a.internal:81" {
			t.Errorf("%v %s", err, out)
		}
	})
}
