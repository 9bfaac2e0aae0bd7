package device

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// This file is the device's side of file management (docs/protocol.md
// §22–§23): the files in a directory of the device's own, reported to the
// platform on every connection and after every change; transfers from the
// platform, in chunks over MQTT or by URL, that resume after a lost
// connection or a restart of the device process from the last good chunk;
// and the platform's delete and purge commands.
//
// State lives next to the files, in DIR/.outpost: per transfer, the offer
// (t-ID.json) and the bytes received so far (t-ID.part). Chunks arrive in
// order and are appended, so the part file's length is the progress: a
// process killed at any moment resumes after the last chunk it wrote.

// Downloader fetches url from byte offset on (an HTTP Range request) and
// writes what it gets to w. The default one speaks HTTP(S); a device may
// plug in its own for other URLs (FileDownloader). It returns a
// *DownloadError for an answer the server gave.
type Downloader func(ctx context.Context, url string, offset int64, w io.Writer) error

// DownloadError is an HTTP status a Downloader got.
type DownloadError struct {
	Status int
}

func (e *DownloadError) Error() string {
	return fmt.Sprintf("download: HTTP %d %s", e.Status, http.StatusText(e.Status))
}

// FileEvent tells a FileHandler how a transfer ended.
type FileEvent struct {
	// Transfer is the transfer's id.
	Transfer string
	// Name is the file's name; Path where it is (set when State is
	// protocol.FileReady).
	Name, Path string
	// State is protocol.FileReady, protocol.FileError or
	// protocol.FileAborted.
	State string
	// Error is an error kind (protocol.FileErr…) with State ERROR, and
	// Message says more.
	Error, Message string
	Size           int64
}

// FileInfo describes a file in the device's file directory.
type FileInfo = protocol.FileInfo

// FileOption configures file management (WithFiles). A value out of range
// makes New fail.
type FileOption func(*fileConfig) error

type fileConfig struct {
	dir        string
	chunkSize  int
	window     int
	retries    int
	methods    []string
	maxSize    int64
	rate       int64
	timeout    time.Duration
	downloader Downloader
	handler    func(ctx context.Context, e FileEvent)
	set        map[string]bool // options given explicitly
}

// WithFiles enables file management: files the platform sends land in
// dir (created if needed), which the device reports to the platform on
// every connection and after every change. A file name can never reach
// outside dir (protocol.ValidFileName); names starting with '.' are the
// SDK's own and are not reported. The directory serves one client at a
// time.
func WithFiles(dir string, opts ...FileOption) Option {
	return func(o *options) error {
		if dir == "" {
			return errors.New("file directory is empty")
		}
		fc := &fileConfig{dir: dir, chunkSize: protocol.DefaultChunkSize, retries: 3, maxSize: protocol.MaxFileSize,
			methods: []string{protocol.MethodMQTT, protocol.MethodURL}, timeout: 30 * time.Second, set: map[string]bool{}}
		for _, fn := range opts {
			if err := fn(fc); err != nil {
				return fmt.Errorf("files: %w", err)
			}
		}
		o.files = fc
		return nil
	}
}

// WithLowResource makes file transfers light for a small device (Zerynth
// ADM's low_res): chunks of 4 KiB, one in flight, unless FileChunkSize or
// FileWindow say otherwise.
func WithLowResource() Option {
	return func(o *options) error {
		o.lowResource = true
		return nil
	}
}

// FileChunkSize sets the chunk size the device asks for over MQTT, from
// protocol.MinChunkSize (256 bytes) to protocol.MaxChunkSize (1 MiB);
// default protocol.DefaultChunkSize (64 KiB).
func FileChunkSize(n int) FileOption {
	return func(c *fileConfig) error {
		if n < protocol.MinChunkSize || n > protocol.MaxChunkSize {
			return fmt.Errorf("chunk size must be between %d and %d", protocol.MinChunkSize, protocol.MaxChunkSize)
		}
		c.chunkSize, c.set["chunk"] = n, true
		return nil
	}
}

// FileWindow sets how many chunks the device keeps asked for and not yet
// received, from 1 to protocol.MaxChunksPerRequest (default: as many as
// fit in 128 KiB, at least 2). Keep it well below the device's MQTT Receive
// Maximum, so that RPCs always find room.
func FileWindow(n int) FileOption {
	return func(c *fileConfig) error {
		if n < 1 || n > protocol.MaxChunksPerRequest {
			return fmt.Errorf("window must be between 1 and %d", protocol.MaxChunksPerRequest)
		}
		c.window, c.set["window"] = n, true
		return nil
	}
}

// FileRetries sets how many times a chunk that arrives damaged is asked
// for again before the transfer fails with protocol.FileErrRetryExceeded
// (default 3).
func FileRetries(n int) FileOption {
	return func(c *fileConfig) error {
		if n < 0 || n > 100 {
			return errors.New("retries must be between 0 and 100")
		}
		c.retries = n
		return nil
	}
}

