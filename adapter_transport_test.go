package backstageproxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// followRedirects keeps a copy of the request body only for as long as a
// redirect may replay it: a body declared larger than maxRedirectBody is not
// copied, and the copy is dropped as soon as the answer is not a redirect to
// follow. A 307 replays the body, on every hop.
func TestFollowRedirectsBodyCopy(t *testing.T) {
	tr := &UpstreamTransport{FollowRedirects: true, MaxRedirects: defaultMaxRedirects}
	answer := func(req *http.Request, status int, loc string) *http.Response {
		h := http.Header{}
		if loc != "" {
			h.Set("Location", loc)
		}
		return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader("")), Request: req}
	}
	post := func(body []byte, contentLength int64) *http.Request {
		req, _ := http.NewRequest(http.MethodPut, "http://up.example/a", io.NopCloser(bytes.NewReader(body)))
		req.ContentLength = contentLength
		return req
	}

	t.Run("not a redirect: the copy is dropped", func(t *testing.T) {
		var rec *recordingBody
		body := bytes.Repeat([]byte("x"), 64<<10)
		res, err := tr.follow(post(body, int64(len(body))), func(req *http.Request) (*http.Response, error) {
			rec = req.Body.(*recordingBody)
			_, _ = io.Copy(io.Discard, req.Body)
			if n := rec.buffered(); n < len(body) {
				t.Errorf("%d bytes kept while sending, want the whole body", n)
			}
			return answer(req, 200, ""), nil
		})
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("%v %v", res, err)
		}
		if n := rec.buffered(); n != 0 {
			t.Errorf("%d bytes still kept after a 200", n)
		}
		// The transport may still be sending: nothing more is kept.
		rec.rc = io.NopCloser(bytes.NewReader(body))
		_, _ = io.Copy(io.Discard, rec)
		if n := rec.buffered(); n != 0 {
			t.Errorf("%d bytes kept after the answer", n)
		}
	})

	t.Run("declared too large: nothing is copied, the redirect is returned", func(t *testing.T) {
		body := bytes.Repeat([]byte("x"), 1<<20)
		hops := 0
		res, err := tr.follow(post(body, maxRedirectBody+1), func(req *http.Request) (*http.Response, error) {
			hops++
			_, _ = io.Copy(io.Discard, req.Body)
			if n := req.Body.(*recordingBody).buffered(); n != 0 {
				t.Errorf("%d bytes kept of a body declared larger than %d", n, maxRedirectBody)
			}
			return answer(req, 307, "/b"), nil
		})
		if err != nil || res.StatusCode != 307 || hops != 1 {
			t.Fatalf("%d hops, %v %v", hops, res, err)
		}
	})

	t.Run("307 twice: the body is replayed on every hop", func(t *testing.T) {
		var got []string
		res, err := tr.follow(post([]byte("payload"), 7), func(req *http.Request) (*http.Response, error) {
			b, _ := io.ReadAll(req.Body)
			got = append(got, req.URL.Path+"="+string(b))
			switch req.URL.Path {
			case "/a":
				return answer(req, 307, "/b"), nil
			case "/b":
				return answer(req, 308, "/c"), nil
			}
			return answer(req, 200, ""), nil
		})
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("%v %v", res, err)
		}
		if want := "[/a=payload /b=payload /c=payload]"; strings.Join(got, " ") != strings.Trim(want, "[]") {
			t.Errorf("hops %q, want %s", got, want)
		}
	})
}
