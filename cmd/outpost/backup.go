package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/outpost-iot/outpost/internal/sqlite"
)

// cmdBackup writes a consistent copy of the platform's database, while it
// runs or not: outpost backup [--data DIR] FILE.
func cmdBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data", "outpost-data", "data directory of the platform")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: outpost backup [--data DIR] FILE")
		fmt.Fprintln(stderr, "Writes a consistent copy of DIR/outpost.db to FILE (which must not exist), safe while the platform runs.")
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageError{"backup needs exactly one FILE"}
	}
	info, err := sqlite.Backup(ctx, filepath.Join(*dataDir, "outpost.db"), pos[0])
	if err != nil {
		if errors.Is(err, sqlite.ErrCorrupt) {
			return fmt.Errorf("%w (the database itself may be damaged: keep your previous backups)", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "backup: %s (%d bytes, %d devices, %d readings, integrity ok, %s)\n",
		info.Path, info.Bytes, info.Devices, info.Readings, info.Took.Round(1e6))
	fmt.Fprintf(stdout, "keep %s with it: the admin token is not in the database\n", filepath.Join(*dataDir, "admin-token"))
	return nil
}
