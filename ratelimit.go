package backstageproxy

// The per-principal, per-route request budget of an endpoint (Handler
// RateLimit), counted by caddy-ratelimit, the Caddy ecosystem's limiter.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	caddyrl "github.com/mholt/caddy-ratelimit"
)

// RateLimitSettings are the process-wide settings of the endpoints' rate
// limits (the `rate_limit` field of the `backstage` app; app-config
// `caddy.rateLimit`).
type RateLimitSettings struct {
	// Distributed shares the counts of every endpoint's rate limit with the
	// other Caddy instances that use the same storage (Caddy's `storage`),
	// so that a limit holds across a cluster rather than per instance. Each
	// instance writes its counts to storage every WriteInterval and reads
	// the others' every ReadInterval; the limit is eventually consistent:
	// within one interval, a principal can exceed it by what it sent to the
	// other instances since their last write. Every instance must have the
	// same limits. Default: off (each instance counts alone).
	Distributed *RateLimitDistributed `json:"distributed,omitempty"`
}

// RateLimitDistributed configures caddy-ratelimit's distributed mode.
type RateLimitDistributed struct {
	// ReadInterval is how often the other instances' counts are read from
	// storage. Default: 5s.
	ReadInterval caddy.Duration `json:"read_interval,omitempty"`
	// WriteInterval is how often this instance's counts are written to
	// storage. Default: 5s.
	WriteInterval caddy.Duration `json:"write_interval,omitempty"`
	// PurgeAge deletes the state an instance left in storage once it is
	// older than this (an instance that is gone). Default: never.
	PurgeAge caddy.Duration `json:"purge_age,omitempty"`
}

// placeholderRateLimitKey holds the key of an anonymous caller's budget: its
// client address (IPv6: its /64). Principals are counted under
// `{http.auth.user.id}`, which the handler has set by then.
const placeholderRateLimitKey = "http.backstage_proxy.rate_limit_key"

// rateLimitZonePrefix names the zones: caddy-ratelimit keeps one set of
// counters per zone name for the whole process (and across config reloads),
// so a zone is named after the endpoint: its mount path and route.
const rateLimitZonePrefix = "backstage_proxy "

// rateLimiter counts the requests of one endpoint, per principal.
type rateLimiter struct {
	limiter *caddyrl.Handler
	// anonymous: no principal is verified on this endpoint, so callers are
	// counted by client address.
	anonymous bool
}

// provisionRateLimit sets up the endpoint's rate limit, if it has one: a
// caddy-ratelimit handler with one zone, keyed by the verified subject, or by
// the client address when the endpoint checks no credentials. It comes last
// in Provision, so that nothing can fail after the zone was registered.
func (h *Handler) provisionRateLimit(ctx caddy.Context) error {
	h.rateLimiter = nil
	rl := h.RateLimit
	if rl == nil || h.barrier {
		return nil
	}
	if err := rl.validate(); err != nil {
		return fmt.Errorf("route %s: rate_limit: %v", h.Route, err)
	}
	if h.Route == "" {
		return fmt.Errorf("rate_limit needs the route: its counters are named after it")
	}
	anonymous := h.Credentials == CredentialsDangerouslyAllowUnauthenticated || h.identity.DangerouslyDisableDefaultAuthPolicy
	key := "{" + placeholderUserID + "}"
	if anonymous {
		key = "{" + placeholderRateLimitKey + "}"
	}
	zone := rateLimitZonePrefix + h.MountPath + h.Route
	if err := h.identity.checkRateLimitZone(zone, rateLimitZone{key: key, limit: *rl}); err != nil {
		return fmt.Errorf("route %s: rate_limit: %v", h.Route, err)
	}
	limiter := &caddyrl.Handler{
		RateLimits: map[string]*caddyrl.RateLimit{
			zone: {Key: key, MaxEvents: rl.Requests, Window: rl.Window},
		},
	}
	if s := h.identity.RateLimit; s != nil && s.Distributed != nil {
		// a copy per handler: caddy-ratelimit keeps its sync state in it
		limiter.Distributed = &caddyrl.DistributedRateLimiting{
			ReadInterval:  s.Distributed.ReadInterval,
			WriteInterval: s.Distributed.WriteInterval,
			PurgeAge:      s.Distributed.PurgeAge,
		}
	}
	// caddy-ratelimit registers the zone (a reference to the process-wide
	// counters) only once everything else succeeded; when its Provision
	// fails, no zone is registered and its Cleanup must not run.
	if err := limiter.Provision(ctx); err != nil {
		return fmt.Errorf("route %s: rate_limit: %v", h.Route, err)
	}
	h.rateLimiter = &rateLimiter{limiter: limiter, anonymous: anonymous}
	return nil
}

