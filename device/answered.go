package device

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// answeredLog keeps the ids of the RPC requests and feed commands the
// device has started to execute in a file next to its durable outbox, so a request redelivered
// after the device process restarted is still not executed twice (at most
// once: the id is written before the handler runs). It holds the last
// answeredKeep ids; the file is rewritten when it grows past twice that.
type answeredLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
	ids  []string // the file's lines, oldest first
}

const answeredKeep = 4096

// commandPrefix marks the ids of feed commands in the log (RPC request ids
// are stored bare).
const commandPrefix = "feed:"

// openAnsweredLog loads dir/answered into seen (RPC request ids) and
// commands (feed command ids) and opens it for appending.
func openAnsweredLog(dir string, seen, commands *recentIDs) (*answeredLog, error) {
	path := filepath.Join(dir, "answered")
	l := &answeredLog{path: path}
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if id := sc.Text(); id != "" && len(id) <= 64+len(commandPrefix) {
				l.ids = append(l.ids, id)
			}
		}
		f.Close()
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("answered requests: %w", err)
	}
	if len(l.ids) > answeredKeep {
		l.ids = l.ids[len(l.ids)-answeredKeep:]
	}
	for _, id := range l.ids {
		if cmd, ok := strings.CutPrefix(id, commandPrefix); ok {
			commands.add(cmd)
		} else {
			seen.add(id)
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("answered requests: %w", err)
	}
	l.f = f
	return l, nil
}

// add records id; a torn last line after a crash is skipped on load.
func (l *answeredLog) add(id string) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	l.ids = append(l.ids, id)
	if len(l.ids) > 2*answeredKeep {
		return l.rewrite()
	}
	_, err := l.f.WriteString(id + "\n")
	return err
}

// rewrite replaces the file with the last answeredKeep ids.
func (l *answeredLog) rewrite() error {
	l.ids = append([]string(nil), l.ids[len(l.ids)-answeredKeep:]...)
	tmp := l.path + ".tmp"
	var b []byte
	for _, id := range l.ids {
		b = append(b, id...)
		b = append(b, '\n')
	}
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return err
	}
	l.f.Close()
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND, 0o600)
	l.f = f
	return err
}

func (l *answeredLog) close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("answered requests: %w", err)
	}
	return nil
}
