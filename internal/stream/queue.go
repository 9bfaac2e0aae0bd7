package stream

// Event kinds of the down queue.
const (
	// KindCall: a queued call changed state (the data is the call).
	KindCall = "call"
	// KindQueue: a queued message changed state (sent, delivered,
	// expired); the data is the message without its payload.
	KindQueue = "queue"
)
