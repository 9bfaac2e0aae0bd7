package outbox

// SetMessageBytes changes the largest payload of the telemetry messages
// sealed from now on (the bytes of WithMessageLimits); n <= 0 changes
// nothing. The device client lowers it to what the platform announces as
// its Maximum Packet Size, so that no message is sealed too large to be
// sent. Messages already sealed keep their size.
func (o *Outbox) SetMessageBytes(n int) {
	if n <= 0 {
		return
	}
	o.mu.Lock()
	o.opt.msgBytes = n
	o.mu.Unlock()
}
