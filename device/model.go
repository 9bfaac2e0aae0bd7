package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// Feed types and data types, re-exported from protocol for convenience.
const (
	FeedIn    = protocol.FeedIn
	FeedInOut = protocol.FeedInOut

	Number   = protocol.ValueNumber
	Bool     = protocol.ValueBool
	String   = protocol.ValueString
	Location = protocol.ValueLocation
	Hex      = protocol.ValueHex
)

// LocationValue is the value of a location feed or attribute; pass it to
// Add like any other value.
type LocationValue = protocol.Location

// Feed describes a feed to register: Ref is its unique reference (the name
// readings use), Name what people see, Type FeedIn or FeedInOut, DataType
// one of Number, Bool, String, Location, Hex, and Unit one of
// protocol.StandardUnits or any custom text.
type Feed = protocol.FeedDef

// FeedCommand is a value an application set on one of the device's
// IN_OUT feeds.
type FeedCommand struct {
	ID       string
	Feed     string
	Value    json.RawMessage
	IssuedAt time.Time
}

// FeedHandler handles the commands of one feed. Typically it applies the
// value and reports the new state with Add and Publish.
type FeedHandler func(ctx context.Context, cmd FeedCommand) error

// ParametersUpdate is a change of the device's parameters, or with Full
// the whole set. In a change, a null value means the key was removed.
type ParametersUpdate struct {
	Version int64
	Full    bool
	Values  map[string]json.RawMessage
}

// ParametersHandler receives parameter updates, one at a time and in
// order. Parameters returns the merged set.
type ParametersHandler func(ctx context.Context, u ParametersUpdate)

// modelClient is the device-model state of a Client.
type modelClient struct {
	mu           sync.Mutex
	feedHandlers map[string]FeedHandler
	paramHandler ParametersHandler
	params       map[string]json.RawMessage
	paramVersion int64
	paramMu      sync.Mutex // one parameters handler at a time, in order
	commands     *recentIDs

	timeSeq   atomic.Uint64
	timeWait  map[string]chan protocol.TimeReply
	lastTime  time.Time     // platform time of the last reply
	lastLocal time.Time     // local time the reply arrived
	offset    time.Duration // platform clock - local clock
	keepAlive atomic.Int64  // seconds, as dictated by the platform
}

func (m *modelClient) init() {
	m.feedHandlers = map[string]FeedHandler{}
	m.params = map[string]json.RawMessage{}
	m.commands = newRecentIDs(1024)
	m.timeWait = map[string]chan protocol.TimeReply{}
}

// HandleFeed registers h for the commands of IN_OUT feed ref, replacing any
// previous handler. Commands arrive with the time the application issued
// them; a command redelivered after a reconnect runs once.
func (c *Client) HandleFeed(ref string, h FeedHandler) error {
	if err := protocol.ValidFeed(ref); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if h == nil {
		return errors.New("device: nil feed handler")
	}
	c.model.mu.Lock()
	c.model.feedHandlers[ref] = h
	c.model.mu.Unlock()
	return nil
}

// HandleParameters sets the function that receives parameter updates.
// With a handler set, the client asks for the full set every time it
// connects, so a device that was offline catches up.
func (c *Client) HandleParameters(h ParametersHandler) {
	c.model.mu.Lock()
	c.model.paramHandler = h
	c.model.mu.Unlock()
}

// Parameters returns the parameters received so far and their version.
func (c *Client) Parameters() (map[string]json.RawMessage, int64) {
	c.model.mu.Lock()
	defer c.model.mu.Unlock()
	return maps.Clone(c.model.params), c.model.paramVersion
}

// RegisterFeeds registers feeds on the platform (or updates them, by
// reference). Once a device has registered a feed, the platform rejects
// readings for feeds it has not registered.
func (c *Client) RegisterFeeds(ctx context.Context, feeds ...Feed) error {
	for i := range feeds {
		if err := protocol.ValidateFeedDef(&feeds[i]); err != nil {
			return fmt.Errorf("device: %w", err)
		}
	}
	return c.sendModel(ctx, protocol.KindFeeds, protocol.FeedsMessage{Register: feeds})
}

