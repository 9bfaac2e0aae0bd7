package outbox_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
)

// Options with a value out of range make Open fail and name the option;
// none is silently replaced (issue 10, item 9).
func TestOptionsOutOfRange(t *testing.T) {
	for _, tc := range []struct {
		opt  outbox.Option
		want string
	}{
		{outbox.WithCapacity(0), "capacity"},
		{outbox.WithMaxBytes(-1), "max bytes"},
		{outbox.WithMessageLimits(-1, 0), "readings per message"},
		{outbox.WithMessageLimits(1_000_000, 0), "readings per message"},
		{outbox.WithMessageLimits(10, -5), "message bytes"},
		{outbox.WithCompactThreshold(0), "compact threshold"},
		{outbox.WithSync(-7), "sync policy"},
	} {
		ob, err := outbox.Open(outbox.NewMemStore(), tc.opt)
		if err == nil {
			ob.Close()
			t.Errorf("Open accepted an option that should name %q", tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open = %q, want it to name %q", err, tc.want)
		}
	}
	if _, err := outbox.NewFileStore(t.TempDir(), outbox.WithSegmentSize(0)); err == nil || !strings.Contains(err.Error(), "segment size") {
		t.Errorf("NewFileStore with segment size 0 = %v", err)
	}
}

// A directory holds one FileStore at a time (issue 10, item 5).
func TestFileStoreLocksDirectory(t *testing.T) {
	dir := t.TempDir()
	s1 := mustStore(t, dir)
	if _, err := outbox.NewFileStore(dir); !errors.Is(err, outbox.ErrLocked) {
		t.Fatalf("second store on the directory: %v, want ErrLocked", err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := outbox.NewFileStore(dir)
	if err != nil {
		t.Fatalf("store after the first closed: %v", err)
	}
	s2.Close()
}
