package backstageproxy

import (
	"net"
	"net/http"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// AuditLoggerName is the name of the audit log: the `backstage` app's logger
// (named after the app) with the suffix auditLoggerSuffix. Operators route
// it with `logging.logs.<name>.include: ["backstage.audit"]`.
const AuditLoggerName = "backstage.audit"

const auditLoggerSuffix = "audit"

// The audit event's message and fields, as Backstage's auditor writes them
// (DefaultAuditorService, WinstonRootAuditorService): the message is
// `<plugin>.<eventId>`.
const (
	auditPlugin  = "proxy"
	auditEventID = "proxy-request"
	auditMessage = auditPlugin + "." + auditEventID
)

// observability is the request-time state of the metrics and the audit log
// of one handler, derived from its configuration and the `backstage` app at
// provision.
type observability struct {
	// requests are the route's counters, one per outcome; nil: no metrics.
	requests *[numOutcomes]prometheus.Counter
	// audit is the audit log; nil: no audit events.
	audit *zap.Logger
	// auditInjected: the route injects headers (a credential, typically),
	// so every request it proxies is audited, not only refusals.
	auditInjected bool
	// injectedNames is the `injectedHeaders` field of the audit events,
	// made once.
	injectedNames zap.Field
	// passed, on a barrier in a dispatcher, counts the requests the
	// barrier lets through that an endpoint refused for their method.
	passed func(*http.Request)
}

// setupObservability resolves the route's counters and the audit log.
func (h *Handler) setupObservability(app *App) {
	h.observability = observability{passed: h.passed}
	if app == nil {
		return
	}
	h.requests = app.metrics.routeCounters(h.Route, h.barrier)
	h.audit = app.audit
	if len(h.UpstreamHeaders) > 0 {
		h.auditInjected = true
		h.injectedNames = zap.Strings("injectedHeaders", h.UpstreamHeaders)
	}
}

// record counts the request under outcome o and, if it is a refusal, writes
// its audit event. subject is the verified principal's ("" if none), reason
// the refusal's message. Features that refuse requests (403, 429) call it
// once per refused request, before returning their error.
func (h *Handler) record(r *http.Request, o outcome, status int, subject, reason string) {
	if isExplain(r) {
		return
	}
	h.count(o)
	if h.audit != nil && (o != outcomeProxied && o != outcomeUpstreamError || h.auditInjected) {
		h.writeAudit(r, o, status, subject, reason)
	}
}

// recordUpstream records a request that was passed upstream: proxied, or an
// upstream error when nothing was written and next failed. It runs before
// rf is released.
func (h *Handler) recordUpstream(r *http.Request, rf *responseFilter, err error, subject string) {
	if isExplain(r) {
		return
	}
	o, status := outcomeProxied, rf.status
	if !rf.wroteHeader {
		status = http.StatusOK
		if err != nil {
			o, status = outcomeUpstreamError, http.StatusBadGateway
			if he, ok := err.(caddyhttp.HandlerError); ok {
				status = he.StatusCode
			}
		}
	}
	h.count(o)
	if h.auditInjected && h.audit != nil {
		reason := ""
		if o == outcomeUpstreamError {
			reason = http.StatusText(status)
		}
		h.writeAudit(r, o, status, subject, reason)
	}
}

// writeAudit writes one audit event in the shape of Backstage's auditor
// (isAuditorEvent, plugin, eventId, severityLevel, actor, request, meta,
// status, error). It never writes a header value, a token or the query
// string (which may carry secrets); only the names of injected headers.
// When the audit log is off at info level, it costs one level check.
func (h *Handler) writeAudit(r *http.Request, o outcome, status int, subject, reason string) {
	ce := h.audit.Check(zapcore.InfoLevel, auditMessage)
	if ce == nil {
		return
	}
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	hostname := r.Host // as Express's req.hostname: without the port
	if h, _, err := net.SplitHostPort(hostname); err == nil {
		hostname = h
	}
	ev := auditEvent{
		actor:    auditActor{actorID: subject, ip: ip, hostname: hostname, userAgent: r.UserAgent()},
		request:  auditRequest{url: urlpath.Escaped(r.URL), method: r.Method},
		meta:     auditMeta{route: h.Route, outcome: o, status: status},
		severity: "low",
		status:   "succeeded",
	}
	if h.auditInjected && (o == outcomeProxied || o == outcomeUpstreamError) {
		ev.severity = "medium" // a credential of the proxy's was used
	}
	switch o {
	case outcomeProxied:
	case outcomeBadPath:
		ev.severity, ev.status = "high", "failed"
	case outcomeForbidden:
		ev.severity, ev.status = "medium", "failed"
	default:
		ev.status = "failed"
	}
	fields := []zap.Field{
		zap.Bool("isAuditorEvent", true),
		zap.String("plugin", auditPlugin),
		zap.String("eventId", auditEventID),
		zap.String("severityLevel", ev.severity),
		zap.Object("actor", &ev.actor),
		zap.Object("request", &ev.request),
		zap.Object("meta", &ev.meta),
		zap.String("status", ev.status),
	}
	if h.auditInjected {
		ev.meta.injected = &h.injectedNames
	}
	if ev.status == "failed" {
		fields = append(fields, zap.String("error", reason))
	}
	ce.Write(fields...)
}

type auditEvent struct {
	actor            auditActor
	request          auditRequest
	meta             auditMeta
	severity, status string
}

// auditActor is Backstage's AuditorEventActorDetails.
type auditActor struct{ actorID, ip, hostname, userAgent string }

func (a *auditActor) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if a.actorID != "" {
		enc.AddString("actorId", a.actorID)
	}
	if a.ip != "" {
		enc.AddString("ip", a.ip)
	}
	enc.AddString("hostname", a.hostname)
	if a.userAgent != "" {
		enc.AddString("userAgent", a.userAgent)
	}
	return nil
}

// auditRequest is Backstage's AuditorEventRequest, without the query.
type auditRequest struct{ url, method string }

func (q *auditRequest) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("url", q.url)
	enc.AddString("method", q.method)
	return nil
}

// auditMeta is the event's meta: the route, the outcome (the metric's
// label), the HTTP status, and the names of the headers the route injects.
type auditMeta struct {
	route    string
	outcome  outcome
	status   int
	injected *zap.Field
}

func (m *auditMeta) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if m.route != "" {
		enc.AddString("route", m.route)
	}
	enc.AddString("outcome", m.outcome.String())
	enc.AddInt("status", m.status)
	if m.injected != nil {
		m.injected.AddTo(enc)
	}
	return nil
}
