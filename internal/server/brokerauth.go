package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/outpost-iot/outpost/internal/dynsec"
	"github.com/outpost-iot/outpost/internal/emqxauth"
	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/registry"
)

// The wiring of device authentication at an external broker: Mosquitto's
// dynamic security (the platform keeps the devices' logins there) or
// EMQX's HTTP hooks (the broker asks the platform).

// openDynsec connects to Mosquitto's dynamic security plugin as its admin
// and makes sure the platform's own login (the user and password of
// --broker) exists with the platform's role, before the link logs in.
func openDynsec(ctx context.Context, cfg Config, log *slog.Logger) (*dynsec.Client, error) {
	bu, err := extbroker.ParseURL(cfg.Broker)
	if err != nil {
		return nil, err
	}
	if bu.User == nil || bu.User.Username() == "" {
		return nil, errors.New("--broker needs the platform's USER:PASSWORD@ with --broker-admin (the platform creates that login)")
	}
	pass, _ := bu.User.Password()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := dynsec.Dial(dctx, cfg.BrokerAdmin, dynsec.WithLogger(log.With("component", "dynsec")))
	if err != nil {
		return nil, fmt.Errorf("--broker-admin: %w", err)
	}
	if err := c.EnsurePlatformClient(dctx, bu.User.Username(), pass); err != nil {
		c.Close()
		return nil, fmt.Errorf("--broker-admin: %w", err)
	}
	return c, nil
}

// dynsecAccounts keeps the devices' logins in Mosquitto's dynamic
// security (registry.Accounts).
type dynsecAccounts struct{ c *dynsec.Client }

var _ registry.Accounts = dynsecAccounts{}

func (a dynsecAccounts) CreateDevice(ctx context.Context, id, password string) error {
	return a.c.CreateDevice(ctx, id, password)
}

func (a dynsecAccounts) SetPassword(ctx context.Context, id, password string) error {
	return a.c.SetPassword(ctx, id, password)
}

// DeleteDevice deletes the login (Mosquitto ends its sessions); a login
// that is already gone is no error.
func (a dynsecAccounts) DeleteDevice(ctx context.Context, id string) error {
	if err := a.c.DeleteDevice(ctx, id); err != nil && !errors.Is(err, dynsec.ErrNotFound) {
		return err
	}
	return nil
}

// withEMQXAuth serves EMQX's HTTP authentication and authorization at
// /emqx/authn and /emqx/authz beside the API: devices are checked against
// the platform's credentials, the platform's own login (--broker's user)
// is a superuser.
func withEMQXAuth(api http.Handler, cfg Config, creds *registry.Credentials, log *slog.Logger) (http.Handler, error) {
	ec := emqxauth.Config{Devices: creds, Secret: cfg.EMQXAuthSecret, Logger: log.With("component", "emqx-auth")}
	if cfg.Broker != "" {
		if bu, err := extbroker.ParseURL(cfg.Broker); err == nil && bu.User != nil {
			ec.PlatformUser = bu.User.Username()
			ec.PlatformPassword, _ = bu.User.Password()
		}
	}
	h, err := emqxauth.New(ec)
	if err != nil {
		return nil, fmt.Errorf("--emqx-auth: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/emqx/authn", h.Authenticate())
	mux.Handle("/emqx/authz", h.Authorize())
	mux.Handle("/", api)
	return mux, nil
}
