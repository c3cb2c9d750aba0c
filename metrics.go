package backstageproxy

import (
	"errors"
	"net/http"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// outcome is what the proxy did with a request: the `outcome` label of
// caddy_backstage_proxy_requests_total, and the outcome of its audit event.
type outcome uint8

// The outcomes. Every request that reaches a `backstage_proxy` handler is
// counted once, under one of them (except a hand-written route's 404 for a
// path outside its route key, which is none of them).
const (
	// outcomeProxied: the request was sent upstream and the upstream
	// answered (whatever its status).
	outcomeProxied outcome = iota
	// outcomeUnauthenticated: 401, missing or invalid credentials.
	outcomeUnauthenticated
	// outcomeForbidden: 403, a valid credential that may not call the route
	// (`allow`, or a Backstage access restriction).
	outcomeForbidden
	// outcomeRateLimited: 429, over the route's `rate_limit`.
	outcomeRateLimited
	// outcomeBadPath: 400, path traversal.
	outcomeBadPath
	// outcomeMethodNotAllowed: the path is under a route whose
	// `allowedMethods` excludes the method, so the request went on to the
	// barrier (and its 404), with valid credentials (counted when the
	// barrier lets it through; see Dispatch.countMethodNotAllowed).
	outcomeMethodNotAllowed
	// outcomeUpstreamError: 502/503/504, the upstream could not be reached
	// or did not answer in time.
	outcomeUpstreamError
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"proxied", "unauthenticated", "forbidden", "rate_limited", "bad_path", "method_not_allowed", "upstream_error",
}

func (o outcome) String() string { return outcomeNames[o] }

// outcomeOfStatus is the outcome of a refusal with an identity error's
// status (401 or 403).
func outcomeOfStatus(status int) outcome {
	if status == http.StatusForbidden {
		return outcomeForbidden
	}
	return outcomeUnauthenticated
}

// barrierRouteLabel is the `route` label of the barrier's refusals: requests
// under the mount path that no endpoint took.
const barrierRouteLabel = "(none)"

// proxyMetrics are the `backstage` app's collectors, registered in the
// config's metrics registry (Caddy makes one per config load, and the admin
// API's /metrics serves it), so they need no other setting.
type proxyMetrics struct {
	requests *prometheus.CounterVec
	// checks and cache are pre-resolved: the request path does one atomic
	// add, with no label lookup.
	checks [identity.NumCheckMethods][2]prometheus.Counter
	cache  [2]prometheus.Counter
}

const metricsNamespace, metricsSubsystem = "caddy", "backstage_proxy"

// newProxyMetrics makes the collectors and registers them in reg.
func newProxyMetrics(reg prometheus.Registerer) (*proxyMetrics, error) {
	m := &proxyMetrics{}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "requests_total",
		Help: "Requests that reached a Backstage proxy route, by route key and outcome.",
	}, []string{"route", "outcome"})
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "credential_checks_total",
		Help: "Backstage credentials checked, by the kind that decided the check (user, plugin, static, legacy, jwks; none: no kind claimed the token) and result (ok, rejected).",
	}, []string{"method", "result"})
	cache := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "verification_cache_lookups_total",
		Help: "Lookups of JWTs in the cache of verified tokens, by result (hit, miss).",
	}, []string{"result"})
	var err error
	if m.requests, err = register(reg, requests); err != nil {
		return nil, err
	}
	if checks, err = register(reg, checks); err != nil {
		return nil, err
	}
	if cache, err = register(reg, cache); err != nil {
		return nil, err
	}
	for method := range identity.NumCheckMethods {
		m.checks[method][0] = checks.WithLabelValues(method.String(), "rejected")
		m.checks[method][1] = checks.WithLabelValues(method.String(), "ok")
	}
	m.cache[0] = cache.WithLabelValues("miss")
	m.cache[1] = cache.WithLabelValues("hit")
	return m, nil
}

// registerKeySets registers the collector of v's key sets in reg.
func registerKeySets(reg prometheus.Registerer, v *identity.Verifier) error {
	_, err := register[prometheus.Collector](reg, keySetCollector{v})
	return err
}

// register registers c in reg, or returns the collector already registered
// under its descriptors (a second App provisioned with one context, as in
// tests), so that a config is never refused for it.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// CredentialChecked implements identity.Observer.
func (m *proxyMetrics) CredentialChecked(method identity.CheckMethod, ok bool) {
	if method < identity.NumCheckMethods {
		i := 0
		if ok {
			i = 1
		}
		m.checks[method][i].Inc()
	}
}

// VerificationCacheLookup implements identity.Observer.
func (m *proxyMetrics) VerificationCacheLookup(hit bool) {
	i := 0
	if hit {
		i = 1
	}
	m.cache[i].Inc()
}

