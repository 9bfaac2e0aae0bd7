package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/outpost-iot/outpost/internal/server"
)

// cmdEnv prints shell lines that set OUTPOST_SERVER and OUTPOST_TOKEN for
// the platform running on a data directory, for curl and scripts:
// eval "$(outpost env)".
func cmdEnv(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "env", about: `Print shell lines that set OUTPOST_SERVER and OUTPOST_TOKEN to the address
and admin token of the platform running on the data directory, for curl
and scripts:

    eval "$(outpost env)"

It reads DATA/running.json and DATA/admin-token; it does not contact the
platform.`}
	fs := newFlags(sp)
	data := fs.String("data", "outpost-data", "data directory `DIR` of the platform")
	if _, err := parse(fs, sp, args, stdout); err != nil {
		return err
	}
	r, err := server.ReadRunning(*data)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no platform is running on %s (no %s): start outpost serve there, or pass --data with its data directory", *data, server.RunningFile)
	} else if err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(*data, server.TokenFile))
	if err != nil {
		return fmt.Errorf("read the admin token: %w", err)
	}
	fmt.Fprintf(stdout, "export OUTPOST_SERVER=%s\nexport OUTPOST_TOKEN=%s\n", shellQuote(r.HTTP), shellQuote(strings.TrimSpace(string(tok))))
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
