package server

import "net"

// SetDefaultAddrs points the default listen addresses at the given ones
// for a test and returns the function that restores them. Tests that use
// it must not run in parallel.
func SetDefaultAddrs(mqtt, mqtts, http string) (restore func()) {
	m, ms, h := defaultMQTTAddr, defaultMQTTTLSAddr, defaultHTTPAddr
	defaultMQTTAddr, defaultMQTTTLSAddr, defaultHTTPAddr = mqtt, mqtts, http
	return func() { defaultMQTTAddr, defaultMQTTTLSAddr, defaultHTTPAddr = m, ms, h }
}

// ReachableFromOutside exposes the check behind the plain-text warning.
func ReachableFromOutside(a net.Addr) bool { return reachableFromOutside(a) }
