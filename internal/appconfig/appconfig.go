package appconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Resource limits for hostile or broken input. Each one gives a clear error.
const (
	maxConfigFileSize  = 10 << 20  // bytes in one config, $include or $file file
	maxConfigReadBytes = 64 << 20  // bytes read from disk in one load, all files together
	maxConfigFileReads = 1000      // files read in one load ($include and $file count)
	maxConfigDepth     = 100       // nesting of maps and sequences
	maxIncludeDepth    = 32        // nesting of $include
	maxConfigNodes     = 1_000_000 // values created in one load
	maxAliasNodes      = 100_000   // values created by expanding YAML aliases in one load
	maxYAMLSeparators  = 1_000_000 // cheap upper bound on YAML elements, checked before parsing
	MaxWarnings        = 1000      // warnings kept; one more says that the rest were dropped
)

// Kind is the kind of a Node.
type Kind int

const (
	KindScalar Kind = iota
	KindMap
	KindSeq
)

func (k Kind) String() string {
	switch k {
	case KindScalar:
		return "scalar"
	case KindMap:
		return "map"
	case KindSeq:
		return "sequence"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Node is one value of a loaded Backstage configuration.
//
// Scalars hold JavaScript semantics: Value is what String(value) gives in Backstage, so a YAML
// 0x1F is "31", 1.50 is "1.5", True is "true", .inf is "Infinity" and null is "null". Tags
// follow the YAML 1.2 core schema of the `yaml` npm package that Backstage uses (not YAML 1.1:
// yes/no/on/off are strings, 0777 is the decimal 777).
type Node struct {
	Kind  Kind   // nodeMap, nodeSeq, nodeScalar
	Tag   string // for scalars: the resolved YAML tag: "!!str", "!!int", "!!float", "!!bool", "!!null"
	Value string // for scalars: the value after substitution (strings after ${} and $file/$env resolution)

	// EnvTemplate is set for a string scalar whose text contained ${...} substitutions (or
	// $${...} escapes) that all resolved: it is the value rewritten in Caddy placeholder syntax,
	// e.g. "Bearer ${TOKEN}" -> "Bearer {env.TOKEN}", so that callers can keep secrets out of
	// Caddy's JSON. Literal text in it is escaped for Caddy's replacer ("{" -> "\{", "}" -> "\}").
	// `${VAR:-fallback}` where VAR is set and non-empty -> "{env.VAR}"; where the fallback was
	// used -> the literal fallback. An env value with leading/trailing whitespace (Backstage
	// trims it, Caddy would not), a variable name Caddy cannot express, or a literal backslash
	// right before the placeholder: the literal resolved value is used instead and
	// SecretInlined is true. For a value from `$env: NAME`, EnvTemplate is "{env.NAME}" under the
	// same rules; for a raw (non-JSON) string from APP_CONFIG_x it is "{env.APP_CONFIG_x}".
	// Empty when the value had no substitution: then Value is literal text (not escaped).
	EnvTemplate   string
	SecretInlined bool
	// FromFile is true for a value read by a `$file` directive: the file's
	// content, which Value holds literally (there is no placeholder for it),
	// so that callers can still treat it as a secret.
	FromFile bool

	Keys   []string // for maps: keys in merged order
	Values []*Node  // for maps: values, parallel to Keys
	Items  []*Node  // for sequences

	File   string // file the value came from ("" when from APP_CONFIG_* env: then Source says so)
	Line   int    // 1-based; for a map entry, the line of its key
	Source string // human-readable origin for messages: "app-config.yaml:12" or "env APP_CONFIG_proxy_endpoints"
}

// Get returns the map value for key, or nil (also for a nil node or a non-map).
func (n *Node) Get(key string) *Node {
	if n == nil || n.Kind != KindMap {
		return nil
	}
	for i, k := range n.Keys {
		if k == key {
			return n.Values[i]
		}
	}
	return nil
}

// Lookup follows a dotted path of map keys, e.g. Lookup("proxy.endpoints"). An empty path
// returns n itself. It returns nil when any step is missing or not a map. (Route keys may contain
// dots; look those up with Get.)
func (n *Node) Lookup(path string) *Node {
	if path == "" {
		return n
	}
	cur := n
	for _, part := range strings.Split(path, ".") {
		cur = cur.Get(part)
		if cur == nil {
			return nil
		}
	}
	return cur
}

// setKey sets key to child in the map node n, replacing an earlier value of
// the same key in place (a later duplicate wins, as in JavaScript objects);
// index maps keys to their positions in n.
func (n *Node) setKey(index map[string]int, key string, child *Node) {
	if j, ok := index[key]; ok {
		n.Values[j] = child
		return
	}
	index[key] = len(n.Keys)
	n.Keys = append(n.Keys, key)
	n.Values = append(n.Values, child)
}

// IsNull reports whether n is a YAML/JSON null (only possible inside sequences after merging).
func (n *Node) IsNull() bool {
	return n != nil && n.Kind == KindScalar && n.Tag == "!!null"
}

// String returns the value of a string scalar; ok is false for anything else (numbers and
// booleans included, as Backstage's getOptionalString). The empty string is returned with ok
// true; Backstage's getString would reject it.
func (n *Node) String() (string, bool) {
	if n == nil || n.Kind != KindScalar || n.Tag != "!!str" {
		return "", false
	}
	return n.Value, true
}

var (
	jsTrueRE  = regexp.MustCompile(`(?i)^(?:y|yes|true|1|on)$`)
	jsFalseRE = regexp.MustCompile(`(?i)^(?:n|no|false|0|off)$`)
)

// Bool converts n with Backstage's getOptionalBoolean rules: a boolean as is; a number or
// string whose trimmed text is y|yes|true|1|on or n|no|false|0|off (case-insensitive). ok is
// false when n is nil or not convertible (Backstage: "Unable to convert config value").
func (n *Node) Bool() (value, ok bool) {
	if n == nil || n.Kind != KindScalar {
		return false, false
	}
	switch n.Tag {
	case "!!bool":
		return n.Value == "true", true
	case "!!str", "!!int", "!!float":
		s := jsTrim(n.Value)
		if jsTrueRE.MatchString(s) {
			return true, true
		}
		if jsFalseRE.MatchString(s) {
			return false, true
		}
	}
	return false, false
}

// Number converts n with Backstage's getOptionalNumber rules: a number as is; a string is
// trimmed and converted with JavaScript's Number(), and must be finite and non-empty. ok is
// false when n is nil or not convertible.
func (n *Node) Number() (float64, bool) {
	if n == nil || n.Kind != KindScalar {
		return 0, false
	}
	switch n.Tag {
	case "!!int", "!!float":
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return 0, false
		}
		return f, true
	case "!!str":
		s := jsTrim(n.Value)
		if s == "" {
			return 0, false
		}
		f := jsStringToNumber(s)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, false
		}
		return f, true
	}
	return 0, false
}

// TypeName names the JavaScript type of n as Backstage's config errors do: "object", "array",
// "string", "empty-string", "number", "nan", "boolean", "null" or "undefined" (nil).
func (n *Node) TypeName() string {
	if n == nil {
		return "undefined"
	}
	switch n.Kind {
	case KindMap:
		return "object"
	case KindSeq:
		return "array"
	}
	switch n.Tag {
	case "!!null":
		return "null"
	case "!!bool":
		return "boolean"
	case "!!int", "!!float":
		if n.Value == "NaN" {
			return "nan"
		}
		return "number"
	}
	if n.Value == "" {
		return "empty-string"
	}
	return "string"
}

