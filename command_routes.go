package backstageproxy

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func init() {
	backstageCommands = append(backstageCommands, newRoutesCommand)
}

// newRoutesCommand is `caddy backstage routes`: the route table the server
// logs at startup, for a config file, without starting a server.
func newRoutesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "routes --config <file> [--adapter <name>] [--json]",
		Short: "Lists the proxy routes of a config and the secure-route lint's flags",
		Long: `
Loads and adapts the config as 'caddy run' does (default adapter: backstage
for a .yaml or .yml file, else Caddy's usual choice), and prints one line per
proxy endpoint: route, credentials policy, allow list, methods, target origin,
injected header names (never their values), ws, rate limit, upstream
authorization header, acknowledged risk and the secure-route lint's flags.
It is the table the server logs when the config loads. --json prints a JSON
array with one object per endpoint.

A config the adapter refuses (for instance an anonymous route that injects
a credential without acknowledging the risk) is an error, as with
'caddy run'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			config, _ := cmd.Flags().GetString("config")
			adapter, _ := cmd.Flags().GetString("adapter")
			asJSON, _ := cmd.Flags().GetBool("json")
			table, err := loadRouteTable(config, adapter)
			if err != nil {
				return err
			}
			if asJSON {
				return writeRouteTableJSON(cmd.OutOrStdout(), table)
			}
			return writeRouteTableText(cmd.OutOrStdout(), table)
		},
	}
	cmd.Flags().StringP("config", "c", "", "Configuration file (required)")
	cmd.Flags().StringP("adapter", "a", "", "Name of config adapter (default: backstage for .yaml/.yml)")
	cmd.Flags().Bool("json", false, "Print a JSON array")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// routeTableMount is the route table of one backstage_dispatch.
type routeTableMount struct {
	mount  string
	routes []routeSummary
}

// loadRouteTable loads the config file as `caddy run` does and returns the
// route table of each backstage_dispatch in it, in config order.
func loadRouteTable(file, adapter string) ([]routeTableMount, error) {
	cfg, err := loadCommandConfig(file, adapter)
	if err != nil {
		return nil, err
	}
	return routeTablesOf(cfg)
}

// routeTablesOf finds every backstage_dispatch handler in a Caddy JSON
// config, wherever it is nested, and summarizes and lints its endpoints as
// the dispatcher does when it is provisioned.
func routeTablesOf(cfg []byte) ([]routeTableMount, error) {
	var root any
	if err := json.Unmarshal(cfg, &root); err != nil {
		return nil, fmt.Errorf("reading the adapted config: %v", err)
	}
	var app struct {
		Apps struct {
			Backstage App `json:"backstage"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &app); err != nil {
		return nil, fmt.Errorf("reading the backstage app: %v", err)
	}
	anonymousAll := app.Apps.Backstage.DangerouslyDisableDefaultAuthPolicy
	var out []routeTableMount
	var walk func(v any) error
	walk = func(v any) error {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "backstage_dispatch" {
				raw, _ := json.Marshal(v)
				var d Dispatch
				if err := json.Unmarshal(raw, &d); err != nil {
					return fmt.Errorf("reading backstage_dispatch: %v", err)
				}
				mount := d.MountPath
				if mount == "" {
					mount = DefaultMountPath
				}
				table := summarizeRoutes(d.Routes)
				lintAll(table, anonymousAll, jsonTerms)
				out = append(out, routeTableMount{mount: strings.TrimRight(mount, "/"), routes: table})
				return nil
			}
			// The servers map: in a stable order.
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				if err := walk(v[k]); err != nil {
					return err
				}
			}
		case []any:
			for _, item := range v {
				if err := walk(item); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk(root)
}

// writeRouteTableJSON prints every endpoint as one JSON array.
func writeRouteTableJSON(w io.Writer, tables []routeTableMount) error {
	rows := []routeSummary{}
	for _, t := range tables {
		rows = append(rows, t.routes...)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

// writeRouteTableText prints the table with aligned columns, one line per
// endpoint (a heading per mount path when there are several), then the
// routes anonymous callers can reach.
func writeRouteTableText(w io.Writer, tables []routeTableMount) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	list := func(l []string, none string) string {
		if l == nil {
			return none
		}
		if len(l) == 0 {
			return "-"
		}
		return strings.Join(l, ",")
	}
	var open []string
	for i, t := range tables {
		if len(tables) > 1 {
			if i > 0 {
				fmt.Fprintln(tw)
			}
			fmt.Fprintf(tw, "mount %s\n", t.mount)
		}
		fmt.Fprintln(tw, "ROUTE\tCREDENTIALS\tALLOW\tMETHODS\tTARGET\tINJECTED HEADERS\tWS\tRATE LIMIT\tUPSTREAM AUTHORIZATION\tFLAGS\tACKNOWLEDGED RISK")
		for _, s := range t.routes {
			ws := "-"
			if s.WebSocket {
				ws = "ws"
			}
			credentials := s.Credentials
			if s.Anonymous && credentials != CredentialsDangerouslyAllowUnauthenticated {
				credentials += " (auth policy disabled)"
			}
			ack := "-"
			if s.AcknowledgeRisk != "" {
				ack = strconv.Quote(s.AcknowledgeRisk)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				s.Route, credentials, list(s.Allow, "any"), list(s.Methods, "all"), orDash(s.Target),
				list(s.InjectedHeaders, "-"), ws, orDash(s.RateLimit.String()), orDash(s.UpstreamAuthorization),
				list(s.Flags, "-"), ack)
			if s.Anonymous {
				open = append(open, t.mount+s.Route)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(open) > 0 {
		_, err := fmt.Fprintf(w, "\nAnonymous callers can reach: %s\n", strings.Join(open, ", "))
		return err
	}
	return nil
}
