package main

import (
	"context"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// TestServeHardeningFlags: the flags reach the server. /metrics is open by
// default and needs the token with --metrics-auth (issue 12, item 15).
func TestServeHardeningFlags(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		anonymous int
	}{
		{nil, http.StatusOK},
		{[]string{"--metrics-auth", "--http-read-timeout", "5s", "--http-write-timeout", "30s", "--http-idle-timeout", "30s",
			"--http-read-header-timeout", "5s", "--http-max-conns", "64", "--integrity-check", "-1s"}, http.StatusUnauthorized},
	} {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		var out, errb syncBuf
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, append([]string{"serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn"}, tt.args...), &out, &errb)
		}()
		re := regexp.MustCompile(`(?m)^http: (http://\S+)$`)
		outposttest.Eventually(t, 10*time.Second, "serve output", func() bool { return re.MatchString(out.String()) })
		url := re.FindStringSubmatch(out.String())[1]
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.anonymous {
			t.Errorf("%v: /metrics without a token: %d, want %d", tt.args, resp.StatusCode, tt.anonymous)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve %v: %v (%s)", tt.args, err, errb.String())
		}
	}
}
