package backstageproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/spf13/cobra"
)

func init() {
	backstageCommands = append(backstageCommands, newExplainCommand)
}

// newExplainCommand is `caddy backstage explain`.
func newExplainCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "explain --config <path> [--adapter <name>] [--header 'Name: value']... [--json] <METHOD> <URL>",
		Short: "Shows what the proxy would do with a request, without sending it",
		Long: `
Loads the config as 'caddy run' would (same adapter, same provisioning,
but no listener, admin endpoint or config watcher) and runs the request
through the server's own routes. Nothing is sent upstream: the upstream
request is recorded instead. Tokens given with --header are verified as the
server verifies them (JWTs against their key sets, over the network).

It prints the matched route, the decision (proxy or deny) and the proxy's
status, the verified principal, the upstream method and URL after every
rewrite, the request header names forwarded, dropped and injected, the
response header names allowed back, and the reason. Header values, tokens
and secrets are never printed.

URL is absolute (http://localhost:7007/api/proxy/x?y=1: the server
listening on its port, else the first one, gets it with that Host) or a
path (/api/proxy/x), sent to the config's first listener.

The adapter defaults to 'backstage' for .yaml and .yml files.`,
		Args: cobra.ExactArgs(2),
		RunE: runExplainCommand,
	}
	cmd.Flags().StringP("config", "c", "", "Configuration file (required)")
	cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (default: backstage for .yaml/.yml)")
	cmd.Flags().StringArrayP("header", "H", nil, "Request header 'Name: value' (repeatable)")
	cmd.Flags().Bool("json", false, "Print one JSON object")
	return cmd
}

func runExplainCommand(cmd *cobra.Command, args []string) error {
	cmd.SilenceUsage = true // the arguments were fine; say only what went wrong
	configFile, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	headers, _ := cmd.Flags().GetStringArray("header")
	asJSON, _ := cmd.Flags().GetBool("json")
	if configFile == "" {
		return fmt.Errorf("--config is required")
	}
	in := explainInput{Method: args[0], URL: args[1], Header: http.Header{}}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || !headerNameRE.MatchString(name) {
			// never echo the value: it may be a token
			return fmt.Errorf("--header wants 'Name: value', got a header without a valid name")
		}
		in.Header.Add(name, strings.TrimSpace(value))
	}

	cfgJSON, err := loadCommandConfig(configFile, adapter)
	if err != nil {
		return err
	}
	ex, err := explainConfig(cmd.Context(), cfgJSON, in)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(ex)
	}
	_, err = fmt.Fprint(out, ex.text())
	return err
}

// explainConfig provisions the Caddy JSON config cfgJSON as `caddy run`
// would, without starting any app (no listener, no admin endpoint, no
// config watcher: those start in Start, which is never called), and
// explains in on it.
func explainConfig(ctx context.Context, cfgJSON []byte, in explainInput) (*explanation, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	cfgJSON, err := withoutOutsideEffects(cfgJSON)
	if err != nil {
		return nil, fmt.Errorf("decoding config: %v", err)
	}
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfgJSON, &cfg); err != nil {
		return nil, fmt.Errorf("decoding config: %v", err)
	}
	// the admin endpoint is not started by provisioning; keep the config
	// from naming one at all, so that nothing in it is set up
	cfg.Admin = &caddy.AdminConfig{Disabled: true}
	cctx, err := caddy.ProvisionContext(&cfg)
	if err != nil {
		return nil, fmt.Errorf("loading config: %v", err)
	}
	app, err := cctx.AppIfConfigured("http")
	if err != nil {
		return nil, fmt.Errorf("loading config: %v", err)
	}
	return explainer{app: app.(*caddyhttp.App)}.explain(ctx, in)
}

// withoutOutsideEffects removes from cfgJSON what provisioning starts and
// what would reach outside this process: the active health checks of every
// reverse_proxy (they would reach the upstreams) and the distributed mode of
// the rate limits (it would write this process's counts into the storage
// the servers share).
func withoutOutsideEffects(cfgJSON []byte) ([]byte, error) {
	var cfg any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, err
	}
	changed := false
	if root, ok := cfg.(map[string]any); ok {
		if apps, ok := root["apps"].(map[string]any); ok {
			if app, ok := apps["backstage"].(map[string]any); ok {
				if rl, ok := app["rate_limit"].(map[string]any); ok && rl["distributed"] != nil {
					delete(rl, "distributed")
					changed = true
				}
			}
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "reverse_proxy" {
				if hc, ok := v["health_checks"].(map[string]any); ok && hc["active"] != nil {
					delete(hc, "active")
					changed = true
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(cfg)
	if !changed {
		return cfgJSON, nil
	}
	return json.Marshal(cfg)
}
