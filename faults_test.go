package backstageproxy

// Fault and load tests through the shared in-process Caddy (see
// security_test.go): config reloads under load, an upstream that dies and
// comes back, a slow upstream with proxyTimeout, thousands of aborted
// streams, and large transfers with flat memory. Everything stays on
// loopback and is bounded in time. The default run is sized to take seconds;
// BACKSTAGE_PROXY_LONG_TESTS=1 runs the long versions (more reloads, a
// minute of load, 1 GiB transfers). -short skips them all.

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fltLong reports whether the long versions run.
func fltLong() bool { return os.Getenv("BACKSTAGE_PROXY_LONG_TESTS") == "1" }

// fltFDs counts this process's open file descriptors (-1 if unknown).
func fltFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}

// fltBaseline is a goroutine and fd count to come back to.
type fltBaseline struct{ goroutines, fds int }

// fltQuiesce closes what the test's own pools keep open, then measures.
func fltQuiesce(closers ...func()) fltBaseline {
	for _, c := range closers {
		c()
	}
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
	return fltBaseline{runtime.NumGoroutine(), fltFDs()}
}

// fltSettle waits (up to 15 s) for goroutines and fds to come back to the
// baseline within a tolerance; it fails with a goroutine dump otherwise.
func fltSettle(t *testing.T, base fltBaseline, tolGoroutines, tolFDs int, closers ...func()) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var now fltBaseline
	for {
		now = fltQuiesce(closers...)
		okG := now.goroutines <= base.goroutines+tolGoroutines
		okF := base.fds < 0 || now.fds <= base.fds+tolFDs
		if okG && okF {
			t.Logf("goroutines %d → %d, fds %d → %d", base.goroutines, now.goroutines, base.fds, now.fds)
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var dump strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
	d := dump.String()
	if len(d) > 8000 {
		d = d[:8000] + "…"
	}
	t.Errorf("no return to baseline after 15 s: goroutines %d → %d (tolerance %d), fds %d → %d (tolerance %d)\n%s",
		base.goroutines, now.goroutines, tolGoroutines, base.fds, now.fds, tolFDs, d)
}

// fltClient is a keep-alive client that always dials the test Caddy.
func fltClient(conns int, timeout time.Duration) (*http.Client, *http.Transport) {
	tr := &http.Transport{
		DialContext:         dialTestListener,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}, tr
}

// fltConfig is a config with the given endpoints under proxy.endpoints.
func fltConfig(endpoints string) string {
	return staticTokenConfig(testStaticToken, "fault-tests", endpoints)
}

// fltCounts are the outcomes of a load loop.
type fltCounts struct {
	total, failed atomic.Int64
	mu            sync.Mutex
	firstFailures []string
}

func (c *fltCounts) fail(format string, args ...any) {
	c.failed.Add(1)
	c.mu.Lock()
	if len(c.firstFailures) < 10 {
		c.firstFailures = append(c.firstFailures, fmt.Sprintf(format, args...))
	}
	c.mu.Unlock()
}

// ---------------------------------------------------------------------------
// Reloads under load.

func TestFaultReloadUnderLoad(t *testing.T) {
	skipIfShort(t)
	// The upstream echoes the X-Config header and the path it was sent. Each
	// config sets both, independently (a route's `headers:` and its target
	// path), so an answer tells which config served it, and an answer that
	// mixes them (A's header with B's path) is caught.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, r.Header.Get("X-Config")+" "+r.URL.Path)
	}))
	t.Cleanup(up.Close)
	cfgA := fltConfig(`
    /open: {target: ` + up.URL + `/a, credentials: dangerously-allow-unauthenticated, headers: {X-Config: A}}
    /secret: {target: ` + up.URL + `/a, headers: {X-Config: A}}
`)
	// B differs in more than the answers (one more route, other options), so
	// that every load is a real reload.
	cfgB := fltConfig(`
    /open: {target: ` + up.URL + `/b, credentials: dangerously-allow-unauthenticated, allowedHeaders: [X-Reload], headers: {X-Config: B}}
    /secret: {target: ` + up.URL + `/b, allowedMethods: [GET], headers: {X-Config: B}}
    /extra: {target: ` + up.URL + `}
`)
	answers := map[string]bool{"A /a/x": true, "B /b/x": true}
	secLoad(t, cfgA)

	workers, reloads, minDuration := 8, 20, time.Duration(0)
	if fltLong() {
		workers, reloads, minDuration = 32, 200, time.Minute
	}
	client, tr := fltClient(workers, 10*time.Second)
	defer tr.CloseIdleConnections()
	// warm up, then measure the baseline
	for range 3 {
		if res, err := client.Get("http://x/api/proxy/open/warm"); err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}
	base := fltQuiesce(tr.CloseIdleConnections, up.CloseClientConnections)

	// counts: wrong answers (a status other than 200, or a body that is
	// neither config A's nor config B's: the config was not applied
	// atomically); conn: transport errors (the connection was reset or closed
	// without an answer); seenA, seenB: answers of each config.
	var counts, conn fltCounts
	var seenA, seenB atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path, auth := "/api/proxy/open/x", ""
				if (w+i)%2 == 1 {
					path, auth = "/api/proxy/secret/x", "Bearer "+testStaticToken
				}
				req, _ := http.NewRequest("GET", "http://x"+path, nil)
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				counts.total.Add(1)
				res, err := client.Do(req)
				if err != nil {
					conn.fail("%s: %v", path, err)
					continue
				}
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil {
					conn.fail("%s: reading the body: %v", path, err)
				} else if res.StatusCode != 200 || !answers[string(b)] {
					counts.fail("%s: %d %q", path, res.StatusCode, b)
				} else if b[0] == 'A' {
					seenA.Add(1)
				} else {
					seenB.Add(1)
				}
			}
		}()
	}

	start := time.Now()
	done := 0
	for i := 0; i < reloads || time.Since(start) < minDuration; i++ {
		cfg := cfgB
		if i%2 == 1 {
			cfg = cfgA
		}
		status, body, err := secReload(cfg)
		if err != nil || status != 200 {
			t.Errorf("reload %d: %d %q %v", i, status, body, err)
			break
		}
		done++
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	total, wrong, dropped := counts.total.Load(), counts.failed.Load(), conn.failed.Load()
	t.Logf("%d reloads in %v under load from %d workers: %d requests (%d answered by config A, %d by B), %d wrong answers, %d connection errors",
		done, elapsed.Round(time.Millisecond), workers, total, seenA.Load(), seenB.Load(), wrong, dropped)
	if seenA.Load() == 0 || seenB.Load() == 0 {
		t.Errorf("answers of config A: %d, of config B: %d; the load did not span the reloads", seenA.Load(), seenB.Load())
	}
	if wrong != 0 {
		t.Errorf("%d of %d requests got a wrong answer during reloads; first: %q", wrong, total, counts.firstFailures)
	}
	if total < int64(done)*5 {
		t.Errorf("only %d requests during %d reloads: the load loop did not run", total, done)
	}
	if dropped*100 > total {
		t.Errorf("%d of %d requests lost their connection during reloads; first: %q", dropped, total, conn.firstFailures)
	}
	// leave config A running, then compare
	if status, body, err := secReload(cfgA); err != nil || status != 200 {
		t.Fatalf("final reload: %d %q %v", status, body, err)
	}
	fltSettle(t, base, 10, 4, tr.CloseIdleConnections, up.CloseClientConnections)
	if dropped != 0 {
		// Reproduced with a plain Caddy config (static_response, no module of
		// ours): on Linux, each reload binds a new SO_REUSEPORT socket and
		// closes the old one, which resets the connections still queued on
		// it; a keep-alive connection closed by the old server's shutdown
		// can also lose a request sent at that instant (SECURITY.md, known
		// limitations). Under 1 % it is reported, not failed: the answers
		// that did arrive were all checked above.
		t.Logf("known Caddy core behaviour: %d of %d requests lost their connection during %d reloads; first: %q",
			dropped, total, done, conn.firstFailures)
	}
}

