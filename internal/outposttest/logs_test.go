package outposttest_test

import (
	"fmt"
	"testing"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// recorder is a testing.TB that records failures and runs its cleanups
// when told, so a test can check that a logger fails its test.
type recorder struct {
	testing.TB
	name     string
	errs     []string
	cleanups []func()
}

func (r *recorder) Helper()                   {}
func (r *recorder) Name() string              { return r.name }
func (r *recorder) Log(...any)                {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }
func (r *recorder) end() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// A logger from Logger fails its test when a registered secret appears in
// a line: in clear, or as the decimal bytes fmt prints for a []byte in a
// struct (how the broker library logged a CONNECT's password).
func TestLoggerFailsTestOnSecret(t *testing.T) {
	const secret = "s3cr3tvalue4testsxyzabc"
	outposttest.AddSecret(secret)
	type connect struct{ Password []byte }
	for _, tc := range []struct {
		name string
		log  func(r *recorder)
		leak bool
	}{
		{"clear", func(r *recorder) { outposttest.Logger(r).Info("login", "password", secret) }, true},
		{"in a URL", func(r *recorder) { outposttest.Logger(r).Info("dial", "url", "mqtt://d-1:"+secret+"@host:1883") }, true},
		{"decimal bytes", func(r *recorder) { outposttest.Logger(r).Warn("bad packet", "pk", connect{[]byte(secret)}) }, true},
		{"clean", func(r *recorder) { outposttest.Logger(r).Info("login", "device_id", "d-1") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{name: t.Name()}
			tc.log(r)
			r.end()
			if got := len(r.errs) > 0; got != tc.leak {
				t.Fatalf("test failed: %v (%q), want %v", got, r.errs, tc.leak)
			}
		})
	}
}
