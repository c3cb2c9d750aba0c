// Command upstream is the fast HTTP upstream of bench/run.sh, and its helper
// for Backstage user tokens and start-up timing. Standard library only.
//
// Modes:
//
//	upstream -addr 127.0.0.1:18180 -key k.pem [-jwks-keys N]
//	    serve: every path answers 200 with a small fixed JSON body and a few
//	    headers; any path ending in /.well-known/jwks.json answers the JWKS
//	    (the ES256 public key of -key, kid -kid, after N-1 decoy keys).
//	upstream -key k.pem -mint [-sub user:default/bench] [-ttl 1h]
//	    print a Backstage user token signed with -key: header
//	    {typ: vnd.backstage.user, alg: ES256, kid}, claims {sub, aud: backstage,
//	    iat, exp}.
//	upstream -time-start http://127.0.0.1:P/path [-poll 1ms] [-timeout 10s] -- cmd args...
//	    start cmd, poll the URL until it answers 200, print the milliseconds
//	    from exec to that answer, then stop cmd (SIGTERM, then SIGKILL).
//
// -key is created (PKCS#8 PEM, mode 0600) when it does not exist. Every
// address must be a loopback one: this program never talks to anything else.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		addr     = flag.String("addr", "127.0.0.1:18180", "listen address (loopback only)")
		keyFile  = flag.String("key", "", "ES256 private key file (PKCS#8 PEM); created if missing")
		kid      = flag.String("kid", "bench-key", "key id of the signing key")
		nKeys    = flag.Int("jwks-keys", 1, "number of keys in the JWKS (the signing key is last)")
		mint     = flag.Bool("mint", false, "print a signed Backstage user token and exit")
		sub      = flag.String("sub", "user:default/bench", "token subject (with -mint)")
		ttl      = flag.Duration("ttl", time.Hour, "token lifetime (with -mint)")
		timeURL  = flag.String("time-start", "", "start the command after --, print ms until this URL answers 200")
		poll     = flag.Duration("poll", time.Millisecond, "polling interval (with -time-start)")
		deadline = flag.Duration("timeout", 10*time.Second, "give up after this long (with -time-start)")
	)
	flag.Parse()
	var err error
	switch {
	case *timeURL != "":
		err = timeStart(*timeURL, flag.Args(), *poll, *deadline)
	case *mint:
		var key *ecdsa.PrivateKey
		if key, err = loadOrCreateKey(*keyFile); err == nil {
			var tok string
			if tok, err = mintUserToken(key, *kid, *sub, time.Now(), *ttl); err == nil {
				fmt.Println(tok)
			}
		}
	default:
		var key *ecdsa.PrivateKey
		if key, err = loadOrCreateKey(*keyFile); err == nil {
			err = serve(*addr, key, *kid, *nKeys)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}

// body is the fixed answer: small, like a typical JSON API response.
var body = []byte(`{"kind":"Component","metadata":{"name":"bench","namespace":"default"},"spec":{"type":"service","lifecycle":"production","owner":"team-a"}}` + "\n")

func serve(addr string, key *ecdsa.PrivateKey, kid string, nKeys int) error {
	if err := requireLoopbackHostPort(addr); err != nil {
		return err
	}
	jwks, err := jwksJSON(key, kid, nKeys)
	if err != nil {
		return err
	}
	contentLength := fmt.Sprint(len(body))
	jwksLength := fmt.Sprint(len(jwks))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			_, _ = io.Copy(io.Discard, r.Body)
		}
		h := w.Header()
		if strings.HasSuffix(r.URL.Path, "/.well-known/jwks.json") {
			h["Content-Type"] = []string{"application/json"}
			h["Cache-Control"] = []string{"max-age=3600"}
			h["Content-Length"] = []string{jwksLength}
			_, _ = w.Write(jwks)
			return
		}
		// A few headers, some of which Backstage's response allowlist drops.
		h["Content-Type"] = []string{"application/json; charset=utf-8"}
		h["Content-Length"] = []string{contentLength}
		h["Cache-Control"] = []string{"no-store"}
		h["Etag"] = []string{`"bench-1"`}
		h["X-Upstream"] = []string{"bench"}
		h["Set-Cookie"] = []string{"upstream-session=abc; Path=/; HttpOnly"}
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(body)
	})
	srv := &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          nil,
	}
	fmt.Fprintf(os.Stderr, "upstream: listening on http://%s\n", addr)
	return srv.ListenAndServe()
}