// ---------------------------------------------------------------------------
// An upstream that dies and comes back.

func TestFaultUpstreamRestart(t *testing.T) {
	skipIfShort(t)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(ln) }()
	var restarted *http.Server
	t.Cleanup(func() {
		_ = srv.Close()
		if restarted != nil {
			_ = restarted.Close()
		}
	})
	secLoad(t, fltConfig(`
    /svc: {target: 'http://`+addr+`/base', credentials: dangerously-allow-unauthenticated}
`))
	client, tr := fltClient(4, 10*time.Second)
	defer tr.CloseIdleConnections()
	want502 := backstageErrorBody("BadGatewayError", msgBadGateway, "GET", "/svc/x", 502)

	type sample struct {
		start  time.Time // when the request was sent
		at     time.Time // when its answer came
		status int
		body   string
		err    error
	}
	var mu sync.Mutex
	var samples []sample
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				res, err := client.Get("http://x/api/proxy/svc/x")
				s := sample{start: start, at: time.Now(), err: err}
				if err == nil {
					b, _ := io.ReadAll(res.Body)
					res.Body.Close()
					s.status, s.body = res.StatusCode, string(b)
					if res.StatusCode == 502 && res.Header.Get("Content-Type") != "application/json; charset=utf-8" {
						s.body = "wrong Content-Type: " + s.body
					}
				}
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	// Phases end on samples, not on fixed sleeps, so that a loaded machine
	// (the race detector, parallel test binaries) cannot starve one.
	count := func(since time.Time, status int) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range samples {
			if s.err == nil && s.status == status && s.start.After(since) {
				n++
			}
		}
		return n
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	began := time.Now()
	waitFor("answers before the upstream dies", func() bool { return count(began, 200) >= 20 })
	killed := time.Now()
	_ = srv.Close() // listener and every connection
	waitFor("502s while the upstream is down", func() bool { return count(killed, 502) >= 10 })
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("could not listen on %s again: %v", addr, err)
	}
	restarted = &http.Server{Handler: handler}
	go func() { _ = restarted.Serve(ln2) }()
	back := time.Now()
	waitFor("answers after the restart", func() bool { return count(back, 200) >= 20 })
	close(stop)
	wg.Wait()

	var before, down, downOK, after, afterBad int
	var firstOKAfter time.Time
	for _, s := range samples {
		if s.err != nil {
			t.Errorf("transport error at +%v: %v", s.at.Sub(killed), s.err)
			continue
		}
		switch {
		case s.status == 200 && s.body == "ok":
		case s.status == 502 && s.body == want502:
		default:
			t.Errorf("unexpected answer at +%v: %d %q", s.at.Sub(killed), s.status, s.body)
		}
		if strings.Contains(s.body, port) || strings.Contains(s.body, "127.0.0.1") {
			t.Errorf("the error names the upstream: %q", s.body)
		}
		switch {
		case s.at.Before(killed):
			before++
			if s.status != 200 {
				t.Errorf("%d before the upstream died", s.status)
			}
		case s.at.Before(back):
			if s.status == 502 {
				down++
			} else {
				downOK++ // in flight when the upstream was killed
			}
		default:
			after++
			if s.status == 200 && firstOKAfter.IsZero() {
				firstOKAfter = s.at
			}
			// a request sent before the first success may have been
			// dialled while the upstream was still down
			if s.status != 200 && !firstOKAfter.IsZero() && s.start.After(firstOKAfter) {
				afterBad++
			}
		}
	}
	t.Logf("before: %d ok; down (%v): %d × 502, %d ok; after restart: %d, first ok after %v, %d failures after that",
		before, back.Sub(killed), down, downOK, after, firstOKAfter.Sub(back), afterBad)
	if before == 0 || down == 0 || after == 0 {
		t.Fatalf("not enough samples: %d before, %d down, %d after", before, down, after)
	}
	if downOK > 4 {
		t.Errorf("%d successful answers while the upstream was down (at most one in flight per worker)", downOK)
	}
	if firstOKAfter.IsZero() || firstOKAfter.Sub(back) > time.Second {
		t.Errorf("no recovery within 1 s of the restart (first ok %v after)", firstOKAfter.Sub(back))
	}
	if afterBad != 0 {
		t.Errorf("%d failures after the first success following the restart", afterBad)
	}
}