// Warning is a problem in the configuration that does not stop loading: a
// substitution that did not resolve, a key that is ignored. File and Line say
// where, when known.
type Warning struct {
	File    string
	Line    int
	Message string
	// Path is the config key the warning is about ("proxy.endpoints./a.target"),
	// or "" when it is about no one key. A warning that a value was removed
	// (an unset variable) has its key's Path, so a reader can say why a key it
	// needs is missing, and ignore warnings about keys it never reads.
	Path string
	// Template is, for a string removed because a variable is unset, the
	// Caddy template it would have with the variable set ("Bearer
	// {env.TOKEN}"), or "" when there is none.
	Template string
}

// Error is a configuration loading error that names where it happened.
type Error struct {
	File   string // "" for the environment or an unnamed main file
	Line   int    // 0 when unknown
	Source string // "app-config.yaml:12", "env APP_CONFIG_x", ...
	Msg    string
}

func (e *Error) Error() string {
	if e.Source == "" {
		return e.Msg
	}
	return e.Source + ": " + e.Msg
}

func NewError(file string, line int, format string, args ...any) *Error {
	return &Error{File: file, Line: line, Source: SourceOf(file, line), Msg: fmt.Sprintf(format, args...)}
}

func ErrorAt(n *Node, format string, args ...any) *Error {
	return &Error{File: n.File, Line: n.Line, Source: n.Source, Msg: fmt.Sprintf(format, args...)}
}

// sourceOf formats a position: "file:line", "file", "line N" (unnamed main file) or "".
func SourceOf(file string, line int) string {
	switch {
	case file != "" && line > 0:
		return file + ":" + strconv.Itoa(line)
	case file != "":
		return file
	case line > 0:
		return "line " + strconv.Itoa(line)
	}
	return ""
}

type Options struct {
	MainBody []byte                      // content of the file Caddy was given (the adapter receives it as bytes)
	MainFile string                      // its path; may be "" (admin API POST /load gives no filename): then relative paths resolve from the working directory and no default discovery happens
	Env      func(string) (string, bool) // environment lookup (os.LookupEnv in production; a map in tests); nil means an empty environment
	Environ  []string                    // the environment as KEY=VALUE for APP_CONFIG_* scanning (os.Environ() in production)

	// OnFile, if set, is called with the path of every file the load reads
	// or looks for (a default-discovery candidate that does not exist, a
	// $include or $file), so that a caller can watch them. The main file,
	// given as MainBody, is not reported.
	OnFile func(path string)

	// OpenFile replaces os.Open (tests and fuzzing use an in-memory file system).
	OpenFile func(name string) (io.ReadCloser, error)
}

// Load loads, transforms and merges the configuration. Warnings become Caddy
// adapter warnings. It is our adapter's analogue of @backstage/config-loader
// (packages/config-loader/src/sources/ConfigSources.ts):
//
//  1. The main file (opts.MainBody, named opts.MainFile) is always the first, lowest-priority
//     source.
//  2. If env CADDY_BACKSTAGE_CONFIG_FILES is set, it is a comma-separated list of paths
//     (relative to the main file's directory, or to the working directory when MainFile is
//     ""), and exactly those files are merged after the main file in list order, later wins,
//     like repeating Backstage's --config. Default discovery is then off, even when the list is
//     empty. An entry naming the main file itself is skipped (it is already loaded). A listed
//     file that does not exist is an error.
//  3. Otherwise, if MainFile's base name is app-config.yaml, Backstage's default discovery next
//     to it: app-config.<env>.yaml for each env in BACKSTAGE_ENV (comma list), if it exists;
//     then app-config.local.yaml if it exists; then app-config.<env>.local.yaml for each env,
//     if it exists. NODE_ENV selects nothing (as in Backstage).
//  4. After all files, the APP_CONFIG_* variables of opts.Environ (sorted by name) are merged
//     with the highest priority: APP_CONFIG_a_b_c='<json>' sets a.b.c to the JSON value, or to
//     the raw string when it is not JSON; empty values are ignored; null is an error.
//
// Each file is YAML (an empty file counts as absent; a non-object root is an error) and is
// transformed before merging: ${VAR}, ${VAR:-fallback} and $${ in string values, then the
// directives $file, $env and $include (config-loader's sources/transform/substitution.ts and
// include.ts). A string with an undefined
// substitution, and a $env of an unset variable, are removed, as Backstage does, with a warning.
// Sources are merged as Backstage's ConfigReader does (packages/config/src/reader.ts): maps deep-merge, anything
// else in a higher source replaces, null deletes, and a merged map lists the higher source's
// keys first. As in JavaScript objects, integer-like keys ("0", "17") come first, ascending.
//
// Errors are *Error values naming file and line. Hostile input is bounded: files over
// 10 MiB, YAML files with more than about a million elements, nesting deeper than 100,
// $include deeper than 32 or cyclic, YAML alias expansion over 100000 values, and more than
// 1000000 values, 1000 file reads or 64 MiB read in total are errors.
func Load(opts Options) (root *Node, warnings []Warning, err error) {
	defer func() {
		if r := recover(); r != nil {
			root, warnings, err = nil, nil, fmt.Errorf("internal error while loading the Backstage config: %v", r)
		}
	}()
	l := &configLoader{env: opts.Env, open: opts.OpenFile, onFile: opts.OnFile}
	if l.env == nil {
		l.env = func(string) (string, bool) { return "", false }
	}
	if l.open == nil {
		l.open = func(name string) (io.ReadCloser, error) { return os.Open(name) }
	}

	mainDir := ""
	mainAbs := ""
	if opts.MainFile != "" {
		mainDir = filepath.Dir(opts.MainFile)
		if abs, err := filepath.Abs(opts.MainFile); err == nil {
			mainAbs = abs
		}
	}

	var sources []*Node
	add := func(file string, body []byte) error {
		t, err := l.loadFile(file, body)
		if err != nil {
			return err
		}
		if t != nil {
			sources = append(sources, t)
		}
		return nil
	}

	if len(opts.MainBody) > maxConfigFileSize {
		return nil, nil, NewError(opts.MainFile, 0, "file is larger than %d MiB", maxConfigFileSize>>20)
	}
	if err := add(opts.MainFile, opts.MainBody); err != nil {
		return nil, l.warnings, err
	}

	if list, ok := l.env("CADDY_BACKSTAGE_CONFIG_FILES"); ok {
		for _, entry := range strings.Split(list, ",") {
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			p := resolveConfigPath(mainDir, entry)
			if abs, err := filepath.Abs(p); err == nil && mainAbs != "" && abs == mainAbs {
				continue
			}
			body, err := l.readFile(p)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil, l.warnings, NewError(p, 0, "config file listed in CADDY_BACKSTAGE_CONFIG_FILES does not exist")
				}
				return nil, l.warnings, NewError(p, 0, "cannot read config file listed in CADDY_BACKSTAGE_CONFIG_FILES: %v", err)
			}
			if err := add(p, body); err != nil {
				return nil, l.warnings, err
			}
		}
	} else if opts.MainFile != "" && filepath.Base(opts.MainFile) == "app-config.yaml" {
		var envs []string
		if v, ok := l.env("BACKSTAGE_ENV"); ok {
			for _, e := range strings.Split(v, ",") {
				if e = jsTrim(e); e != "" {
					envs = append(envs, e)
				}
			}
		}
		var candidates []string
		for _, e := range envs {
			candidates = append(candidates, "app-config."+e+".yaml")
		}
		candidates = append(candidates, "app-config.local.yaml")
		for _, e := range envs {
			candidates = append(candidates, "app-config."+e+".local.yaml")
		}
		for _, c := range candidates {
			p := filepath.Join(mainDir, c)
			body, err := l.readFile(p)
			if errors.Is(err, os.ErrNotExist) {
				continue // optional, as in Backstage
			}
			if err != nil {
				return nil, l.warnings, NewError(p, 0, "cannot read config file: %v", err)
			}
			if err := add(p, body); err != nil {
				return nil, l.warnings, err
			}
		}
	}

	envTree, err := l.envSource(opts.Environ)
	if err != nil {
		return nil, l.warnings, err
	}
	if envTree != nil {
		sources = append(sources, envTree)
	}

	var merged *Node
	for _, s := range sources {
		merged = mergeConfig(s, merged)
	}
	if merged == nil {
		merged = &Node{Kind: KindMap, File: opts.MainFile, Source: SourceOf(opts.MainFile, 0)}
	}
	return merged, l.warnings, nil
}