// rateLimitZone is what a caddy-ratelimit zone counts: its key and limit.
type rateLimitZone struct {
	key   string
	limit RateLimit
}

// rateLimitZonesMu guards the Apps' rateLimitZones (a mutex in App would
// make the module value uncopyable).
var rateLimitZonesMu sync.Mutex

// checkRateLimitZone refuses a second, different limit for one zone in one
// config. caddy-ratelimit keeps a zone's counters process-wide and gives each
// caller the limit of the handler that saw it first, so two endpoints with
// the same mount and route (two sites of a Caddyfile, or hand-written JSON)
// share one budget: they must agree on it. The router variants of one
// endpoint carry the same limit, and pass.
func (a *App) checkRateLimitZone(zone string, z rateLimitZone) error {
	rateLimitZonesMu.Lock()
	defer rateLimitZonesMu.Unlock()
	if prev, ok := a.rateLimitZones[zone]; ok {
		if prev != z {
			return fmt.Errorf("another endpoint with the same mount path and route counts %d requests per %s by %s; endpoints that share counters must share the limit",
				prev.limit.Requests, time.Duration(prev.limit.Window), prev.key)
		}
		return nil
	}
	if a.rateLimitZones == nil {
		a.rateLimitZones = make(map[string]rateLimitZone)
	}
	a.rateLimitZones[zone] = z
	return nil
}

// maxRateLimitRequests bounds RateLimit.Requests: caddy-ratelimit gives
// every caller (every client address, on open routes) a counter of that
// many timestamps, allocated at once: 24 bytes each, 240 KB at the bound.
const maxRateLimitRequests = 10000

// validate checks a rate limit's values.
func (rl *RateLimit) validate() error {
	switch {
	case rl.Requests <= 0:
		return fmt.Errorf("requests must be a positive number, got %d", rl.Requests)
	case rl.Requests > maxRateLimitRequests:
		return fmt.Errorf("requests must be at most %d (each caller's counter holds one timestamp per request), got %d", maxRateLimitRequests, rl.Requests)
	case rl.Window <= 0:
		return fmt.Errorf("window must be a positive duration, got %s", time.Duration(rl.Window))
	}
	return nil
}

// Cleanup releases the endpoint's reference to its rate-limit counters.
// They survive a config reload that keeps the endpoint (the new config
// takes its reference before the old one lets go), so a reload does not
// reset anyone's budget; they are dropped when no config uses them.
func (h *Handler) Cleanup() error {
	if h.rateLimiter == nil {
		return nil
	}
	err := h.rateLimiter.limiter.Cleanup()
	h.rateLimiter = nil
	return err
}

// limitRate counts the request against the caller's budget on this
// endpoint; it returns the refusal when the budget is spent. Endpoints
// without a rate limit pay the nil check (inlined).
func (h *Handler) limitRate(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, subject string) error {
	if h.rateLimiter == nil {
		return nil
	}
	return h.rateLimiter.count(h, w, r, repl, subject)
}

// rateLimitMessage is the message of the 429 refusal.
const rateLimitMessage = "Too many requests to this proxy route, please try again later"

