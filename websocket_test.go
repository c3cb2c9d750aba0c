package backstageproxy

// WebSocket tests (divergence D1): upgrades pass only on `ws: true` routes,
// only under that route's path and after its credentials check, and open
// streams survive config reloads. The upstream is a minimal RFC 6455 server
// written by hand (net/http Hijack): a handshake, then it echoes every text
// or binary frame.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const wstGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wstAccept(key string) string {
	h := sha1.Sum([]byte(key + wstGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wstFrame is one WebSocket frame.
type wstFrame struct {
	fin     bool
	opcode  byte
	payload []byte
}

// wstReadFrame reads one frame, unmasking it if it is masked.
func wstReadFrame(r io.Reader) (wstFrame, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return wstFrame{}, err
	}
	f := wstFrame{fin: hdr[0]&0x80 != 0, opcode: hdr[0] & 0x0f}
	masked := hdr[1]&0x80 != 0
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 16<<20 {
		return f, fmt.Errorf("frame of %d bytes", n)
	}
	var mask [4]byte
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return f, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.payload); err != nil {
		return f, err
	}
	if masked {
		for i := range f.payload {
			f.payload[i] ^= mask[i%4]
		}
	}
	return f, nil
}

// wstWriteFrame writes one final frame; clients mask, servers don't.
func wstWriteFrame(w io.Writer, opcode byte, payload []byte, mask bool) error {
	var b bytes.Buffer
	b.WriteByte(0x80 | opcode)
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(m | byte(n))
	case n <= 0xffff:
		b.WriteByte(m | 126)
		_ = binary.Write(&b, binary.BigEndian, uint16(n))
	default:
		b.WriteByte(m | 127)
		_ = binary.Write(&b, binary.BigEndian, uint64(n))
	}
	if mask {
		var key [4]byte
		_, _ = rand.Read(key[:])
		b.Write(key[:])
		for i, c := range payload {
			b.WriteByte(c ^ key[i%4])
		}
	} else {
		b.Write(payload)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// wstUpstream records every request; WebSocket upgrades are accepted and
// echoed, anything else gets a plain 200.
type wstUpstream struct {
	*httptest.Server
	mu       sync.Mutex
	seen     []http.Header
	uris     []string
	upgrades int
}

func wstNewUpstream(t *testing.T) *wstUpstream {
	t.Helper()
	u := &wstUpstream{}
	u.Server = newTestUpstream(t, http.HandlerFunc(u.serve))
	return u
}

func (u *wstUpstream) requests() ([]string, []http.Header) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.uris), slices.Clone(u.seen)
}

func (u *wstUpstream) reset() {
	u.mu.Lock()
	u.seen, u.uris, u.upgrades = nil, nil, 0
	u.mu.Unlock()
}

func (u *wstUpstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.seen = append(u.seen, r.Header.Clone())
	u.uris = append(u.uris, r.RequestURI)
	u.mu.Unlock()
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "plain")
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if key == "" || r.Header.Get("Sec-WebSocket-Version") != "13" {
		http.Error(w, "bad handshake", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	u.mu.Lock()
	u.upgrades++
	u.mu.Unlock()
	// a compromised upstream's extra headers must not reach the client
	_, _ = fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\nSet-Cookie: ws=1\r\nX-Internal-Upstream: %s\r\n\r\n", wstAccept(key), u.URL)
	if brw.Flush() != nil {
		return
	}
	for {
		f, err := wstReadFrame(brw)
		if err != nil {
			return
		}
		switch f.opcode {
		case 0x1, 0x2: // text, binary: echo
			if wstWriteFrame(conn, f.opcode, f.payload, false) != nil {
				return
			}
		case 0x9: // ping
			_ = wstWriteFrame(conn, 0xA, f.payload, false)
		case 0x8: // close
			_ = wstWriteFrame(conn, 0x8, f.payload, false)
			return
		}
	}
}

// wstClient is a raw client connection after the handshake.
type wstClient struct {
	conn net.Conn
	br   *bufio.Reader
	res  *http.Response
	body []byte
	// wantAccept is the Sec-WebSocket-Accept the handshake must carry.
	wantAccept string
}

// wstDial sends a WebSocket handshake for path with the extra header lines;
// it returns the client, whatever the status.
func wstDial(t *testing.T, path string, headers ...string) *wstClient {
	t.Helper()
	key := base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("nonce-%d", time.Now().UnixNano()%1e12)))[:22] + "=="
	raw := "GET " + path + " HTTP/1.1\r\nHost: localhost:7007\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nCookie: session=1\r\n"
	for _, h := range headers {
		raw += h + "\r\n"
	}
	raw += "\r\n"
	conn, br := sendRawToListener(t, raw, 10*time.Second)
	t.Cleanup(func() { conn.Close() })
	res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("handshake response: %v", err)
	}
	c := &wstClient{conn: conn, br: br, res: res, wantAccept: wstAccept(key)}
	if res.StatusCode != http.StatusSwitchingProtocols {
		c.body, _ = io.ReadAll(res.Body)
		res.Body.Close()
	}
	return c
}

