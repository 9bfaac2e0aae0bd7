package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

func cmdModel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "model", args: "DEVICE", min: 1, max: 1, about: "Show what a device (by id or name) told the platform about itself: its feeds, attributes and parameters."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outJSON) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		m, err := f.Model(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, m)
		}
		fmt.Fprintln(stdout, "FEEDS")
		if err := feedTable(stdout, m.Feeds); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "\nATTRIBUTES")
		if err := attributeTable(stdout, m.Attributes); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "\nPARAMETERS")
		return paramTable(stdout, &m.Parameters)
	})
}

var feedGroup = group{
	name:  "feed",
	about: "A device's feeds: list them, set the value of an IN_OUT feed.",
	subs: []subcommand{
		{name: "list", aliases: []string{"ls"}, usage: "DEVICE", summary: "list a device's feeds", run: cmdFeedList},
		{name: "set", usage: "DEVICE REF VALUE", summary: "set an IN_OUT feed (VALUE is JSON; bare words are strings)", run: cmdFeedSet},
	},
}

func cmdFeed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return feedGroup.dispatch(ctx, args, stdout, stderr)
}

func cmdFeedList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "feed list", args: "DEVICE", min: 1, max: 1, about: "List the feeds a device (by id or name) registered or sent readings for."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outTable) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		m, err := f.Model(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, map[string]any{"device_id": id, "feeds": m.Feeds})
		}
		return feedTable(stdout, m.Feeds)
	})
}

func feedTable(w io.Writer, feeds []fleet.Feed) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "REF\tNAME\tTYPE\tDATA TYPE\tUNIT\tREMOVED")
	for _, fd := range feeds {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", fd.Ref, fd.Name, fd.Type, fd.DataType, fd.Unit, fd.Removed)
	}
	return tw.Flush()
}

func cmdFeedSet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "feed set", args: "DEVICE REF VALUE", min: 3, max: 3, about: `Set an IN_OUT feed of a device (by id or name). VALUE is JSON; a bare word
is taken as a string ("on"). The command is queued for the device and
delivered when it is online, or when a PULL device next pulls.`}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		res, err := f.SetFeedValue(ctx, id, pos[1], jsonArg(pos[2]))
		if err != nil {
			return err
		}
		return printJSON(stdout, res)
	})
}

func cmdAttributes(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "attributes", args: "DEVICE", min: 1, max: 1, about: "List the attributes a device (by id or name) reported: model, firmware version…"}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outTable) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		m, err := f.Model(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, map[string]any{"device_id": id, "attributes": m.Attributes})
		}
		return attributeTable(stdout, m.Attributes)
	})
}

func attributeTable(w io.Writer, as []fleet.Attribute) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tDATA TYPE\tVALUE")
	for _, a := range as {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", a.Name, a.DataType, compactJSON(a.Value))
	}
	return tw.Flush()
}

var paramsGroup = group{
	name:  "params",
	about: "A device's parameters: desired (set by applications) and reported (by the device).",
	def:   "show",
	subs: []subcommand{
		{name: "show", usage: "DEVICE", summary: "desired and reported parameters ('outpost params DEVICE' for short)", run: cmdParamsShow},
		{name: "set", usage: "DEVICE KEY=VALUE…", summary: "change desired parameters (VALUE is JSON; bare words are strings)", run: cmdParamsSet},
		{name: "unset", usage: "DEVICE KEY…", summary: "remove desired parameters", run: cmdParamsUnset},
	},
}

func cmdParams(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return paramsGroup.dispatch(ctx, args, stdout, stderr)
}

func cmdParamsShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "params show", args: "DEVICE", min: 1, max: 1, about: "Show a device's parameters (by id or name): desired and reported values, and the version."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outJSON) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		p, err := f.Parameters(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, p)
		}
		return paramTable(stdout, p)
	})
}

