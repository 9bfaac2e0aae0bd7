package server

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Files in the data directory besides the database.
const (
	// TokenFile holds the admin token.
	TokenFile = "admin-token"
	// tokenShownFile records that serve has printed the admin token once.
	tokenShownFile = "admin-token.shown"
	// RunningFile holds the addresses of the platform running on the data
	// directory (see Running); it is removed when the platform stops.
	RunningFile = "running.json"
	// lockFile is held locked while a platform runs on the directory.
	lockFile = "lock"
)

// Running is the content of RunningFile: where the platform that uses a
// data directory listens, so that the CLI on the same machine finds it
// whatever addresses it was started with.
type Running struct {
	PID   int    `json:"pid"`
	MQTT  string `json:"mqtt"`            // tcp://HOST:PORT
	MQTTS string `json:"mqtts,omitempty"` // ssl://HOST:PORT, when TLS is on
	HTTP  string `json:"http"`            // http(s)://HOST:PORT
}

// ReadRunning reads RunningFile from a data directory. It returns an error
// matching os.ErrNotExist when no platform has written one. The file can
// outlive a platform that was killed; a client that cannot reach the
// address should say where it read it.
func ReadRunning(dataDir string) (*Running, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, RunningFile))
	if err != nil {
		return nil, err
	}
	var r Running
	if err := json.Unmarshal(b, &r); err != nil || r.HTTP == "" {
		return nil, fmt.Errorf("%s: not a running-platform file", filepath.Join(dataDir, RunningFile))
	}
	return &r, nil
}

// writeRunning writes RunningFile atomically.
func (s *Server) writeRunning() error {
	r := Running{PID: os.Getpid(), MQTT: s.MQTTURL(), MQTTS: s.MQTTSURL(), HTTP: s.HTTPURL()}
	b, _ := json.MarshalIndent(r, "", "  ")
	path := filepath.Join(s.cfg.DataDir, RunningFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", RunningFile, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", RunningFile, err)
	}
	s.wroteRunning = true
	return nil
}

func (s *Server) removeRunning() {
	if s.wroteRunning {
		_ = os.Remove(filepath.Join(s.cfg.DataDir, RunningFile))
	}
}

// TokenPath returns the path of the file holding the admin token, or ""
// when the token was given in Config.AdminToken and is not stored.
func (s *Server) TokenPath() string {
	if s.cfg.AdminToken != "" {
		return ""
	}
	return filepath.Join(s.cfg.DataDir, TokenFile)
}

// TokenShown reports whether the stored admin token has been shown to the
// operator (see MarkTokenShown). A token created by a start that failed
// before it could print it has not: the next start shows it. A token given
// in Config.AdminToken counts as shown.
func (s *Server) TokenShown() bool {
	if s.cfg.AdminToken != "" {
		return true
	}
	_, err := os.Stat(filepath.Join(s.cfg.DataDir, tokenShownFile))
	return err == nil
}

// MarkTokenShown records that the admin token has been shown, so later
// starts print only where it is.
func (s *Server) MarkTokenShown() error {
	if s.cfg.AdminToken != "" {
		return nil
	}
	err := os.WriteFile(filepath.Join(s.cfg.DataDir, tokenShownFile), []byte("the admin token in "+TokenFile+" was printed by outpost serve\n"), 0o600)
	if err != nil {
		return fmt.Errorf("record that the admin token was shown: %w", err)
	}
	return nil
}
