package backstageproxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntegrationWatchReload: a config loaded from files reloads by itself
// when they change, whole or not at all: an edit applies; a broken edit
// leaves the running config and is logged; the fix that follows applies,
// and so does a default app-config.local.yaml that did not exist at start.
func TestIntegrationWatchReload(t *testing.T) {
	skipIfShort(t)
	named := func(name string) string {
		u := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, name)
		}))
		return u.URL
	}
	one, two, three := named("one"), named("two"), named("three")
	dir := t.TempDir()
	main := filepath.Join(dir, "app-config.yaml")
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config := func(routes string) string {
		return fmt.Sprintf("caddy:\n  admin: localhost:%s\nbackend:\n  listen: {host: 127.0.0.1, port: %s}\nproxy:\n  endpoints:\n%s",
			testAdminPort, testListenPort, routes)
	}
	route := func(name, target string) string {
		return fmt.Sprintf("    /%s:\n      target: %s\n      credentials: dangerously-allow-unauthenticated\n", name, target)
	}
	write(main, config(route("a", one)))

	// Adapted as `caddy run --config app-config.yaml` does: with its file name.
	body, err := os.ReadFile(main)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := Adapter{}.Adapt(body, map[string]any{"filename": main})
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			Backstage struct {
				Watch *WatchConfig `json:"watch"`
			} `json:"backstage"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	w := cfg.Apps.Backstage.Watch
	if w == nil || w.ConfigFile != main || !strings.Contains(strings.Join(w.Files, " "), filepath.Join(dir, "app-config.local.yaml")) {
		t.Fatalf("watch config %+v: want the main file and the default app-config.local.yaml", w)
	}
	loadTestCaddy(t, string(out), "json")

	get := func(path string) string {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		res, err := c.Get("http://" + testListen + path)
		if err != nil {
			return "error: " + err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return fmt.Sprintf("%d %s", res.StatusCode, b)
	}
	// waitFor polls until path answers want: the watcher checks every second.
	waitFor := func(what, path, want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		got := ""
		for time.Now().Before(deadline) {
			if got = get(path); got == want {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s: %s answers %q, want %q", what, path, got, want)
	}
	waitFor("start", "/api/proxy/a/x", "200 one")

	write(main, config(route("a", two)))
	waitFor("edit", "/api/proxy/a/x", "200 two")

	// A broken edit: the running config stays. Then a fix that also adds a
	// route, and a local file that did not exist at start: both apply.
	write(main, config(route("a", two))+"   broken: [\n")
	time.Sleep(2500 * time.Millisecond) // two checks of the watcher
	if got := get("/api/proxy/a/x"); got != "200 two" {
		t.Fatalf("after a broken edit: %q, want the running config", got)
	}
	write(main, config(route("a", two)+route("b", one)))
	waitFor("fix", "/api/proxy/b/x", "200 one")
	write(filepath.Join(dir, "app-config.local.yaml"), "proxy:\n  endpoints:\n"+route("c", three))
	waitFor("new local file", "/api/proxy/c/x", "200 three")
	if got := get("/api/proxy/a/x"); got != "200 two" {
		t.Fatalf("after the local file: /a answers %q", got)
	}
	// The local file, now loaded, is watched too.
	write(filepath.Join(dir, "app-config.local.yaml"), "proxy:\n  endpoints:\n"+route("c", one))
	waitFor("local file edit", "/api/proxy/c/x", "200 one")
}

// TestWatchOff: caddy.watch: false leaves the watch config out.
func TestWatchOff(t *testing.T) {
	for _, tc := range []struct {
		body, filename string
		want           bool
	}{
		{"proxy:\n  endpoints:\n    /a: http://localhost:9100\n", "app-config.yaml", true},
		{"caddy:\n  watch: false\nproxy:\n  endpoints:\n    /a: http://localhost:9100\n", "app-config.yaml", false},
		{"proxy:\n  endpoints:\n    /a: http://localhost:9100\n", "", false}, // admin API: no file
	} {
		opts := map[string]any{}
		if tc.filename != "" {
			opts["filename"] = filepath.Join(t.TempDir(), tc.filename)
		}
		out, _, err := Adapter{}.Adapt([]byte(tc.body), opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(out), `"watch":`); got != tc.want {
			t.Errorf("%q (file %q): watch config present %v, want %v", tc.body, tc.filename, got, tc.want)
		}
	}
	if _, _, err := (Adapter{}).Adapt([]byte("caddy:\n  watch: sometimes\n"), nil); err == nil || !strings.Contains(err.Error(), "caddy.watch must be a boolean") {
		t.Errorf("caddy.watch: sometimes: %v", err)
	}
}

// TestIntegrationSecretResolvedWhereCaddyRuns: a config adapted in a shell
// without the secret (caddy reload --adapter backstage) runs as one adapted
// in the server: the header stays {env.VAR} in the JSON, and the server
// sends it if the variable is set where it runs, and else sends neither it
// nor the client's header of that name (Backstage's "unset means absent").
func TestIntegrationSecretResolvedWhereCaddyRuns(t *testing.T) {
	skipIfShort(t)
	const secret = "secret-where-caddy-runs-0123"
	got := make(chan string, 4)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- strings.Join(r.Header.Values("X-Api-Key"), ",")
	}))
	cfg := staticTokenConfig(testStaticToken, "s", "    /pd:\n      target: "+up.URL+"\n      credentials: dangerously-allow-unauthenticated\n      headers:\n        X-Api-Key: ${TEST_PD_TOKEN}\n      caddy: {acknowledgeRisk: a test of anonymous header injection}\n")
	adapt := func() string {
		t.Helper()
		out, _, err := Adapter{}.Adapt([]byte(cfg), nil)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), secret) || !strings.Contains(string(out), "{env.TEST_PD_TOKEN}") {
			t.Fatalf("adapted JSON: want the placeholder and never the secret: %s", out)
		}
		return string(out)
	}
	send := func() string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+testListen+"/api/proxy/pd/x", nil)
		req.Header.Set("X-Api-Key", "from-the-client")
		res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return <-got
	}

	// Adapted without the variable, run with it.
	os.Unsetenv("TEST_PD_TOKEN")
	js := adapt()
	t.Setenv("TEST_PD_TOKEN", secret)
	loadTestCaddy(t, js, "json")
	if v := send(); v != secret {
		t.Fatalf("adapted without the variable, run with it: upstream X-Api-Key %q", v)
	}

	// Adapted with the variable, run without it: absent, not the client's.
	js = adapt()
	os.Unsetenv("TEST_PD_TOKEN")
	loadTestCaddy(t, js, "json")
	if v := send(); v != "" {
		t.Fatalf("run without the variable: upstream X-Api-Key %q, want none", v)
	}
}