// configLoader holds the state of one Load call.
type configLoader struct {
	env          func(string) (string, bool)
	open         func(string) (io.ReadCloser, error)
	onFile       func(string)
	warnings     []Warning
	nodes        int
	aliasNodes   int
	fileReads    int
	bytesRead    int
	warningCount int
	includes     []includeFrame // the file being loaded and the $include chain, for cycles
	includeDepth int
}

type includeFrame struct {
	key     string // absolute path + "#" + data path
	display string
}

func (l *configLoader) warn(file string, line int, format string, args ...any) {
	l.warnAt("", file, line, format, args...)
}

// warnAt is warn about the config key at path.
func (l *configLoader) warnAt(path, file string, line int, format string, args ...any) {
	l.warningCount++
	switch {
	case l.warningCount <= MaxWarnings:
		l.warnings = append(l.warnings, Warning{File: file, Line: line, Message: fmt.Sprintf(format, args...), Path: path})
	case l.warningCount == MaxWarnings+1:
		l.warnings = append(l.warnings, Warning{File: file, Line: line, Message: "too many warnings; the rest are not shown"})
	}
}

// copyNode makes a node for a transformed value. It is not counted against the budget: a
// transform makes at most one node per parsed (and counted) one.
func copyNode(kind Kind, pos *Node) *Node {
	return &Node{Kind: kind, File: pos.File, Line: pos.Line, Source: pos.Source}
}

// newNode counts a new parsed value against the budget.
func (l *configLoader) newNode(kind Kind, file string, line int) (*Node, error) {
	l.nodes++
	if l.nodes > maxConfigNodes {
		return nil, NewError(file, line, "configuration has more than %d values; refusing to load it", maxConfigNodes)
	}
	return &Node{Kind: kind, File: file, Line: line, Source: SourceOf(file, line)}, nil
}

func (l *configLoader) readFile(path string) ([]byte, error) {
	if l.onFile != nil {
		l.onFile(path)
	}
	l.fileReads++
	if l.fileReads > maxConfigFileReads {
		return nil, fmt.Errorf("more than %d files read while loading the configuration", maxConfigFileReads)
	}
	f, err := l.open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, os.ErrNotExist
		}
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigFileSize {
		return nil, fmt.Errorf("file is larger than %d MiB", maxConfigFileSize>>20)
	}
	l.bytesRead += len(data)
	if l.bytesRead > maxConfigReadBytes {
		return nil, fmt.Errorf("more than %d MiB read while loading the configuration", maxConfigReadBytes>>20)
	}
	return data, nil
}

// loadFile parses and transforms one config file. It returns nil for a file without data.
func (l *configLoader) loadFile(file string, body []byte) (*Node, error) {
	tree, err := l.parseYAML(body, file)
	if err != nil {
		return nil, err
	}
	if tree.IsNull() {
		return nil, nil // Backstage: an empty file (or a null document) counts as absent
	}
	dir := ""
	if file != "" {
		dir = filepath.Dir(file)
		if abs, err := filepath.Abs(file); err == nil {
			l.includes = []includeFrame{{key: abs + "#", display: file}}
			defer func() { l.includes = nil }()
		}
	}
	out, err := l.transform(tree, "", dir, 1)
	if err != nil {
		return nil, err
	}
	if out == nil || out.Kind != KindMap {
		return nil, NewError(file, tree.Line, "expected object at config root, got %s", out.TypeName())
	}
	return out, nil
}

// ---------------------------------------------------------------------------------------------
// YAML parsing

var yamlErrLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// maxYAMLErrorSearchBytes bounds the file size for which a YAML error's line
// is searched (a few parses of prefixes of the file, only on the error path).
const maxYAMLErrorSearchBytes = 1 << 20

// yamlParseError turns a YAML parse error into an Error that names the line
// that really broke and, when that line is inside a proxy endpoint, the
// endpoint. The YAML library reports the line where the enclosing block
// starts (its "context"), which for an indentation slip inside an endpoint is
// the endpoint's first line or an earlier one, not the line to fix.
func yamlParseError(file string, body []byte, err error) error {
	msg := err.Error()
	m := yamlErrLineRE.FindStringSubmatch(msg)
	if m == nil {
		return NewError(file, 0, "invalid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
	}
	line, _ := strconv.Atoi(m[1])
	problem := m[2]
	if len(body) > maxYAMLErrorSearchBytes {
		return NewError(file, line, "invalid YAML: %s", problem)
	}
	lines := bytes.SplitAfter(body, []byte("\n"))
	prefix := func(n int) []byte { return bytes.Join(lines[:n], nil) }
	// The smallest prefix of whole lines that fails to parse ends with the
	// broken line. The reported line is a lower bound.
	lo, hi := max(line, 1), len(lines)
	if hi < lo || !yamlFails(prefix(hi)) {
		return NewError(file, line, "invalid YAML: %s", problem)
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if yamlFails(prefix(mid)) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	broken := lo
	indent := len(lines[broken-1]) - len(bytes.TrimLeft(lines[broken-1], " "))
	if route, start := yamlEndpointAt(prefix(broken-1), broken, indent); route != "" {
		return NewError(file, broken, "invalid YAML: %s (in proxy endpoint '%s', which starts at line %d)", problem, route, start)
	}
	return NewError(file, broken, "invalid YAML: %s", problem)
}

// yamlFails reports whether b is not a valid YAML stream.
func yamlFails(b []byte) (failed bool) {
	defer func() {
		if recover() != nil {
			failed = true
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var n yaml.Node
		switch err := dec.Decode(&n); {
		case err == io.EOF:
			return false
		case err != nil:
			return true
		}
	}
}

// yamlEndpointAt is the proxy endpoint (key and first line) of the valid
// YAML b that contains line, indented by indent spaces, or "" when line is
// in none: the last endpoint key at or before line, under proxy.endpoints
// or, in the old layout, directly under proxy, when line is indented deeper
// than that key.
func yamlEndpointAt(b []byte, line, indent int) (route string, start int) {
	var doc yaml.Node
	if yamlFails(b) || yaml.Unmarshal(b, &doc) != nil || len(doc.Content) == 0 {
		return "", 0
	}
	get := func(n *yaml.Node, key string) *yaml.Node {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1]
			}
		}
		return nil
	}
	proxy := get(doc.Content[0], "proxy")
	if proxy == nil || proxy.Kind != yaml.MappingNode || proxy.Line > line {
		return "", 0
	}
	eps := get(proxy, "endpoints")
	if eps == nil {
		eps = proxy
	}
	if eps.Kind != yaml.MappingNode {
		return "", 0
	}
	for i := 0; i+1 < len(eps.Content); i += 2 {
		k := eps.Content[i]
		if k.Line > line {
			break
		}
		if eps == proxy && !strings.HasPrefix(k.Value, "/") {
			continue
		}
		route, start = k.Value, k.Line
		if indent < k.Column { // not deeper than the key (Column is 1-based)
			route, start = "", 0
		}
	}
	return route, start
}