// checkHandshake asserts what an RFC 6455 client checks in the 101: Upgrade,
// Connection and the right Sec-WebSocket-Accept; and that none of the
// upstream's other headers reached the client.
func (c *wstClient) checkHandshake(t *testing.T) {
	t.Helper()
	h := c.res.Header
	if !strings.EqualFold(h.Get("Upgrade"), "websocket") || !strings.EqualFold(h.Get("Connection"), "upgrade") {
		t.Errorf("101 lacks the upgrade headers: %v", h)
	}
	for _, name := range []string{"Set-Cookie", "X-Internal-Upstream"} {
		if v := h.Get(name); v != "" {
			t.Errorf("101 response header %s = %q reached the client", name, v)
		}
	}
	if got := h.Get("Sec-WebSocket-Accept"); got != c.wantAccept {
		t.Errorf("Sec-WebSocket-Accept = %q, want %q", got, c.wantAccept)
	}
}

// echo sends a masked frame and expects it back.
func (c *wstClient) echo(t *testing.T, opcode byte, payload []byte) {
	t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wstWriteFrame(c.conn, opcode, payload, true); err != nil {
		t.Fatalf("writing a frame: %v", err)
	}
	f, err := wstReadFrame(c.br)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if !f.fin || f.opcode != opcode || !bytes.Equal(f.payload, payload) {
		t.Fatalf("echo: fin %v opcode %d %d bytes %.40q, want opcode %d %d bytes", f.fin, f.opcode, len(f.payload), f.payload, opcode, len(payload))
	}
}

func (c *wstClient) close(t *testing.T) {
	t.Helper()
	_ = wstWriteFrame(c.conn, 0x8, []byte{0x03, 0xe8}, true)
	f, err := wstReadFrame(c.br)
	if err != nil || f.opcode != 0x8 {
		t.Errorf("close handshake: opcode %d, %v", f.opcode, err)
	}
	c.conn.Close()
}

// wstConfig has a ws route with a static token, an ordinary route, and
// optionally an extra route (to make a reload a real change).
func wstConfig(ws, plain string, extra bool) string {
	cfg := staticTokenConfig(testStaticToken, "websocket-tests", `    /ws:
      target: `+ws+`/sock
      ws: true
    /open-ws:
      target: `+ws+`
      ws: true
      credentials: dangerously-allow-unauthenticated
    /plain:
      target: `+plain+`
      credentials: dangerously-allow-unauthenticated
`)
	if extra {
		cfg += "    /extra: {target: " + plain + "}\n"
	}
	return cfg
}

func wstSetup(t *testing.T) (ws, plain *wstUpstream) {
	t.Helper()
	skipIfShort(t)
	ws, plain = wstNewUpstream(t), wstNewUpstream(t)
	secLoad(t, wstConfig(ws.URL, plain.URL, false))
	return ws, plain
}

func TestWebSocketEcho(t *testing.T) {
	ws, _ := wstSetup(t)
	c := wstDial(t, "/api/proxy/ws/chat?room=1", "Authorization: Bearer "+testStaticToken)
	if c.res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d %q, want 101", c.res.StatusCode, c.body)
	}
	c.echo(t, 0x1, []byte("hello"))
	c.echo(t, 0x1, []byte("second frame on the same stream"))
	big := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16) // 200 KiB, 64-bit length
	c.echo(t, 0x2, big)
	c.close(t)

	uris, hdrs := ws.requests()
	if !slices.Equal(uris, []string{"/sock/chat?room=1"}) {
		t.Fatalf("upstream requests %q, want one to /sock/chat?room=1", uris)
	}
	h := hdrs[0]
	if !strings.EqualFold(h.Get("Upgrade"), "websocket") || h.Get("Sec-Websocket-Key") == "" || h.Get("Sec-Websocket-Version") != "13" {
		t.Errorf("upstream handshake headers: %v", h)
	}
	for _, name := range []string{"Authorization", "Cookie"} {
		if v := h.Get(name); v != "" {
			t.Errorf("upstream got %s: %q on a require route", name, v)
		}
	}
	// The 101 as an RFC 6455 client checks it, and no other upstream header.
	t.Run("handshake headers", c.checkHandshake)
}

