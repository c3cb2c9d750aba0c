// Package appconfig loads Backstage app-config files as @backstage/config-loader
// 1.11.5 and @backstage/config 1.3.11 do (files, ${VAR}, $env/$file/$include,
// merge, APP_CONFIG_*), into a tree that keeps what a Caddy config adapter
// needs and a JavaScript object loses: every map's key order (route
// precedence depends on it) and every value's file and line (for errors and
// warnings). It must never import Caddy: the adapter turns the tree and its
// Warnings into Caddy JSON and Caddy warnings.
package appconfig
