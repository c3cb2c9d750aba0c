package backstageproxy

import (
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