// yamlSeparators is a cheap upper bound on the number of YAML elements, to refuse documents that
// would take too much memory before the parser builds them.
func yamlSeparators(body []byte) int {
	n := 0
	for _, c := range body {
		switch c {
		case ',', ':', '-', '\n', '?', '[', '{', '*':
			n++
		}
	}
	return n
}

// parseYAML parses one YAML document as the `yaml` npm package (v2, YAML 1.2 core schema) does
// for Backstage. An empty document gives a null scalar.
func (l *configLoader) parseYAML(body []byte, file string) (node *Node, err error) {
	if len(body) > maxConfigFileSize {
		return nil, NewError(file, 0, "file is larger than %d MiB", maxConfigFileSize>>20)
	}
	if yamlSeparators(body) > maxYAMLSeparators {
		return nil, NewError(file, 0, "file has too many YAML elements (more than %d); refusing to parse it", maxYAMLSeparators)
	}
	defer func() {
		if r := recover(); r != nil {
			node, err = nil, NewError(file, 0, "invalid YAML: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(body))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return l.newNullNode(file, 1)
		}
		return nil, yamlParseError(file, body, err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		return nil, yamlParseError(file, body, err)
	default:
		return nil, NewError(file, next.Line, "the file contains more than one YAML document (Backstage rejects this)")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return l.newNullNode(file, doc.Line)
	}
	c := &yamlConverter{l: l, file: file, active: map[*yaml.Node]bool{}}
	root := doc.Content[0]
	return c.convert(root, root.Line, 1)
}

func (l *configLoader) newNullNode(file string, line int) (*Node, error) {
	n, err := l.newNode(KindScalar, file, line)
	if err != nil {
		return nil, err
	}
	n.Tag, n.Value = "!!null", "null"
	return n, nil
}

type yamlConverter struct {
	l          *configLoader
	file       string
	active     map[*yaml.Node]bool // anchors being expanded (cycle detection)
	aliasDepth int
}

func (c *yamlConverter) newNode(kind Kind, line int) (*Node, error) {
	if c.aliasDepth > 0 {
		c.l.aliasNodes++
		if c.l.aliasNodes > maxAliasNodes {
			return nil, NewError(c.file, line, "YAML aliases expand to more than %d values; refusing to load it (alias bomb?)", maxAliasNodes)
		}
	}
	return c.l.newNode(kind, c.file, line)
}

// convert turns a yaml.Node into a Node. line is the position to record: the key's line
// for a map value, the node's own line otherwise.
func (c *yamlConverter) convert(n *yaml.Node, line, depth int) (*Node, error) {
	if depth > maxConfigDepth {
		return nil, NewError(c.file, n.Line, "nesting deeper than %d levels", maxConfigDepth)
	}
	switch n.Kind {
	case yaml.AliasNode:
		target := n.Alias
		if target == nil {
			return nil, NewError(c.file, n.Line, "invalid YAML: unresolved alias *%s", n.Value)
		}
		if c.active[target] {
			return nil, NewError(c.file, n.Line, "YAML alias *%s refers to a value that contains it", n.Value)
		}
		c.active[target] = true
		c.aliasDepth++
		out, err := c.convert(target, line, depth)
		c.aliasDepth--
		delete(c.active, target)
		return out, err

	case yaml.ScalarNode:
		out, err := c.newNode(KindScalar, line)
		if err != nil {
			return nil, err
		}
		out.Tag, out.Value = c.resolveScalar(n)
		return out, nil

	case yaml.SequenceNode:
		out, err := c.newNode(KindSeq, line)
		if err != nil {
			return nil, err
		}
		out.Items = make([]*Node, 0, len(n.Content))
		for _, item := range n.Content {
			v, err := c.convert(item, item.Line, depth+1)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, v)
		}
		return out, nil

	case yaml.MappingNode:
		out, err := c.newNode(KindMap, line)
		if err != nil {
			return nil, err
		}
		index := map[string]int{}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kn := k
			if kn.Kind == yaml.AliasNode && kn.Alias != nil {
				kn = kn.Alias
			}
			if kn.Kind != yaml.ScalarNode {
				return nil, NewError(c.file, k.Line, "a map key must be a scalar (complex YAML keys are not supported)")
			}
			tag, val := c.resolveScalar(kn)
			key := val
			if tag == "!!null" {
				key = "" // String-keyed like JavaScript: a null key is ""
			}
			// The yaml package rejects keys with equal values (1 and 0x1 are equal, "1" and 1 are
			// not); keys that only become equal as strings are merged, later wins.
			if !(tag == "!!float" && val == "NaN") {
				id := jsTypeClass(tag) + "\x00" + val
				if seen[id] {
					return nil, NewError(c.file, k.Line, "duplicate map key %q (Backstage rejects duplicate keys)", key)
				}
				seen[id] = true
			}
			child, err := c.convert(v, k.Line, depth+1)
			if err != nil {
				return nil, err
			}
			out.setKey(index, key, child)
		}
		sortJSKeys(out)
		return out, nil
	}
	return nil, NewError(c.file, n.Line, "invalid YAML: unexpected node kind %d", n.Kind)
}

func jsTypeClass(tag string) string {
	switch tag {
	case "!!int", "!!float":
		return "number"
	}
	return tag
}

// resolveScalar resolves a scalar with the YAML 1.2 core schema of the `yaml` npm package.
func (c *yamlConverter) resolveScalar(n *yaml.Node) (tag, value string) {
	if n.Style&yaml.TaggedStyle != 0 {
		switch n.Tag {
		case "!!str":
			return "!!str", n.Value
		case "!!null", "!!bool", "!!int", "!!float":
			if t, v := resolveCoreScalar(n.Value); t == n.Tag {
				return t, v
			}
		}
		c.l.warn(c.file, n.Line, "unresolved YAML tag %s; the value is read as a string (as Backstage does)", n.Tag)
		return "!!str", n.Value
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return "!!str", n.Value
	}
	return resolveCoreScalar(n.Value)
}

