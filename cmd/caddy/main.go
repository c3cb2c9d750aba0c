// Command caddy is Caddy with its standard modules and the Backstage proxy
// module, so that `go run ./cmd/caddy run --adapter backstage --config
// app-config.yaml` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddy-backstage/caddy-backstage-proxy"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