// FileMethods sets the transfer methods the device accepts, in order of
// preference (default protocol.MethodMQTT, then protocol.MethodURL). An
// offer with none of them fails with
// protocol.FileErrProtocolDisabled.
func FileMethods(methods ...string) FileOption {
	return func(c *fileConfig) error {
		if len(methods) == 0 {
			return errors.New("no transfer method")
		}
		for _, m := range methods {
			if m != protocol.MethodMQTT && m != protocol.MethodURL {
				return fmt.Errorf("unknown transfer method %q", m)
			}
		}
		c.methods = append([]string(nil), methods...)
		return nil
	}
}

// FileMaxSize refuses offers of files larger than n bytes (with
// protocol.FileErrUnsupportedSize); default protocol.MaxFileSize.
func FileMaxSize(n int64) FileOption {
	return func(c *fileConfig) error {
		if n < 0 || n > protocol.MaxFileSize {
			return fmt.Errorf("max size must be between 0 and %d", int64(protocol.MaxFileSize))
		}
		c.maxSize = n
		return nil
	}
}

// FileRate caps a transfer over MQTT at bytes per second (0: no cap); the
// platform paces its chunks to it.
func FileRate(bytesPerSecond int64) FileOption {
	return func(c *fileConfig) error {
		if bytesPerSecond < 0 {
			return errors.New("rate must not be negative")
		}
		c.rate = bytesPerSecond
		return nil
	}
}

// FileTimeout sets how long a transfer waits for the next chunk, or for a
// download URL, before it asks again (default 30s).
func FileTimeout(d time.Duration) FileOption {
	return func(c *fileConfig) error {
		if d < 10*time.Millisecond || d > time.Hour {
			return errors.New("timeout must be between 10ms and 1h")
		}
		c.timeout = d
		return nil
	}
}

// FileDownloader replaces the HTTP(S) downloader used for URL transfers
// (WolkConnect's url_downloader).
func FileDownloader(d Downloader) FileOption {
	return func(c *fileConfig) error {
		if d == nil {
			return errors.New("nil downloader")
		}
		c.downloader = d
		return nil
	}
}

// FileHandler is called when a transfer ends: the file is ready, failed
// or was aborted. It runs on a goroutine of its own.
func FileHandler(fn func(ctx context.Context, e FileEvent)) FileOption {
	return func(c *fileConfig) error {
		c.handler = fn
		return nil
	}
}

// fileMgr runs file management for a client.
type fileMgr struct {
	c      *Client
	cfg    fileConfig
	state  string // DIR/.outpost
	unlock func()

	mu        sync.Mutex
	transfers map[string]*transfer
	recent    *recentIDs // finished transfers and commands, so a redelivery is not acted on twice
	sums      map[string]fileSum
	listKick  chan struct{}
	grants    map[string]chan protocol.URLGrant
}

type fileSum struct {
	size int64
	mod  time.Time
	sha  string
}

// transfer is one transfer in progress on the device.
type transfer struct {
	m      *fileMgr
	offer  protocol.FileOffer
	method string
	size   int   // chunk size
	chunks int64 // chunk count
	part   *os.File
	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	// ready, when set, runs once the file is complete and checked
	// instead of moving it into place (firmware images).
	ready func(path string)

	// sum is the SHA-256 of the part file's first hashed bytes, kept
	// as data is appended, so the whole-file check needs no second read.
	sum    hash.Hash
	hashed int64

	mu        sync.Mutex
	next      int64 // next chunk expected
	prev      [sha256.Size]byte
	asked     int64 // chunks asked for: [next, asked) are on their way
	tries     int   // damaged copies of chunk next
	fail      *protocol.FileStatus
	lastChunk time.Time
}

type transferState struct {
	Offer     protocol.FileOffer `json:"offer"`
	Method    string             `json:"method"`
	ChunkSize int                `json:"chunk_size"`
}

// initFiles opens the file directory and the transfers an earlier process
// left in progress. It is called by New.
func (c *Client) initFiles() error {
	fc := c.opt.files
	if fc == nil {
		return nil
	}
	cfg := *fc
	if c.opt.lowResource {
		if !cfg.set["chunk"] {
			cfg.chunkSize = 4 << 10
		}
		if !cfg.set["window"] {
			cfg.window = 1
		}
	}
	if cfg.window == 0 {
		cfg.window = max(2, min(protocol.MaxChunksPerRequest, (128<<10)/cfg.chunkSize))
	}
	cfg.window = min(cfg.window, protocol.MaxRequestBytes/cfg.chunkSize)
	if cfg.downloader == nil {
		cfg.downloader = httpDownloader(c.opt.tls)
	}
	m := &fileMgr{c: c, cfg: cfg, state: filepath.Join(cfg.dir, ".outpost"), transfers: map[string]*transfer{},
		recent: newRecentIDs(1024), sums: map[string]fileSum{}, listKick: make(chan struct{}, 1), grants: map[string]chan protocol.URLGrant{}}
	if err := os.MkdirAll(m.state, 0o700); err != nil {
		return fmt.Errorf("files: %w", err)
	}
	unlock, err := lockDir(filepath.Join(m.state, "lock"))
	if err != nil {
		return fmt.Errorf("files: directory %s is in use by another client: %w", cfg.dir, err)
	}
	m.unlock = unlock
	c.files = m
	entries, _ := os.ReadDir(m.state)
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "t-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		if err := m.resume(strings.TrimSuffix(name, ".json")); err != nil {
			c.opt.log.Warn("drop a transfer that cannot resume", "device_id", c.id, "state", name, "error", err)
			m.removeState(strings.TrimSuffix(name, ".json"))
		}
	}
	return nil
}

