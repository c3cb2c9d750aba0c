package backstageproxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(ExplainAdmin{})
}

// ExplainAdmin serves `POST /backstage/explain` on Caddy's admin API: the
// answer of `caddy backstage explain`, for the running config. Body:
//
//	{"method": "GET", "url": "/api/proxy/x?y=1", "headers": {"Authorization": "Bearer …", "Accept": ["a", "b"]}}
//
// The request runs through the live server's routes; nothing is sent
// upstream (the `backstage_http` transport records it instead), and on a
// server with a reverse_proxy of another transport it is refused (422),
// since that transport would send it. Tokens are verified as for any
// request. Like every `admin.api` module, it is on wherever the admin API
// is; the admin API should only be reachable by operators.
type ExplainAdmin struct{}

// CaddyModule returns the Caddy module information.
func (ExplainAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.backstage_explain",
		New: func() caddy.Module { return new(ExplainAdmin) },
	}
}

// Routes returns the admin routes of the module.
func (a *ExplainAdmin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/backstage/explain", Handler: caddy.AdminHandlerFunc(a.serveExplain)}}
}

// maxExplainBody bounds the request body of the admin endpoint.
const maxExplainBody = 1 << 20

// explainRequestBody is the admin endpoint's request. A header's value is a
// string or a list of strings.
type explainRequestBody struct {
	Method  string                     `json:"method"`
	URL     string                     `json:"url"`
	Headers map[string]json.RawMessage `json:"headers"`
}

func (a *ExplainAdmin) serveExplain(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	var body explainRequestBody
	dec := json.NewDecoder(io.LimitReader(r.Body, maxExplainBody))
	if err := dec.Decode(&body); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("decoding request: %v", err)}
	}
	in := explainInput{Method: body.Method, URL: body.URL, Header: http.Header{}}
	for name, raw := range body.Headers {
		if !headerNameRE.MatchString(name) {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("invalid header name %q", name)}
		}
		var one string
		var many []string
		switch {
		case json.Unmarshal(raw, &one) == nil:
			in.Header.Add(name, one)
		case json.Unmarshal(raw, &many) == nil:
			for _, v := range many {
				in.Header.Add(name, v)
			}
		default:
			// never echo the value: it may be a token
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("header %q: want a string or a list of strings", name)}
		}
	}
	app, err := caddy.ActiveContext().AppIfConfigured("http")
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: fmt.Errorf("no running HTTP app to explain on: %v", err)}
	}
	ex, err := explainer{app: app.(*caddyhttp.App), live: true}.explain(r.Context(), in)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusUnprocessableEntity, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(ex)
}

// Interface guards
var _ caddy.AdminRouter = (*ExplainAdmin)(nil)
