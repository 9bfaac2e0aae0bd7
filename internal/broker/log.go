package broker

import (
	"context"
	"log/slog"

	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// mochiLog is the handler mochi logs through. mochi puts whole packets into
// its log records: a second CONNECT on a connection logs the CONNECT,
// password included, and a publish our route hook refuses is logged at
// ERROR with its payload written out as decimal bytes (a 256 KiB message
// made a 1 MB line). This handler
//
//   - never lets a packet through: a packet attribute becomes a short
//     summary (type, packet id, topic, payload size), never credentials
//     or payload;
//   - logs what devices cause at Info or Debug, not at Warn or Error: a
//     publish the platform rejects is counted and answered already, and a
//     protocol error ends only that device's connection;
//   - drops mochi's routine Info and Debug records, as before;
//   - names the client id (the device id once authenticated) device_id,
//     the key the platform's own records use (and rate-limits by).
type mochiLog struct {
	slog.Handler
}

// Enabled lets through what mochi logs at Warn or above; Handle decides
// the final level.
func (h mochiLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn
}

func (h mochiLog) Handle(ctx context.Context, r slog.Record) error {
	level, msg := r.Level, r.Message
	switch r.Message {
	case "publish packet error":
		// Our route hook refused a device's message with a reason code.
		level, msg = slog.LevelDebug, "device message refused"
	case "error processing packet":
		level, msg = slog.LevelInfo, "device protocol error; connection closed"
	}
	if !h.Handler.Enabled(ctx, level) {
		return nil
	}
	out := slog.NewRecord(r.Time, level, msg, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(cleanAttr(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h mochiLog) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = cleanAttr(a)
	}
	return mochiLog{h.Handler.WithAttrs(clean)}
}

func (h mochiLog) WithGroup(g string) slog.Handler { return mochiLog{h.Handler.WithGroup(g)} }

// cleanAttr replaces a packet by its summary and renames client to
// device_id.
func cleanAttr(a slog.Attr) slog.Attr {
	if a.Key == "client" {
		a.Key = "device_id"
	}
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	switch v := a.Value.Any().(type) {
	case packets.Packet:
		return slog.Attr{Key: a.Key, Value: packetSummary(&v)}
	case *packets.Packet:
		return slog.Attr{Key: a.Key, Value: packetSummary(v)}
	case packets.ConnectParams, *packets.ConnectParams, []byte:
		return slog.String(a.Key, "(omitted)")
	}
	return a
}

func packetSummary(pk *packets.Packet) slog.Value {
	if pk == nil {
		return slog.StringValue("<nil>")
	}
	as := []slog.Attr{slog.String("type", packets.PacketNames[pk.FixedHeader.Type])}
	if pk.PacketID != 0 {
		as = append(as, slog.Int("id", int(pk.PacketID)))
	}
	if pk.TopicName != "" {
		as = append(as, slog.String("topic", truncate(pk.TopicName, 128)))
	}
	if len(pk.Payload) > 0 {
		as = append(as, slog.Int("payload_bytes", len(pk.Payload)))
	}
	return slog.GroupValue(as...)
}
