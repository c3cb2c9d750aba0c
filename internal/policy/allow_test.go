package policy

import (
	"fmt"
	"strings"
	"testing"
)

// user is a user principal as identity builds it: refs folded once.
func user(sub, actor string, ent ...string) *Principal {
	p := &Principal{User: true, Subject: sub, Actor: actor, Ref: FoldRef(sub)}
	for _, e := range ent {
		p.Ownership = append(p.Ownership, FoldRef(e))
	}
	return p
}

func service(sub string) *Principal { return &Principal{Subject: sub} }

func TestFoldRef(t *testing.T) {
	for in, want := range map[string]string{
		"user:default/alice":  "user:default/alice",
		"User:Default/Alice":  "user:default/alice",
		"group:sre":           "group:default/sre",
		"Group:SRE":           "group:default/sre",
		"group:team-a/sre":    "group:team-a/sre",
		"backstage-server":    "backstage-server",
		"external:ext:svc-1":  "external:ext:svc-1",
		"user:":               "user:",
		":x":                  ":x",
		"USER:ns/a/b":         "user:ns/a/b",
		"user:default/Ålice":  "user:default/ålice",
		"plain-Subject-Mixed": "plain-subject-mixed",
	} {
		if got := FoldRef(in); got != want {
			t.Errorf("FoldRef(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = FoldRef("user:default/alice") }); n != 0 {
		t.Errorf("FoldRef of a folded ref allocates %v times", n)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{"", "empty entry"},
		{"*", "'*' alone"},
		{"group:*/sre", "only allowed at the end"},
		{"ex*ternal:x", "only allowed at the end"},
		{"**", "only allowed at the end"},
		{"user:default/al ice", "white space"},
		{"user\t", "white space"},
		{"1group:default/sre", "unknown kind \"1group\""},
		{":sre", "unknown kind \"\""},
		{"gr-oup:default/sre", "unknown kind"},
		{"group:sre*", "ambiguous wildcard"},
		{"group:default/sre/x", "malformed entity ref"},
		{"group:def:ault/sre", "malformed entity ref"},
		{"group:/sre", "malformed entity ref"},
		{"group:default/", "malformed entity ref"},
		{"group:", "malformed entity ref"},
		{"plugin:cat alog", "white space"},
		{"plugin:cat.alog", "malformed plugin id"},
		{"plugin:", "malformed plugin id"},
		{"external:", "needs a subject"},
	} {
		_, err := Parse([]string{"user", tc.entry})
		if err == nil {
			t.Errorf("Parse(%q): no error", tc.entry)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), fmt.Sprintf("entry 1 %q: ", tc.entry)) {
			t.Errorf("Parse(%q): %v, want it to name the entry and say %q", tc.entry, err, tc.want)
		}
	}
}

func TestAllows(t *testing.T) {
	alice := user("user:default/alice", "", "user:default/alice", "group:default/sre")
	aliceMixed := user("User:Default/Alice", "", "Group:Default/SRE")
	bob := user("user:default/bob", "", "user:default/bob", "group:team-b/dev")
	oboAlice := user("user:default/alice", "plugin:catalog")
	catalog := service("plugin:catalog")
	static := service("static-subject")
	legacyKeys := service("external:backstage-plugin")
	jwks := service("external:ext:svc-1")
	jwksCI := service("external:ci-runner")

	type want map[*Principal]bool
	for _, tc := range []struct {
		allow []string
		want  want
	}{
		{[]string{"user"}, want{alice: true, oboAlice: true, catalog: false, static: false}},
		{[]string{"USER"}, want{alice: true, catalog: false}},
		{[]string{"service"}, want{alice: false, oboAlice: false, catalog: true, static: true, jwks: true}},
		{[]string{"user:default/alice"}, want{alice: true, aliceMixed: true, oboAlice: true, bob: false, catalog: false}},
		{[]string{"User:DEFAULT/Alice"}, want{alice: true, aliceMixed: true, bob: false}},
		{[]string{"user:alice"}, want{alice: true, bob: false}},
		{[]string{"user:*"}, want{alice: true, bob: true, oboAlice: true, catalog: false}},
		{[]string{"user:default/a*"}, want{alice: true, bob: false}},
		{[]string{"group:default/sre"}, want{alice: true, aliceMixed: true, bob: false, oboAlice: false, catalog: false}},
		{[]string{"group:sre"}, want{alice: true, bob: false}},
		{[]string{"GROUP:Default/Sre"}, want{alice: true, aliceMixed: true}},
		{[]string{"group:team-b/*"}, want{alice: false, bob: true}},
		{[]string{"group:*"}, want{alice: true, bob: true, oboAlice: false}},
		{[]string{"user:default/alice"}, want{service("user:default/alice"): true}},
		{[]string{"plugin:catalog"}, want{catalog: true, oboAlice: true, alice: false, static: false, service("plugin:search"): false}},
		{[]string{"plugin:Catalog"}, want{catalog: true, oboAlice: true}},
		{[]string{"plugin:cat*"}, want{catalog: true, oboAlice: true, service("plugin:search"): false}},
		{[]string{"plugin:*"}, want{catalog: true, oboAlice: true, alice: false, static: false}},
		{[]string{"static-subject"}, want{static: true, service("Static-Subject"): false, alice: false, catalog: false}},
		{[]string{"static-*"}, want{static: true, legacyKeys: false}},
		{[]string{"external:backstage-plugin"}, want{legacyKeys: true, jwks: false, static: false}},
		{[]string{"external:ext:svc-1"}, want{jwks: true, service("external:ext:SVC-1"): false, jwksCI: false}},
		{[]string{"external:ci-*"}, want{jwksCI: true, jwks: false}},
		{[]string{"external:*"}, want{jwksCI: true, jwks: true, legacyKeys: true, static: false, catalog: false}},
		{[]string{"group:default/sre", "plugin:catalog", "external:ci-*"}, want{alice: true, bob: false, oboAlice: true, catalog: true, jwksCI: true, jwks: false, static: false}},
	} {
		a, err := Parse(tc.allow)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.allow, err)
		}
		for p, w := range tc.want {
			if got := a.Allows(p); got != w {
				t.Errorf("allow %q, principal %+v: %v, want %v", tc.allow, *p, got, w)
			}
			if got := referenceAllows(tc.allow, p); got != w {
				t.Errorf("reference: allow %q, principal %+v: %v, want %v", tc.allow, *p, got, w)
			}
		}
	}
}

