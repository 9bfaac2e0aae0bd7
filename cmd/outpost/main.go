// Command outpost is the Outpost platform and its command-line client.
//
//	outpost serve                      start the platform (embedded broker, SQLite, HTTP API)
//	outpost device create NAME…        register devices, print their credentials as JSON
//	outpost device list|show|delete    manage devices
//	outpost rpc DEVICE METHOD [ARGS]   call a function on a device
//	outpost telemetry DEVICE           print stored readings
//	outpost file, firmware, keys       artifacts, file transfers, firmware updates
//	outpost bench ingest|rpc|ota|latency|connections  measure the platform against raw limits
//	outpost backup FILE                copy the database consistently, even while it runs
//
// Client commands find the platform through --server and --token, else
// OUTPOST_SERVER and OUTPOST_TOKEN, else the data directory of a platform
// running on the same machine (--data, default ./outpost-data). Every
// command and subcommand takes -h.
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
  outpost device create NAME… [--names-from FILE]
  outpost device list [--online=true|false] [--name NAME] [--limit N]
  outpost device show DEVICE
  outpost device delete DEVICE
  outpost device rotate-secret DEVICE
  outpost rpc DEVICE METHOD [JSON-ARGS] [--timeout 5s]
  outpost rpc DEVICE METHOD [JSON-ARGS] --queue [--ttl 1h] [--timeout 30s]
  outpost call show ID | cancel ID | list DEVICE [--state S]
  outpost telemetry DEVICE [--feed REF] [--limit N] [--since T] [--until T]
  outpost model DEVICE                          feeds, attributes and parameters
  outpost feed list DEVICE
  outpost feed set DEVICE REF VALUE             set an IN_OUT feed (VALUE is JSON; bare words are strings)
  outpost attributes DEVICE
  outpost params DEVICE                         desired and reported parameters
  outpost params set DEVICE KEY=VALUE…          change parameters (VALUE is JSON; bare words are strings)
  outpost params unset DEVICE KEY…              remove parameters
  outpost events DEVICE [--kind event|notification] [--limit N] [--since T]
  outpost stream [--device ID]… [--kind KIND]…  print live events as JSON lines until interrupted
  outpost file upload PATH [--version V]        keep a file or firmware image on the platform (progress bar)
  outpost file list|show|delete ARTIFACT        artifacts
  outpost file send DEVICE ARTIFACT [--wait]    send a file to a device (MQTT chunks or URL)
  outpost file transfers|device|rm|purge DEVICE transfers and the files on a device
  outpost firmware update DEVICE ARTIFACT [--wait]   update firmware; SUCCESS once the device is back with the version
  outpost firmware status|jobs DEVICE, show|abort JOB
  outpost keys [--pem]                          the public key devices check firmware signatures with
  outpost bench ingest|rpc|ota|latency|connections [flags]
  outpost env [--data DIR]                      print OUTPOST_SERVER and OUTPOST_TOKEN for curl: eval "$(outpost env)"
  outpost backup [--data DIR] FILE              copy the database consistently, even while the platform runs
  outpost version

DEVICE is a device id or name. Listings print a table and single objects
JSON; -o table|json chooses. Times (--since, --until) are RFC 3339, a
duration ago (-1h) or Unix milliseconds.

Client commands find the platform through --server URL and --token TOKEN,
else the environment (OUTPOST_SERVER, OUTPOST_TOKEN), else the data
directory of a platform running on this machine (--data DIR, default
./outpost-data: its address and admin token), else http://127.0.0.1:8080.
Run 'outpost COMMAND -h' for a command's arguments and flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err on one line and returns the exit status: 0 for
// success and for help, 2 for a mistake in the command line, 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "outpost:", oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// commands are the top-level commands.
var commands = map[string]cmdFunc{
	"serve":      cmdServe,
	"device":     cmdDevice,
	"devices":    cmdDevice,
	"rpc":        cmdRPC,
	"call":       cmdCall,
	"telemetry":  cmdTelemetry,
	"bench":      cmdBench,
	"model":      cmdModel,
	"feed":       cmdFeed,
	"feeds":      cmdFeed,
	"attributes": cmdAttributes,
	"params":     cmdParams,
	"parameters": cmdParams,
	"events":     cmdEvents,
	"stream":     cmdStream,
	"env":        cmdEnv,
	"backup":     cmdBackup,
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(ctx, args[1:], stdout, stderr)
	}
	switch args[0] {
	case "version", "--version":
		fmt.Fprintln(stdout, "outpost", version)
		return nil
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if cmd, ok := commands[args[1]]; ok {
				return cmd(ctx, append(args[2:], "-h"), stdout, stderr)
			}
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usagef("unknown command %q", args[0])
}