func (m *fileMgr) close() {
	if m == nil {
		return
	}
	m.mu.Lock()
	for _, t := range m.transfers {
		t.cancel()
	}
	m.mu.Unlock()
	if m.unlock != nil {
		m.unlock()
	}
}

func (m *fileMgr) statePath(base string) string { return filepath.Join(m.state, base) }

func (m *fileMgr) removeState(base string) {
	os.Remove(m.statePath(base + ".json"))
	os.Remove(m.statePath(base + ".part"))
}

// resume reopens a transfer from its state files: the part file holds the
// chunks received, in order; a chunk cut short by a crash is dropped.
func (m *fileMgr) resume(base string) error {
	b, err := os.ReadFile(m.statePath(base + ".json"))
	if err != nil {
		return err
	}
	var st transferState
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	if err := protocol.ValidateOffer(st.Offer); err != nil || "t-"+st.Offer.ID != base {
		return fmt.Errorf("bad state: %v", err)
	}
	t, err := m.newTransfer(st.Offer, st.Method, st.ChunkSize)
	if err != nil {
		return err
	}
	if st.Method == protocol.MethodMQTT {
		fi, err := t.part.Stat()
		if err != nil {
			return err
		}
		t.next = min(fi.Size()/int64(t.size), t.chunks)
		if err := t.part.Truncate(t.next * int64(t.size)); err != nil {
			return err
		}
		if t.next > 0 {
			buf := make([]byte, t.size)
			if _, err := t.part.ReadAt(buf, (t.next-1)*int64(t.size)); err != nil {
				return err
			}
			t.prev = sha256.Sum256(buf)
		}
		t.asked = t.next
	}
	if err := t.rehash(); err != nil {
		return err
	}
	m.c.opt.log.Info("resuming transfer", "device_id", m.c.id, "transfer_id", st.Offer.ID, "name", st.Offer.Name,
		"method", st.Method, "chunk", t.next, "of", t.chunks)
	m.start(t)
	return nil
}

