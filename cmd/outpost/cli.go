package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// spec describes a command for its help text and its argument check.
type spec struct {
	name  string // "device list"
	args  string // positional arguments as shown in the usage line
	about string // what the command does
	// min and max bound the number of positional arguments; max < 0 means
	// no upper bound.
	min, max int
}

// newFlags returns the flag set of one command. It prints nothing itself:
// parse prints help on -h and turns errors into one-line usage errors.
func newFlags(sp spec) *flag.FlagSet {
	fs := flag.NewFlagSet("outpost "+sp.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parse parses a command's arguments (flags may come before, between or
// after the positional arguments; "--" ends the flags) and checks how many
// positional arguments there are. On -h or --help it prints the command's
// help to stdout and returns flag.ErrHelp, which ends the program with
// status 0.
func parse(fs *flag.FlagSet, sp spec, args []string, stdout io.Writer) ([]string, error) {
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(stdout, fs, sp)
		return nil, flag.ErrHelp
	}
	if err != nil {
		return nil, usagef("%s: %v (see 'outpost %s -h')", sp.name, err, sp.name)
	}
	if len(pos) < sp.min || (sp.max >= 0 && len(pos) > sp.max) {
		want := sp.args
		if want == "" {
			want = "no arguments"
		}
		return nil, usagef("%s: want %s, got %s (see 'outpost %s -h')", sp.name, want, plural(len(pos), "argument"), sp.name)
	}
	return pos, nil
}

// parseInterleaved parses flags that may appear before, between or after
// positional arguments ("rpc dev method '{}' --timeout 2s"). Everything
// after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// printHelp prints a command's usage line, description and flags.
func printHelp(w io.Writer, fs *flag.FlagSet, sp spec) {
	line := "outpost " + sp.name
	if sp.args != "" {
		line += " " + sp.args
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		line += " [flags]"
	}
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", line, strings.TrimSpace(sp.about))
	if hasFlags {
		fmt.Fprintf(w, "\nFlags:\n")
		printFlags(w, fs)
	}
}

// printFlags lists flags as --name VALUE (-o for one-letter names), with
// their usage and default.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		head := "  " + dash + f.Name
		if name != "" {
			head += " " + name
		}
		fmt.Fprintln(w, head)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			usage += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(w, "        %s\n", usage)
	})
}

// group is a command with subcommands ("device list").
type group struct {
	name  string
	about string
	subs  []subcommand
	// def, when set, is the subcommand run when the first argument is not
	// one ("params DEVICE" and "params -o table DEVICE" are "params show
	// …").
	def string
}

type subcommand struct {
	name    string
	aliases []string
	usage   string // arguments, for the group's help
	summary string
	run     cmdFunc
}

// cmdFunc runs one command with the arguments after its name.
type cmdFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// dispatch runs the subcommand named by args[0].
func (g group) dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			fmt.Fprint(stdout, g.help())
			return flag.ErrHelp
		}
		for _, s := range g.subs {
			if args[0] == s.name || contains(s.aliases, args[0]) {
				return s.run(ctx, args[1:], stdout, stderr)
			}
		}
		if g.def != "" {
			for _, s := range g.subs {
				if s.name == g.def {
					return s.run(ctx, args, stdout, stderr)
				}
			}
		}
	}
	fmt.Fprint(stderr, g.help())
	if len(args) == 0 {
		return usagef("%s: want a subcommand: %s", g.name, g.names())
	}
	return usagef("%s: unknown subcommand %q (want %s)", g.name, args[0], g.names())
}

func (g group) names() string {
	var n []string
	for _, s := range g.subs {
		n = append(n, s.name)
	}
	return strings.Join(n, ", ")
}

func (g group) help() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: outpost %s SUBCOMMAND [arguments] [flags]\n\n%s\n\nSubcommands:\n", g.name, g.about)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, s := range g.subs {
		fmt.Fprintf(tw, "  %s %s\t%s\n", s.name, s.usage, s.summary)
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nRun 'outpost %s SUBCOMMAND -h' for a subcommand's flags.\n", g.name)
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Output formats of listing and show commands.
const (
	outTable = "table"
	outJSON  = "json"
)

// outputFlag registers -o with the command's default format.
func outputFlag(fs *flag.FlagSet, def string) *string {
	return fs.String("o", def, "output `FORMAT`: table or json")
}

func checkOutput(o string) error {
	if o != outTable && o != outJSON {
		return usagef("-o %s: unknown output format (want table or json)", o)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// limitFlag registers --limit; checkLimit refuses values outside 1..max.
func limitFlag(fs *flag.FlagSet, def int, what string) *int {
	return fs.Int("limit", def, "at most `N` "+what+" (the most recent)")
}

func checkLimit(n, max int) error {
	if n < 1 || n > max {
		return usagef("--limit %d: must be between 1 and %d", n, max)
	}
	return nil
}

// checkDuration refuses a duration flag outside (0, max].
func checkDuration(name string, d, max time.Duration) error {
	if d <= 0 || d > max {
		return usagef("--%s %s: must be more than 0 and at most %s", name, d, fmtDuration(max))
	}
	return nil
}

// fmtDuration prints whole hours and days the way people write them.
func fmtDuration(d time.Duration) string {
	switch {
	case d >= 24*time.Hour && d%(24*time.Hour) == 0:
		return plural(int(d/(24*time.Hour)), "day")
	case d >= time.Hour && d%time.Hour == 0:
		return strings.TrimSuffix(d.String(), "0m0s")
	case d >= time.Minute && d%time.Minute == 0:
		return strings.TrimSuffix(d.String(), "0s")
	}
	return d.String()
}

// timeForms names the forms a time flag accepts.
const timeForms = "RFC 3339 (2026-01-02T15:04:05Z), a duration ago (-1h, 90m) or Unix milliseconds (1767366245000)"

// parseWhen reads a time flag: RFC 3339, a duration meaning that long ago
// ("-1h" and "1h" alike), or Unix milliseconds.
func parseWhen(name, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if strings.Trim(s, "0123456789") == "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err == nil && ms <= 4102444800000 {
			return time.UnixMilli(ms), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d.Abs()), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--%s %q: not a time; use %s", name, s, timeForms)
}

// isTerminal reports whether w is a terminal (a character device: a pipe
// or a file is not), where progress is worth showing.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// oneLine makes an error text fit one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
