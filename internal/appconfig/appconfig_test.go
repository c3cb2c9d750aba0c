package appconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
)

// acfgWrite writes files (slash-separated names) into a new temp dir and returns it.
func acfgWrite(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func acfgEnv(env map[string]string) (func(string) (string, bool), []string) {
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	sort.Strings(environ)
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }, environ
}

// acfgLoad loads dir/main (main may be "" to load body with no file name).
func acfgLoad(t *testing.T, dir, main string, env map[string]string) (*Node, []Warning, error) {
	t.Helper()
	var body []byte
	mainFile := ""
	if main != "" {
		mainFile = filepath.Join(dir, main)
		var err error
		if body, err = os.ReadFile(mainFile); err != nil {
			t.Fatal(err)
		}
	}
	lookup, environ := acfgEnv(env)
	return Load(Options{MainBody: body, MainFile: mainFile, Env: lookup, Environ: environ})
}

// acfgLoadBody loads body as the main file mainFile (which need not exist on disk).
func acfgLoadBody(mainFile, body string, env map[string]string) (*Node, []Warning, error) {
	lookup, environ := acfgEnv(env)
	return Load(Options{MainBody: []byte(body), MainFile: mainFile, Env: lookup, Environ: environ})
}

// acfgJSON renders a tree as compact JSON in key order (numbers as JavaScript prints them).
func acfgJSON(n *Node) string {
	var b strings.Builder
	var w func(n *Node)
	str := func(s string) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		b.WriteString(strings.TrimSpace(buf.String()))
	}
	w = func(n *Node) {
		switch {
		case n == nil:
			b.WriteString("undefined")
		case n.Kind == KindMap:
			b.WriteString("{")
			for i, k := range n.Keys {
				if i > 0 {
					b.WriteString(",")
				}
				str(k)
				b.WriteString(":")
				w(n.Values[i])
			}
			b.WriteString("}")
		case n.Kind == KindSeq:
			b.WriteString("[")
			for i, it := range n.Items {
				if i > 0 {
					b.WriteString(",")
				}
				w(it)
			}
			b.WriteString("]")
		case n.Tag == "!!str":
			str(n.Value)
		default:
			b.WriteString(n.Value)
		}
	}
	w(n)
	return b.String()
}

func acfgWarnings(ws []Warning) string {
	var out []string
	for _, w := range ws {
		out = append(out, fmt.Sprintf("%s:%d: %s", filepath.Base(w.File), w.Line, w.Message))
	}
	return strings.Join(out, "\n")
}

func TestLoadBackstageConfigSubstitution(t *testing.T) {
	type want struct {
		value    string // acfgJSON of the value, "undefined" when removed
		template string
		inlined  bool
		warning  string // substring of the (only) warning; "" for none
	}
	env := map[string]string{
		"A":      "alpha",
		"B":      "bravo",
		"EMPTY":  "",
		"BLANK":  "  ",
		"PADDED": " secret\n",
		"BRACES": "{x}",
		"HOST":   "example.com",
	}
	tests := []struct {
		name string
		yaml string // the value of key v
		want want
	}{
		{"plain", "${A}", want{value: `"alpha"`, template: "{env.A}"}},
		{"spaces in braces", "${ A }", want{value: `"alpha"`, template: "{env.A}"}},
		{"text around", "pre-${A}-post", want{value: `"pre-alpha-post"`, template: "pre-{env.A}-post"}},
		{"several", "${A}:${B}@${A}", want{value: `"alpha:bravo@alpha"`, template: "{env.A}:{env.B}@{env.A}"}},
		{"fallback unused", "${A:-fb}", want{value: `"alpha"`, template: "{env.A}"}},
		{"fallback used", "${UNSET:-fb}", want{value: `"fb"`, template: "fb"}},
		{"fallback trimmed", "'${UNSET:-  fb  }'", want{value: `"fb"`, template: "fb"}},
		{"fallback for empty", "${EMPTY:-fb}", want{value: `"fb"`, template: "fb"}},
		{"fallback for blank", "${BLANK:-fb}", want{value: `"fb"`, template: "fb"}},
		{"fallback with braces escaped", "'x${UNSET:-a:b}'", want{value: `"xa:b"`, template: "xa:b"}},
		{"empty value kept", "${EMPTY}", want{value: `""`, template: "{env.EMPTY}"}},
		{"value trimmed, inlined", "Bearer ${PADDED}", want{value: `"Bearer secret"`, template: "Bearer secret", inlined: true}},
		{"blank value trimmed to empty", "x${BLANK}y", want{value: `"xy"`, template: "xy"}},
		{"escape", "$${literal}", want{value: `"${literal}"`, template: `$\{literal\}`}},
		{"escape of fallback syntax", "$${A:-q}", want{value: `"${A:-q}"`, template: `$\{A:-q\}`}},
		{"triple dollar", "$$${A}", want{value: `"$${A}"`, template: `$$\{A\}`}},
		{"literal braces escaped", "'{json} ${A} }'", want{value: `"{json} alpha }"`, template: `\{json\} {env.A} \}`}},
		{"env value with braces is not escaped", "${BRACES}", want{value: `"{x}"`, template: "{env.BRACES}"}},
		{"backslash before placeholder inlines", `'C:\${A}'`, want{value: `"C:\\alpha"`, template: `C:\alpha`, inlined: true}},
		{"unclosed is literal", "'${A'", want{value: `"${A"`}},
		{"no substitution", "plain {text}", want{value: `"plain {text}"`}},
		{"case 73 set", "http://${TEST_HOST:-localhost}:9100/$${literal}/${HOST}", want{value: `"http://localhost:9100/${literal}/example.com"`, template: `http://localhost:9100/$\{literal\}/{env.HOST}`}},
		{"undefined removes", "http://host/${TEST_PATH}", want{value: "undefined", warning: "v: environment variable TEST_PATH is not set; the value is removed (as Backstage does)"}},
		{"one undefined of several removes", "${A}-${NOPE}", want{value: "undefined", warning: "environment variable NOPE is not set"}},
		{"empty fallback removes", "${UNSET:-}", want{value: "undefined", warning: "environment variable UNSET is not set and the fallback is empty"}},
		{"empty name removes", "${}", want{value: "undefined", warning: "names no variable"}},
		{"number untouched", "7007", want{value: "7007"}},
		{"bool untouched", "true", want{value: "true"}},
	}
	dir := t.TempDir()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, warns, err := acfgLoadBody(filepath.Join(dir, "app.yaml"), "v: "+tc.yaml+"\nother: 1\n", env)
			if err != nil {
				t.Fatal(err)
			}
			v := root.Get("v")
			if got := acfgJSON(v); got != tc.want.value {
				t.Errorf("value = %s, want %s", got, tc.want.value)
			}
			if v != nil {
				if v.EnvTemplate != tc.want.template || v.SecretInlined != tc.want.inlined {
					t.Errorf("EnvTemplate, SecretInlined = %q, %v; want %q, %v", v.EnvTemplate, v.SecretInlined, tc.want.template, tc.want.inlined)
				}
				if v.File != filepath.Join(dir, "app.yaml") || v.Line != 1 || v.Source != v.File+":1" {
					t.Errorf("position = %q %d %q", v.File, v.Line, v.Source)
				}
			}
			if tc.want.value == "undefined" && acfgJSON(root) != `{"other":1}` {
				t.Errorf("key not removed: %s", acfgJSON(root))
			}
			switch {
			case tc.want.warning == "" && len(warns) > 0:
				t.Errorf("unexpected warnings: %s", acfgWarnings(warns))
			case tc.want.warning != "":
				if len(warns) != 1 || !strings.Contains(warns[0].Message, tc.want.warning) || warns[0].Line != 1 || warns[0].File != filepath.Join(dir, "app.yaml") {
					t.Errorf("warnings = %s, want one containing %q at line 1", acfgWarnings(warns), tc.want.warning)
				}
				for _, w := range warns {
					if strings.Contains(w.Message, "alpha") || strings.Contains(w.Message, "secret") {
						t.Errorf("warning leaks a value: %s", w.Message)
					}
				}
			}
		})
	}
}