// RemoveFeeds removes feeds; the platform rejects their readings from now
// on.
func (c *Client) RemoveFeeds(ctx context.Context, refs ...string) error {
	for _, r := range refs {
		if err := protocol.ValidFeed(r); err != nil {
			return fmt.Errorf("device: %w", err)
		}
	}
	return c.sendModel(ctx, protocol.KindFeeds, protocol.FeedsMessage{Remove: refs})
}

// SetAttribute registers an attribute, or updates its value. dataType is
// Number, Bool, String, Location or Hex; value must match it.
func (c *Client) SetAttribute(ctx context.Context, name, dataType string, value any) error {
	v, err := protocol.EncodeValue(value)
	if err != nil {
		return fmt.Errorf("device: attribute %s: %w", name, err)
	}
	a := protocol.Attribute{Name: name, DataType: dataType, Value: v}
	if err := protocol.ValidateAttribute(a); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return c.sendModel(ctx, protocol.KindAttributes, protocol.AttributesMessage{Attributes: []protocol.Attribute{a}})
}

// ReportParameters reports the device's own parameter values; the
// platform shows them as "reported" next to the values it wants.
func (c *Client) ReportParameters(ctx context.Context, values map[string]any) error {
	enc := make(map[string]json.RawMessage, len(values))
	for k, v := range values {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("device: parameter %s: %w", k, err)
		}
		enc[k] = b
	}
	if err := protocol.ValidateParameters(enc, false); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return c.sendModel(ctx, protocol.KindParameters, protocol.ParametersReport{Reported: enc})
}

// PullParameters asks the platform for the full parameter set; it arrives
// at the parameters handler.
func (c *Client) PullParameters(ctx context.Context) error {
	return c.sendModel(ctx, protocol.KindParameters, protocol.ParametersReport{Pull: true})
}

// SendEvent sends an event with JSON-encodable data (nil for none); the
// platform stores it and streams it to applications. The event goes into
// the outbox first (durable, in order with readings), then SendEvent
// publishes everything waiting; if that fails the event stays in the
// outbox for the next Publish.
func (c *Client) SendEvent(ctx context.Context, name string, data any) error {
	e := protocol.Event{ID: c.messageID(), Name: name, T: time.Now().UnixMilli()}
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("device: event %s: %w", name, err)
		}
		e.Data = b
	}
	if _, err := protocol.DecodeEvent(mustJSON(e)); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return c.sendDurable(ctx, protocol.KindEvent, mustJSON(e))
}

// SendNotification sends a notification for people (title and text); the
// platform stores it and streams it to applications. Like SendEvent it
// goes through the outbox.
func (c *Client) SendNotification(ctx context.Context, title, text string) error {
	n := protocol.Notification{ID: c.messageID(), Title: title, Text: text, T: time.Now().UnixMilli()}
	if _, err := protocol.DecodeNotification(mustJSON(n)); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return c.sendDurable(ctx, protocol.KindNotification, mustJSON(n))
}

// messageID returns a new id for an event or notification: random, so it
// is unique across restarts of the device process; the platform stores a
// device's message with a given id once, however often it is redelivered.
func (c *Client) messageID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sendDurable puts a message in the outbox, behind the readings and
// messages already there, and publishes everything waiting. Once it is in
// the outbox the message is not lost: if Publish fails (ctx ends, no
// connection) it goes with the next Publish, in order.
func (c *Client) sendDurable(ctx context.Context, kind string, payload []byte) error {
	if _, err := c.tele.ob.AddMessage(kind, payload); err != nil {
		return fmt.Errorf("device: %s: %w", kind, err)
	}
	return c.Publish(ctx)
}

// PublishRaw publishes payload (any bytes, at most
// protocol.MaxMessageBytes) on the device's up/raw/{subtopic} topic; the
// platform hands it to applications on its live stream. subtopic may hold
// several levels ("sensors/a") or be empty.
func (c *Client) PublishRaw(ctx context.Context, subtopic string, payload []byte) error {
	kind := protocol.KindRaw
	if subtopic != "" {
		kind += "/" + subtopic
	}
	if _, err := protocol.ParseTopic(protocol.UpTopic(c.id, kind)); err != nil || len(subtopic) > protocol.MaxRawTopicLen {
		return fmt.Errorf("device: bad raw subtopic %q", subtopic)
	}
	if len(payload) > protocol.MaxMessageBytes {
		return fmt.Errorf("device: raw payload of %d bytes exceeds %d", len(payload), protocol.MaxMessageBytes)
	}
	return c.publishUp(ctx, kind, payload)
}

