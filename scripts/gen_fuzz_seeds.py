#!/usr/bin/env python3
"""Writes the committed seed corpora of fuzz_test.go in Go's corpus format
(testdata/fuzz/<FuzzName>/<seed>). Run from the repository root:

    python3 scripts/gen_fuzz_seeds.py

Existing files with the same names are overwritten; others (for example
inputs the fuzzer found) are left alone.
"""
import glob
import os


def lit(value):
    """A Go interpreted string literal for bytes or str (UTF-8)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    out = ['"']
    for b in value:
        c = chr(b)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append("\\x%02x" % b)
    out.append('"')
    return "".join(out)


def write(fuzz, name, *values):
    d = os.path.join("testdata", "fuzz", fuzz)
    os.makedirs(d, exist_ok=True)
    lines = ["go test fuzz v1"]
    for kind, v in values:
        if kind in ("string", "[]byte"):
            lines.append("%s(%s)" % (kind, lit(v)))
        else:
            lines.append("%s(%d)" % (kind, v))
    with open(os.path.join(d, name), "w") as f:
        f.write("\n".join(lines) + "\n")


# --- FuzzAdapt -------------------------------------------------------------
U = "http://127.0.0.1:9100"
adapt = {
    "string-target": "proxy:\n  endpoints:\n    /simple: %s\n" % U,
    "all-options": """caddy:
  admin: localhost:2999
backend:
  baseUrl: http://localhost:7007
  listen: {host: 127.0.0.1, port: 9080}
  auth:
    externalAccess:
      - type: static
        options: {token: static-token-123, subject: s}
        accessRestrictions: [{plugin: proxy}, {plugin: catalog, permission: [a, b]}]
      - type: legacy
        options: {secret: c2VjcmV0c2VjcmV0c2VjcmV0, subject: legacy}
      - type: jwks
        options: {url: 'http://127.0.0.1:9/jwks', issuer: [a, 'b c'], audience: x, algorithm: ES256, subjectPrefix: p}
proxy:
  skipInvalidProxies: true
  endpoints:
    /open:
      target: %(u)s/base?k=v
      credentials: dangerously-allow-unauthenticated
      allowedMethods: [GET, POST]
      allowedHeaders: [X-Foo, Authorization]
      headers: {X-Api-Key: '${SECRET_KEY}', X-Lit: '{not-a-placeholder}', X-Esc: '$${x}'}
      changeOrigin: false
      pathRewrite: {'^/api/proxy/open/old/(.*)$': '/new/$1', '^/api/proxy/open': ''}
      xfwd: true
      ws: true
      secure: false
      proxyTimeout: 500
      ignorePath: false
      prependPath: true
      method: PUT
      logLevel: debug
    /fwd: {target: %(u)s, credentials: forward}
    bad-key/: {target: %(u)s}
    /broken: {target: 42}
