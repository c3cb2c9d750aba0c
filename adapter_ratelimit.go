package backstageproxy

// Reading the rate-limit settings of app-config.yaml: an endpoint's
// `caddy.rateLimit: {requests, window}`, and the process-wide
// `caddy.rateLimit: {distributed: {...}}` and `caddy.storage` at the top.

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddyserver/caddy/v2"
)

// endpointRateLimit reads an endpoint's `caddy.rateLimit`:
//
//	rateLimit: {requests: 60, window: 1m}
func endpointRateLimit(n *appconfig.Node) (*RateLimit, error) {
	if n.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(n, "caddy.rateLimit must be an object {requests: <number>, window: <duration>}, got %s", n.TypeName())
	}
	for i, k := range n.Keys {
		if k != "requests" && k != "window" {
			return nil, appconfig.ErrorAt(n.Values[i], "caddy.rateLimit.%s is not a rate-limit setting (known: requests, window)", k)
		}
	}
	rl := &RateLimit{}
	req := n.Get("requests")
	if req == nil {
		return nil, appconfig.ErrorAt(n, "caddy.rateLimit.requests is missing: the number of requests allowed per window")
	}
	f, ok := req.Number()
	if !ok || req.Tag != "!!int" || f <= 0 || f > maxRateLimitRequests {
		got := req.TypeName()
		if req.Kind == appconfig.KindScalar {
			got = strconvQuote(req)
		}
		return nil, appconfig.ErrorAt(req, "caddy.rateLimit.requests must be a whole number from 1 to %d, got %s", maxRateLimitRequests, got)
	}
	rl.Requests = int(f)
	win := n.Get("window")
	if win == nil {
		return nil, appconfig.ErrorAt(n, "caddy.rateLimit.window is missing: a duration such as 1m or 30s")
	}
	d, err := durationSetting(win, "caddy.rateLimit.window")
	if err != nil {
		return nil, err
	}
	rl.Window = d
	return rl, nil
}

// strconvQuote shows a scalar as written: numbers bare, strings quoted.
func strconvQuote(n *appconfig.Node) string {
	if n.Tag == "!!str" {
		return strconv.Quote(n.Value)
	}
	return n.Value
}

// durationSetting reads a positive duration written as Caddy writes them
// (`30s`, `1m`, `1h30m`, `1d`).
func durationSetting(n *appconfig.Node, name string) (caddy.Duration, error) {
	s, ok := n.String()
	if !ok || n.Tag != "!!str" {
		return 0, appconfig.ErrorAt(n, "%s must be a duration such as 1m or 30s, got %s", name, n.TypeName())
	}
	d, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, appconfig.ErrorAt(n, "%s must be a duration such as 1m or 30s, got %q", name, s)
	}
	if d <= 0 {
		return 0, appconfig.ErrorAt(n, "%s must be longer than zero, got %q", name, s)
	}
	return caddy.Duration(d), nil
}

// readRateLimitSettings reads the top-level `caddy.rateLimit`:
//
//	rateLimit:
//	  distributed: {readInterval: 5s, writeInterval: 5s, purgeAge: 1h}
//
// `distributed: true` is distributed mode with caddy-ratelimit's defaults.
func (ad *adaptation) readRateLimitSettings(n *appconfig.Node) (*RateLimitSettings, error) {
	if n.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(n, "caddy.rateLimit must be an object {distributed: ...}, got %s", n.TypeName())
	}
	for i, k := range n.Keys {
		if k != "distributed" {
			return nil, appconfig.ErrorAt(n.Values[i], "caddy.rateLimit.%s is not a setting (known: distributed; the limits themselves are set per endpoint, as proxy.endpoints.<route>.caddy.rateLimit)", k)
		}
	}
	s := &RateLimitSettings{}
	d := n.Get("distributed")
	if d == nil || d.IsNull() {
		return s, nil
	}
	if on, ok := d.Bool(); ok && d.Tag == "!!bool" {
		if on {
			s.Distributed = &RateLimitDistributed{}
		}
		return s, nil
	}
	if d.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(d, "caddy.rateLimit.distributed must be true or an object {readInterval, writeInterval, purgeAge}, got %s", d.TypeName())
	}
	s.Distributed = &RateLimitDistributed{}
	for i, k := range d.Keys {
		var target *caddy.Duration
		switch k {
		case "readInterval":
			target = &s.Distributed.ReadInterval
		case "writeInterval":
			target = &s.Distributed.WriteInterval
		case "purgeAge":
			target = &s.Distributed.PurgeAge
		default:
			return nil, appconfig.ErrorAt(d.Values[i], "caddy.rateLimit.distributed.%s is not a setting (known: readInterval, writeInterval, purgeAge)", k)
		}
		v, err := durationSetting(d.Values[i], "caddy.rateLimit.distributed."+k)
		if err != nil {
			return nil, err
		}
		*target = v
	}
	return s, nil
}

// readStorage reads the top-level `caddy.storage`: Caddy's storage module,
// as in Caddy JSON (`{module: file_system, root: /var/lib/caddy}`). It holds
// the distributed rate-limit counts (and Caddy's certificates): the Caddy
// instances that share it share their limits. A relative file_system root is
// relative to the config file.
func (ad *adaptation) readStorage(n *appconfig.Node) (json.RawMessage, error) {
	if n.Kind != appconfig.KindMap {
		return nil, appconfig.ErrorAt(n, "caddy.storage must be a Caddy storage module object such as {module: file_system, root: /var/lib/caddy}, got %s", n.TypeName())
	}
	m := n.Get("module")
	name, ok := m.String()
	if !ok || name == "" {
		return nil, appconfig.ErrorAt(n, "caddy.storage.module is missing: the name of a Caddy storage module, such as file_system")
	}
	if _, err := caddy.GetModule("caddy.storage." + name); err != nil {
		return nil, appconfig.ErrorAt(m, "caddy.storage.module %q is not a storage module of this Caddy build", name)
	}
	v := nodeToJSON(n).(map[string]any)
	if root, ok := v["root"].(string); ok && name == "file_system" && root != "" &&
		!filepath.IsAbs(root) && !strings.HasPrefix(root, "{") {
		v["root"] = filepath.Join(configDir(n.Get("root").File), root)
	}
	return json.Marshal(v)
}

// applyRateLimitSettings puts caddy.rateLimit on the backstage app, and
// warns about settings that cannot take effect.
func (ad *adaptation) applyRateLimitSettings(o *caddyOptions, app *App) {
	if o.rateLimit == nil || o.rateLimit.Distributed == nil {
		return
	}
	where := ad.root.Lookup("caddy.rateLimit.distributed")
	if !ad.rateLimited {
		ad.warn(where, "caddy.rateLimit", "caddy.rateLimit.distributed has no effect: no endpoint has caddy.rateLimit")
		return
	}
	app.RateLimit = o.rateLimit
	if o.storage == nil && (o.json == nil || o.json.Get("storage") == nil) {
		ad.warn(where, "caddy.rateLimit", "caddy.rateLimit.distributed shares the counts through Caddy's storage, which is this machine's data directory: only Caddy instances on this machine share them; set caddy.storage to storage the instances share")
	}
}