// ---------------------------------------------------------------------------
// A slow upstream and proxyTimeout.

func TestFaultProxyTimeout(t *testing.T) {
	skipIfShort(t)
	released := make(chan time.Duration, 4)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/fast") {
			_, _ = io.WriteString(w, "fast")
			return
		}
		start := time.Now()
		select {
		case <-time.After(5 * time.Second):
			_, _ = io.WriteString(w, "too late")
		case <-r.Context().Done():
		}
		released <- time.Since(start)
	}))
	secLoad(t, fltConfig(`
    /slow: {target: `+up.URL+`, credentials: dangerously-allow-unauthenticated, proxyTimeout: 300}
`))
	client, tr := fltClient(1, 10*time.Second)
	defer tr.CloseIdleConnections()

	res, err := client.Get("http://x/api/proxy/slow/fast")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "fast" {
		t.Fatalf("fast request: %d %q", res.StatusCode, b)
	}

	start := time.Now()
	res, err = client.Get("http://x/api/proxy/slow/wait?q=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	elapsed := time.Since(start)
	t.Logf("504 after %v", elapsed.Round(time.Millisecond))
	if want := backstageErrorBody("GatewayTimeoutError", msgGatewayTimeout, "GET", "/slow/wait?q=1", 504); res.StatusCode != 504 || string(b) != want {
		t.Errorf("got %d %q, want 504 %s", res.StatusCode, b, want)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	// at the configured timeout: not before it, and well before the upstream
	// would have answered (5 s)
	if elapsed < 300*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("answered after %v, want about 300 ms", elapsed)
	}
	// the upstream request was cancelled, not left running
	select {
	case d := <-released:
		if d > 4*time.Second {
			t.Errorf("the upstream request ran for %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the upstream request was not cancelled")
	}
}

// ---------------------------------------------------------------------------
// Aborted streams.

// fltStreamer serves endless SSE events and endless downloads, counting the
// handlers that are running.
type fltStreamer struct {
	*httptest.Server
	active, started atomic.Int64
}

func fltNewStreamer(t *testing.T) *fltStreamer {
	t.Helper()
	s := &fltStreamer{}
	chunk := make([]byte, 16<<10)
	for i := range chunk {
		chunk[i] = byte('a' + i%26)
	}
	s.Server = newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.started.Add(1)
		s.active.Add(1)
		defer s.active.Add(-1)
		rc := http.NewResponseController(w)
		ctx := r.Context()
		if strings.HasSuffix(r.URL.Path, "/sse") {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			for i := 0; ; i++ {
				if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
					return
				}
				if rc.Flush() != nil {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
		// an endless download, paced so that aborted ones cost little
		w.Header().Set("Content-Type", "application/octet-stream")
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
	}))
	return s
}