var (
	coreNullRE   = regexp.MustCompile(`^(?:~|[Nn]ull|NULL)?$`)
	coreBoolRE   = regexp.MustCompile(`^(?:[Tt]rue|TRUE|[Ff]alse|FALSE)$`)
	coreIntOctRE = regexp.MustCompile(`^0o[0-7]+$`)
	coreIntRE    = regexp.MustCompile(`^[-+]?[0-9]+$`)
	coreIntHexRE = regexp.MustCompile(`^0x[0-9a-fA-F]+$`)
	coreNaNInfRE = regexp.MustCompile(`^(?:[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$`)
	coreFloatExp = regexp.MustCompile(`^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$`)
	coreFloatRE  = regexp.MustCompile(`^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$`)
)

// resolveCoreScalar resolves a plain scalar; numbers get their JavaScript String() form.
func resolveCoreScalar(s string) (tag, value string) {
	switch {
	case coreNullRE.MatchString(s):
		return "!!null", "null"
	case coreBoolRE.MatchString(s):
		return "!!bool", strings.ToLower(s)
	case coreIntOctRE.MatchString(s):
		return "!!int", JSNumberString(bigIntFloat(s[2:], 8))
	case coreIntRE.MatchString(s):
		f, _ := strconv.ParseFloat(s, 64)
		return "!!int", JSNumberString(f)
	case coreIntHexRE.MatchString(s):
		return "!!int", JSNumberString(bigIntFloat(s[2:], 16))
	case coreNaNInfRE.MatchString(s):
		switch {
		case strings.HasSuffix(strings.ToLower(s), "nan"):
			return "!!float", "NaN"
		case s[0] == '-':
			return "!!float", "-Infinity"
		}
		return "!!float", "Infinity"
	case coreFloatExp.MatchString(s), coreFloatRE.MatchString(s):
		f, _ := strconv.ParseFloat(s, 64)
		return "!!float", JSNumberString(f)
	}
	return "!!str", s
}

func bigIntFloat(digits string, base int) float64 {
	var i big.Int
	if _, ok := i.SetString(digits, base); !ok {
		return math.NaN()
	}
	f, _ := new(big.Float).SetInt(&i).Float64()
	return f
}

// jsNumberString formats f as JavaScript's Number.prototype.toString() does.
func JSNumberString(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		return "0"
	}
	sign := ""
	if f < 0 {
		sign, f = "-", -f
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddddde±XX, shortest round-trip digits
	mant, expStr, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	exp, _ := strconv.Atoi(expStr)
	k, n := len(digits), exp+1
	switch {
	case k <= n && n <= 21:
		return sign + digits + strings.Repeat("0", n-k)
	case 0 < n && n <= 21:
		return sign + digits[:n] + "." + digits[n:]
	case -6 < n && n <= 0:
		return sign + "0." + strings.Repeat("0", -n) + digits
	}
	out := sign + digits[:1]
	if k > 1 {
		out += "." + digits[1:]
	}
	if n-1 >= 0 {
		return out + "e+" + strconv.Itoa(n-1)
	}
	return out + "e-" + strconv.Itoa(1-n)
}

var jsDecimalRE = regexp.MustCompile(`^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$`)

// jsStringToNumber converts a string as JavaScript's Number() does (NaN when invalid).
func jsStringToNumber(s string) float64 {
	s = jsTrim(s)
	switch s {
	case "":
		return 0
	case "Infinity", "+Infinity":
		return math.Inf(1)
	case "-Infinity":
		return math.Inf(-1)
	}
	if len(s) > 2 && s[0] == '0' {
		base := 0
		switch s[1] {
		case 'x', 'X':
			base = 16
		case 'o', 'O':
			base = 8
		case 'b', 'B':
			base = 2
		}
		if base != 0 {
			for _, r := range s[2:] {
				if r == '_' || r == '+' || r == '-' {
					return math.NaN()
				}
			}
			return bigIntFloat(s[2:], base)
		}
	}
	if !jsDecimalRE.MatchString(s) {
		return math.NaN()
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return math.NaN()
	}
	return f
}

// isJSArrayIndex reports whether JavaScript orders key as an integer (array index) key.
func isJSArrayIndex(key string) bool {
	if key == "" || len(key) > 10 || (len(key) > 1 && key[0] == '0') {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] < '0' || key[i] > '9' {
			return false
		}
	}
	v, err := strconv.ParseUint(key, 10, 64)
	return err == nil && v <= math.MaxUint32-1
}

// sortJSKeys orders map keys as a JavaScript object does: integer-like keys first, ascending,
// then the others in insertion order.
func sortJSKeys(n *Node) {
	if !slices.ContainsFunc(n.Keys, isJSArrayIndex) {
		return
	}
	type kv struct {
		k string
		v *Node
	}
	var ints, rest []kv
	for i, k := range n.Keys {
		if isJSArrayIndex(k) {
			ints = append(ints, kv{k, n.Values[i]})
		} else {
			rest = append(rest, kv{k, n.Values[i]})
		}
	}
	sort.SliceStable(ints, func(i, j int) bool {
		a, _ := strconv.ParseUint(ints[i].k, 10, 64)
		b, _ := strconv.ParseUint(ints[j].k, 10, 64)
		return a < b
	})
	n.Keys, n.Values = n.Keys[:0], n.Values[:0]
	for _, e := range append(ints, rest...) {
		n.Keys = append(n.Keys, e.k)
		n.Values = append(n.Values, e.v)
	}
}

// ---------------------------------------------------------------------------------------------
// JSON parsing ($include of .json files and APP_CONFIG_* values), with order and lines

type jsonConverter struct {
	l      *configLoader
	dec    *json.Decoder
	data   []byte
	file   string // "" for env values
	source string // fixed Source for env values
	off    int64
	line   int
}

// parseJSON parses data as JavaScript's JSON.parse does. Duplicate keys: the later value wins,
// at the position of the first. The caller must have checked json.Valid(data).
func (l *configLoader) parseJSON(data []byte, file, source string) (*Node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	c := &jsonConverter{l: l, dec: dec, data: data, file: file, source: source, line: 1}
	n, err := c.value(1)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, c.errorf("invalid JSON: unexpected data after the value")
	}
	return n, nil
}

// curLine returns the line of the decoder's current offset.
func (c *jsonConverter) curLine() int {
	off := c.dec.InputOffset()
	if off > int64(len(c.data)) {
		off = int64(len(c.data))
	}
	if off > c.off {
		c.line += bytes.Count(c.data[c.off:off], []byte{'\n'})
		c.off = off
	}
	return c.line
}

func (c *jsonConverter) errorf(format string, args ...any) error {
	if c.file == "" {
		return &Error{Source: c.source, Msg: fmt.Sprintf(format, args...)}
	}
	return NewError(c.file, c.curLine(), format, args...)
}

func (c *jsonConverter) newNode(kind Kind, line int) (*Node, error) {
	if c.file == "" {
		c.l.nodes++
		if c.l.nodes > maxConfigNodes {
			return nil, c.errorf("configuration has more than %d values; refusing to load it", maxConfigNodes)
		}
		return &Node{Kind: kind, Source: c.source}, nil
	}
	return c.l.newNode(kind, c.file, line)
}