// PlatformTime asks the platform for its time and returns it, corrected
// for half the round trip. It also updates ClockOffset.
func (c *Client) PlatformTime(ctx context.Context) (time.Time, error) {
	id := "t" + strconv.FormatUint(c.model.timeSeq.Add(1), 10)
	ch := make(chan protocol.TimeReply, 1)
	c.model.mu.Lock()
	c.model.timeWait[id] = ch
	c.model.mu.Unlock()
	defer func() {
		c.model.mu.Lock()
		delete(c.model.timeWait, id)
		c.model.mu.Unlock()
	}()
	sent := time.Now()
	if err := c.sendModel(ctx, protocol.KindTime, protocol.TimeRequest{ID: id, Sent: sent.UnixMilli()}); err != nil {
		return time.Time{}, err
	}
	select {
	case r := <-ch:
		now := time.Now()
		rtt := now.Sub(sent)
		platform := time.UnixMilli(r.T).Add(rtt / 2)
		c.model.mu.Lock()
		c.model.lastTime, c.model.lastLocal = platform, now
		c.model.offset = platform.Sub(now)
		c.model.mu.Unlock()
		return platform, nil
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("device: platform time: %w", ctx.Err())
	case <-c.Done():
		return time.Time{}, c.Err()
	}
}

// LastPlatformTime returns the platform time of the last PlatformTime
// answer and the local time it arrived; zero before the first.
func (c *Client) LastPlatformTime() (platform, local time.Time) {
	c.model.mu.Lock()
	defer c.model.mu.Unlock()
	return c.model.lastTime, c.model.lastLocal
}

// ClockOffset returns how far the platform's clock is ahead of the local
// one (negative: behind), as measured by the last PlatformTime.
func (c *Client) ClockOffset() time.Duration {
	c.model.mu.Lock()
	defer c.model.mu.Unlock()
	return c.model.offset
}

// KeepAlive returns the keep-alive interval the platform dictated at the
// last connection (0 before the first). The platform drops a device it
// has not heard from for two intervals; the MQTT client pings in between.
func (c *Client) KeepAlive() time.Duration {
	return time.Duration(c.model.keepAlive.Load()) * time.Second
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func (c *Client) sendModel(ctx context.Context, kind string, msg any) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("device: %s: %w", kind, err)
	}
	return c.publishUp(ctx, kind, b)
}

// ModelError reports that the platform refused a device-model message for
// good; the error handler (WithErrorHandler) gets the details.
type ModelError struct {
	Kind       string
	ReasonCode byte
}

// Error describes the rejection with its MQTT reason code.
func (e *ModelError) Error() string {
	return fmt.Sprintf("device: platform rejected %s message with reason code 0x%02x", e.Kind, e.ReasonCode)
}

// publishUp publishes one QoS 1 message and waits for the platform's
// acknowledgement, riding out reconnects until ctx ends.
func (c *Client) publishUp(ctx context.Context, kind string, payload []byte) error {
	if !c.started.Load() {
		return ErrNotConnected
	}
	if err := c.checkSize(kind, payload); err != nil {
		return err
	}
	select {
	case <-c.cmReady:
	case <-ctx.Done():
		return fmt.Errorf("device: %s: %w", kind, ctx.Err())
	case <-c.Done():
		return c.Err()
	}
	for {
		if err := c.Err(); err != nil {
			return err
		}
		if err := c.cm.AwaitConnection(ctx); err != nil {
			return fmt.Errorf("device: %s: %w", kind, err)
		}
		resp, err := c.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, kind), QoS: 1, Payload: payload})
		if err == nil {
			return nil
		}
		if resp != nil && resp.ReasonCode >= 0x80 {
			switch resp.ReasonCode {
			case 0x87, 0x90, 0x99, 0x83:
				return &ModelError{Kind: kind, ReasonCode: resp.ReasonCode}
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("device: %s: %w", kind, ctx.Err())
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("device: %s: %w", kind, ctx.Err())
		case <-c.Done():
			return c.Err()
		}
	}
}

