package main

import (
	"context"
	"io"

	"github.com/outpost-iot/outpost/internal/bench"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return bench.Main(ctx, args, stdout, stderr)
}