""" % {"u": U},
    "root-layout": "proxy:\n  /a: %s\n  /b:\n    target: %s/x\n" % (U, U),
    "wrong-types": "proxy:\n  endpoints:\n    /r:\n      target: %s\n      credentials: [a]\n      headers: 1\n      changeOrigin: x\n" % U,
    "alias-bomb-small": "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nproxy:\n  endpoints:\n    /r: {target: %s, allowedHeaders: *a}\n" % U,
    "deep": "x: " + "[" * 120 + "]" * 120 + "\n",
    "anchors-merge": "base: &base {target: %s, credentials: require}\nproxy:\n  endpoints:\n    /a: {<<: *base, ws: true}\n    /b: *base\n" % U,
    "listen-string": "backend:\n  listen: ':9080'\nproxy:\n  endpoints:\n    /a: %s\n" % U,
    "admin-off": "caddy: {admin: 'off', listen: ':9080'}\nproxy: {endpoints: {/a: %s}}\n" % U,
    "json-flow": '{"proxy": {"endpoints": {"/a": {"target": "%s", "allowedMethods": []}}}}\n' % U,
    "discovery": "backend: {baseUrl: 'http://localhost:7007'}\ndiscovery:\n  endpoints:\n    - target: {internal: 'http://127.0.0.1:7007/api/{{pluginId}}'}\n      plugins: [auth, '*']\nproxy: {}\n",
    "keys-legacy": "backend: {auth: {keys: [{secret: c2VjcmV0}], dangerouslyDisableDefaultAuthPolicy: true}}\nproxy: {endpoints: {/a: %s}}\n" % U,
    "env-substitution": "proxy:\n  endpoints:\n    /a:\n      target: ${PROXY_TARGET:-%s}\n      headers: {Authorization: 'Bearer ${TOKEN}'}\n" % U,
    "allowed-header-bad-name": "proxy:\n  endpoints:\n    /a: {target: %s, allowedHeaders: ['bad name']}\n" % U,
    "pathrewrite-js": "proxy:\n  endpoints:\n    /a: {target: %s, pathRewrite: {'(?<=a)b': x, '^/api/proxy/a/(?<n>x)': '$<n>$&$$$1$2'}}\n" % U,
    "nan-timeout": "proxy:\n  endpoints:\n    /a: {target: %s, proxyTimeout: .nan}\n" % U,
    "empty": "",
    "null": "null\n",
    "two-docs": "a: 1\n---\nb: 2\n",
}
for path in sorted(glob.glob(os.path.join("testdata", "integration", "*.yaml"))):
    body = open(path).read().replace("@UPSTREAM@", U)
    adapt["integration-" + os.path.basename(path)[:-5]] = body
for name, body in adapt.items():
    write("FuzzAdapt", name, ("[]byte", body))

# --- FuzzPathGuard -------------------------------------------------------
paths = [
    "/a/b", "/a/../b", "/a/..", "..", "/a/%2e%2e/b", "/a/%2E%2e/b", "/a/.%2e/b", "/a/%252e%252e/b",
    "/a/%25252e%25252e/b", "/a/%2525252e%2525252e/b", "/a/..%2fb", "/a/..%5cb", "/a/..\\b", "\\..\\a",
    "/a/..;/b", "/a/..;x=y/b", "/a/..%3bx/b", "/a/%2e%2e;/b", "/a;b/c", "/a/.../b", "/a/./b", "/a/%00",
    "/a/%0d%0a", "/a/%c0%ae%c0%ae/b", "/a/%e0%80%ae", "/a/%ff", "/a%zz", "/a/%", "/a/%2", "/a/%252e%252e/%25zz",
    "/a/x%252f%252e%252e%252f%25zz", "/a/%2500", "/a/%25c0%25ae", "/a/b?x=../..", "//a//b", "/a/%2f%2f",
    "/a/\x7f", "/\u00e9/\u4e2d", "/a/%e2%80%ae", "/a/%ef%bc%8e%ef%bc%8e/b",
]
for i, p in enumerate(paths):
    write("FuzzPathGuard", "seed-%02d" % i, ("string", p))

# --- FuzzUpstreamRewrite ---------------------------------------------------
# (strip, targetPath, targetQuery, find, replace, escapedPath, rawQuery, flags)
# flags: 1 custom, 2 ignorePath, 4 no prependPath, 8 one rule, 16 has query
rewrites = [
    ("/api/proxy/simple", "", "", "", "", "/api/proxy/simple/foo", "x=1", 0),
    ("/api/proxy/open", "", "", "", "", "/api/proxy/open", "", 0),
    ("/api/proxy/open", "", "", "", "", "/api/proxy/OPEN//a//b/", "", 0),
    ("/api/proxy/withpath", "/api/v1", "", "", "", "/api/proxy/withpath", "", 0),
    ("/api/proxy/withpath", "/api/v1/", "", "", "", "/api/proxy/withpath/x/y", "z=1", 0),
    ("/api/proxy/q", "/api", "key=abc", "", "", "/api/proxy/q/x", "z=1", 0),
    ("/api/proxy/rw", "/base", "", "^/api/proxy/rw/old", "/new", "/api/proxy/rw/old/thing", "q=1", 1 | 8),
    ("/api/proxy/rw", "/base", "", "", "", "/api/proxy/rw/zzz", "q=1", 1),
    ("/api/proxy/rw", "/base", "", "^/api/proxy/rw/(.*)$", "/${1}?injected=1#frag", "/api/proxy/rw/a%2Fb", "", 1 | 8),
    ("/api/proxy/rw", "/base", "", "(?i)/api", "//", "/api/proxy/rw//x", "", 1 | 8 | 16),
    ("/api/proxy/ip", "/fixed", "k=v", "", "", "/api/proxy/ip/some/path", "q=1", 2),
    ("/api/proxy/np", "/dropped", "", "", "", "/api/proxy/np/some/path", "q=1", 4),
    ("", "//a//", "", "", "", "x", "", 0),
    ("/", "", "", ".*", "", "", "", 1 | 8 | 16),
]
for i, r in enumerate(rewrites):
    write("FuzzUpstreamRewrite", "seed-%02d" % i,
          *[("string", v) for v in r[:7]], ("byte", r[7]))

# --- FuzzRequestFilter -----------------------------------------------------
# (allowed, configured, headers, flags, status); flags: &3 credentials
# (require, forward, open), 4 ws
std = ("Cache-Control: no-cache\nContent-Type: text/plain\nHost: x\nAccept: */*\nUser-Agent: u\n"
       "Authorization: Bearer t\nCookie: a=b\nX-Forwarded-For: 1.2.3.4\nConnection: Upgrade, X-Foo\n"
       "Upgrade: websocket\nSec-WebSocket-Key: k\nSec-WebSocket-Version: 13\nHttp2-Settings: AAA\n"
       "Set-Cookie: s=1\nLocation: /x\nContent-Encoding: gzip\nSec-WebSocket-Accept: a\nX-Foo: 1\nX-Api-Key: k")
filters = [
    ("", "", std, 0, 2),
    ("", "", std, 1, 2),
    ("", "", std, 2, 2),
    ("X-Foo,authorization,cookie", "X-Api-Key", std, 0, 2),
    ("", "", std, 4, 0),
    ("Upgrade,Http2-Settings", "", std + "\nUpgrade: h2c", 0, 0),
    ("Upgrade,Http2-Settings", "", std.replace("Upgrade: websocket", "Upgrade: h2c"), 4, 0),
    ("Set-Cookie,Location,*", "Authorization", std, 5, 4),
    ("", "", "upgrade: WebSocket\nconnection: upgrade", 4, 1),
]
for i, r in enumerate(filters):
    write("FuzzRequestFilter", "seed-%02d" % i,
          ("string", r[0]), ("string", r[1]), ("string", r[2]), ("byte", r[3]), ("uint16", r[4]))
