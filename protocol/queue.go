package protocol

import "fmt"

// KindPull carries a PullRequest (up) or a PullEnd (down): a device in
// PULL mode asks for what the platform queued for it, and the platform
// answers with every queued message, in order, then a PullEnd.
const KindPull = "pull"

// MQTT 5 user properties of the down queue.
const (
	// PropMode, on CONNECT, declares the device's delivery mode for the
	// session: ModePush (the default) or ModePull.
	PropMode = "mode"
	// PropMessageID, on a queued message the platform publishes, carries
	// the message's queue id (for calls, also the request id). A device may
	// use it to recognise a redelivered message.
	PropMessageID = "outpost-msg-id"
)

// Delivery modes (values of PropMode).
const (
	// ModePush: the platform publishes queued messages as soon as the
	// device has subscribed to its down/ topics, and new ones at once.
	ModePush = "push"
	// ModePull: queued messages wait until the device publishes a
	// PullRequest.
	ModePull = "pull"
)

// MaxPullExpiredIDs bounds PullEnd.ExpiredIDs.
const MaxPullExpiredIDs = 100

// PullRequest is published by a device on up/pull. ID, chosen by the
// device, comes back in the PullEnd.
type PullRequest struct {
	ID string `json:"id"`
}

// PullEnd is published by the platform on down/pull after the messages of
// a pull. Delivered counts the messages published for this pull (queued
// ones, and ones sent earlier but not acknowledged or answered); Expired
// counts messages that expired since the previous pull without reaching
// the device, ExpiredIDs names the first MaxPullExpiredIDs of them.
type PullEnd struct {
	ID         string   `json:"id"`
	Delivered  int      `json:"delivered"`
	Expired    int      `json:"expired"`
	ExpiredIDs []string `json:"expired_ids,omitempty"`
}

// DecodePullRequest parses a pull request published by a device.
func DecodePullRequest(payload []byte) (PullRequest, error) {
	var r PullRequest
	if len(payload) > MaxMessageBytes {
		return r, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("pull request of %d bytes exceeds %d", len(payload), MaxMessageBytes)}
	}
	if err := decodeJSON("pull request", payload, &r); err != nil {
		return PullRequest{}, err
	}
	if r.ID == "" || len(r.ID) > MaxBatchIDLen {
		return PullRequest{}, &Error{Code: CodeInvalid, Message: "pull request: id must be 1 to 64 bytes"}
	}
	return r, nil
}

// DecodePullEnd parses the end marker of a pull.
func DecodePullEnd(payload []byte) (PullEnd, error) {
	var e PullEnd
	if len(payload) > MaxMessageBytes {
		return e, &Error{Code: CodeTooLarge, Message: "pull end too large"}
	}
	if err := decodeJSON("pull end", payload, &e); err != nil {
		return PullEnd{}, err
	}
	if e.ID == "" || e.Delivered < 0 || e.Expired < 0 {
		return PullEnd{}, &Error{Code: CodeInvalid, Message: "pull end: needs an id and non-negative counts"}
	}
	return e, nil
}

// KindAck carries an Ack (up): the device confirms that it received
// queued messages.
const KindAck = "ack"

// MaxAckIDs bounds the ids in one Ack.
const MaxAckIDs = 256

// Ack is published by a device on up/ack once it has received (and, for
// a command, recorded or applied) queued messages. IDs are the messages'
// ids: the "id" field of each message's payload (on MQTT 5 also the user
// property PropMessageID). An answer to a queued call confirms its request
// as well, so a device that answers need not acknowledge it.
type Ack struct {
	IDs []string `json:"ids"`
}

// DecodeAck parses an acknowledgement published by a device.
func DecodeAck(payload []byte) (Ack, error) {
	var a Ack
	if len(payload) > MaxMessageBytes {
		return a, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("ack of %d bytes exceeds %d", len(payload), MaxMessageBytes)}
	}
	if err := decodeJSON("ack", payload, &a); err != nil {
		return Ack{}, err
	}
	if len(a.IDs) == 0 {
		return Ack{}, &Error{Code: CodeInvalid, Message: "ack: ids must hold at least one id"}
	}
	if len(a.IDs) > MaxAckIDs {
		return Ack{}, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("ack: %d ids exceed %d per message", len(a.IDs), MaxAckIDs)}
	}
	for _, id := range a.IDs {
		if id == "" || len(id) > MaxBatchIDLen {
			return Ack{}, &Error{Code: CodeInvalid, Message: "ack: every id must be 1 to 64 bytes"}
		}
	}
	return a, nil
}
