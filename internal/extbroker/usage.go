package extbroker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/outpost-iot/outpost/protocol"
)

// The replicas' rate-limit usage reports (telemetry.Exchange): each
// replica publishes on usageTopic, QoS 0, what it admitted per device
// since its last report, and debits the others' reports from its own
// buckets, so a device's rate limit holds across the replicas.
//
// A report's payload, compact binary (integers are unsigned varints):
//
//	0x01                      version
//	len, group                the shared-subscription group, 1..MaxUsageName bytes
//	len, origin               the sending replica's client id, 1..MaxUsageName bytes
//	count                     devices, 0..MaxUsageEntries
//	count × (len, id, n)      a device id (protocol.ValidID) and its readings, 1..MaxInt32
//
// Device ids are distinct and nothing follows the last entry. Anything
// else is malformed and ignored, as is a report of another group or of
// this replica.
const (
	usageTopic   = InternalRoot + "/usage"
	usageVersion = 1
	// MaxUsageEntries bounds the devices in one report's payload; a
	// larger report is sent in several payloads.
	MaxUsageEntries = 1024
	// MaxUsageName bounds a report's group and origin.
	MaxUsageName = 1024
)

// UsageReport is one replica's rate-limit usage for the others.
type UsageReport struct {
	Group  string         // the replicas' shared-subscription group
	Origin string         // the sending replica's client id
	Usage  map[string]int // readings admitted per device since the last report
}

// EncodeUsage encodes r in payloads of at most MaxUsageEntries devices
// each, in device order; devices with no readings are left out. A report
// with none is one payload without entries.
func EncodeUsage(r UsageReport) [][]byte {
	ids := make([]string, 0, len(r.Usage))
	for id, n := range r.Usage {
		if n > 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var out [][]byte
	for {
		chunk := ids[:min(len(ids), MaxUsageEntries)]
		ids = ids[len(chunk):]
		b := make([]byte, 0, 8+len(r.Group)+len(r.Origin)+len(chunk)*24)
		b = append(b, usageVersion)
		b = appendString(b, r.Group)
		b = appendString(b, r.Origin)
		b = binary.AppendUvarint(b, uint64(len(chunk)))
		for _, id := range chunk {
			b = appendString(b, id)
			b = binary.AppendUvarint(b, uint64(min(r.Usage[id], math.MaxInt32)))
		}
		out = append(out, b)
		if len(ids) == 0 {
			return out
		}
	}
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// errBadUsage is wrapped by every DecodeUsage error.
var errBadUsage = errors.New("malformed usage report")

// DecodeUsage decodes one payload of EncodeUsage.
func DecodeUsage(b []byte) (UsageReport, error) {
	d := usageDecoder{b: b}
	if v := d.byte(); v != usageVersion {
		return UsageReport{}, fmt.Errorf("%w: version %d", errBadUsage, v)
	}
	r := UsageReport{Group: d.string(MaxUsageName), Origin: d.string(MaxUsageName)}
	if d.err == nil && (r.Group == "" || r.Origin == "") {
		d.fail("empty group or origin")
	}
	count := d.uvarint(MaxUsageEntries)
	if d.err != nil {
		return UsageReport{}, d.err
	}
	r.Usage = make(map[string]int, count)
	for range count {
		id := d.string(protocol.MaxDeviceIDLen)
		n := d.uvarint(math.MaxInt32)
		switch {
		case d.err != nil:
			return UsageReport{}, d.err
		case protocol.ValidID(id) != nil:
			return UsageReport{}, fmt.Errorf("%w: device id %q", errBadUsage, id)
		case n == 0:
			return UsageReport{}, fmt.Errorf("%w: no readings for %s", errBadUsage, id)
		}
		if _, dup := r.Usage[id]; dup {
			return UsageReport{}, fmt.Errorf("%w: %s twice", errBadUsage, id)
		}
		r.Usage[id] = int(n)
	}
	if len(d.b) > 0 {
		return UsageReport{}, fmt.Errorf("%w: %d bytes after the last entry", errBadUsage, len(d.b))
	}
	return r, nil
}

// usageDecoder reads a payload; after the first error it reads nothing.
type usageDecoder struct {
	b   []byte
	err error
}

func (d *usageDecoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errBadUsage, what)
	}
}

func (d *usageDecoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *usageDecoder) uvarint(limit uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad integer")
		return 0
	}
	if v > limit {
		d.fail(fmt.Sprintf("%d over %d", v, limit))
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *usageDecoder) string(limit int) string {
	n := d.uvarint(uint64(limit))
	if d.err != nil {
		return ""
	}
	if uint64(len(d.b)) < n {
		d.fail("truncated")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// PublishUsage sends this replica's rate-limit usage to the other
// replicas (telemetry.Exchange): QoS 0, lost while the link is down.
func (l *Link) PublishUsage(usage map[string]int) {
	for _, p := range EncodeUsage(UsageReport{Group: l.cfg.Group, Origin: l.cfg.ClientID, Usage: usage}) {
		l.publishInternal(usageTopic, p)
	}
}

// OnUsage sets where the other replicas' usage reports go
// (telemetry.Exchange). Malformed reports, those of another group and
// this replica's own are dropped.
func (l *Link) OnUsage(f func(origin string, usage map[string]int)) { l.usage.Store(&f) }

// usageReport handles a report that arrived on usageTopic.
func (l *Link) usageReport(payload []byte) {
	f := l.usage.Load()
	if f == nil {
		return
	}
	r, err := DecodeUsage(payload)
	switch {
	case err != nil:
		l.log.Debug("external broker: usage report ignored", "error", err)
	case r.Group != l.cfg.Group || r.Origin == l.cfg.ClientID:
		// Another deployment on the same broker, or an echo of our own.
	default:
		(*f)(r.Origin, r.Usage)
	}
}