// loadOrCreateKey reads a PKCS#8 PEM P-256 key, or creates one at path.
func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	if path == "" {
		return nil, errors.New("-key is required")
	}
	if pemBytes, err := os.ReadFile(path); err == nil {
		block, _ := pem.Decode(pemBytes)
		if block == nil {
			return nil, fmt.Errorf("%s: no PEM block", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%s: not a P-256 ECDSA key", path)
		}
		return ek, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, err
	}
	return k, f.Close()
}

var b64 = base64.RawURLEncoding

type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

func publicJWK(pub *ecdsa.PublicKey, kid string) (jwk, error) {
	raw, err := pub.Bytes() // uncompressed point: 0x04 || X || Y
	if err != nil {
		return jwk{}, err
	}
	if len(raw) != 65 || raw[0] != 4 {
		return jwk{}, errors.New("unexpected P-256 public key encoding")
	}
	return jwk{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(raw[1:33]), Y: b64.EncodeToString(raw[33:]),
		Kid: kid, Alg: "ES256", Use: "sig"}, nil
}

// jwksJSON is the key set: n-1 decoy keys, then the signing key.
func jwksJSON(key *ecdsa.PrivateKey, kid string, n int) ([]byte, error) {
	if n < 1 {
		n = 1
	}
	keys := make([]jwk, 0, n)
	for i := 0; i < n-1; i++ {
		decoy, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		k, err := publicJWK(&decoy.PublicKey, fmt.Sprintf("decoy-%d", i))
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	k, err := publicJWK(&key.PublicKey, kid)
	if err != nil {
		return nil, err
	}
	keys = append(keys, k)
	return json.Marshal(map[string][]jwk{"keys": keys})
}

// mintUserToken signs a Backstage user token (ES256 JWS, compact form). The
// ES256 signature is the raw 64-byte r||s (RFC 7518 §3.4), not ASN.1 DER.
func mintUserToken(key *ecdsa.PrivateKey, kid, sub string, now time.Time, ttl time.Duration) (string, error) {
	header, err := json.Marshal(map[string]string{"typ": "vnd.backstage.user", "alg": "ES256", "kid": kid})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{
		"sub": sub, "aud": "backstage", "iat": now.Unix(), "exp": now.Add(ttl).Unix(),
	})
	if err != nil {
		return "", err
	}
	signingInput := b64.EncodeToString(header) + "." + b64.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signingInput + "." + b64.EncodeToString(sig), nil
}

// timeStart runs argv and measures exec -> first 200 from rawURL.
func timeStart(rawURL string, argv []string, poll, timeout time.Duration) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	if err := requireLoopbackHostPort(u.Host); err != nil {
		return err
	}
	if len(argv) == 0 {
		return errors.New("-time-start needs a command after --")
	}
	client := &http.Client{
		Timeout: 500 * time.Millisecond,
		// a fresh connection each time: the server may not exist yet
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if os.Getenv("TIME_START_LOG") != "" {
		if f, err := os.OpenFile(os.Getenv("TIME_START_LOG"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
			defer f.Close()
			cmd.Stdout, cmd.Stderr = f, f
		}
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	end := t0.Add(timeout)
	for {
		resp, err := client.Get(rawURL)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ms := float64(time.Since(t0).Microseconds()) / 1000
				stop()
				fmt.Printf("%.1f\n", ms)
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("command exited before ready: %v", err)
		default:
		}
		if time.Now().After(end) {
			stop()
			return fmt.Errorf("not ready after %v", timeout)
		}
		time.Sleep(poll)
	}
}

func requireLoopbackHostPort(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: only loopback addresses are allowed", hostport)
	}
	return nil
}
