package server

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Default listen addresses: loopback only, as Mosquitto 2 does without a
// listener configured. Listening elsewhere takes an explicit address. They
// are variables so that tests can point them at ports they hold.
var (
	defaultMQTTAddr    = "127.0.0.1:1883"
	defaultMQTTTLSAddr = "127.0.0.1:8883"
	defaultHTTPAddr    = "127.0.0.1:8080"
)

// fallbackTries is how many ports above a taken default port are tried
// before any free port is taken.
const fallbackTries = 10

// listen binds addr. When addr is "" it binds def instead and, if that port
// is taken (another MQTT broker on 1883 is common), the next free port
// above it, or else any free port: a first start should not fail on a
// default the user did not choose. moved reports that the listener is not
// on def. An address that was given is bound as is or fails.
func listen(addr, def string) (l net.Listener, moved bool, err error) {
	if addr != "" {
		l, err = net.Listen("tcp", addr)
		return l, false, err
	}
	l, err = net.Listen("tcp", def)
	if err == nil || !inUse(err) {
		return l, false, err
	}
	first := err
	host, portStr, _ := net.SplitHostPort(def)
	port, _ := strconv.Atoi(portStr)
	for i := 1; i <= fallbackTries && port > 0 && port+i <= 65535; i++ {
		if l, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port+i))); err == nil {
			return l, true, nil
		}
	}
	if l, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err == nil {
		return l, true, nil
	}
	return nil, false, first
}

// pickAddr is listen for a listener that another package binds (the MQTT
// broker): it finds the address and releases it at once, for the caller to
// bind it again.
func pickAddr(addr, def string) (string, bool, error) {
	if addr != "" {
		return addr, false, nil
	}
	l, moved, err := listen("", def)
	if err != nil {
		return "", false, err
	}
	a := l.Addr().String()
	l.Close()
	return a, moved, nil
}

func inUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// listenError explains a listener that could not be bound, naming the flag
// that sets its address.
func listenError(flag string, err error) error {
	if inUse(err) {
		return fmt.Errorf("%s: %v (another program listens there, often another MQTT broker such as Mosquitto on 1883; choose a free address with %s, e.g. %s 127.0.0.1:0 for any free port, or stop the other program)", flag, err, flag, flag)
	}
	return fmt.Errorf("%s: %w", flag, err)
}

// reachableFromOutside reports whether a bound address accepts connections
// from other machines: it is not on a loopback interface.
func reachableFromOutside(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return true
	}
	return !ta.IP.IsLoopback()
}

// Defaults of the HTTP server's bounds (Config).
const (
	defaultHTTPReadHeaderTimeout = 10 * time.Second
	defaultHTTPReadTimeout       = 15 * time.Second
	defaultHTTPWriteTimeout      = 60 * time.Second
	defaultHTTPIdleTimeout       = 60 * time.Second
	defaultHTTPMaxConns          = 1024
)
