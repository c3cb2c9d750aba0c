package backstageproxy

import (
	"path/filepath"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "backstage",
		Usage: "<command> [flags]",
		Short: "Inspects a Backstage proxy configuration",
		Long: `
Commands that answer questions about a Backstage app-config.yaml proxy
section as this Caddy runs it, without starting a server.`,
		CobraFunc: func(cmd *cobra.Command) {
			for _, sub := range backstageCommands {
				cmd.AddCommand(sub())
			}
		},
	})
}

// backstageCommands build the subcommands of `caddy backstage`. Each file
// that defines one appends its constructor in an init function; they are
// called when Caddy builds its command tree, after every init has run.
var backstageCommands []func() *cobra.Command

// loadCommandConfig loads and adapts a config file as `caddy run` does,
// for the `caddy backstage` commands. The adapter is the one named, else
// `backstage` for YAML, else Caddy's own choice (JSON, or the Caddyfile).
func loadCommandConfig(file, adapter string) ([]byte, error) {
	if adapter == "" {
		switch strings.ToLower(filepath.Ext(file)) {
		case ".yaml", ".yml":
			adapter = "backstage"
		}
	}
	cfg, _, _, err := caddycmd.LoadConfig(file, adapter)
	return cfg, err
}
