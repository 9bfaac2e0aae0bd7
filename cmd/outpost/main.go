// Command outpost is the Outpost platform and its command-line client.
//
//	outpost serve                      start the platform (embedded broker, SQLite, HTTP API)
//	outpost device create NAME         register a device, print its credentials as JSON
//	outpost device list|show|delete    manage devices
//	outpost rpc DEVICE METHOD [ARGS]   call a function on a device
//	outpost telemetry DEVICE           print stored readings
//	outpost bench ingest|rpc           measure the platform against raw limits
//	outpost backup FILE                copy the database consistently, even while it runs
//
// Client commands read OUTPOST_SERVER and OUTPOST_TOKEN (or --server and
// --token).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `Outpost — self-hosted IoT device platform

Usage:
  outpost serve [--data DIR] [--mqtt ADDR] [--http ADDR] [--tls-cert F --tls-key F]
  outpost device create NAME
  outpost device list [--online=true|false] [--name NAME]
  outpost device show DEVICE
  outpost device delete DEVICE
  outpost device rotate-secret DEVICE
  outpost rpc DEVICE METHOD [JSON-ARGS] [--timeout 5s]
  outpost rpc DEVICE METHOD [JSON-ARGS] --queue [--ttl 1h] [--timeout 30s]
  outpost call show ID | cancel ID | list DEVICE [--state S]
  outpost telemetry DEVICE [--feed REF] [--limit N] [--since T] [--until T] [-o json|table]
  outpost bench ingest|rpc [flags]
  outpost backup [--data DIR] FILE
  outpost version

Client commands take --server URL (env OUTPOST_SERVER, default http://127.0.0.1:8080)
and --token TOKEN (env OUTPOST_TOKEN, default: the admin token in ./outpost-data).
Run "outpost COMMAND -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "outpost:", err)
			os.Exit(2)
		}
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "outpost:", err)
		}
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, fullUsage())
		return usageError{"no command given"}
	}
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:], stdout, stderr)
	case "device", "devices":
		return cmdDevice(ctx, args[1:], stdout, stderr)
	case "rpc":
		return cmdRPC(ctx, args[1:], stdout, stderr)
	case "call":
		if isCallSubcommand(args[1:]) {
			return cmdCall(ctx, args[1:], stdout, stderr)
		}
		return cmdRPC(ctx, args[1:], stdout, stderr)
	case "telemetry":
		return cmdTelemetry(ctx, args[1:], stdout, stderr)
	case "bench":
		return cmdBench(ctx, args[1:], stdout, stderr)
	case "backup":
		return cmdBackup(ctx, args[1:], stdout, stderr)
	case "feed", "feeds", "attributes", "params", "parameters", "events", "model", "stream":
		return modelCommands[args[0]](ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "outpost", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, fullUsage())
		return nil
	}
	fmt.Fprint(stderr, fullUsage())
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// parseInterleaved parses flags that may appear before, between or after
// positional arguments ("rpc dev method '{}' --timeout 2s").
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