// count asks caddy-ratelimit. It writes `Retry-After` to w when it refuses;
// the refusal is then turned into Backstage's error (TooManyRequestsError).
func (l *rateLimiter) count(h *Handler, w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, subject string) error {
	if repl == nil {
		// no replacer, no key: never the case in Caddy; fail closed
		return caddyhttp.Error(http.StatusInternalServerError, errors.New("rate limit: no replacer in the request context"))
	}
	if l.anonymous {
		repl.Set(placeholderRateLimitKey, clientAddressKey(r))
	}
	err := l.limiter.ServeHTTP(w, r, nextNothing)
	if err == nil {
		return nil
	}
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != http.StatusTooManyRequests {
		return err
	}
	repl.Set(placeholderError, rateLimitMessage)
	h.record(r, outcomeRateLimited, http.StatusTooManyRequests, subject, rateLimitMessage)
	return h.refuse(http.StatusTooManyRequests, "TooManyRequestsError", rateLimitMessage)
}

// nextNothing is the next handler given to caddy-ratelimit: the request
// goes on in Handler.ServeHTTP when the limiter returns.
var nextNothing caddyhttp.Handler = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// clientAddressKey is the budget key of an anonymous caller: the client IP
// as Caddy determines it (`client_ip`: the peer, or the address forwarded by
// a proxy in the server's `trusted_proxies`), with an IPv6 address cut to
// its /64, which a single host commonly holds whole: otherwise one host
// could open a fresh budget, and make the limiter keep a fresh counter, per
// request. An IPv4 address is returned as the value Caddy stored, so that
// giving it to the replacer allocates nothing.
func clientAddressKey(r *http.Request) any {
	v := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey)
	ip, _ := v.(string)
	if ip == "" {
		ip, _, _ = net.SplitHostPort(r.RemoteAddr)
		v = ip
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil || addr.Is4() || addr.Is4In6() {
		return v
	}
	p, err := addr.WithZone("").Prefix(64)
	if err != nil {
		return v
	}
	return p.String()
}

// Interface guards
var _ caddy.CleanerUpper = (*Handler)(nil)

// parseRateLimitArgs reads the arguments of the Caddyfile's
// `rate_limit <requests> <window>`.
func parseRateLimitArgs(args []string) (*RateLimit, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("rate_limit takes <requests> <window>, such as rate_limit 60 1m")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n <= 0 || n > maxRateLimitRequests {
		return nil, fmt.Errorf("rate_limit: requests must be a whole number from 1 to %d, got %q", maxRateLimitRequests, args[0])
	}
	d, err := caddy.ParseDuration(args[1])
	if err != nil || d <= 0 {
		return nil, fmt.Errorf("rate_limit: window must be a positive duration such as 1m or 30s, got %q", args[1])
	}
	return &RateLimit{Requests: n, Window: caddy.Duration(d)}, nil
}

// parseRateLimitDistributed reads the block of the `backstage` global
// option's `rate_limit_distributed`.
func parseRateLimitDistributed(d *caddyfile.Dispenser) (*RateLimitDistributed, error) {
	dist := &RateLimitDistributed{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var target *caddy.Duration
		switch opt {
		case "read_interval":
			target = &dist.ReadInterval
		case "write_interval":
			target = &dist.WriteInterval
		case "purge_age":
			target = &dist.PurgeAge
		default:
			return nil, d.Errf("unrecognized rate_limit_distributed option %s (want read_interval, write_interval or purge_age)", opt)
		}
		args := d.RemainingArgs()
		if len(args) != 1 {
			return nil, d.ArgErr()
		}
		v, err := caddy.ParseDuration(args[0])
		if err != nil || v <= 0 {
			return nil, d.Errf("%s must be a positive duration such as 5s, got %q", opt, args[0])
		}
		*target = caddy.Duration(v)
	}
	return dist, nil
}