func TestWebSocketCredentials(t *testing.T) {
	ws, _ := wstSetup(t)
	for _, c := range []struct {
		name   string
		header []string
		body   string
	}{
		{"no token", nil, backstageErrorBody("AuthenticationError", "Missing credentials", "GET", "/ws/chat", 401)},
		{"invalid token", []string{"Authorization: Bearer nope"}, backstageErrorBody("AuthenticationError", "Illegal token", "GET", "/ws/chat", 401)},
		{"token in the subprotocol", []string{"Sec-WebSocket-Protocol: " + testStaticToken}, backstageErrorBody("AuthenticationError", "Missing credentials", "GET", "/ws/chat", 401)},
		{"token in the query", nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ws.reset()
			path := "/api/proxy/ws/chat"
			if c.body == "" {
				path += "?token=" + testStaticToken
				c.body = backstageErrorBody("AuthenticationError", "Missing credentials", "GET", "/ws/chat?token="+testStaticToken, 401)
			}
			cl := wstDial(t, path, c.header...)
			if cl.res.StatusCode != 401 || string(cl.body) != c.body {
				t.Errorf("got %d %q, want 401 %s", cl.res.StatusCode, cl.body, c.body)
			}
			if uris, _ := ws.requests(); len(uris) != 0 {
				t.Errorf("the upstream was contacted: %q", uris)
			}
		})
	}
	t.Run("traversal with a token", func(t *testing.T) {
		ws.reset()
		cl := wstDial(t, "/api/proxy/ws/%2e%2e/plain/x", "Authorization: Bearer "+testStaticToken)
		if cl.res.StatusCode != 400 || string(cl.body) != "Bad Request" {
			t.Errorf("got %d %q, want 400 Bad Request", cl.res.StatusCode, cl.body)
		}
		if uris, _ := ws.requests(); len(uris) != 0 {
			t.Errorf("the upstream was contacted: %q", uris)
		}
	})
	t.Run("unknown route", func(t *testing.T) {
		cl := wstDial(t, "/api/proxy/nope/chat")
		if cl.res.StatusCode != 401 {
			t.Errorf("got %d %q, want 401", cl.res.StatusCode, cl.body)
		}
	})
}

func TestWebSocketOnlyOnWSRoutes(t *testing.T) {
	ws, plain := wstSetup(t)
	// An upgrade request to a route without ws: true is proxied as a plain
	// request, without its upgrade headers, even when a ws route exists.
	c := wstDial(t, "/api/proxy/plain/chat", "Authorization: Bearer "+testStaticToken)
	if c.res.StatusCode != 200 || string(c.body) != "plain" {
		t.Fatalf("got %d %q, want the upstream's plain 200", c.res.StatusCode, c.body)
	}
	if v := c.res.Header.Get("Upgrade"); v != "" {
		t.Errorf("response has Upgrade: %q", v)
	}
	uris, hdrs := plain.requests()
	if !slices.Equal(uris, []string{"/chat"}) {
		t.Fatalf("upstream requests %q", uris)
	}
	for _, name := range []string{"Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version", "Cookie", "Authorization"} {
		if v, ok := hdrs[0][name]; ok {
			t.Errorf("upstream got %s: %q", name, v)
		}
	}
	if uris, _ := ws.requests(); len(uris) != 0 {
		t.Errorf("the ws upstream was contacted: %q", uris)
	}
	// an unauthenticated ws route upgrades without a token, and only there
	ws.reset()
	c = wstDial(t, "/api/proxy/open-ws/chat")
	if c.res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("open ws route: %d %q, want 101", c.res.StatusCode, c.body)
	}
	c.echo(t, 0x1, []byte("open"))
	c.close(t)
}

func TestWebSocketSurvivesReload(t *testing.T) {
	ws, plain := wstSetup(t)
	c := wstDial(t, "/api/proxy/ws/chat", "Authorization: Bearer "+testStaticToken)
	if c.res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d %q, want 101", c.res.StatusCode, c.body)
	}
	c.echo(t, 0x1, []byte("before the reload"))

	for i, extra := range []bool{true, false, true} {
		status, body, err := secReload(wstConfig(ws.URL, plain.URL, extra))
		if err != nil || status != 200 {
			t.Fatalf("reload %d: %d %q %v", i, status, body, err)
		}
		// the new config is serving (the extra route exists or not) ...
		res := secRawRequest(secGet("/api/proxy/extra/x", "Authorization: Bearer "+testStaticToken))
		want := 404
		if extra {
			want = 200
		}
		if res.Status != want {
			t.Errorf("after reload %d: /extra answered %s, want %d", i, res, want)
		}
		// ... and the stream opened before it still works
		c.echo(t, 0x1, []byte(fmt.Sprintf("after reload %d", i)))
	}
	// a new stream under the new config works too
	c2 := wstDial(t, "/api/proxy/ws/chat", "Authorization: Bearer "+testStaticToken)
	if c2.res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("new stream: %d %q", c2.res.StatusCode, c2.body)
	}
	c2.echo(t, 0x1, []byte("new"))
	c2.close(t)
	c.echo(t, 0x1, []byte("still here"))
	c.close(t)
}
