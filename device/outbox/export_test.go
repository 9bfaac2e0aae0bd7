package outbox

// WithStartSeq makes a new store number its first message seq, so tests can
// cross 2^32 without queueing billions of messages.
var WithStartSeq = withStartSeq

// Abandon simulates the process dying: the background flusher stops, but
// nothing is synced, written or closed; only the directory lock goes, as
// it goes with a dead process. Whatever Add returned for must be found by
// the next Open on the same store.
func Abandon(o *Outbox) {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	if o.stop != nil {
		close(o.stop)
		<-o.done
	}
	if fs, ok := o.st.(*FileStore); ok {
		fs.mu.Lock()
		fs.unlock()
		fs.mu.Unlock()
	}
}