// newTransfer prepares a transfer and opens its part file (created if
// needed).
func (m *fileMgr) newTransfer(o protocol.FileOffer, method string, size int) (*transfer, error) {
	f, err := os.OpenFile(m.statePath("t-"+o.ID+".part"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	t := &transfer{m: m, offer: o, method: method, size: size, part: f, kick: make(chan struct{}, 1), sum: sha256.New()}
	if method == protocol.MethodMQTT {
		if size < protocol.MinChunkSize || size > protocol.MaxChunkSize {
			f.Close()
			return nil, fmt.Errorf("chunk size %d out of range", size)
		}
		t.chunks = protocol.ChunkCount(o.Size, size)
	}
	t.ctx, t.cancel = context.WithCancel(m.c.lifetime)
	return t, nil
}

// start registers a transfer and runs it.
func (m *fileMgr) start(t *transfer) {
	m.mu.Lock()
	m.transfers[t.offer.ID] = t
	m.mu.Unlock()
	m.c.wg.Add(1)
	go t.run()
}

// onFilesPublish dispatches the file management and firmware kinds of
// down messages. It reports false for a kind it does not know.
func (c *Client) onFilesPublish(kind string, payload []byte) bool {
	if !protocol.FilesKind(kind) {
		return false
	}
	if c.files == nil {
		c.opt.log.Debug("file management is off; ignoring", "device_id", c.id, "kind", kind)
		return true
	}
	m := c.files
	if id, idx, ok := protocol.ParseChunkKind(kind); ok {
		m.onChunk(id, idx, payload)
		return true
	}
	switch kind {
	case protocol.KindFileOffer:
		o, err := protocol.DecodeFileOffer(payload)
		if err != nil {
			m.badOffer(payload, err)
			return true
		}
		m.offered(o, nil)
	case protocol.KindFileURL:
		g, err := protocol.DecodeURLGrant(payload)
		if err != nil {
			c.opt.log.Warn("bad url grant", "device_id", c.id, "error", err)
			return true
		}
		m.mu.Lock()
		ch := m.grants[g.Transfer]
		m.mu.Unlock()
		if ch != nil {
			select {
			case ch <- g:
			default:
			}
		}
	case protocol.KindFileAbort:
		a, err := protocol.DecodeFileAbort(payload)
		if err != nil {
			return true
		}
		m.mu.Lock()
		t := m.transfers[a.Transfer]
		m.mu.Unlock()
		if t != nil {
			t.abort("aborted by the platform: "+a.Reason, false)
		}
	case protocol.KindFileDelete:
		d, err := protocol.DecodeFileDelete(payload)
		if err != nil {
			c.opt.log.Warn("refused file delete command", "device_id", c.id, "error", err)
			return true
		}
		if m.recent.add("cmd:" + d.ID) {
			m.remove(d.Names)
		}
	case protocol.KindFilePurge:
		p, err := protocol.DecodeFilePurge(payload)
		if err != nil {
			return true
		}
		if m.recent.add("cmd:" + p.ID) {
			m.purge()
		}
	default:
		c.onFirmwarePublish(kind, payload)
	}
	return true
}

// badOffer reports an offer it cannot take, when it can tell which.
func (m *fileMgr) badOffer(payload []byte, err error) {
	var o struct {
		ID   string `json:"id"`
		Size int64  `json:"size"`
	}
	m.c.opt.log.Warn("refused file offer", "device_id", m.c.id, "error", err)
	if json.Unmarshal(payload, &o) != nil || protocol.ValidTransferID(o.ID) != nil {
		return
	}
	kind := protocol.FileErrUnspecified
	if o.Size > protocol.MaxFileSize {
		kind = protocol.FileErrUnsupportedSize
	}
	m.report(protocol.FileStatus{Transfer: o.ID, State: protocol.FileError, Error: kind, Message: err.Error()})
}

// report publishes a transfer status in the background.
func (m *fileMgr) report(st protocol.FileStatus) {
	m.c.wg.Add(1)
	go func() {
		defer m.c.wg.Done()
		ctx, cancel := context.WithTimeout(m.c.lifetime, time.Minute)
		defer cancel()
		if err := m.c.sendModel(ctx, protocol.KindFileStatus, st); err != nil {
			m.c.opt.log.Warn("report transfer status", "device_id", m.c.id, "transfer_id", st.Transfer, "error", err)
		}
	}()
}

// offered takes up an offer. ready, for a firmware image, replaces moving
// the file into place. It returns false when the offer is refused.
func (m *fileMgr) offered(o protocol.FileOffer, ready func(path string)) bool {
	m.mu.Lock()
	_, busy := m.transfers[o.ID]
	m.mu.Unlock()
	if busy {
		return true // a redelivered offer: already on it
	}
	if !m.recent.add("t:" + o.ID) {
		return true // over already
	}
	fail := func(kind, msg string) bool {
		m.c.opt.log.Warn("refused file offer", "device_id", m.c.id, "transfer_id", o.ID, "name", o.Name, "error", kind, "message", msg)
		m.report(protocol.FileStatus{Transfer: o.ID, State: protocol.FileError, Error: kind, Message: msg})
		m.event(FileEvent{Transfer: o.ID, Name: o.Name, State: protocol.FileError, Error: kind, Message: msg, Size: o.Size})
		return false
	}
	if o.Size > m.cfg.maxSize {
		return fail(protocol.FileErrUnsupportedSize, fmt.Sprintf("%d bytes exceed the device's limit of %d", o.Size, m.cfg.maxSize))
	}
	method := ""
	for _, want := range m.cfg.methods {
		for _, have := range o.Methods {
			if want == have && method == "" {
				method = want
			}
		}
	}
	if method == "" {
		return fail(protocol.FileErrProtocolDisabled, fmt.Sprintf("the device accepts %v, the platform offers %v", m.cfg.methods, o.Methods))
	}
	if method == protocol.MethodMQTT && o.URL != "" {
		return fail(protocol.FileErrProtocolDisabled, "an external file comes by URL only")
	}
	if o.URL != "" {
		if u, err := url.Parse(o.URL); err != nil || u.Host == "" || u.Scheme == "" {
			return fail(protocol.FileErrMalformedURL, fmt.Sprintf("cannot use URL %q", o.URL))
		}
	}
	size := 0
	if method == protocol.MethodMQTT {
		size = m.cfg.chunkSize
	}
	st, _ := json.Marshal(transferState{Offer: o, Method: method, ChunkSize: size})
	if err := writeFileSync(m.statePath("t-"+o.ID+".json"), st); err != nil {
		return fail(protocol.FileErrFileSystem, err.Error())
	}
	t, err := m.newTransfer(o, method, size)
	if err != nil {
		m.removeState("t-" + o.ID)
		return fail(protocol.FileErrFileSystem, err.Error())
	}
	if err := t.part.Truncate(0); err != nil {
		t.part.Close()
		m.removeState("t-" + o.ID)
		return fail(protocol.FileErrFileSystem, err.Error())
	}
	t.ready = ready
	m.c.opt.log.Info("file transfer starting", "device_id", m.c.id, "transfer_id", o.ID, "name", o.Name, "size", o.Size, "method", method, "chunk_size", size)
	m.start(t)
	return true
}

// setReady attaches the firmware continuation to a transfer resumed at
// start.
func (m *fileMgr) setReady(id string, ready func(path string)) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.transfers[id]
	if t == nil {
		return false
	}
	t.mu.Lock()
	t.ready = ready
	t.mu.Unlock()
	return true
}

// onChunk takes a chunk: if it is the next one and intact, it is appended
// to the part file; a damaged one is asked for again, up to the retry
// limit. It runs on the client's receive goroutine, so the chunk is on
// disk before it is acknowledged.
func (m *fileMgr) onChunk(id string, idx int64, payload []byte) {
	m.mu.Lock()
	t := m.transfers[id]
	m.mu.Unlock()
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fail != nil || t.method != protocol.MethodMQTT || idx != t.next {
		return // a duplicate, or one asked for before a chunk went bad
	}
	data, sum, err := protocol.DecodeChunk(t.prev, payload)
	if err == nil {
		want := int64(t.size)
		if idx == t.chunks-1 {
			want = t.offer.Size - idx*int64(t.size)
		}
		if int64(len(data)) != want {
			err = fmt.Errorf("%w: chunk %d has %d bytes, want %d", protocol.ErrBadChunk, idx, len(data), want)
		}
	}
	if err != nil {
		t.tries++
		m.c.opt.log.Warn("damaged chunk", "device_id", m.c.id, "transfer_id", id, "index", idx, "try", t.tries, "error", err)
		if t.tries > m.cfg.retries {
			t.fail = &protocol.FileStatus{Transfer: id, State: protocol.FileError, Error: protocol.FileErrRetryExceeded,
				Message: fmt.Sprintf("chunk %d arrived damaged %d times", idx, t.tries)}
		} else {
			t.asked = t.next // ask again from here
		}
		t.poke()
		return
	}
	if _, err := t.part.WriteAt(data, idx*int64(t.size)); err != nil {
		t.fail = &protocol.FileStatus{Transfer: id, State: protocol.FileError, Error: protocol.FileErrFileSystem, Message: err.Error()}
		t.poke()
		return
	}
	t.next++
	t.prev, t.tries, t.lastChunk = sum, 0, time.Now()
	t.sum.Write(data)
	t.hashed += int64(len(data))
	if t.next == t.chunks || t.asked-t.next <= int64(m.cfg.window)/2 {
		t.poke()
	}
}

func (t *transfer) poke() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// abort ends a transfer: its state goes, and the platform is told when
// the device aborts on its own.
func (t *transfer) abort(msg string, tell bool) {
	t.mu.Lock()
	if t.fail == nil {
		t.fail = &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileAborted, Message: msg}
	}
	t.mu.Unlock()
	if !tell {
		t.mu.Lock()
		t.fail.Transfer = "" // nothing to report
		t.mu.Unlock()
	}
	t.cancel()
}