func paramTable(w io.Writer, p *fleet.Parameters) error {
	keys := map[string]bool{}
	for k := range p.Desired {
		keys[k] = true
	}
	for k := range p.Reported {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	tw := newTable(w)
	fmt.Fprintf(tw, "KEY\tDESIRED\tREPORTED\t(version %d)\n", p.Version)
	cell := func(v json.RawMessage, ok bool) string {
		if !ok {
			return "-"
		}
		return compactJSON(v)
	}
	for _, k := range sorted {
		d, okD := p.Desired[k]
		r, okR := p.Reported[k]
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", k, cell(d, okD), cell(r, okR))
	}
	return tw.Flush()
}

func cmdParamsSet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "params set", args: "DEVICE KEY=VALUE…", min: 2, max: -1, about: `Change desired parameters of a device (by id or name) and send the change to
it. VALUE is JSON; a bare word is taken as a string. Prints the parameters.`}
	return paramsChange(ctx, sp, args, stdout, false)
}

func cmdParamsUnset(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "params unset", args: "DEVICE KEY…", min: 2, max: -1, about: "Remove desired parameters of a device (by id or name). Prints the parameters."}
	return paramsChange(ctx, sp, args, stdout, true)
}

func paramsChange(ctx context.Context, sp spec, args []string, stdout io.Writer, unset bool) error {
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	changes := map[string]any{}
	for _, kv := range pos[1:] {
		if unset {
			changes[kv] = nil
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usagef("%s: %q is not KEY=VALUE", sp.name, kv)
		}
		changes[k] = jsonArg(v)
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		p, err := f.UpdateParameters(ctx, id, changes)
		if err != nil {
			return err
		}
		return printJSON(stdout, p)
	})
}

func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "events", args: "DEVICE", min: 1, max: 1, about: `List the events and notifications a device (by id or name) sent, oldest
first: the most recent --limit of them. --since takes ` + timeForms + `.`}
	var kind, since, out *string
	var limit *int
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		kind = fs.String("kind", "", "`KIND`: event or notification (default: both)")
		limit = limitFlag(fs, 100, "events")
		since = fs.String("since", "", "only events that happened at or after this `TIME`")
		out = outputFlag(fs, outTable)
	})
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	if err := checkLimit(*limit, maxEvents); err != nil {
		return err
	}
	if *kind != "" && *kind != fleet.KindEvent && *kind != fleet.KindNotification {
		return usagef("--kind %q: want event or notification", *kind)
	}
	q := fleet.EventQuery{Kind: *kind, Limit: *limit}
	if q.Since, err = parseWhen("since", *since, time.Now()); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		evs, err := f.Events(ctx, id, q)
		if err != nil {
			return err
		}
		if *out == outJSON {
			if evs == nil {
				evs = []fleet.DeviceEvent{}
			}
			return printJSON(stdout, map[string]any{"device_id": id, "events": evs})
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "TIME\tKIND\tNAME / TITLE\tDATA / TEXT")
		for _, e := range evs {
			what, detail := e.Name, compactJSON(e.Data)
			if e.Kind == fleet.KindNotification {
				what, detail = e.Title, e.Text
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", time.UnixMilli(e.TS).Local().Format("2006-01-02 15:04:05.000"), e.Kind, what, oneLine(detail))
		}
		return tw.Flush()
	})
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func cmdStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "stream", about: `Print live events as JSON lines until interrupted (or until -n of them):
telemetry, presence, event, notification, raw, call, queue.`}
	var devices, kinds listFlag
	var count *int
	cf, _, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		fs.Var(&devices, "device", "only this device `ID` (repeatable)")
		fs.Var(&kinds, "kind", "only this `KIND`: telemetry, presence, event, notification, raw, call, queue (repeatable)")
		count = fs.Int("n", 0, "stop after `N` events (0: run until interrupted)")
	})
	if err != nil {
		return err
	}
	if *count < 0 {
		return usagef("-n %d: must be 0 (no limit) or more", *count)
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		enc := json.NewEncoder(stdout)
		seen := 0
		sub, err := f.Subscribe(ctx, fleet.StreamFilter{DeviceIDs: devices, Kinds: kinds}, func(e fleet.Event) {
			_ = enc.Encode(map[string]any{"id": e.ID, "kind": e.Kind, "device_id": e.DeviceID, "data": e.Data})
			if seen++; *count > 0 && seen >= *count {
				cancel()
			}
		})
		if err != nil {
			return err
		}
		<-ctx.Done()
		sub.Close()
		return nil
	})
}