func (c *jsonConverter) value(depth int) (*Node, error) {
	if depth > maxConfigDepth {
		return nil, c.errorf("nesting deeper than %d levels", maxConfigDepth)
	}
	tok, err := c.dec.Token()
	if err != nil {
		return nil, c.errorf("invalid JSON: %v", err)
	}
	// the offset is now the end of the token: for a one-line token, its line
	return c.fromToken(tok, c.curLine(), depth)
}

func (c *jsonConverter) fromToken(tok json.Token, line, depth int) (*Node, error) {
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			out, err := c.newNode(KindMap, line)
			if err != nil {
				return nil, err
			}
			index := map[string]int{}
			for c.dec.More() {
				kt, err := c.dec.Token()
				if err != nil {
					return nil, c.errorf("invalid JSON: %v", err)
				}
				key, ok := kt.(string)
				if !ok {
					return nil, c.errorf("invalid JSON: object key is not a string")
				}
				keyLine := c.curLine()
				child, err := c.valueAt(keyLine, depth+1)
				if err != nil {
					return nil, err
				}
				out.setKey(index, key, child)
			}
			if _, err := c.dec.Token(); err != nil {
				return nil, c.errorf("invalid JSON: %v", err)
			}
			sortJSKeys(out)
			return out, nil
		case '[':
			out, err := c.newNode(KindSeq, line)
			if err != nil {
				return nil, err
			}
			for c.dec.More() {
				item, err := c.value(depth + 1)
				if err != nil {
					return nil, err
				}
				out.Items = append(out.Items, item)
			}
			if _, err := c.dec.Token(); err != nil {
				return nil, c.errorf("invalid JSON: %v", err)
			}
			return out, nil
		}
		return nil, c.errorf("invalid JSON: unexpected %v", t)
	case string:
		out, err := c.newNode(KindScalar, line)
		if err != nil {
			return nil, err
		}
		out.Tag, out.Value = "!!str", t
		return out, nil
	case json.Number:
		out, err := c.newNode(KindScalar, line)
		if err != nil {
			return nil, err
		}
		f, perr := strconv.ParseFloat(string(t), 64)
		if perr != nil && !errors.Is(perr, strconv.ErrRange) {
			return nil, c.errorf("invalid JSON number %s", t)
		}
		out.Tag = "!!int"
		if strings.ContainsAny(string(t), ".eE") {
			out.Tag = "!!float"
		}
		out.Value = JSNumberString(f)
		return out, nil
	case bool:
		out, err := c.newNode(KindScalar, line)
		if err != nil {
			return nil, err
		}
		out.Tag, out.Value = "!!bool", strconv.FormatBool(t)
		return out, nil
	case nil:
		out, err := c.newNode(KindScalar, line)
		if err != nil {
			return nil, err
		}
		out.Tag, out.Value = "!!null", "null"
		return out, nil
	}
	return nil, c.errorf("invalid JSON: unexpected token %v", tok)
}

// valueAt reads an object member value, recorded at the line of its key.
func (c *jsonConverter) valueAt(keyLine, depth int) (*Node, error) {
	if depth > maxConfigDepth {
		return nil, c.errorf("nesting deeper than %d levels", maxConfigDepth)
	}
	tok, err := c.dec.Token()
	if err != nil {
		return nil, c.errorf("invalid JSON: %v", err)
	}
	return c.fromToken(tok, keyLine, depth)
}

// ---------------------------------------------------------------------------------------------
// APP_CONFIG_* environment source (EnvConfigSource.ts)

const appConfigPrefix = "APP_CONFIG_"

var envKeyPartRE = regexp.MustCompile(`(?i)^[a-z][a-z0-9]*(?:[-_:][a-z0-9]+)*$`)

func (l *configLoader) envSource(environ []string) (*Node, error) {
	vars := map[string]string{}
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, appConfigPrefix) {
			continue
		}
		vars[name] = value
	}
	names := make([]string, 0, len(vars))
	for name, value := range vars {
		if value != "" { // Backstage skips empty values
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, nil
	}
	root := &Node{Kind: KindMap, Source: "env"}
	for _, name := range names {
		src := "env " + name
		key := strings.TrimPrefix(name, appConfigPrefix)
		parts := strings.Split(key, "_")
		if len(parts) > maxConfigDepth {
			return nil, &Error{Source: src, Msg: fmt.Sprintf("nesting deeper than %d levels", maxConfigDepth)}
		}
		obj := root
		for i, part := range parts {
			if !envKeyPartRE.MatchString(part) {
				return nil, &Error{Source: src, Msg: fmt.Sprintf("invalid env config key %q: each _-separated part must match %s", key, envKeyPartRE.String()[4:])}
			}
			existing := obj.Get(part)
			if i < len(parts)-1 {
				if existing == nil {
					l.nodes++
					existing = &Node{Kind: KindMap, Source: src}
					obj.Keys = append(obj.Keys, part)
					obj.Values = append(obj.Values, existing)
				} else if existing.Kind != KindMap {
					return nil, &Error{Source: src, Msg: fmt.Sprintf("could not nest config for key %q under existing value %q", key, strings.Join(parts[:i+1], "_"))}
				}
				obj = existing
				continue
			}
			if existing != nil {
				return nil, &Error{Source: src, Msg: fmt.Sprintf("refusing to override existing config at key %q", key)}
			}
			value, err := l.envValue(name, vars[name], src, len(parts))
			if err != nil {
				return nil, err
			}
			obj.Keys = append(obj.Keys, part)
			obj.Values = append(obj.Values, value)
		}
	}
	sortJSKeysDeep(root)
	return root, nil
}

func (l *configLoader) envValue(name, raw, src string, depth int) (*Node, error) {
	data := []byte(raw)
	if json.Valid(data) {
		c := &jsonConverter{l: l, file: "", source: src}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		c.dec, c.data, c.line = dec, data, 1
		v, err := c.value(depth)
		if err != nil {
			return nil, err
		}
		if v.IsNull() {
			return nil, &Error{Source: src, Msg: "failed to parse JSON-serialized config value: value may not be null"}
		}
		return v, nil
	}
	l.nodes++
	v := &Node{Kind: KindScalar, Tag: "!!str", Value: raw, Source: src}
	if safeEnvName(name) {
		v.EnvTemplate = "{env." + name + "}"
	}
	return v, nil
}

func sortJSKeysDeep(n *Node) {
	if n == nil || n.Kind != KindMap {
		return
	}
	sortJSKeys(n)
	for _, v := range n.Values {
		sortJSKeysDeep(v)
	}
}

// ---------------------------------------------------------------------------------------------
// Transforms: substitution (substitution.ts) and include directives (include.ts, apply.ts)

func childPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// transform applies Backstage's config transforms to n. It returns nil for an undefined value
// (the key is then removed).
func (l *configLoader) transform(n *Node, path, dir string, depth int) (*Node, error) {
	if depth > maxConfigDepth {
		return nil, ErrorAt(n, "%s: nesting deeper than %d levels", displayPath(path), maxConfigDepth)
	}
	switch n.Kind {
	case KindScalar:
		if n.Tag != "!!str" {
			return n, nil
		}
		return l.substituteNode(n, path)
	case KindSeq:
		return l.transformChildren(n, n, path, dir, depth)
	}
	directive := ""
	for _, k := range n.Keys {
		if k == "$file" || k == "$env" || k == "$include" {
			directive = k
			break
		}
	}
	if directive == "" {
		return l.transformChildren(n, n, path, dir, depth)
	}
	arg := n.Values[slices.Index(n.Keys, directive)]
	if len(n.Keys) != 1 {
		return nil, ErrorAt(arg, "include key %s should not have adjacent keys (at %s)", directive, displayPath(path))
	}
	s, ok := arg.String()
	if !ok {
		return nil, ErrorAt(arg, "%s include value is not a string (at %s)", directive, displayPath(path))
	}
	r := l.substitute(s)
	if r.undefined != nil {
		return nil, ErrorAt(arg, "%s substitution value was undefined: %s (at %s)", directive, strings.Join(r.undefined, ", "), displayPath(path))
	}
	switch directive {
	case "$file":
		return l.fileDirective(n, arg, r.value, path, dir)
	case "$env":
		return l.envDirective(n, r.value, path)
	}
	return l.includeDirective(n, arg, r.value, path, dir, depth)
}

// transformChildren transforms the children of src into a new container positioned at pos.
func (l *configLoader) transformChildren(src, pos *Node, path, dir string, depth int) (*Node, error) {
	out := copyNode(src.Kind, pos)
	if src.Kind == KindSeq {
		out.Items = make([]*Node, 0, len(src.Items))
		for i, item := range src.Items {
			v, err := l.transform(item, path+"["+strconv.Itoa(i)+"]", dir, depth+1)
			if err != nil {
				return nil, err
			}
			if v != nil { // undefined elements are dropped
				out.Items = append(out.Items, v)
			}
		}
		return out, nil
	}
	for i, k := range src.Keys {
		v, err := l.transform(src.Values[i], childPath(path, k), dir, depth+1)
		if err != nil {
			return nil, err
		}
		if v != nil {
			out.Keys = append(out.Keys, k)
			out.Values = append(out.Values, v)
		}
	}
	return out, nil
}

func displayPath(path string) string {
	if path == "" {
		return "the config root"
	}
	return path
}

func resolveConfigPath(dir, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}

func (l *configLoader) fileDirective(n, arg *Node, name, path, dir string) (*Node, error) {
	p := resolveConfigPath(dir, name)
	data, err := l.readFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrorAt(arg, "$file: failed to read file %s: %q does not exist (at %s)", name, p, displayPath(path))
		}
		return nil, ErrorAt(arg, "$file: failed to read file %s: %v (at %s)", name, err, displayPath(path))
	}
	out := copyNode(KindScalar, n)
	out.Tag = "!!str"
	out.Value = strings.TrimRightFunc(strings.ToValidUTF8(string(data), "\uFFFD"), jsIsSpace)
	out.FromFile = true
	return out, nil
}

func (l *configLoader) envDirective(n *Node, name, path string) (*Node, error) {
	raw, ok := l.env(name)
	if !ok {
		l.warnAt(path, n.File, n.Line, "%s: $env: environment variable %s is not set; the value is removed (as Backstage does)", displayPath(path), name)
		return nil, nil
	}
	out := copyNode(KindScalar, n)
	out.Tag = "!!str"
	out.Value = jsTrim(raw)
	if out.Value == raw && safeEnvName(name) {
		out.EnvTemplate = "{env." + name + "}"
	} else {
		out.EnvTemplate = EscapeCaddyPlaceholders(out.Value)
		out.SecretInlined = out.Value != ""
	}
	return out, nil
}

// nodeExtname is Node's path.extname.
func nodeExtname(p string) string {
	p = strings.TrimRight(p, "/")
	base := p[strings.LastIndex(p, "/")+1:]
	i := strings.LastIndex(base, ".")
	if i <= 0 || base == ".." {
		return ""
	}
	return base[i:]
}

func (l *configLoader) includeDirective(n, arg *Node, value, path, dir string, depth int) (*Node, error) {
	filePath, dataPath, _ := strings.Cut(value, "#")
	ext := nodeExtname(filePath)
	if ext != ".json" && ext != ".yaml" && ext != ".yml" {
		return nil, ErrorAt(arg, "$include: unsupported file extension %q in %q (only .json, .yaml and .yml files can be included; at %s)", ext, filePath, displayPath(path))
	}
	p := resolveConfigPath(dir, filePath)
	abs, err := filepath.Abs(p)
	if err != nil {
		abs = p
	}
	key := abs + "#" + dataPath
	for i, f := range l.includes {
		if f.key == key {
			chain := make([]string, 0, len(l.includes)-i+1)
			for _, g := range l.includes[i:] {
				chain = append(chain, g.display)
			}
			chain = append(chain, p)
			return nil, ErrorAt(arg, "$include: include cycle: %s", strings.Join(chain, " -> "))
		}
	}
	if l.includeDepth >= maxIncludeDepth {
		return nil, ErrorAt(arg, "$include: includes nested deeper than %d levels", maxIncludeDepth)
	}
	data, err := l.readFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrorAt(arg, "$include: failed to include %q, file does not exist (at %s)", p, displayPath(path))
		}
		return nil, ErrorAt(arg, "$include: failed to read %q: %v (at %s)", p, err, displayPath(path))
	}
	var included *Node
	if ext == ".json" {
		if !json.Valid(data) {
			var syn *json.SyntaxError
			var v any
			line := 0
			if err := json.Unmarshal(data, &v); errors.As(err, &syn) {
				line = 1 + bytes.Count(data[:min(int(syn.Offset), len(data))], []byte{'\n'})
				return nil, NewError(p, line, "invalid JSON: %v (included from %s)", err, arg.Source)
			}
			return nil, NewError(p, line, "invalid JSON (included from %s)", arg.Source)
		}
		included, err = l.parseJSON(data, p, "")
	} else {
		included, err = l.parseYAML(data, p)
	}
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.Msg += " (included from " + arg.Source + ")"
		}
		return nil, err
	}

	if dataPath != "" {
		parts := strings.Split(dataPath, ".")
		for i, part := range parts {
			if included == nil || included.Kind != KindMap {
				return nil, ErrorAt(arg, "$include: value at '%s' in included file %s is not an object", strings.Join(parts[:i], "."), filePath)
			}
			included = included.Get(part)
		}
		if included == nil {
			l.warnAt(path, arg.File, arg.Line, "%s: $include: nothing at '%s' in %s; the value is removed (as Backstage does)", displayPath(path), dataPath, p)
			return nil, nil
		}
	}

	switch included.Kind {
	case KindScalar:
		if included.Tag == "!!str" {
			return l.substituteNode(included, path)
		}
		return included, nil
	}
	l.includes = append(l.includes, includeFrame{key: key, display: p})
	l.includeDepth++
	defer func() {
		l.includes = l.includes[:len(l.includes)-1]
		l.includeDepth--
	}()
	// As in Backstage, the included value itself is not checked for directives again; its
	// children are transformed, relative to the included file's directory.
	return l.transformChildren(included, n, path, filepath.Dir(p), depth)
}

// substitutionRE is Backstage's split pattern /(\$?\$\{[^{}]*\})/.
var substitutionRE = regexp.MustCompile(`\$?\$\{[^{}]*\}`)

