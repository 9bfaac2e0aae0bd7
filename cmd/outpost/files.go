package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/protocol"
)

func init() {
	commands["file"] = cmdFile
	commands["files"] = cmdFile
	commands["firmware"] = cmdFirmware
	commands["keys"] = cmdKeys
}

var fileGroup = group{
	name: "file",
	about: `Keep files and firmware images on the platform (artifacts) and send them
to devices, over MQTT in chunks or by a download URL; see what files a
device holds and delete them.`,
	subs: []subcommand{
		{name: "upload", usage: "PATH", summary: "upload a file as an artifact (streamed; progress on a terminal)", run: cmdFileUpload},
		{name: "list", aliases: []string{"ls"}, summary: "list artifacts", run: cmdFileList},
		{name: "show", aliases: []string{"get"}, usage: "ARTIFACT", summary: "show an artifact", run: cmdFileShow},
		{name: "delete", usage: "ARTIFACT", summary: "delete an artifact", run: cmdFileDelete},
		{name: "send", usage: "DEVICE ARTIFACT", summary: "send an artifact to a device", run: cmdFileSend},
		{name: "transfers", usage: "DEVICE", summary: "list a device's transfers", run: cmdFileTransfers},
		{name: "transfer", usage: "TRANSFER", summary: "show a transfer", run: cmdFileTransfer},
		{name: "abort", usage: "TRANSFER", summary: "abort a transfer", run: cmdFileAbort},
		{name: "device", usage: "DEVICE", summary: "list the files a device reported", run: cmdFileDevice},
		{name: "rm", usage: "DEVICE NAME…", summary: "delete files on a device", run: cmdFileRm},
		{name: "purge", usage: "DEVICE", summary: "delete every file on a device", run: cmdFilePurge},
	},
}

func cmdFile(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return fileGroup.dispatch(ctx, args, stdout, stderr)
}

// progressBar draws a one-line bar on a terminal, at most ten times a
// second; on anything else it draws nothing.
type progressBar struct {
	w     io.Writer
	label string
	start time.Time
	mu    sync.Mutex
	last  time.Time
	shown bool
}

func newProgressBar(w io.Writer, label string) *progressBar {
	if !isTerminal(w) {
		w = nil
	}
	return &progressBar{w: w, label: label, start: time.Now()}
}

func (p *progressBar) update(done, total int64, force bool) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !force && time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	const width = 30
	pct := 0.0
	if total > 0 {
		pct = float64(done) / float64(total)
	}
	fill := min(width, int(pct*width))
	rate := float64(done) / max(time.Since(p.start).Seconds(), 0.001)
	fmt.Fprintf(p.w, "\r%s [%s%s] %5.1f%%  %s / %s  %s/s ", p.label, strings.Repeat("#", fill), strings.Repeat(".", width-fill),
		pct*100, humanBytes(done), humanBytes(total), humanBytes(int64(rate)))
	p.shown = true
}

