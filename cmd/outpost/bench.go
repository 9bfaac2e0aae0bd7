package main

import (
	"context"
	"flag"
	"io"

	"github.com/outpost-iot/outpost/internal/bench"
)

// cmdBench runs a benchmark. Its progress goes to stderr on a terminal;
// piped or redirected, only the result is written.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help", "help":
			err := bench.Main(ctx, args, stdout, stdout)
			if err == nil {
				err = flag.ErrHelp
			}
			return err
		}
	}
	progress := io.Discard
	if isTerminal(stderr) {
		progress = stderr
	}
	return bench.Main(ctx, args, stdout, progress)
}