// AbortTransfer stops a transfer in progress on the device and tells the
// platform (ABORTED). It reports false when no such transfer runs.
func (c *Client) AbortTransfer(id string) bool {
	if c.files == nil {
		return false
	}
	c.files.mu.Lock()
	t := c.files.transfers[id]
	c.files.mu.Unlock()
	if t == nil {
		return false
	}
	t.abort("aborted by the device", true)
	return true
}

// Transfers returns the ids of the transfers in progress on the device.
func (c *Client) Transfers() []string {
	if c.files == nil {
		return nil
	}
	c.files.mu.Lock()
	defer c.files.mu.Unlock()
	var ids []string
	for id := range c.files.transfers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// run drives a transfer to its end.
func (t *transfer) run() {
	m := t.m
	defer m.c.wg.Done()
	var err error
	var st *protocol.FileStatus
	if t.method == protocol.MethodMQTT {
		st, err = t.runMQTT()
	} else {
		st, err = t.runURL()
	}
	if st == nil && err == nil {
		st = t.finish()
	}
	t.part.Close()
	m.mu.Lock()
	delete(m.transfers, t.offer.ID)
	m.mu.Unlock()
	if err != nil && st == nil {
		// Stopped by Close: the state stays for the next process.
		return
	}
	if st.State != protocol.FileReady {
		m.removeState("t-" + t.offer.ID)
	}
	ev := FileEvent{Transfer: t.offer.ID, Name: t.offer.Name, State: st.State, Error: st.Error, Message: st.Message, Size: t.offer.Size}
	if st.State == protocol.FileReady {
		ev.Path = filepath.Join(m.cfg.dir, t.offer.Name)
		if t.ready != nil {
			ev.Path = m.statePath("t-" + t.offer.ID + ".part")
		}
	}
	m.c.opt.log.Info("file transfer ended", "device_id", m.c.id, "transfer_id", t.offer.ID, "name", t.offer.Name, "state", st.State, "error", st.Error, "message", st.Message)
	if st.Transfer != "" {
		st.Transfer = t.offer.ID
		ctx, cancel := context.WithTimeout(m.c.lifetime, time.Minute)
		if err := m.c.sendModel(ctx, protocol.KindFileStatus, st); err != nil {
			m.c.opt.log.Warn("report transfer status", "device_id", m.c.id, "transfer_id", t.offer.ID, "error", err)
		}
		cancel()
	}
	if st.State == protocol.FileReady {
		if t.ready != nil {
			t.ready(ev.Path)
			return
		}
		m.listChanged()
	}
	m.event(ev)
}

// event hands a transfer's end to the FileHandler.
func (m *fileMgr) event(e FileEvent) {
	if m.cfg.handler == nil {
		return
	}
	m.c.wg.Add(1)
	go func() {
		defer m.c.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				m.c.opt.log.Error("file handler panicked", "device_id", m.c.id, "panic", r)
			}
		}()
		m.cfg.handler(m.c.lifetime, e)
	}()
}