func (p *progressBar) finish() {
	if p != nil && p.w != nil && p.shown {
		fmt.Fprintln(p.w)
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func cmdFileUpload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file upload", args: "PATH", min: 1, max: 1, about: `Upload a file as an artifact, streamed (up to 4 GiB), and print it as JSON
with its id, size and SHA-256. Firmware images need --version: the
version a device runs once it installed the image. A progress bar goes to
stderr on a terminal.`}
	var name, version, model *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		name = fs.String("name", "", "the file's `NAME` on devices (default: the file's base name)")
		version = fs.String("version", "", "firmware `VERSION` the image brings")
		model = fs.String("model", "", "device `MODEL` the artifact is for")
	})
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		bar := newProgressBar(stderr, "upload")
		a, err := f.UploadFile(ctx, pos[0], fleet.ArtifactMeta{Name: *name, Version: *version, Model: *model}, func(sent, total int64) {
			bar.update(sent, total, sent == total)
		})
		bar.finish()
		if err != nil {
			return err
		}
		return printJSON(stdout, a)
	})
}

func cmdFileList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file list", about: "List artifacts, newest first."}
	var out *string
	cf, _, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outTable) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		as, err := f.Artifacts(ctx)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, as)
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "ID\tNAME\tSIZE\tVERSION\tMODEL\tSHA256\tCREATED")
		for _, a := range as {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s…\t%s\n", a.ID, a.Name, humanBytes(a.Size), dash(a.Version), dash(a.Model), a.SHA256[:12], stamp(a.CreatedAt))
		}
		return tw.Flush()
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdFileShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file show", args: "ARTIFACT", min: 1, max: 1, about: "Show an artifact as JSON."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		a, err := f.Artifact(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, a)
	})
}

func cmdFileDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file delete", args: "ARTIFACT", min: 1, max: 1, about: "Delete an artifact and its content (not while it is being sent)."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error { return f.DeleteArtifact(ctx, pos[0]) })
}

// methodsFlag collects --method values.
type methodsFlag []string

func (m *methodsFlag) String() string { return strings.Join(*m, ",") }
func (m *methodsFlag) Set(v string) error {
	for _, x := range strings.Split(v, ",") {
		if x != protocol.MethodMQTT && x != protocol.MethodURL {
			return fmt.Errorf("%q: want mqtt or url", x)
		}
		*m = append(*m, x)
	}
	return nil
}

func printTransfer(w io.Writer, t *fleet.Transfer) {
	fmt.Fprintf(w, "%s %s → %s: %s %.1f%% (%s of %s)", t.ID, t.Name, t.DeviceID, t.State, t.Percent, humanBytes(t.Bytes), humanBytes(t.Size))
	if t.Error != "" {
		fmt.Fprintf(w, " %s: %s", t.Error, t.Message)
	}
	fmt.Fprintln(w)
}

func cmdFileSend(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file send", args: "DEVICE ARTIFACT", min: 2, max: 2, about: `Offer an artifact to a device (by id or name) through its queue: a device
that is away gets it when it connects. The device chooses how to fetch
it among the methods offered. Prints the transfer as JSON; with --wait,
follows it to its end (progress on stderr) and fails unless the file
arrived.`}
	var name *string
	var ttl *time.Duration
	var wait *bool
	var methods methodsFlag
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		name = fs.String("name", "", "the file's `NAME` on the device (default: the artifact's)")
		fs.Var(&methods, "method", "transfer `METHOD` to offer: mqtt or url (repeat for both; default both)")
		ttl = fs.Duration("ttl", 0, "how long the offer waits for the device (default 24h, at most 30 days)")
		wait = fs.Bool("wait", false, "wait until the transfer ends")
	})
	if err != nil {
		return err
	}
	if *ttl != 0 {
		if err := checkDuration("ttl", *ttl, 30*24*time.Hour); err != nil {
			return err
		}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		t, err := f.SendFile(ctx, id, pos[1], fleet.SendOptions{Name: *name, Methods: methods, TTL: *ttl})
		if err != nil {
			return err
		}
		if !*wait {
			return printJSON(stdout, t)
		}
		bar := newProgressBar(stderr, "transfer")
		t, err = f.WaitTransfer(ctx, t.ID, func(t *fleet.Transfer) { bar.update(t.Bytes, t.Size, t.Finished()) })
		bar.finish()
		if err != nil {
			return err
		}
		if err := printJSON(stdout, t); err != nil {
			return err
		}
		if t.State != fleet.TransferReady {
			return fmt.Errorf("transfer %s ended %s: %s %s", t.ID, t.State, t.Error, t.Message)
		}
		return nil
	})
}

func cmdFileTransfers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file transfers", args: "DEVICE", min: 1, max: 1, about: "List a device's transfers, newest first."}
	var active *bool
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		active = fs.Bool("active", false, "only transfers in progress")
		out = outputFlag(fs, outTable)
	})
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		ts, err := f.Transfers(ctx, id, *active)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, ts)
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "ID\tNAME\tSTATE\tMETHOD\tPROGRESS\tERROR\tCREATED")
		for _, t := range ts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f%%\t%s\t%s\n", t.ID, t.Name, t.State, dash(t.Method), t.Percent, dash(t.Error), stamp(t.CreatedAt))
		}
		return tw.Flush()
	})
}

func cmdFileTransfer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file transfer", args: "TRANSFER", min: 1, max: 1, about: "Show a transfer as JSON: state, method, bytes and percent."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		t, err := f.Transfer(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, t)
	})
}

func cmdFileAbort(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file abort", args: "TRANSFER", min: 1, max: 1, about: "Abort a transfer; the device drops what it received."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		t, err := f.AbortTransfer(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, t)
	})
}

func cmdFileDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file device", args: "DEVICE", min: 1, max: 1, about: "List the files a device reported (it reports them on every connection and after every change)."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outTable) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		fs, err := f.DeviceFiles(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, fs)
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "NAME\tSIZE\tSHA256")
		for _, x := range fs.Files {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", x.Name, humanBytes(x.Size), x.SHA256)
		}
		return tw.Flush()
	})
}

func cmdFileRm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file rm", args: "DEVICE NAME…", min: 2, max: -1, about: "Delete files on a device (queued: a device that is away deletes them when it connects)."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	for _, n := range pos[1:] {
		if err := protocol.ValidFileName(n); err != nil {
			return usagef("file rm: %q: %v", n, err)
		}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		for _, n := range pos[1:] {
			c, err := f.DeleteDeviceFile(ctx, id, n)
			if err != nil {
				return err
			}
			if err := printJSON(stdout, c); err != nil {
				return err
			}
		}
		return nil
	})
}

func cmdFilePurge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "file purge", args: "DEVICE", min: 1, max: 1, about: "Delete every file on a device (queued)."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		c, err := f.PurgeDeviceFiles(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, c)
	})
}

var firmwareGroup = group{
	name: "firmware",
	about: `Update devices' firmware with an artifact uploaded with --version. The
platform signs the image; the device checks the signature before it
installs anything. An update ends SUCCESS only when the device comes back
after its restart and reports the new version.`,
	subs: []subcommand{
		{name: "update", usage: "DEVICE ARTIFACT", summary: "order a firmware update", run: cmdFirmwareUpdate},
		{name: "status", usage: "DEVICE", summary: "a device's version and latest update", run: cmdFirmwareStatus},
		{name: "jobs", usage: "DEVICE", summary: "list a device's updates", run: cmdFirmwareJobs},
		{name: "show", usage: "JOB", summary: "show an update", run: cmdFirmwareShow},
		{name: "abort", usage: "JOB", summary: "abort an update", run: cmdFirmwareAbort},
	},
}

func cmdFirmware(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return firmwareGroup.dispatch(ctx, args, stdout, stderr)
}

func cmdFirmwareUpdate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "firmware update", args: "DEVICE ARTIFACT", min: 2, max: 2, about: `Order a device (by id or name) to install an artifact, through its queue:
a device that is away or pulls gets the order too. Prints the update as
JSON; with --wait, follows it to its end and fails unless it ended
SUCCESS.`}
	var ttl, timeout *time.Duration
	var wait *bool
	var methods methodsFlag
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		fs.Var(&methods, "method", "transfer `METHOD` for the image: mqtt or url (repeat for both; default both)")
		ttl = fs.Duration("ttl", 0, "how long the order waits for the device (default 7 days, at most 30 days)")
		timeout = fs.Duration("timeout", 0, "how long the device may stay silent, and take to come back after its restart (default 30m)")
		wait = fs.Bool("wait", false, "wait until the update ends")
	})
	if err != nil {
		return err
	}
	if *ttl != 0 {
		if err := checkDuration("ttl", *ttl, 30*24*time.Hour); err != nil {
			return err
		}
	}
	if *timeout != 0 {
		if err := checkDuration("timeout", *timeout, 7*24*time.Hour); err != nil {
			return err
		}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		j, err := f.UpdateFirmware(ctx, id, pos[1], fleet.UpdateOptions{Methods: methods, TTL: *ttl, Timeout: *timeout})
		if err != nil {
			return err
		}
		if !*wait {
			return printJSON(stdout, j)
		}
		var last string
		j, err = f.WaitFirmware(ctx, j.ID, func(j *fleet.FirmwareJob) {
			if isTerminal(stderr) && j.Phase+j.State != last {
				fmt.Fprintf(stderr, "%s %s %s %.0f%%\n", j.ID, j.State, j.Phase, j.Percent)
				last = j.Phase + j.State
			}
		})
		if err != nil {
			return err
		}
		if err := printJSON(stdout, j); err != nil {
			return err
		}
		if j.State != fleet.FirmwareSuccess {
			return fmt.Errorf("update %s ended %s: %s %s", j.ID, j.State, j.Error, j.Message)
		}
		return nil
	})
}

func cmdFirmwareStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "firmware status", args: "DEVICE", min: 1, max: 1, about: "Show a device's reported firmware version and its latest update, as JSON."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		st, err := f.Firmware(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, st)
	})
}

func cmdFirmwareJobs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "firmware jobs", args: "DEVICE", min: 1, max: 1, about: "List a device's firmware updates, newest first."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outTable) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		js, err := f.FirmwareJobs(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, js)
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "ID\tFROM\tTO\tSTATE\tPHASE\tERROR\tCREATED")
		for _, j := range js {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, dash(j.FromVersion), j.TargetVersion, j.State, dash(j.Phase), dash(j.Error), stamp(j.CreatedAt))
		}
		return tw.Flush()
	})
}

func cmdFirmwareShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "firmware show", args: "JOB", min: 1, max: 1, about: "Show a firmware update as JSON."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		j, err := f.FirmwareJob(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, j)
	})
}

func cmdFirmwareAbort(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "firmware abort", args: "JOB", min: 1, max: 1, about: "Abort a firmware update. Once the device is installing, its installer decides whether it can still stop."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		j, err := f.AbortFirmware(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, j)
	})
}

func cmdKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "keys", about: `Print the platform's public signing key, which devices check firmware
images with: device.FirmwareKey(protocol.ParsePublicKey(KEY)) in the Go
SDK, or the 32 bytes after "ed25519:" (base64) on any device.`}
	var asPEM *bool
	cf, _, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		asPEM = fs.Bool("pem", false, "print a PEM \"PUBLIC KEY\" block instead")
	})
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		k, err := f.SigningKey(ctx)
		if err != nil {
			return err
		}
		if !*asPEM {
			_, err := fmt.Fprintln(stdout, k)
			return err
		}
		pub, err := protocol.ParsePublicKey(k)
		if err != nil {
			return errors.New("the platform sent a key that does not parse: " + err.Error())
		}
		der, _ := x509.MarshalPKIXPublicKey(pub)
		return pem.Encode(stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
	})
}
