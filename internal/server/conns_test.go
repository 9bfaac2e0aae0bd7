package server_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// bulkCreate registers devices through POST /api/v1/devices/bulk.
func bulkCreate(t *testing.T, p *outposttest.Platform, names ...string) (int, []outposttest.Device, string) {
	t.Helper()
	var out struct {
		Devices []outposttest.Device `json:"devices"`
		Error   struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	st := p.Do(t, "POST", "/api/v1/devices/bulk", map[string]any{"names": names}, &out)
	return st, out.Devices, out.Error.Code + ": " + out.Error.Message
}

// Issue 16: devices are registered in bulk, all or none, and can log in at
// once.
func TestBulkCreate(t *testing.T) {
	p := outposttest.Start(t)
	st, ds, msg := bulkCreate(t, p, "a-1", "a-2", "a-3")
	if st != http.StatusCreated || len(ds) != 3 {
		t.Fatalf("bulk create: %d, %d devices (%s)", st, len(ds), msg)
	}
	for i, d := range ds {
		if d.Name != fmt.Sprint("a-", i+1) || d.ID == "" || len(d.Password) < 30 || !strings.Contains(d.URL, d.ID+":"+d.Password+"@") {
			t.Errorf("device %d: %+v", i, d)
		}
		mustDial311(t, p, d)
	}

	tooMany := make([]string, server.MaxBulkDevices+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprint("n-", i)
	}
	for _, tc := range []struct {
		name  string
		names []string
		want  int
		in    string
	}{
		{"no names", nil, http.StatusBadRequest, "at least one"},
		{"too many", tooMany, http.StatusBadRequest, "at most 5000"},
		{"repeated", []string{"b-1", "b-2", "b-1"}, http.StatusBadRequest, `"b-1" is also names[0]`},
		{"bad name", []string{"b-1", " "}, http.StatusBadRequest, "names[1]"},
		{"taken", []string{"b-1", "a-2"}, http.StatusConflict, `"a-2" already exists`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, msg := bulkCreate(t, p, tc.names...)
			if st != tc.want || !strings.Contains(msg, tc.in) {
				t.Errorf("status %d (%s), want %d mentioning %q", st, msg, tc.want, tc.in)
			}
		})
	}
	var all struct {
		Devices []outposttest.Device `json:"devices"`
	}
	p.Do(t, "GET", "/api/v1/devices", nil, &all)
	if len(all.Devices) != 3 {
		t.Errorf("%d devices after the failed requests, want the 3 first only", len(all.Devices))
	}
}

// Logins are checked against credentials held in memory: they must follow
// every change (creation, rotation, deletion) and survive a restart.
func TestCredentialsFollowChanges(t *testing.T) {
	p := outposttest.Start(t)
	_, ds, _ := bulkCreate(t, p, "c-1", "c-2")
	single := p.CreateDevice(t, "c-3")
	for _, d := range append(ds, single) {
		mustDial311(t, p, d)
	}
	if _, err := dial311(t, p, ds[0].ID, ds[1].Password, ds[0].ID); err == nil {
		t.Error("a device logged in with another device's password")
	}

	var rotated struct {
		Password string `json:"password"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+ds[0].ID+"/secret", nil, &rotated); st != http.StatusOK {
		t.Fatalf("rotate: status %d", st)
	}
	if _, err := dial311(t, p, ds[0].ID, ds[0].Password, ds[0].ID); err == nil {
		t.Error("the old password still works after a rotation")
	}
	if _, err := dial311(t, p, ds[0].ID, rotated.Password, ds[0].ID); err != nil {
		t.Errorf("the new password: %v", err)
	}
	if st := p.Do(t, "DELETE", "/api/v1/devices/"+ds[1].ID, nil, nil); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("delete: status %d", st)
	}
	if _, err := dial311(t, p, ds[1].ID, ds[1].Password, ds[1].ID); err == nil {
		t.Error("a deleted device still logs in")
	}

	p.Restart(t)
	if _, err := dial311(t, p, ds[0].ID, rotated.Password, ds[0].ID); err != nil {
		t.Errorf("after a restart, the rotated password: %v", err)
	}
	mustDial311(t, p, single)
	for _, bad := range [][2]string{{ds[0].ID, ds[0].Password}, {ds[1].ID, ds[1].Password}} {
		if _, err := dial311(t, p, bad[0], bad[1], bad[0]); err == nil {
			t.Errorf("after a restart, %s logs in with a revoked password", bad[0])
		}
	}
}

// Issue 16: every connect wrote to the database (presence, down-queue
// expiry) through its single writer, so a reconnect storm queued behind
// one write per device, and anything holding the writer held up every
// login. Now a device connects and subscribes without waiting for the
// database: here the database is locked for writing by another process
// until every device is in.
func TestConnectsDoNotWaitForTheDatabase(t *testing.T) {
	p := outposttest.Start(t)
	_, ds, _ := bulkCreate(t, p, names("w-", 20)...)

	lock, err := sql.Open("sqlite", filepath.Join(p.DataDir(), "outpost.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	ctx := context.Background()
	conn, err := lock.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	locked := true
	unlock := func() {
		if locked {
			locked = false
			if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
				t.Error(err)
			}
		}
	}
	defer unlock()

	// Each of these would wait for the database's busy timeout (10s) in
	// turn if connecting wrote to it; the deadline is far beyond what the
	// connects take and far below what the writes would.
	errs := make(chan error, len(ds))
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(func() {
			c, err := dial311(t, p, d.ID, d.Password, d.ID)
			if err == nil {
				tok := c.Subscribe("outpost/v1/"+d.ID+"/down/#", 1, nil)
				if !tok.WaitTimeout(time.Minute) {
					err = fmt.Errorf("%s: no SUBACK", d.ID)
				} else {
					err = tok.Error()
				}
			}
			errs <- err
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("devices still connecting after 60s with the database locked")
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	unlock()
	if !strings.Contains(metricsText(t, p), "outpost_mqtt_messages_dropped_total 0") {
		t.Error("no outpost_mqtt_messages_dropped_total 0 in /metrics")
	}
	// Presence reaches the store once it is writable again.
	outposttest.Eventually(t, 30*time.Second, "presence stored", func() bool {
		var n int
		err := lock.QueryRowContext(ctx, "SELECT count(*) FROM devices WHERE online = 1").Scan(&n)
		return err == nil && n == len(ds)
	})
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(prefix, i)
	}
	return out
}