// failed returns the transfer's failure, if any.
func (t *transfer) failed() *protocol.FileStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fail == nil {
		return nil
	}
	f := *t.fail
	return &f
}

// waitLink waits for a ready connection while the transfer lasts.
func (t *transfer) waitLink() (*link, error) {
	c := t.m.c
	for {
		l, err := c.waitReady(t.ctx)
		if err == nil {
			return l, nil
		}
		if t.ctx.Err() != nil {
			return nil, t.ctx.Err()
		}
		if c.Err() != nil {
			return nil, c.Err()
		}
		// Not connecting at all (yet): wait for a change.
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-t.ctx.Done():
			return nil, t.ctx.Err()
		}
	}
}

// publishOn publishes once on link l and waits for the PUBACK. It fails
// when the link goes down first.
func (c *Client) publishOn(ctx context.Context, l *link, kind string, payload []byte) error {
	pctx, cancel := onLink(ctx, l)
	defer cancel()
	resp, err := l.cm.Publish(pctx, &paho.Publish{Topic: protocol.UpTopic(c.id, kind), QoS: 1, Payload: payload})
	if err != nil && resp != nil && refusedForGood(resp.ReasonCode) {
		return &PublishError{Kind: kind, ReasonCode: resp.ReasonCode}
	}
	return err
}

// runMQTT asks for chunks, a window at a time, until the last one is in.
// It returns the final status when the transfer failed or was aborted.
func (t *transfer) runMQTT() (*protocol.FileStatus, error) {
	m := t.m
	c := m.c
	announced := (*link)(nil)
	var asked *link // link the outstanding requests went on
	for {
		ch := c.changedCh() // taken first: a change from now on wakes the wait below
		if st := t.failed(); st != nil {
			return st, nil
		}
		t.mu.Lock()
		done := t.next >= t.chunks
		t.mu.Unlock()
		if done {
			return nil, nil
		}
		l, err := t.waitLink()
		if err != nil {
			if st := t.failed(); st != nil {
				return st, nil
			}
			return nil, err
		}
		if announced != l {
			t.mu.Lock()
			b := t.next * int64(t.size)
			t.mu.Unlock()
			st, _ := json.Marshal(protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileTransfer, Method: protocol.MethodMQTT, ChunkSize: t.size, Bytes: b})
			if err := c.publishOn(t.ctx, l, protocol.KindFileStatus, st); err != nil {
				continue
			}
			announced = l
		}
		t.mu.Lock()
		if asked != l {
			t.asked = t.next // what was asked on an older connection is lost
		}
		var req *protocol.ChunkRequest
		room := t.next + int64(m.cfg.window) - t.asked
		if t.asked < t.chunks && (t.asked == t.next || room >= max(1, int64(m.cfg.window)/2)) {
			n := min(room, t.chunks-t.asked, protocol.MaxChunksPerRequest, int64(protocol.MaxRequestBytes/t.size))
			req = &protocol.ChunkRequest{Transfer: t.offer.ID, Index: t.asked, Count: int(n), Size: t.size, Rate: m.cfg.rate}
			t.asked += n
			asked = l
		}
		progress := t.next
		t.mu.Unlock()
		if req != nil {
			b, _ := json.Marshal(req)
			if err := c.publishOn(t.ctx, l, protocol.KindFileRequest, b); err != nil {
				var pe *PublishError
				if errors.As(err, &pe) {
					return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileError, Error: protocol.FileErrUnspecified, Message: err.Error()}, nil
				}
				t.mu.Lock()
				t.asked = t.next
				t.mu.Unlock()
				continue
			}
		}
		timer := time.NewTimer(m.cfg.timeout)
		select {
		case <-t.kick:
		case <-ch:
		case <-timer.C:
			t.mu.Lock()
			if t.next == progress {
				// Nothing came: whatever was asked for is lost.
				c.opt.log.Debug("no chunk in time; asking again", "device_id", c.id, "transfer_id", t.offer.ID, "index", t.next)
				t.asked = t.next
			}
			t.mu.Unlock()
		case <-t.ctx.Done():
		}
		timer.Stop()
	}
}

