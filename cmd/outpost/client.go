package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/server"
)

// defaultServer is the platform URL when nothing else names one.
const defaultServer = "http://127.0.0.1:8080"

// clientFlags are the flags every client command shares, and where the
// platform's URL and token came from, for error messages.
type clientFlags struct {
	fs                    *flag.FlagSet
	server, token, data   string
	serverFrom, tokenFrom string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	c.fs = fs
	fs.StringVar(&c.server, "server", "", "platform `URL` (default: $OUTPOST_SERVER, else the platform running on --data, else "+defaultServer+")")
	fs.StringVar(&c.token, "token", "", "API `TOKEN` (default: $OUTPOST_TOKEN, else the admin token in --data for a platform on this machine)")
	fs.StringVar(&c.data, "data", "outpost-data", "data directory `DIR` of a platform on this machine, where its address and admin token are found")
}

func (c *clientFlags) given(name string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// resolve settles the URL and the token: flags first, then the environment,
// then the data directory of a platform on this machine.
func (c *clientFlags) resolve() {
	switch {
	case c.given("server"):
		c.serverFrom = "--server"
	case os.Getenv("OUTPOST_SERVER") != "":
		c.server, c.serverFrom = os.Getenv("OUTPOST_SERVER"), "OUTPOST_SERVER"
	default:
		if r, err := server.ReadRunning(c.data); err == nil {
			c.server, c.serverFrom = r.HTTP, filepath.Join(c.data, server.RunningFile)
		} else {
			c.server, c.serverFrom = defaultServer, "the default"
		}
	}
	switch {
	case c.given("token"):
		c.tokenFrom = "--token"
	case os.Getenv("OUTPOST_TOKEN") != "":
		c.token, c.tokenFrom = os.Getenv("OUTPOST_TOKEN"), "OUTPOST_TOKEN"
	case isLocal(c.server):
		// The admin token of a platform on this machine. It is never sent
		// to a platform elsewhere.
		path := filepath.Join(c.data, server.TokenFile)
		if b, err := os.ReadFile(path); err == nil {
			c.token, c.tokenFrom = strings.TrimSpace(string(b)), path
		}
	}
}

// isLocal reports whether a platform URL points at this machine.
func isLocal(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}

// dial connects to the platform.
func (c *clientFlags) dial(ctx context.Context) (*fleet.Client, error) {
	c.resolve()
	if c.token == "" {
		return nil, fmt.Errorf("no API token for %s: set OUTPOST_TOKEN or pass --token; outpost serve printed the admin token on its first start and saved it in DATA/%s (run the CLI in the directory you started serve from, or pass --data DATA)", c.server, server.TokenFile)
	}
	f, err := fleet.Dial(ctx, c.server, c.token)
	if err != nil {
		return nil, c.explain(err)
	}
	return f, nil
}

// explain turns an error from the platform into one line that says what to
// do about it.
func (c *clientFlags) explain(err error) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	var ae *fleet.APIError
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &ue) && !errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("cannot reach the platform at %s (from %s): %v. Is outpost serve running? Point the CLI at it with --server URL or OUTPOST_SERVER (serve prints its http: address), or run it in the directory you started serve from", c.server, c.serverFrom, ue.Err)
	case errors.Is(err, fleet.ErrUnauthorized):
		where := "the admin token that outpost serve printed on its first start, saved in DATA/" + server.TokenFile + " on the platform's machine"
		return fmt.Errorf("the platform at %s refused the API token (from %s): set OUTPOST_TOKEN or pass --token with %s", c.server, c.tokenFrom, where)
	case errors.Is(err, fleet.ErrOffline):
		return fmt.Errorf("%s: add --queue to deliver the call when the device next connects (with --ttl to bound the wait)", apiText(err))
	case errors.Is(err, fleet.ErrUnknownMethod):
		return fmt.Errorf("%s: 'outpost rpc DEVICE rpc_list' lists the device's methods", apiText(err))
	case errors.Is(err, fleet.ErrTimeout):
		return fmt.Errorf("%s: the device did not answer in time; raise --timeout (at most 5m), or use --queue for a device that answers later", apiText(err))
	case errors.As(err, &ae):
		return errors.New(apiText(err))
	}
	return err
}

// apiText is the platform's message and code, without the "fleet:"
// plumbing around them.
func apiText(err error) string {
	var ae *fleet.APIError
	if errors.As(err, &ae) {
		return ae.Error()
	}
	var re *fleet.RemoteError
	if errors.As(err, &re) {
		return re.Error()
	}
	return strings.TrimPrefix(err.Error(), "fleet: ")
}

// withClient dials, runs fn, and explains its error.
func withClient(ctx context.Context, cf *clientFlags, fn func(f *fleet.Client) error) error {
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	return cf.explain(fn(f))
}

// withDevice is withClient for a command about one device, given by id or
// name.
func withDevice(ctx context.Context, cf *clientFlags, ref string, fn func(f *fleet.Client, id string) error) error {
	return withClient(ctx, cf, func(f *fleet.Client) error {
		id, err := resolveDevice(ctx, f, ref)
		if err != nil {
			return err
		}
		return fn(f, id)
	})
}

// resolveDevice accepts a device id or a device name.
func resolveDevice(ctx context.Context, f *fleet.Client, ref string) (string, error) {
	if _, err := f.Device(ctx, ref); err == nil {
		return ref, nil
	} else if !errors.Is(err, fleet.ErrNotFound) {
		return "", err
	}
	ds, err := f.Devices(ctx, fleet.DeviceFilter{Name: ref})
	if err != nil {
		return "", err
	}
	if len(ds) == 1 {
		return ds[0].ID, nil
	}
	return "", fmt.Errorf("no device with id or name %q ('outpost device list' shows them)", ref)
}

// clientCmd is a command that talks to the platform.
func clientCmd(sp spec, args []string, stdout io.Writer, extra func(fs *flag.FlagSet)) (*clientFlags, []string, error) {
	fs := newFlags(sp)
	if extra != nil {
		extra(fs)
	}
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, sp, args, stdout)
	return &cf, pos, err
}
