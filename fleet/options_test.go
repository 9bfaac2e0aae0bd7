package fleet_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

// Item 9 of issue 10: a bad option value is an error from Dial naming the
// option, as in the device package, never silently replaced by another
// value.
func TestDialRejectsBadOptions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		opt  fleet.Option
		want string
	}{
		{fleet.WithWorkers(0), "workers"},
		{fleet.WithWorkers(-3), "workers"},
		{fleet.WithQueueSize(0), "queue size"},
		{fleet.WithMaxInFlight(0), "max in flight"},
		{fleet.WithCallTimeout(0), "call timeout"},
		{fleet.WithCallTimeout(-time.Second), "call timeout"},
		{fleet.WithCallTimeout(time.Hour), "call timeout"},
		{fleet.WithReconnectBackoff(0, time.Second), "reconnect backoff"},
		{fleet.WithReconnectBackoff(time.Second, time.Millisecond), "reconnect backoff"},
		{fleet.WithHTTPClient(nil), "HTTP client"},
	} {
		// No platform is needed: options are checked first.
		f, err := fleet.Dial(ctx, "http://127.0.0.1:1", "token", tc.opt)
		if err == nil {
			f.Close()
			t.Errorf("Dial accepted an option that should name %q", tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "connection refused") {
			t.Errorf("Dial = %q, want an option error naming %q", err, tc.want)
		}
	}
}