// changedCh returns the channel closed at the next change of the
// connection state.
func (c *Client) changedCh() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// runURL downloads the file, resuming from what the part file holds.
func (t *transfer) runURL() (*protocol.FileStatus, error) {
	m := t.m
	c := m.c
	grants := make(chan protocol.URLGrant, 1)
	m.mu.Lock()
	m.grants[t.offer.ID] = grants
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.grants, t.offer.ID)
		m.mu.Unlock()
	}()
	failures := 0
	var grant protocol.URLGrant
	for {
		if st := t.failed(); st != nil {
			return st, nil
		}
		l, err := t.waitLink()
		if err != nil {
			if st := t.failed(); st != nil {
				return st, nil
			}
			return nil, err
		}
		if t.offer.URL != "" {
			grant = protocol.URLGrant{Transfer: t.offer.ID, URL: t.offer.URL}
			st, _ := json.Marshal(protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileTransfer, Method: protocol.MethodURL})
			if err := c.publishOn(t.ctx, l, protocol.KindFileStatus, st); err != nil {
				continue
			}
		} else if grant.URL == "" || (grant.Expires > 0 && time.Now().UnixMilli() > grant.Expires-1000) {
			b, _ := json.Marshal(protocol.URLRequest{Transfer: t.offer.ID})
			if err := c.publishOn(t.ctx, l, protocol.KindFileURL, b); err != nil {
				continue
			}
			timer := time.NewTimer(m.cfg.timeout)
			select {
			case grant = <-grants:
			case <-timer.C:
			case <-t.ctx.Done():
			}
			timer.Stop()
			if grant.URL == "" {
				continue
			}
		}
		fi, err := t.part.Stat()
		if err != nil {
			return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileError, Error: protocol.FileErrFileSystem, Message: err.Error()}, nil
		}
		off := fi.Size()
		if t.offer.Size > 0 && off >= t.offer.Size {
			return nil, nil
		}
		if off > 0 {
			c.opt.log.Info("resuming download", "device_id", c.id, "transfer_id", t.offer.ID, "offset", off)
		}
		if off != t.hashed {
			if err := t.rehash(); err != nil {
				return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileError, Error: protocol.FileErrFileSystem, Message: err.Error()}, nil
			}
		}
		err = m.cfg.downloader(t.ctx, grant.URL, off, &appendWriter{t: t, off: off})
		if err == nil {
			return nil, nil
		}
		if t.ctx.Err() != nil {
			continue // aborted or closed: the loop's first check decides
		}
		var de *DownloadError
		switch {
		case errors.As(err, &de) && (de.Status == http.StatusUnauthorized || de.Status == http.StatusForbidden):
			grant = protocol.URLGrant{} // expired: ask for a new URL
		case errors.As(err, &de) && (de.Status == http.StatusNotFound || de.Status == http.StatusConflict || de.Status == http.StatusGone):
			return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileError, Error: protocol.FileErrUnspecified, Message: err.Error()}, nil
		default:
			failures++
			if t.offer.URL != "" && failures > m.cfg.retries {
				return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileError, Error: protocol.FileErrRetryExceeded, Message: err.Error()}, nil
			}
			c.opt.log.Warn("download failed; retrying", "device_id", c.id, "transfer_id", t.offer.ID, "error", err)
			timer := time.NewTimer(min(time.Duration(failures)*500*time.Millisecond, 10*time.Second))
			select {
			case <-timer.C:
			case <-t.ctx.Done():
			}
			timer.Stop()
		}
	}
}

// appendWriter writes at increasing offsets of a file.
type appendWriter struct {
	t   *transfer
	off int64
}

func (w *appendWriter) Write(p []byte) (int, error) {
	n, err := w.t.part.WriteAt(p, w.off)
	w.off += int64(n)
	w.t.sum.Write(p[:n])
	w.t.hashed += int64(n)
	return n, err
}

// rehash computes the running hash of what the part file holds.
func (t *transfer) rehash() error {
	if _, err := t.part.Seek(0, io.SeekStart); err != nil {
		return err
	}
	t.sum = sha256.New()
	n, err := io.Copy(t.sum, t.part)
	t.hashed = n
	return err
}

// finish checks the complete file and moves it into place.
func (t *transfer) finish() *protocol.FileStatus {
	m := t.m
	fail := func(kind, msg string) *protocol.FileStatus {
		return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileError, Error: kind, Message: msg}
	}
	if err := t.part.Sync(); err != nil {
		return fail(protocol.FileErrFileSystem, err.Error())
	}
	fi, err := t.part.Stat()
	if err != nil {
		return fail(protocol.FileErrFileSystem, err.Error())
	}
	if fi.Size() != t.hashed {
		// Not all of it went through the running hash: read it back.
		if err := t.rehash(); err != nil {
			return fail(protocol.FileErrFileSystem, err.Error())
		}
	}
	n := t.hashed
	sum := hex.EncodeToString(t.sum.Sum(nil))
	if (t.offer.Size > 0 && n != t.offer.Size) || (t.offer.SHA256 != "" && sum != t.offer.SHA256) {
		return fail(protocol.FileErrHashMismatch, fmt.Sprintf("the file has %d bytes and SHA-256 %s, the offer says %d and %s", n, sum, t.offer.Size, t.offer.SHA256))
	}
	if t.ready == nil {
		dst := filepath.Join(m.cfg.dir, t.offer.Name)
		if err := os.Rename(t.part.Name(), dst); err != nil {
			return fail(protocol.FileErrFileSystem, err.Error())
		}
		syncDir(m.cfg.dir)
		os.Remove(m.statePath("t-" + t.offer.ID + ".json"))
	}
	return &protocol.FileStatus{Transfer: t.offer.ID, State: protocol.FileReady, Bytes: n}
}