// modelConnected runs after every (re)connection, once subscribed. It
// uses cm rather than c.cm, which Connect may not have set yet.
func (c *Client) modelConnected(cm *autopaho.ConnectionManager, ca *paho.Connack) {
	if ca != nil && ca.Properties != nil && ca.Properties.ServerKeepAlive != nil {
		c.model.keepAlive.Store(int64(*ca.Properties.ServerKeepAlive))
	} else {
		c.model.keepAlive.Store(int64(c.opt.keepAlive / time.Second))
	}
	c.model.mu.Lock()
	pull := c.model.paramHandler != nil
	c.model.mu.Unlock()
	if pull {
		ctx, cancel := context.WithTimeout(c.lifetime, c.opt.connectTimeout)
		defer cancel()
		if _, err := cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindParameters), QoS: 1,
			Payload: mustJSON(protocol.ParametersReport{Pull: true})}); err != nil {
			c.opt.log.Warn("pull parameters", "device_id", c.id, "error", err)
		}
	}
}

// onModelPublish dispatches the device-model kinds of down messages. It
// reports false for a kind it does not know.
func (c *Client) onModelPublish(kind string, payload []byte) bool {
	switch kind {
	case protocol.KindFeed:
		cmd, err := protocol.DecodeFeedCommand(payload)
		if err != nil {
			c.opt.log.Warn("bad feed command", "device_id", c.id, "error", err)
			return true
		}
		if cmd.ID != "" && !c.model.commands.add(cmd.ID) {
			return true // redelivered
		}
		if cmd.ID != "" {
			if err := c.answeredLog.add(commandPrefix + cmd.ID); err != nil {
				c.opt.log.Warn("record feed command", "device_id", c.id, "id", cmd.ID, "error", err)
			}
		}
		c.model.mu.Lock()
		h := c.model.feedHandlers[cmd.Feed]
		c.model.mu.Unlock()
		if h == nil {
			c.opt.log.Warn("feed command without handler", "device_id", c.id, "feed", cmd.Feed)
			return true
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() {
				if r := recover(); r != nil {
					c.opt.log.Error("feed handler panicked", "device_id", c.id, "feed", cmd.Feed, "panic", r)
				}
			}()
			fc := FeedCommand{ID: cmd.ID, Feed: cmd.Feed, Value: cmd.Value, IssuedAt: time.UnixMilli(cmd.T)}
			if err := h(c.lifetime, fc); err != nil {
				c.opt.log.Warn("feed handler failed", "device_id", c.id, "feed", cmd.Feed, "error", err)
			}
		}()
	case protocol.KindParameters:
		u, err := protocol.DecodeParametersUpdate(payload)
		if err != nil {
			c.opt.log.Warn("bad parameters update", "device_id", c.id, "error", err)
			return true
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.applyParameters(u)
		}()
	case protocol.KindTime:
		r, err := protocol.DecodeTimeReply(payload)
		if err != nil {
			return true
		}
		c.model.mu.Lock()
		ch := c.model.timeWait[r.ID]
		c.model.mu.Unlock()
		if ch != nil {
			select {
			case ch <- r:
			default:
			}
		}
	default:
		return false
	}
	return true
}

func (c *Client) applyParameters(u protocol.ParametersUpdate) {
	c.model.paramMu.Lock()
	defer c.model.paramMu.Unlock()
	c.model.mu.Lock()
	if u.Version < c.model.paramVersion || (u.Version == c.model.paramVersion && !u.Full && u.Version != 0) {
		c.model.mu.Unlock()
		return // older than what we have
	}
	if u.Full {
		c.model.params = map[string]json.RawMessage{}
	}
	for k, v := range u.Values {
		if string(v) == "null" {
			delete(c.model.params, k)
		} else {
			c.model.params[k] = v
		}
	}
	c.model.paramVersion = u.Version
	h := c.model.paramHandler
	c.model.mu.Unlock()
	if h != nil {
		defer func() {
			if r := recover(); r != nil {
				c.opt.log.Error("parameters handler panicked", "device_id", c.id, "panic", r)
			}
		}()
		h(c.lifetime, ParametersUpdate{Version: u.Version, Full: u.Full, Values: u.Values})
	}
}