type substitution struct {
	applied   bool     // the string contained ${...} or $${...}
	value     string   // resolved value
	template  string   // Caddy template (see Node.EnvTemplate)
	inlined   bool     // a secret was inlined into template
	undefined []string // reasons the value is undefined; nil when defined
	// pending is, for an undefined value, the Caddy template it would have
	// if every unset variable were set ({env.NAME} in their place), or ""
	// when that cannot be expressed: a caller that decides at run time
	// (a header sent only if its variable is set where Caddy runs) uses it.
	pending string
}

func (l *configLoader) lookupTrimmed(name string) (raw, trimmed string, ok bool) {
	raw, ok = l.env(name)
	if !ok {
		return "", "", false
	}
	return raw, jsTrim(raw), true
}

// substitute applies ${...} substitution to s exactly as substitution.ts does.
func (l *configLoader) substitute(s string) substitution {
	matches := substitutionRE.FindAllStringIndex(s, -1)
	if matches == nil {
		return substitution{value: s}
	}
	r := substitution{applied: true}
	var val, tpl strings.Builder
	pendingOK := true
	pendingEnv := func(name string) {
		if safeEnvName(name) && !strings.HasSuffix(tpl.String(), `\`) {
			tpl.WriteString("{env." + name + "}")
		} else {
			pendingOK = false
		}
	}
	literal := func(text string) {
		val.WriteString(text)
		tpl.WriteString(EscapeCaddyPlaceholders(text))
	}
	envPart := func(name, raw, trimmed string) {
		val.WriteString(trimmed)
		// Caddy's replacer reads "\{" as an escaped brace, so a placeholder cannot follow a
		// literal backslash; Caddy would not trim the value as Backstage does.
		t := tpl.String()
		if raw == trimmed && safeEnvName(name) && !strings.HasSuffix(t, `\`) {
			tpl.WriteString("{env." + name + "}")
			return
		}
		tpl.WriteString(EscapeCaddyPlaceholders(trimmed))
		if trimmed != "" {
			r.inlined = true
		}
	}
	last := 0
	for _, m := range matches {
		literal(s[last:m[0]])
		last = m[1]
		part := s[m[0]:m[1]]
		if strings.HasPrefix(part, "$$") {
			literal(part[1:])
			continue
		}
		inner := part[2 : len(part)-1]
		if name, fallback, ok := strings.Cut(inner, ":-"); ok {
			name, fallback = jsTrim(name), jsTrim(fallback)
			raw, trimmed, set := l.lookupTrimmed(name)
			switch {
			case set && trimmed != "":
				envPart(name, raw, trimmed)
			case fallback != "":
				literal(fallback)
			default:
				r.undefined = append(r.undefined, undefinedReason(name, set, true))
				pendingEnv(name)
			}
			continue
		}
		name := jsTrim(inner)
		raw, trimmed, set := l.lookupTrimmed(name)
		if !set {
			r.undefined = append(r.undefined, undefinedReason(name, false, false))
			pendingEnv(name)
			continue
		}
		envPart(name, raw, trimmed)
	}
	literal(s[last:])
	if r.undefined != nil {
		if pendingOK && !r.inlined {
			r.pending = tpl.String()
		}
		return r
	}
	r.value, r.template = val.String(), tpl.String()
	return r
}

func undefinedReason(name string, set, fallback bool) string {
	switch {
	case name == "" && fallback:
		return "a ${:-} substitution names no variable and has an empty fallback"
	case name == "":
		return "a ${} substitution names no variable"
	case fallback && set:
		return "environment variable " + name + " is empty and the fallback is empty"
	case fallback:
		return "environment variable " + name + " is not set and the fallback is empty"
	}
	return "environment variable " + name + " is not set"
}

// substituteNode applies substitution to a string scalar; nil means undefined (key removed).
func (l *configLoader) substituteNode(n *Node, path string) (*Node, error) {
	r := l.substitute(n.Value)
	if !r.applied {
		return n, nil
	}
	if r.undefined != nil {
		l.warnAt(path, n.File, n.Line, "%s: %s; the value is removed (as Backstage does)", displayPath(path), strings.Join(r.undefined, ", "))
		if len(l.warnings) > 0 && l.warnings[len(l.warnings)-1].Path == path {
			l.warnings[len(l.warnings)-1].Template = r.pending
		}
		return nil, nil
	}
	out := copyNode(KindScalar, n)
	out.Tag, out.Value = "!!str", r.value
	out.EnvTemplate, out.SecretInlined = r.template, r.inlined
	return out, nil
}

// safeEnvName reports whether {env.NAME} means the variable NAME to Caddy's replacer.
func safeEnvName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if r == '{' || r == '}' || r == '\\' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError {
			return false
		}
	}
	return true
}

// jsIsSpace is JavaScript's WhiteSpace or LineTerminator (what String.prototype.trim removes).
func jsIsSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', '\u00a0', '\ufeff', '\u2028', '\u2029':
		return true
	}
	return unicode.Is(unicode.Zs, r)
}

// jsTrim is JavaScript's String.prototype.trim.
func jsTrim(s string) string {
	return strings.TrimFunc(s, jsIsSpace)
}

// ---------------------------------------------------------------------------------------------
// Merging (ConfigReader in @backstage/config reader.ts)

// mergeConfig merges a higher-priority value into over a lower-priority one, as reader.ts's
// merge(into, from): null deletes; a scalar or sequence in into replaces; a map in into is
// deep-merged with a map in from (into's keys first, then keys only in from) and replaces
// anything else. Maps of the result have no null values. nil means undefined.
func mergeConfig(into, from *Node) *Node {
	if into == nil {
		if from == nil {
			return nil
		}
		return mergeConfig(from, nil)
	}
	if into.IsNull() {
		return nil
	}
	if into.Kind != KindMap {
		return into
	}
	out := copyNode(KindMap, into)
	if into.File == "" && into.Line == 0 && from != nil && from.Kind == KindMap {
		// a map that APP_CONFIG_* only adds to is better located in the file that has it
		out.File, out.Line, out.Source = from.File, from.Line, from.Source
	}
	var fromIndex map[string]int
	if from != nil && from.Kind == KindMap {
		fromIndex = make(map[string]int, len(from.Keys))
		for i, k := range from.Keys {
			fromIndex[k] = i
		}
	}
	seen := make(map[string]bool, len(into.Keys))
	for i, k := range into.Keys {
		seen[k] = true
		var lower *Node
		if j, ok := fromIndex[k]; ok {
			lower = from.Values[j]
		}
		if v := mergeConfig(into.Values[i], lower); v != nil {
			out.Keys = append(out.Keys, k)
			out.Values = append(out.Values, v)
		}
	}
	if fromIndex != nil {
		for j, k := range from.Keys {
			if seen[k] {
				continue
			}
			if v := mergeConfig(from.Values[j], nil); v != nil {
				out.Keys = append(out.Keys, k)
				out.Values = append(out.Values, v)
			}
		}
	}
	sortJSKeys(out)
	return out
}

// EscapeCaddyPlaceholders makes a literal string safe to put where Caddy
// expands placeholders.
func EscapeCaddyPlaceholders(s string) string {
	if !strings.ContainsAny(s, "{}") {
		return s
	}
	return caddyBraceEscaper.Replace(s)
}

var caddyBraceEscaper = strings.NewReplacer("{", `\{`, "}", `\}`)