// remove deletes files by name (names are checked: none leaves the
// directory) and reports the list.
func (m *fileMgr) remove(names []string) {
	for _, n := range names {
		if protocol.ValidFileName(n) != nil {
			continue
		}
		if err := os.Remove(filepath.Join(m.cfg.dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.c.opt.log.Warn("delete file", "device_id", m.c.id, "name", n, "error", err)
		}
	}
	m.listChanged()
}

// purge deletes every file of the directory (not the SDK's state).
func (m *fileMgr) purge() {
	entries, _ := os.ReadDir(m.cfg.dir)
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	m.remove(names)
}

// DeleteFile deletes a file from the device's file directory and reports
// the new list.
func (c *Client) DeleteFile(name string) error {
	if c.files == nil {
		return errors.New("device: file management is off (WithFiles)")
	}
	if err := protocol.ValidFileName(name); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if err := os.Remove(filepath.Join(c.files.cfg.dir, name)); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	c.files.listChanged()
	return nil
}

// Files lists the files in the device's file directory.
func (c *Client) Files() ([]FileInfo, error) {
	if c.files == nil {
		return nil, errors.New("device: file management is off (WithFiles)")
	}
	return c.files.list()
}

// FilePath returns where a file of the device's file directory is.
func (c *Client) FilePath(name string) (string, error) {
	if c.files == nil {
		return "", errors.New("device: file management is off (WithFiles)")
	}
	if err := protocol.ValidFileName(name); err != nil {
		return "", fmt.Errorf("device: %w", err)
	}
	return filepath.Join(c.files.cfg.dir, name), nil
}

// list returns the directory's files with their hashes (cached while a
// file's size and modification time stay the same).
func (m *fileMgr) list() ([]FileInfo, error) {
	entries, err := os.ReadDir(m.cfg.dir)
	if err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	out := []FileInfo{}
	seen := map[string]bool{}
	for _, e := range entries {
		if !e.Type().IsRegular() || protocol.ValidFileName(e.Name()) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		name := e.Name()
		seen[name] = true
		m.mu.Lock()
		s, ok := m.sums[name]
		m.mu.Unlock()
		if !ok || s.size != fi.Size() || !s.mod.Equal(fi.ModTime()) {
			sum, err := hashFile(filepath.Join(m.cfg.dir, name))
			if err != nil {
				continue
			}
			s = fileSum{size: fi.Size(), mod: fi.ModTime(), sha: sum}
			m.mu.Lock()
			m.sums[name] = s
			m.mu.Unlock()
		}
		out = append(out, FileInfo{Name: name, Size: s.size, SHA256: s.sha})
		if len(out) == protocol.MaxFilesInList {
			break
		}
	}
	m.mu.Lock()
	for n := range m.sums {
		if !seen[n] {
			delete(m.sums, n)
		}
	}
	m.mu.Unlock()
	return out, nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// listChanged reports the file list in the background (coalesced).
func (m *fileMgr) listChanged() {
	select {
	case m.listKick <- struct{}{}:
	default:
		return // a report is coming
	}
	m.c.wg.Add(1)
	go func() {
		defer m.c.wg.Done()
		<-m.listKick
		ctx, cancel := context.WithTimeout(m.c.lifetime, time.Minute)
		defer cancel()
		if err := m.sendList(ctx); err != nil {
			m.c.opt.log.Warn("report file list", "device_id", m.c.id, "error", err)
		}
	}()
}

func (m *fileMgr) sendList(ctx context.Context) error {
	files, err := m.list()
	if err != nil {
		return err
	}
	return m.c.sendModel(ctx, protocol.KindFileList, protocol.FileList{Files: files,
		Accept: &protocol.FileAccept{Methods: m.cfg.methods, ChunkSize: m.cfg.chunkSize, MaxSize: m.cfg.maxSize}})
}

// filesConnected runs after every connection is ready: the file list and
// the firmware version go up; transfers notice the new connection by
// themselves.
func (c *Client) filesConnected() {
	if c.files == nil {
		return
	}
	c.files.listChanged()
	c.firmwareConnected()
}

// httpDownloader is the default Downloader: HTTP(S) GET with a Range
// request from offset on.
func httpDownloader(tc *tls.Config) Downloader {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if tc != nil {
		tr.TLSClientConfig = tc.Clone()
	}
	hc := &http.Client{Transport: tr}
	return func(ctx context.Context, u string, offset int64, w io.Writer) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		if offset > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
			return nil // nothing left
		case resp.StatusCode == http.StatusOK && offset > 0:
			// The server ignored the range: skip what we have.
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				return err
			}
		case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent:
			return &DownloadError{Status: resp.StatusCode}
		}
		_, err = io.Copy(w, resp.Body)
		return err
	}
}

// writeFileSync writes a small file atomically and durably.
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