func TestFaultAbortedStreams(t *testing.T) {
	skipIfShort(t)
	up := fltNewStreamer(t)
	secLoad(t, fltConfig(`
    /stream: {target: `+up.URL+`, credentials: dangerously-allow-unauthenticated}
`))
	n, workers := 10000, 32
	if secRace() && !fltLong() {
		n = 2000 // the race detector makes each one ~5x slower
	}
	client, tr := fltClient(workers, 30*time.Second)
	defer tr.CloseIdleConnections()
	base := fltQuiesce(tr.CloseIdleConnections, up.CloseClientConnections)

	var next atomic.Int64
	var counts fltCounts
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				counts.total.Add(1)
				sse := i%2 == 0
				path := "/api/proxy/stream/download"
				if sse {
					path = "/api/proxy/stream/sse"
				}
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://x"+path, nil)
				res, err := client.Do(req)
				if err != nil {
					cancel()
					counts.fail("%s: %v", path, err)
					continue
				}
				// read some of the stream, then give up on it
				want := 48 << 10
				if sse {
					want = 20
				}
				got := 0
				for got < want {
					m, err := res.Body.Read(buf)
					got += m
					if err != nil {
						break
					}
				}
				if res.StatusCode != 200 || got < want {
					counts.fail("%s: %d, read %d bytes", path, res.StatusCode, got)
				}
				cancel()
				res.Body.Close()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d streams aborted mid-way in %v (%d failed); upstream handlers started: %d",
		counts.total.Load(), elapsed.Round(time.Millisecond), counts.failed.Load(), up.started.Load())
	if counts.failed.Load() != 0 {
		t.Errorf("%d requests failed before being aborted; first: %q", counts.failed.Load(), counts.firstFailures)
	}
	// every upstream handler saw its request end: the cancellations reached it
	deadline := time.Now().Add(10 * time.Second)
	for up.active.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if a := up.active.Load(); a != 0 {
		t.Errorf("%d upstream streams still running 10 s after their clients left", a)
	}
	fltSettle(t, base, 10, 4, tr.CloseIdleConnections, up.CloseClientConnections)
}

