package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/outpost-iot/outpost/internal/sqlite"
)

// cmdBackup writes a consistent copy of the platform's database, while it
// runs or not: outpost backup [--data DIR] FILE.
func cmdBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "backup", args: "FILE", min: 1, max: 1,
		about: "Write a consistent copy of DIR/outpost.db to FILE (which must not exist), safe while the platform runs."}
	fs := newFlags(sp)
	dataDir := fs.String("data", "outpost-data", "data directory of the platform")
	pos, err := parse(fs, sp, args, stdout)
	if err != nil {
		return err
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