// routeCounters resolves the request counters of one route, once, at
// provision; a barrier's are labelled barrierRouteLabel, and only for the
// outcomes it has.
func (m *proxyMetrics) routeCounters(route string, barrier bool) *[numOutcomes]prometheus.Counter {
	if m == nil {
		return nil
	}
	var c [numOutcomes]prometheus.Counter
	for o := range numOutcomes {
		if barrier && o != outcomeUnauthenticated && o != outcomeForbidden && o != outcomeBadPath {
			// not the barrier's: no series that stays at 0
			c[o] = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
			continue
		}
		label := route
		if barrier || label == "" {
			label = barrierRouteLabel
		}
		c[o] = m.requests.WithLabelValues(label, o.String())
	}
	return &c
}

// count counts the request under outcome o: one atomic add, nothing when
// metrics are off (a handler set up without the `backstage` app's
// collectors). Features that refuse requests call it, or record, once per
// request, with their outcome.
func (h *Handler) count(o outcome) {
	if h.requests != nil {
		h.requests[o].Inc()
	}
}

// keySetCollector reports the key sets when /metrics is scraped: nothing is
// counted on the request path, and the counts, kept by the shared key
// caches, survive config reloads. The label is the key set's configured URL
// (the plugin-token template, for all plugins' key sets), so the number of
// series is that of the config's key sets.
type keySetCollector struct{ v *identity.Verifier }

var (
	keySetFetchesDesc = prometheus.NewDesc(
		prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "key_set_fetches_total"),
		"Key set (JWKS) fetch attempts, by key set URL and result (ok, error). Plugin key sets are counted under their URL template.",
		[]string{"key_set", "result"}, nil)
	keySetAgeDesc = prometheus.NewDesc(
		prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "key_set_age_seconds"),
		"Seconds since the key set in use was fetched (plugins: the oldest); absent until one was fetched.",
		[]string{"key_set"}, nil)
)

// Describe implements prometheus.Collector.
func (c keySetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keySetFetchesDesc
	ch <- keySetAgeDesc
}

// Collect implements prometheus.Collector.
func (c keySetCollector) Collect(ch chan<- prometheus.Metric) {
	c.v.KeySets(func(s identity.KeySetStats) {
		ch <- prometheus.MustNewConstMetric(keySetFetchesDesc, prometheus.CounterValue, float64(s.Fetches-s.Failures), s.Name, "ok")
		ch <- prometheus.MustNewConstMetric(keySetFetchesDesc, prometheus.CounterValue, float64(s.Failures), s.Name, "error")
		if age, ok := s.Age(); ok {
			ch <- prometheus.MustNewConstMetric(keySetAgeDesc, prometheus.GaugeValue, age.Seconds(), s.Name)
		}
	})
}

// attachBarriers lets the barriers among the dispatcher's routes count
// the requests that reach them because of their method
// (countMethodNotAllowed).
func (d *Dispatch) attachBarriers() {
	for _, rt := range d.Routes {
		for _, h := range rt.Handlers {
			if b, ok := h.(*Barrier); ok && b.policy.requests != nil {
				b.policy.passed = d.countMethodNotAllowed
			}
		}
	}
}

// countMethodNotAllowed counts a request that the barrier let through (to
// the 404, or to a route after the dispatcher), under the first endpoint
// route for its path whose `method` matcher refused it: the request reached
// the barrier because of its method. Only such requests pay for it: one
// index lookup, and the path matchers of the routes with allowedMethods
// for the request's first segment.
func (d *Dispatch) countMethodNotAllowed(r *http.Request) {
	for _, mr := range d.chain(r).methodRoutes {
		if ok, _ := mr.path.MatchWithError(r); ok {
			if ok, _ := mr.methods.MatchWithError(r); !ok {
				mr.handler.count(outcomeMethodNotAllowed)
			}
			return
		}
	}
}

// methodRoute is an endpoint route with an allowedMethods matcher.
type methodRoute struct {
	path    *MatchRoutePath
	methods caddyhttp.MatchMethod
	handler *Handler
}

// methodRoutes finds the routes of an endpoint with allowedMethods: one
// matcher set of a `backstage_route` and a `method` matcher, whose first
// handler is a `backstage_proxy` with metrics (or a subroute of them,
// for `router` variants).
func methodRoutes(routes caddyhttp.RouteList) []methodRoute {
	var out []methodRoute
	for _, rt := range routes {
		if len(rt.MatcherSets) != 1 {
			continue
		}
		var mr methodRoute
		for _, m := range rt.MatcherSets[0] {
			switch m := m.(type) {
			case *MatchRoutePath:
				mr.path = m
			case *caddyhttp.MatchMethod:
				mr.methods = *m
			}
		}
		mr.handler = endpointHandler(rt.Handlers)
		if mr.path != nil && mr.methods != nil && mr.handler != nil && mr.handler.requests != nil {
			out = append(out, mr)
		}
	}
	return out
}

// endpointHandler is the first backstage_proxy among handlers, or in the
// first route of a subroute among them.
func endpointHandler(handlers []caddyhttp.MiddlewareHandler) *Handler {
	for _, h := range handlers {
		switch h := h.(type) {
		case *Handler:
			return h
		case *caddyhttp.Subroute:
			for _, rt := range h.Routes {
				if eh := endpointHandler(rt.Handlers); eh != nil {
					return eh
				}
			}
		}
	}
	return nil
}