// ---------------------------------------------------------------------------
// Large uploads and downloads with flat memory.

// fltPattern is an endless deterministic byte stream.
type fltPattern struct{ off int64 }

func (p *fltPattern) Read(b []byte) (int, error) {
	for i := range b {
		x := p.off + int64(i)
		b[i] = byte(x*31 + x>>9)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func fltPatternCRC(n int64) uint32 {
	h := crc32.NewIEEE()
	_, _ = io.CopyN(h, &fltPattern{}, n)
	return h.Sum32()
}

// fltPeakHeap samples HeapInuse until stop is closed and returns the peak.
func fltPeakHeap(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		var m runtime.MemStats
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak {
				peak = m.HeapInuse
			}
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

func TestFaultLargeTransfer(t *testing.T) {
	skipIfShort(t)
	size := int64(64 << 20)
	if fltLong() {
		size = 1 << 30
	}
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/upload"):
			h := crc32.NewIEEE()
			n, err := io.Copy(h, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"n": n, "crc": h.Sum32(), "err": fmt.Sprint(err)})
		case strings.HasSuffix(r.URL.Path, "/download"):
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			_, _ = io.CopyN(w, &fltPattern{}, size)
		}
	}))
	secLoad(t, fltConfig(`
    /big: {target: `+up.URL+`, credentials: dangerously-allow-unauthenticated}
`))
	client, tr := fltClient(1, 10*time.Minute)
	defer tr.CloseIdleConnections()
	wantCRC := fltPatternCRC(size)
	// Far below the transfer size: a buffered body would need all of it.
	limit := uint64(24 << 20)
	if fltLong() {
		limit = 64 << 20
	}

	measure := func(t *testing.T, transfer func() error) {
		t.Helper()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		base := m.HeapInuse
		stop := make(chan struct{})
		peak := fltPeakHeap(stop)
		start := time.Now()
		err := transfer()
		close(stop)
		p := <-peak
		elapsed := time.Since(start)
		growth := uint64(0)
		if p > base {
			growth = p - base
		}
		t.Logf("%d MiB in %v; HeapInuse %d MiB before, peak %d MiB (+%d MiB)", size>>20, elapsed.Round(time.Millisecond),
			base>>20, p>>20, growth>>20)
		if err != nil {
			t.Fatal(err)
		}
		if growth > limit {
			t.Errorf("HeapInuse grew by %d MiB during a %d MiB transfer, want under %d MiB", growth>>20, size>>20, limit>>20)
		}
	}

	t.Run("download", func(t *testing.T) {
		measure(t, func() error {
			res, err := client.Get("http://x/api/proxy/big/download")
			if err != nil {
				return err
			}
			defer res.Body.Close()
			h := crc32.NewIEEE()
			n, err := io.Copy(h, res.Body)
			if err != nil {
				return err
			}
			if res.StatusCode != 200 || n != size || h.Sum32() != wantCRC {
				return fmt.Errorf("status %d, %d bytes (want %d), crc %08x (want %08x)", res.StatusCode, n, size, h.Sum32(), wantCRC)
			}
			return nil
		})
	})
	for _, chunked := range []bool{false, true} {
		name := "upload"
		if chunked {
			name = "chunked upload"
		}
		t.Run(name, func(t *testing.T) {
			measure(t, func() error {
				var body io.Reader = io.LimitReader(&fltPattern{}, size)
				req, _ := http.NewRequest("POST", "http://x/api/proxy/big/upload", body)
				req.ContentLength = size
				if chunked {
					req.ContentLength = -1
				}
				req.Header.Set("Content-Type", "application/octet-stream")
				res, err := client.Do(req)
				if err != nil {
					return err
				}
				defer res.Body.Close()
				var got struct {
					N   int64  `json:"n"`
					CRC uint32 `json:"crc"`
					Err string `json:"err"`
				}
				if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
					return fmt.Errorf("status %d: %v", res.StatusCode, err)
				}
				if res.StatusCode != 200 || got.N != size || got.CRC != wantCRC {
					return fmt.Errorf("status %d, upstream read %d bytes (want %d), crc %08x (want %08x), %s",
						res.StatusCode, got.N, size, got.CRC, wantCRC, got.Err)
				}
				return nil
			})
		})
	}
}