func TestLoadBackstageConfigSubstitutionScope(t *testing.T) {
	dir := acfgWrite(t, map[string]string{"app.yaml": `
${A}: key is not substituted
list:
  - ${A}
  - ${UNSET}
  - x
nested:
  deep:
    target: ${UNSET}
    keep: 1
`})
	root, warns, err := acfgLoad(t, dir, "app.yaml", map[string]string{"A": "va"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"${A}":"key is not substituted","list":["va","x"],"nested":{"deep":{"keep":1}}}`
	if got := acfgJSON(root); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	got := acfgWarnings(warns)
	wantW := "app.yaml:5: list[1]: environment variable UNSET is not set; the value is removed (as Backstage does)\n" +
		"app.yaml:9: nested.deep.target: environment variable UNSET is not set; the value is removed (as Backstage does)"
	if got != wantW {
		t.Errorf("warnings:\n%s\nwant:\n%s", got, wantW)
	}
}

func TestLoadBackstageConfigDirectives(t *testing.T) {
	files := map[string]string{
		"secrets/token.txt":  "s3cret \n\n",
		"secrets/ca.pem":     "-----BEGIN-----\nabc\n-----END-----\n",
		"inc/route.yaml":     "target: http://${HOST}/api\nheaders:\n  X-Token: {$file: ../secrets/token.txt}\n",
		"inc/data.json":      `{"a": {"b": {"z": 1, "y": "${HOST}"}}, "s": "str-${HOST}", "n": 5}`,
		"inc/list.yml":       "- one\n- ${UNSET}\n- {$env: HOST}\n",
		"inc/empty.yaml":     "",
		"inc/directive.yaml": "d: {$env: HOST}\n",
	}
	env := map[string]string{"HOST": "example.com", "PADDED": " p ", "DIR": "inc"}
	tests := []struct {
		name     string
		yaml     string // value of key v
		want     string
		template string
		warning  string
	}{
		{"$file trims trailing whitespace", "{$file: secrets/token.txt}", `"s3cret"`, "", ""},
		{"$file keeps inner newlines", "{$file: secrets/ca.pem}", `"-----BEGIN-----\nabc\n-----END-----"`, "", ""},
		{"$file path substituted", "{$file: '${DIR}/../secrets/token.txt'}", `"s3cret"`, "", ""},
		{"$env", "{$env: HOST}", `"example.com"`, "{env.HOST}", ""},
		{"$env trimmed and inlined", "{$env: PADDED}", `"p"`, "p", ""},
		{"$env unset removes", "{$env: NOPE}", "undefined", "", "v: $env: environment variable NOPE is not set; the value is removed"},
		{"$include yaml, nested substitution and $file relative to it", "{$include: inc/route.yaml}",
			`{"target":"http://example.com/api","headers":{"X-Token":"s3cret"}}`, "", ""},
		{"$include json subtree", "{$include: 'inc/data.json#a.b'}", `{"z":1,"y":"example.com"}`, "", ""},
		{"$include string is substituted", "{$include: 'inc/data.json#s'}", `"str-example.com"`, "str-{env.HOST}", ""},
		{"$include number", "{$include: 'inc/data.json#n'}", `5`, "", ""},
		{"$include yml list drops undefined", "{$include: inc/list.yml}", `["one","example.com"]`, "", "v[1]: environment variable UNSET is not set"},
		{"$include missing subtree removes", "{$include: 'inc/data.json#a.x'}", "undefined", "", "$include: nothing at 'a.x'"},
		{"$include empty file gives null, which deletes", "{$include: inc/empty.yaml}", "undefined", "", ""},
		{"included value is not re-checked for directives", "{$include: 'inc/directive.yaml#d'}", `{"$env":"HOST"}`, "", ""},
		{"other $ keys are literal", "{$secret: {file: x}}", `{"$secret":{"file":"x"}}`, "", ""},
	}
	dir := acfgWrite(t, files)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, warns, err := acfgLoadBody(filepath.Join(dir, "app.yaml"), "other: 1\nv: "+tc.yaml+"\n", env)
			if err != nil {
				t.Fatal(err)
			}
			v := root.Get("v")
			if got := acfgJSON(v); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
			if v != nil && v.Kind == KindScalar && v.EnvTemplate != tc.template {
				t.Errorf("EnvTemplate = %q, want %q", v.EnvTemplate, tc.template)
			}
			if tc.warning == "" && len(warns) > 0 || tc.warning != "" && !strings.Contains(acfgWarnings(warns), tc.warning) {
				t.Errorf("warnings = %q, want %q", acfgWarnings(warns), tc.warning)
			}
		})
	}
}

func TestLoadBackstageConfigIncludePositions(t *testing.T) {
	dir := acfgWrite(t, map[string]string{
		"app.yaml":         "proxy:\n  endpoints:\n    /r:\n      $include: routes/r.yaml\n",
		"routes/r.yaml":    "# route\ntarget: http://x\nheaders: {$include: 'h.json#h'}\n",
		"routes/h.json":    "{\n  \"h\": {\n    \"X-A\": \"1\"\n  }\n}\n",
		"app-config.yaml":  "unused: 1\n",
		"routes/other.txt": "x",
	})
	root, _, err := acfgLoad(t, dir, "app.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	r := root.Lookup("proxy.endpoints").Get("/r")
	if r.File != filepath.Join(dir, "app.yaml") || r.Line != 3 {
		t.Errorf("included map positioned at %s, want app.yaml:3 (the directive)", r.Source)
	}
	if tg := r.Get("target"); tg.File != filepath.Join(dir, "routes", "r.yaml") || tg.Line != 2 || tg.Source != tg.File+":2" {
		t.Errorf("target at %s, want routes/r.yaml:2", tg.Source)
	}
	if h := r.Get("headers").Get("X-A"); h.File != filepath.Join(dir, "routes", "h.json") || h.Line != 3 {
		t.Errorf("X-A at %s, want routes/h.json:3", h.Source)
	}
}

func TestLoadBackstageConfigErrors(t *testing.T) {
	deep := strings.Repeat("[", 101) + strings.Repeat("]", 101)
	var chain = map[string]string{"app.yaml": "a: {$include: i0.yaml}\n"}
	for i := 0; i < 40; i++ {
		chain[fmt.Sprintf("i%d.yaml", i)] = fmt.Sprintf("x: {$include: i%d.yaml}\n", i+1)
	}
	tests := []struct {
		name  string
		files map[string]string
		env   map[string]string
		want  string // substring; "@MAIN@" is replaced by the path of app.yaml
	}{
		{"YAML syntax", map[string]string{"app.yaml": "a: 1\nb: [\n"}, nil, "@MAIN@:2: invalid YAML"},
		{"included YAML syntax", map[string]string{"app.yaml": "\n\nb: {$include: x.yaml}\n", "x.yaml": "a: 1\nb: 2\nc: [\n"}, nil, "x.yaml:3: invalid YAML: did not find expected node content (included from @MAIN@:3)"},
		{"included JSON syntax", map[string]string{"app.yaml": "b: {$include: x.json}\n", "x.json": "{\n\"a\": 1,\n}"}, nil, "x.json:3: invalid JSON"},
		{"duplicate key", map[string]string{"app.yaml": "a: 1\nb: 2\na: 3\n"}, nil, `@MAIN@:3: duplicate map key "a"`},
		{"duplicate numeric key", map[string]string{"app.yaml": "1: a\n0x1: b\n"}, nil, `@MAIN@:2: duplicate map key "1"`},
		{"two documents", map[string]string{"app.yaml": "a: 1\n---\nb: 2\n"}, nil, "@MAIN@:2: the file contains more than one YAML document"},
		{"scalar root", map[string]string{"app.yaml": "hello\n"}, nil, "@MAIN@:1: expected object at config root, got string"},
		{"list root", map[string]string{"app.yaml": "- a\n"}, nil, "expected object at config root, got array"},
		{"unsupported extension", map[string]string{"app.yaml": "a: 1\n\nb:\n  $include: secret.txt\n"}, nil, `@MAIN@:4: $include: unsupported file extension ".txt"`},
		{"dotfile has no extension", map[string]string{"app.yaml": "b: {$include: .yaml}\n"}, nil, `unsupported file extension ""`},
		{"adjacent keys", map[string]string{"app.yaml": "a:\n  other: 1\n  $file: x\n"}, nil, "@MAIN@:3: include key $file should not have adjacent keys (at a)"},
		{"first directive key named", map[string]string{"app.yaml": "a: {$env: X, $file: y}\n"}, nil, "include key $env should not have adjacent keys"},
		{"directive value not a string", map[string]string{"app.yaml": "a:\n  $file: [x]\n"}, nil, "@MAIN@:2: $file include value is not a string"},
		{"directive substitution undefined", map[string]string{"app.yaml": "a: {$include: '${NOPE}.yaml'}\n"}, nil, "$include substitution value was undefined: environment variable NOPE is not set"},
		{"$file missing", map[string]string{"app.yaml": "a:\n  b: {$file: nope.txt}\n"}, nil, "@MAIN@:2: $file: failed to read file nope.txt"},
		{"$include missing", map[string]string{"app.yaml": "a: {$include: nope.yaml}\n"}, nil, "file does not exist"},
		{"$include path through non-object", map[string]string{"app.yaml": "a: {$include: 'x.yaml#a.b.c'}\n", "x.yaml": "a: {b: 1}\n"}, nil, "value at 'a.b' in included file x.yaml is not an object"},
		{"include cycle", map[string]string{"app.yaml": "a: {$include: x.yaml}\n", "x.yaml": "b: {$include: app.yaml}\n"}, nil, "include cycle"},
		{"include self subtree cycle", map[string]string{"app.yaml": "a: {$include: 'x.yaml#a'}\n", "x.yaml": "a: {b: {$include: 'x.yaml#a'}}\n"}, nil, "include cycle"},
		{"include depth", chain, nil, "includes nested deeper than 32 levels"},
		{"nesting depth", map[string]string{"app.yaml": "a: " + deep + "\n"}, nil, "@MAIN@:1: nesting deeper than 100 levels"},
		{"alias cycle", map[string]string{"app.yaml": "a: &x\n  b: *x\n"}, nil, "refers to a value that contains it"},
		{"alias bomb", map[string]string{"app.yaml": acfgAliasBomb(9)}, nil, "aliases expand to more than 100000 values"},
		{"undefined alias", map[string]string{"app.yaml": "a: *nope\n"}, nil, "invalid YAML"},
		{"complex key", map[string]string{"app.yaml": "? [a, b]\n: 1\n"}, nil, "@MAIN@:1: a map key must be a scalar"},
		{"too many elements", map[string]string{"app.yaml": "a: [" + strings.Repeat("1,", maxYAMLSeparators) + "1]\n"}, nil, "too many YAML elements"},
		{"CADDY_BACKSTAGE_CONFIG_FILES missing file", map[string]string{"app.yaml": "a: 1\n"}, map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": "nope.yaml"}, "nope.yaml: config file listed in CADDY_BACKSTAGE_CONFIG_FILES does not exist"},
		{"listed file syntax", map[string]string{"app.yaml": "a: 1\n", "b.yaml": "x: 1\n  y: 2\n"}, map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": "b.yaml"}, "b.yaml:2: invalid YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := "/nonexistent"
			if len(tc.files) > 1 {
				dir = acfgWrite(t, tc.files)
			}
			root, _, err := acfgLoadBody(filepath.Join(dir, "app.yaml"), tc.files["app.yaml"], tc.env)
			if err == nil {
				t.Fatalf("no error; got %s", acfgJSON(root))
			}
			want := strings.ReplaceAll(tc.want, "@MAIN@", filepath.Join(dir, "app.yaml"))
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q\ndoes not contain %q", err, want)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Errorf("error is %T, want *Error", err)
			}
		})
	}
}

// acfgAliasBomb builds a "billion laughs" document with the given number of levels.
func acfgAliasBomb(levels int) string {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= levels; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [", i, i)
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

func TestLoadBackstageConfigTooLarge(t *testing.T) {
	big := bytes.Repeat([]byte("#"), maxConfigFileSize+1)
	_, _, err := Load(Options{MainBody: big, MainFile: "app-config.yaml"})
	if err == nil || !strings.Contains(err.Error(), "app-config.yaml: file is larger than 10 MiB") {
		t.Errorf("main body: %v", err)
	}
	dir := acfgWrite(t, map[string]string{"app.yaml": "a: {$file: big.txt}\n"})
	if err := os.WriteFile(filepath.Join(dir, "big.txt"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = acfgLoad(t, dir, "app.yaml", nil)
	if err == nil || !strings.Contains(err.Error(), "larger than 10 MiB") || !strings.Contains(err.Error(), "app.yaml:1") {
		t.Errorf("$file: %v", err)
	}
}

func TestLoadBackstageConfigAliases(t *testing.T) {
	dir := acfgWrite(t, map[string]string{"app.yaml": "base: &b {target: http://x, headers: {A: '1'}}\nproxy:\n  /a: *b\n  /b:\n    <<: *b\n    target: http://y\n"})
	root, _, err := acfgLoad(t, dir, "app.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	// the yaml package Backstage uses (YAML 1.2) has no merge keys: "<<" is an ordinary key
	want := `{"base":{"target":"http://x","headers":{"A":"1"}},"proxy":{"/a":{"target":"http://x","headers":{"A":"1"}},"/b":{"<<":{"target":"http://x","headers":{"A":"1"}},"target":"http://y"}}}`
	if got := acfgJSON(root); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if root.Lookup("proxy./a") != root.Get("proxy").Get("/a") || root.Lookup("base.headers.A").Value != "1" {
		t.Errorf("Lookup")
	}
	if a := root.Get("proxy").Get("/a"); a.Line != 3 || a.Get("target").Line != 1 {
		t.Errorf("alias positions: /a at %d, its target at %d", a.Line, a.Get("target").Line)
	}
}

func TestLoadBackstageConfigMerge(t *testing.T) {
	tests := []struct {
		name  string
		files []string // app.yaml, then CADDY_BACKSTAGE_CONFIG_FILES
		want  string
	}{
		{"case 72", []string{`
proxy:
  endpoints:
    /headers: {target: U, credentials: dangerously-allow-unauthenticated, headers: {Authorization: Bearer upstream-secret, X-Custom: configured}}
    /methods: {target: U, allowedMethods: [GET]}
    /simple: U
`, `
proxy:
  endpoints:
    /headers: {headers: {X-Custom: overridden, X-Added: added}}
    /methods: {allowedMethods: [POST]}
    /simple: {target: http://localhost:9100/replaced, credentials: dangerously-allow-unauthenticated}
    /nulled: null
`}, `{"proxy":{"endpoints":{"/headers":{"headers":{"X-Custom":"overridden","X-Added":"added","Authorization":"Bearer upstream-secret"},"target":"U","credentials":"dangerously-allow-unauthenticated"},"/methods":{"allowedMethods":["POST"],"target":"U"},"/simple":{"target":"http://localhost:9100/replaced","credentials":"dangerously-allow-unauthenticated"}}}}`},
		{"key order: higher first, then lower-only", []string{"a: 1\nb: 2\nc: 3\n", "c: 30\nd: 40\n"}, `{"c":30,"d":40,"a":1,"b":2}`},
		{"three files, later wins", []string{"a: 1\nb: 1\nc: 1\n", "b: 2\nc: 2\n", "c: 3\n"}, `{"c":3,"b":2,"a":1}`},
		{"null deletes, also nested and in the lowest file", []string{"a: {x: 1, y: 2, z: null}\nb: 1\nn: null\n", "a: {x: null}\nb: null\n"}, `{"a":{"y":2}}`},
		{"null in a sequence is kept", []string{"a: [1, null]\n"}, `{"a":[1,null]}`},
		{"array replaced, not concatenated", []string{"a: [1, 2]\n", "a: [3]\n"}, `{"a":[3]}`},
		{"object over scalar and array", []string{"a: s\nb: [1]\n", "a: {x: 1}\nb: {y: 1}\n"}, `{"a":{"x":1},"b":{"y":1}}`},
		{"scalar over object", []string{"a: {x: 1}\n", "a: 2\n"}, `{"a":2}`},
		{"removed key lets the lower value show through", []string{"/open: {target: base, x: 1}\n", "/open: {target: '${UNSET}', y: 2}\n"}, `{"/open":{"y":2,"target":"base","x":1}}`},
		{"empty file is absent", []string{"a: 1\n", "# nothing\n", "", "~\n"}, `{"a":1}`},
		{"integer-like keys first, as in JavaScript", []string{"b: 1\n2: x\na: 3\n1: y\n'01': z\n-1: w\n"}, `{"1":"y","2":"x","b":1,"a":3,"01":"z","-1":"w"}`},
		{"string and number keys that print the same: later wins", []string{"1: a\n'1': b\nz: 0\n"}, `{"1":"b","z":0}`},
		{"empty main file", []string{"", "a: 1\n"}, `{"a":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"app.yaml": tc.files[0]}
			var list []string
			for i, f := range tc.files[1:] {
				name := fmt.Sprintf("over%d.yaml", i)
				files[name] = f
				list = append(list, name)
			}
			dir := acfgWrite(t, files)
			env := map[string]string{}
			if len(list) > 0 {
				env["CADDY_BACKSTAGE_CONFIG_FILES"] = strings.Join(list, ",")
			}
			root, _, err := acfgLoad(t, dir, "app.yaml", env)
			if err != nil {
				t.Fatal(err)
			}
			if got := acfgJSON(root); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestLoadBackstageConfigCommittedCase72(t *testing.T) {
	dir := filepath.Join("testdata", "case72")
	body, err := os.ReadFile(filepath.Join(dir, "app-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	lookup, _ := acfgEnv(map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": "app-config.override.yaml", "UPSTREAM_TOKEN": "upstream-secret"})
	root, warns, err := Load(Options{MainBody: body, MainFile: filepath.Join(dir, "app-config.yaml"), Env: lookup})
	if err != nil || len(warns) > 0 {
		t.Fatal(err, warns)
	}
	ep := root.Lookup("proxy.endpoints")
	if got := strings.Join(ep.Keys, " "); got != "/headers /methods /simple /envsub" {
		t.Errorf("route order %q", got)
	}
	auth := ep.Get("/headers").Lookup("headers.Authorization")
	if auth.Value != "Bearer upstream-secret" || auth.EnvTemplate != "Bearer {env.UPSTREAM_TOKEN}" || !strings.HasSuffix(auth.Source, "app-config.yaml:8") {
		t.Errorf("Authorization = %+v", auth)
	}
	if m := ep.Get("/methods").Get("allowedMethods"); acfgJSON(m) != `["POST"]` || !strings.HasSuffix(m.Source, "app-config.override.yaml:7") {
		t.Errorf("allowedMethods = %s at %s", acfgJSON(m), m.Source)
	}
	tg := ep.Get("/envsub").Get("target")
	if tg.Value != "http://localhost:9100/${literal}/tp" || tg.EnvTemplate != `http://localhost:9100/$\{literal\}/tp` {
		t.Errorf("/envsub target = %q, template %q", tg.Value, tg.EnvTemplate)
	}
}

func TestLoadBackstageConfigFileSelection(t *testing.T) {
	all := map[string]string{
		"app-config.yaml":                  "a: base\nb: base\nc: base\nd: base\ne: base\n",
		"app-config.production.yaml":       "a: production\nb: production\n",
		"app-config.staging.yaml":          "a: staging\n",
		"app-config.local.yaml":            "b: local\nc: local\n",
		"app-config.production.local.yaml": "c: production-local\n",
		"extra.yaml":                       "e: extra\n",
		"conf/more.yaml":                   "d: more\n",
	}
	tests := []struct {
		name string
		main string
		env  map[string]string
		want string
	}{
		{"default: local only", "app-config.yaml", nil, `{"b":"local","c":"local","a":"base","d":"base","e":"base"}`},
		{"BACKSTAGE_ENV", "app-config.yaml", map[string]string{"BACKSTAGE_ENV": "production"},
			`{"c":"production-local","b":"local","a":"production","d":"base","e":"base"}`},
		{"BACKSTAGE_ENV list, missing ones skipped", "app-config.yaml", map[string]string{"BACKSTAGE_ENV": " staging , nope,production"},
			`{"c":"production-local","b":"local","a":"production","d":"base","e":"base"}`},
		{"NODE_ENV selects nothing", "app-config.yaml", map[string]string{"NODE_ENV": "production"}, `{"b":"local","c":"local","a":"base","d":"base","e":"base"}`},
		{"CADDY_BACKSTAGE_CONFIG_FILES disables discovery", "app-config.yaml", map[string]string{"BACKSTAGE_ENV": "production", "CADDY_BACKSTAGE_CONFIG_FILES": "extra.yaml, conf/more.yaml"},
			`{"d":"more","e":"extra","a":"base","b":"base","c":"base"}`},
		{"CADDY_BACKSTAGE_CONFIG_FILES empty: main only", "app-config.yaml", map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": ""}, `{"a":"base","b":"base","c":"base","d":"base","e":"base"}`},
		{"CADDY_BACKSTAGE_CONFIG_FILES naming the main file", "app-config.yaml", map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": "app-config.yaml,app-config.staging.yaml"}, `{"a":"staging","b":"base","c":"base","d":"base","e":"base"}`},
		{"other main file name: no discovery", "extra.yaml", map[string]string{"BACKSTAGE_ENV": "production"}, `{"e":"extra"}`},
		{"relative to the main file's directory", "conf/more.yaml", map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": "../extra.yaml"}, `{"e":"extra","d":"more"}`},
	}
	dir := acfgWrite(t, all)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, _, err := acfgLoad(t, dir, tc.main, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if got := acfgJSON(root); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestLoadBackstageConfigNoMainFileName(t *testing.T) {
	dir := acfgWrite(t, map[string]string{
		"secret.txt":            "from-cwd\n",
		"over.yaml":             "b: over\n",
		"app-config.local.yaml": "c: local\n",
	})
	t.Chdir(dir)
	lookup, _ := acfgEnv(map[string]string{"CADDY_BACKSTAGE_CONFIG_FILES": "over.yaml"})
	root, warns, err := Load(Options{MainBody: []byte("a: {$file: secret.txt}\nb: base\nc: base\nd: ${NOPE}\n"), Env: lookup})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := acfgJSON(root), `{"b":"over","a":"from-cwd","c":"base"}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if a := root.Get("a"); a.File != "" || a.Line != 1 || a.Source != "line 1" {
		t.Errorf("position of a = %q %d %q", a.File, a.Line, a.Source)
	}
	if len(warns) != 1 || warns[0].File != "" || warns[0].Line != 4 {
		t.Errorf("warnings = %+v", warns)
	}
	// without a file name there is no default discovery
	root, _, err = Load(Options{MainBody: []byte("c: base\n")})
	if err != nil || acfgJSON(root) != `{"c":"base"}` {
		t.Errorf("got %s, %v", acfgJSON(root), err)
	}
	_, _, err = Load(Options{MainBody: []byte("a: 1\nb: [\n")})
	if err == nil || !strings.HasPrefix(err.Error(), "line 2: invalid YAML") {
		t.Errorf("error = %v", err)
	}
	// nothing at all: an empty map
	root, _, err = Load(Options{})
	if err != nil || root == nil || root.Kind != KindMap || len(root.Keys) != 0 {
		t.Errorf("empty load = %+v, %v", root, err)
	}
}

func TestLoadBackstageConfigAppConfigEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string
	}{
		{"JSON and raw values, highest priority, sorted", map[string]string{
			"APP_CONFIG_proxy_endpoints_x":        "http://raw",
			"APP_CONFIG_proxy_endpoints_y":        `{"target":"http://json","changeOrigin":false}`,
			"APP_CONFIG_proxy_skipInvalidProxies": "true",
			"APP_CONFIG_backend_listen_port":      "8080",
			"APP_CONFIG_backend_baseUrl":          `"http://quoted"`,
			"APP_CONFIG_empty":                    "",
			"APP_CONFIG_with-dash_and:colon":      "0.10",
			"NOT_APP_CONFIG_x":                    "1",
			"app_config_lower":                    "1",
		}, `{"backend":{"baseUrl":"http://quoted","listen":{"port":8080}},"proxy":{"endpoints":{"x":"http://raw","y":{"target":"http://json","changeOrigin":false},"/a":"file"},"skipInvalidProxies":true},"with-dash":{"and:colon":0.1}}`, ""},
		{"nested null deletes below", map[string]string{"APP_CONFIG_proxy_endpoints": `{"/a":null,"/b":"env"}`}, `{"proxy":{"endpoints":{"/b":"env","x":"file"},"skipInvalidProxies":false}}`, ""},
		{"null rejected", map[string]string{"APP_CONFIG_proxy": "null"}, "", "env APP_CONFIG_proxy: failed to parse JSON-serialized config value: value may not be null"},
		{"route key with slash is invalid", map[string]string{"APP_CONFIG_proxy_endpoints_/x": "1"}, "", `env APP_CONFIG_proxy_endpoints_/x: invalid env config key "proxy_endpoints_/x"`},
		{"empty part is invalid", map[string]string{"APP_CONFIG_a__b": "1"}, "", `env APP_CONFIG_a__b: invalid env config key`},
		{"leading digit is invalid", map[string]string{"APP_CONFIG_1a": "1"}, "", `env APP_CONFIG_1a: invalid env config key`},
		{"cannot nest under a value", map[string]string{"APP_CONFIG_a": "1", "APP_CONFIG_a_b": "2"}, "", `env APP_CONFIG_a_b: could not nest config for key "a_b" under existing value "a"`},
		{"cannot override", map[string]string{"APP_CONFIG_a": `{"b":1}`, "APP_CONFIG_a_b": "2"}, "", `env APP_CONFIG_a_b: refusing to override existing config at key "a_b"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, _, err := acfgLoadBody("/nonexistent/app.yaml", "proxy:\n  endpoints:\n    /a: file\n    x: file\n  skipInvalidProxies: false\n", tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := acfgJSON(root); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}

	root, _, err := acfgLoadBody("/nonexistent/app.yaml", "a: {x: 1}\n", map[string]string{"APP_CONFIG_a_raw": "Bearer {x}", "APP_CONFIG_a_json": `"quoted"`})
	if err != nil {
		t.Fatal(err)
	}
	if a := root.Get("a"); a.Source != "/nonexistent/app.yaml:1" || acfgJSON(a) != `{"json":"quoted","raw":"Bearer {x}","x":1}` {
		t.Errorf("a = %s at %s", acfgJSON(a), a.Source)
	}
	raw, js := root.Lookup("a.raw"), root.Lookup("a.json")
	if raw.EnvTemplate != "{env.APP_CONFIG_a_raw}" || raw.File != "" || raw.Source != "env APP_CONFIG_a_raw" {
		t.Errorf("raw env value: %+v", raw)
	}
	if js.EnvTemplate != "" || js.Value != "quoted" || js.Source != "env APP_CONFIG_a_json" {
		t.Errorf("JSON env value: %+v", js)
	}
}

func TestConfigNodeScalarsAndHelpers(t *testing.T) {
	dir := acfgWrite(t, map[string]string{"app.yaml": `
hex: 0x1F
oct: 0o17
legacyOct: 0777
under: 1_000
float: 1.50
exp: 1e21
small: 0.0000001
inf: -.inf
nan: .nan
yes: yes
T: True
date: 2001-12-14
quoted: '12'
tagged: !!str 12
badtag: !!float 3
custom: !foo bar
null1: ~
num: "  0x10 "
on: "On"
one: 1
`})
	root, warns, err := acfgLoad(t, dir, "app.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"hex":31,"oct":15,"legacyOct":777,"under":"1_000","float":1.5,"exp":1e+21,"small":1e-7,"inf":-Infinity,"nan":NaN,"yes":"yes","T":true,"date":"2001-12-14","quoted":"12","tagged":"12","badtag":"3","custom":"bar","num":"  0x10 ","on":"On","one":1}`
	if got := acfgJSON(root); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if w := acfgWarnings(warns); !strings.Contains(w, "app.yaml:16: unresolved YAML tag !!float") || !strings.Contains(w, "app.yaml:17: unresolved YAML tag !foo") {
		t.Errorf("warnings: %s", w)
	}
	tags := map[string]string{"hex": "!!int", "float": "!!float", "T": "!!bool", "quoted": "!!str", "nan": "!!float"}
	for k, tag := range tags {
		if got := root.Get(k).Tag; got != tag {
			t.Errorf("%s: tag %s, want %s", k, got, tag)
		}
	}
	boolTests := map[string][2]bool{"T": {true, true}, "yes": {true, true}, "on": {true, true}, "one": {true, true}, "hex": {false, false}, "date": {false, false}}
	for k, want := range boolTests {
		v, ok := root.Get(k).Bool()
		if v != want[0] || ok != want[1] {
			t.Errorf("%s.Bool() = %v, %v; want %v, %v", k, v, ok, want[0], want[1])
		}
	}
	numTests := map[string]struct {
		v  float64
		ok bool
	}{"hex": {31, true}, "num": {16, true}, "quoted": {12, true}, "under": {0, false}, "T": {0, false}, "date": {0, false}}
	for k, want := range numTests {
		v, ok := root.Get(k).Number()
		if v != want.v || ok != want.ok {
			t.Errorf("%s.Number() = %v, %v; want %v, %v", k, v, ok, want.v, want.ok)
		}
	}
	if s, ok := root.Get("quoted").String(); s != "12" || !ok {
		t.Errorf("quoted.String() = %q, %v", s, ok)
	}
	if _, ok := root.Get("hex").String(); ok {
		t.Error("a number is not a string")
	}
	names := map[string]string{"hex": "number", "nan": "nan", "T": "boolean", "quoted": "string", "missing": "undefined"}
	for k, want := range names {
		if got := root.Get(k).TypeName(); got != want {
			t.Errorf("%s.TypeName() = %s, want %s", k, got, want)
		}
	}
	var nilNode *Node
	if nilNode.Get("x") != nil || nilNode.Lookup("a.b") != nil || nilNode.IsNull() {
		t.Error("nil node helpers")
	}
	if root.Lookup("") != root || root.Lookup("hex.x") != nil {
		t.Error("Lookup")
	}
}

func TestJSNumberString(t *testing.T) {
	for f, want := range map[float64]string{
		0: "0", 1: "1", -1.5: "-1.5", 1e21: "1e+21", 1e20: "100000000000000000000", 123456789012345678901: "123456789012345680000",
		1e-7: "1e-7", 1.5e-7: "1.5e-7", 0.000001: "0.000001", 0.1: "0.1", 1.7976931348623157e308: "1.7976931348623157e+308", 5e-324: "5e-324",
	} {
		if got := JSNumberString(f); got != want {
			t.Errorf("jsNumberString(%v) = %s, want %s", f, got, want)
		}
	}
	for s, want := range map[string]float64{"0x10": 16, "0b11": 3, "0o7": 7, " 12 ": 12, "1e3": 1000, ".5": 0.5, "5.": 5, "+3": 3} {
		if got := jsStringToNumber(s); got != want {
			t.Errorf("jsStringToNumber(%q) = %v, want %v", s, got, want)
		}
	}
	for _, s := range []string{"0x", "-0x10", "1_000", "12px", "inf", "NaN", "0x1p3"} {
		if got := jsStringToNumber(s); got == got {
			t.Errorf("jsStringToNumber(%q) = %v, want NaN", s, got)
		}
	}
}

// FuzzLoadBackstageConfig loads arbitrary main files against a small in-memory file system and
// environment: it must never panic, and a successful load must be a map without nulls in maps
// (outside sequences).
func FuzzLoadBackstageConfig(f *testing.F) {
	f.Add([]byte("proxy:\n  endpoints:\n    /a: {target: 'http://${HOST}/x', headers: {Authorization: {$file: secret.txt}}}\n"), `{"/b":"http://b"}`)
	f.Add([]byte("a: {$include: 'inc.yaml#x'}\nb: {$include: inc.json}\nc: {$env: HOST}\nd: $${x} ${UNSET:-fb}\n"), "raw")
	f.Add([]byte("a: &x [*x]\n"), "null")
	f.Add([]byte("a: {$include: loop.yaml}\n"), "")
	f.Add([]byte(acfgAliasBomb(3)), "1")
	fsys := fstest.MapFS{
		"secret.txt":            {Data: []byte("s3cret\n")},
		"inc.yaml":              {Data: []byte("x: {y: '${HOST}', z: {$file: secret.txt}}\n")},
		"inc.json":              {Data: []byte(`{"a": [1, "${HOST}", null], "b": {"$include": "inc.yaml"}}`)},
		"loop.yaml":             {Data: []byte("l: {$include: loop.yaml}\n")},
		"app-config.local.yaml": {Data: []byte("proxy: {endpoints: {/local: x}}\n")},
	}
	open := func(name string) (io.ReadCloser, error) {
		name = filepath.ToSlash(filepath.Clean(name))
		if !fs.ValidPath(name) {
			return nil, os.ErrNotExist
		}
		return fsys.Open(name)
	}
	f.Fuzz(func(t *testing.T, body []byte, envValue string) {
		env := map[string]string{"HOST": "h", "PADDED": " p ", "APP_CONFIG_proxy_endpoints": envValue}
		lookup, environ := acfgEnv(env)
		root, _, err := Load(Options{MainBody: body, MainFile: "app-config.yaml", Env: lookup, Environ: environ, OpenFile: open})
		if err != nil {
			if root != nil {
				t.Fatal("root and error")
			}
			if strings.Contains(err.Error(), "internal error") {
				t.Fatal(err)
			}
			return
		}
		if root == nil || root.Kind != KindMap {
			t.Fatalf("root = %+v", root)
		}
		// merging removes nulls from maps, but (as in Backstage) not inside sequences
		var check func(n *Node, inMap, inSeq bool)
		check = func(n *Node, inMap, inSeq bool) {
			if n == nil || inMap && !inSeq && n.IsNull() {
				t.Fatalf("nil or null value in a map")
			}
			if len(n.Keys) != len(n.Values) {
				t.Fatal("keys and values differ")
			}
			for _, v := range n.Values {
				check(v, true, inSeq)
			}
			for _, v := range n.Items {
				check(v, false, true)
			}
		}
		check(root, true, false)
	})
}

// TestYAMLErrorNamesBrokenLineAndEndpoint: the YAML library reports the line
// where the enclosing block starts; the loader reports the line that broke,
// and the proxy endpoint it is in.
func TestYAMLErrorNamesBrokenLineAndEndpoint(t *testing.T) {
	const head = "backend:\n  baseUrl: http://localhost:7007\nproxy:\n  endpoints:\n    /a:\n      target: http://a\n"
	tests := []struct {
		name, body, want string
	}{
		{"indentation slip in an endpoint",
			head + "    /b:\n      target: http://b\n      headers:\n        X-Foo: bar\n       X-Bad: baz\n    /c:\n      target: http://c\n",
			"@MAIN@:11: invalid YAML: did not find expected key (in proxy endpoint '/b', which starts at line 7)"},
		{"old layout",
			"proxy:\n  /a: http://a\n  /b:\n    target: http://b\n    changeOrigin: true\n   x: 1\n",
			"@MAIN@:6: invalid YAML: did not find expected key (in proxy endpoint '/b', which starts at line 3)"},
		{"after the endpoints",
			head + "other:\n  a: 1\n b: 2\n",
			"@MAIN@:9: invalid YAML: did not find expected key"},
		{"unclosed flow sequence",
			head + "    /b:\n      allowedMethods: [GET\n      target: http://b\n",
			"@MAIN@:8: invalid YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := acfgWrite(t, map[string]string{"app.yaml": tc.body})
			_, _, err := acfgLoad(t, dir, "app.yaml", nil)
			want := strings.ReplaceAll(tc.want, "@MAIN@", filepath.Join(dir, "app.yaml"))
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %v, want %s", err, want)
			}
			if strings.HasSuffix(want, "key") && err.Error() != want {
				t.Fatalf("error %q, want exactly %q", err, want)
			}
		})
	}
}
