package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "outpost test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLSEverywhere(t *testing.T) {
	certDir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, certDir)
	p := outposttest.Start(t, func(c *server.Config) {
		c.TLSCertFile, c.TLSKeyFile, c.MQTTTLSAddr = certFile, keyFile, "127.0.0.1:0"
	})
	if !strings.HasPrefix(p.HTTPURL(), "https://") || !strings.HasPrefix(p.MQTTSURL(), "ssl://") {
		t.Fatalf("endpoints %s %s, want https and ssl", p.HTTPURL(), p.MQTTSURL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	f, err := fleet.Dial(ctx, p.HTTPURL(), p.AdminToken(), fleet.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := f.CreateDevice(ctx, "secure")
	if err != nil {
		t.Fatal(err)
	}
	url := "mqtts://" + d.ID + ":" + d.Password + "@" + strings.TrimPrefix(p.MQTTSURL(), "ssl://")

	// Without the CA the handshake fails and Connect gives up at the
	// deadline; with it the device connects.
	untrusted, _ := device.New(url, device.WithConnectTimeout(time.Second))
	short, cancelShort := context.WithTimeout(ctx, 1500*time.Millisecond)
	if err := untrusted.Connect(short); err == nil {
		t.Fatal("connected to a self-signed platform without trusting its CA")
	}
	cancelShort()
	untrusted.Close() // a failed Connect leaves the client (and its outbox) open

	c := connect(t, url, device.WithCAFile(certFile))
	c.Handle("ping", func(context.Context, json.RawMessage) (any, error) { return "pong", nil })
	c.Add("t", 1)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	rs, err := f.Telemetry(ctx, d.ID, fleet.TelemetryQuery{Feed: "t"})
	if err != nil || len(rs) != 1 {
		t.Fatalf("telemetry over TLS: %v %v", rs, err)
	}
	res, err := f.Call(ctx, d.ID, "ping", nil)
	if err != nil || string(res) != `"pong"` {
		t.Fatalf("rpc over TLS: %s %v", res, err)
	}
	// Over TLS the API asks browsers to stay on HTTPS (issue 12, item 15).
	resp, err := hc.Get(p.HTTPURL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := resp.Header.Get("Strict-Transport-Security"); !strings.HasPrefix(h, "max-age=") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("security headers over TLS: HSTS %q, nosniff %q", h, resp.Header.Get("X-Content-Type-Options"))
	}
}