// TestAllowsLargeSets exercises the map form of the sets.
func TestAllowsLargeSets(t *testing.T) {
	var entries []string
	for i := range 3 * maxLinearSet {
		entries = append(entries, fmt.Sprintf("group:default/g%d", i), fmt.Sprintf("user:default/u%d", i), fmt.Sprintf("plugin:p%d", i), fmt.Sprintf("s%d", i))
	}
	a, err := Parse(entries)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*stringSet{&a.subjects, &a.plugins, &a.users, &a.owners} {
		if s.index == nil {
			t.Fatal("large set without index")
		}
	}
	for p, w := range map[*Principal]bool{
		user("user:default/u7", ""): true, user("user:default/x", "", "group:default/g20"): true,
		user("user:default/x", "plugin:p3"): true, service("s11"): true, service("plugin:p5"): true,
		user("user:default/x", "plugin:q", "group:default/g99"): false, service("s99"): false,
	} {
		if got := a.Allows(p); got != w {
			t.Errorf("%+v: %v, want %v", *p, got, w)
		}
	}
}

// referenceAllows is the specification of Allow, read straight from the
// entries at check time with no compilation.
func referenceAllows(entries []string, p *Principal) bool {
	for _, e := range entries {
		body, prefix := strings.CutSuffix(e, "*")
		match := func(pat, v string) bool {
			if prefix {
				return strings.HasPrefix(v, pat)
			}
			return v == pat
		}
		if !prefix && strings.EqualFold(body, "user") {
			if p.User {
				return true
			}
			continue
		}
		if !prefix && strings.EqualFold(body, "service") {
			if !p.User {
				return true
			}
			continue
		}
		kind, rest, ok := strings.Cut(body, ":")
		lk := strings.ToLower(kind)
		if !p.User {
			s := body
			if ok && lk == "plugin" {
				s = "plugin:" + strings.ToLower(rest)
			}
			if match(s, p.Subject) {
				return true
			}
			continue
		}
		if !ok {
			continue
		}
		switch lk {
		case "plugin":
			if p.Actor != "" && match("plugin:"+strings.ToLower(rest), p.Actor) {
				return true
			}
		case "external":
		default:
			full := strings.ToLower(body)
			if !strings.Contains(rest, "/") {
				full = lk + ":default/" + strings.ToLower(rest)
				if prefix {
					full = lk + ":"
				}
			}
			if lk == "user" {
				if match(full, p.Ref) {
					return true
				}
				continue
			}
			for _, o := range p.Ownership {
				if match(full, o) {
					return true
				}
			}
		}
	}
	return false
}

// FuzzAllowPatterns: Parse never panics, and what it accepts is checked
// exactly as referenceAllows says, for user and service principals.
func FuzzAllowPatterns(f *testing.F) {
	f.Add("group:default/sre,user:alice,plugin:catalog,external:ci-*", "user:default/alice", "plugin:catalog", "group:default/sre,group:x/y", "external:ci-1")
	f.Add("user,service", "User:Default/Alice", "", "", "static-subject")
	f.Add("group:*,plugin:*,static-*", "user:bob", "plugin:search", "Group:SRE", "static-x")
	f.Add("user:default/a*,GROUP:Team/*", "user:default/al", "", "group:team/x", "plugin:catalog")
	f.Add("*,a*b,:x,group:sre*", "x", "y", "z", "w")
	f.Fuzz(func(t *testing.T, entries, sub, actor, ent, svc string) {
		list := strings.Split(entries, ",")
		a, err := Parse(list)
		if err != nil {
			if a != nil {
				t.Fatal("Parse returned a policy with an error")
			}
			return
		}
		var ents []string
		if ent != "" {
			ents = strings.Split(ent, ",")
		}
		for _, p := range []*Principal{user(sub, actor, ents...), service(svc), service(sub)} {
			if got, want := a.Allows(p), referenceAllows(list, p); got != want {
				t.Fatalf("allow %q, principal %+v: %v, reference says %v", list, *p, got, want)
			}
		}
	})
}

// benchEntries is a 20-entry policy of every kind.
var benchEntries = []string{
	"group:default/sre", "group:default/platform", "group:default/security", "group:team-a/*", "group:default/oncall",
	"user:default/alice", "user:default/bob", "user:default/carol", "user:default/dave", "user:default/erin",
	"plugin:catalog", "plugin:search", "plugin:scaffolder", "plugin:techdocs", "plugin:kubernetes",
	"external:ci-*", "external:backstage-plugin", "external:idp:deploy-bot", "static-subject", "cicd-system",
}

// BenchmarkAllow: the cost of one allow check of a 20-entry policy. The
// refused cases are the worst: every set is searched.
func BenchmarkAllow(b *testing.B) {
	a, err := Parse(benchEntries)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		p    *Principal
		want bool
	}{
		{"user-group", user("user:default/zoe", "", "user:default/zoe", "group:default/dev", "group:default/oncall"), true},
		{"user-refused", user("user:default/zoe", "", "user:default/zoe", "group:default/dev", "group:team-b/web"), false},
		{"obo-refused", user("user:default/zoe", "plugin:todo"), false},
		{"service-prefix", service("external:ci-runner-7"), true},
		{"service-refused", service("external:idp:other"), false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if a.Allows(bc.p) != bc.want {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}
