package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// SetGateway makes a device a gateway with policy ("auto" or
// "provisioned"; empty: provisioned), or changes its policy. ENOTFOUND,
// EINVALID, ECONFLICT (the device is a child).
func (s *Service) SetGateway(ctx context.Context, id, policy string) (*outpost.Gateway, error) {
	if policy == "" {
		policy = string(protocol.PolicyProvisioned)
	}
	if !protocol.GatewayPolicy(policy).Valid() {
		return nil, outpost.Errorf(outpost.EINVALID, "policy must be auto or provisioned, not %.32q", policy)
	}
	g := &outpost.Gateway{ID: id, Policy: policy, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := s.opt.Store.SetGateway(ctx, g); err != nil {
		return nil, err
	}
	s.mu.Lock()
	st := s.gws[id]
	s.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		st.gw.Policy = policy
		st.mu.Unlock()
	}
	s.changed(id)
	return s.opt.Store.Gateway(ctx, id)
}

// Gateway returns a gateway. ENOTFOUND.
func (s *Service) Gateway(ctx context.Context, id string) (*outpost.Gateway, error) {
	return s.opt.Store.Gateway(ctx, id)
}

// Gateways lists the gateways.
func (s *Service) Gateways(ctx context.Context) ([]*outpost.Gateway, error) {
	return s.opt.Store.Gateways(ctx)
}

// Children lists a gateway's children. ENOTFOUND.
func (s *Service) Children(ctx context.Context, gatewayID string) ([]*outpost.Child, error) {
	return s.opt.Store.Children(ctx, gatewayID)
}

// AddChild registers a child of a gateway at address: the existing
// device deviceID (which may have credentials of its own), or a new
// device when deviceID is empty. ENOTFOUND, EINVALID, ECONFLICT (the
// address is taken; the device is another gateway's child, or a
// gateway).
func (s *Service) AddChild(ctx context.Context, gatewayID, address, deviceID string) (*outpost.Child, error) {
	if err := protocol.ValidChildAddress(address); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%v", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	c := &outpost.Child{GatewayID: gatewayID, Address: address, DeviceID: deviceID, CreatedAt: now}
	var err error
	if deviceID == "" {
		d := &outpost.Device{ID: outpost.NewDeviceID(), Name: gatewayID + "." + address, CreatedAt: now}
		err = s.opt.Store.CreateChild(ctx, c, d, outpost.HashSecret(outpost.NewToken()))
	} else {
		err = s.opt.Store.AttachChild(ctx, c)
	}
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	st := s.gws[gatewayID]
	if st != nil {
		s.children[c.DeviceID] = &route{gatewayID: gatewayID, address: address}
	}
	s.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		st.byAddr[address] = c.DeviceID
		st.mu.Unlock()
	}
	s.changed(gatewayID)
	return c, nil
}

// RemoveChild removes a child's binding; the device stays, offline if it
// was online through the gateway. ENOTFOUND.
func (s *Service) RemoveChild(ctx context.Context, gatewayID, address string) error {
	s.mu.Lock()
	st := s.gws[gatewayID]
	s.mu.Unlock()
	if err := s.opt.Store.DetachChild(ctx, gatewayID, address); err != nil {
		return err
	}
	if st != nil {
		st.mu.Lock()
		if child, ok := st.byAddr[address]; ok {
			if _, on := st.online[child]; on {
				s.goOffline(child, st.sess, ReasonLeft)
			}
			delete(st.online, child)
			delete(st.byAddr, address)
			s.mu.Lock()
			delete(s.children, child)
			s.mu.Unlock()
		}
		st.mu.Unlock()
	}
	s.changed(gatewayID)
	return nil
}

// Sinks lists a gateway's sinks with the configuration it last reported.
// ENOTFOUND.
func (s *Service) Sinks(ctx context.Context, gatewayID string) ([]*outpost.Sink, error) {
	return s.opt.Store.Sinks(ctx, gatewayID)
}

// SinkConfigResult is the gateway's answer to a configuration change.
type SinkConfigResult struct {
	// Result is the gateway's result code (protocol.ResultOK or another).
	Result  string          `json:"result"`
	Message string          `json:"message,omitempty"`
	Config  json.RawMessage `json:"config,omitempty"`
}

// SetSinkConfig asks a gateway to change fields of a sink's
// configuration and waits up to timeout (DefaultTimeout if 0) for its
// result. A rejection by the gateway is a result, not an error. Errors:
// ENOTFOUND (no such gateway or sink), EINVALID, EOFFLINE, ETIMEOUT,
// EUNAVAILABLE.
func (s *Service) SetSinkConfig(ctx context.Context, gatewayID, sink string, config json.RawMessage, timeout time.Duration) (*SinkConfigResult, error) {
	if err := s.checkSink(ctx, gatewayID, sink); err != nil {
		return nil, err
	}
	if err := protocol.ValidSinkConfig(config); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%s", err.Message)
	}
	id := newID()
	r, err := s.request(ctx, gatewayID, protocol.KindGatewayConfig, id, protocol.SinkConfigRequest{ID: id, Sink: sink, Config: config}, timeout)
	if err != nil {
		return nil, err
	}
	return &SinkConfigResult{Result: r.res, Message: r.message, Config: r.config}, nil
}

// Message is what SendMessage sends.
type Message struct {
	// Dest is the node address, or protocol.BroadcastAddress.
	Dest         string
	SrcEP, DstEP int
	QoS          int
	Payload      []byte
}

// SendResult is the gateway's answer to a send request.
type SendResult struct {
	Result  string `json:"result"`
	Message string `json:"message,omitempty"`
}

// SendMessage asks a gateway to send m from one of its sinks and waits
// up to timeout for its result code. Errors as SetSinkConfig.
func (s *Service) SendMessage(ctx context.Context, gatewayID, sink string, m Message, timeout time.Duration) (*SendResult, error) {
	if err := s.checkSink(ctx, gatewayID, sink); err != nil {
		return nil, err
	}
	id := newID()
	req := protocol.SendRequest{ID: id, Sink: sink, Dest: m.Dest, SrcEP: m.SrcEP, DstEP: m.DstEP, QoS: m.QoS, Payload: m.Payload}
	if req.Payload == nil {
		req.Payload = []byte{}
	}
	b, _ := json.Marshal(req)
	if _, err := protocol.DecodeSendRequest(b); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%s", err.(*protocol.Error).Message)
	}
	r, err := s.request(ctx, gatewayID, protocol.KindGatewaySend, id, req, timeout)
	if err != nil {
		return nil, err
	}
	return &SendResult{Result: r.res, Message: r.message}, nil
}

func (s *Service) checkSink(ctx context.Context, gatewayID, sink string) error {
	st, err := s.state(ctx, gatewayID)
	if err != nil {
		return err
	}
	st.mu.Lock()
	_, ok := st.sinks[sink]
	st.mu.Unlock()
	if !ok {
		return outpost.Errorf(outpost.ENOTFOUND, "gateway %s has no sink %s", gatewayID, fmt.Sprintf("%.64q", sink))
	}
	return nil
}

// DeviceDeleted drops what the service keeps of a deleted device: a
// gateway's state, or a child's binding (the store has removed both). A
// deleted child's address is free again; under policy auto the next
// message for it makes a new child.
func (s *Service) DeviceDeleted(deviceID string) {
	s.mu.Lock()
	var parentID string
	if r := s.children[deviceID]; r != nil {
		parentID = r.gatewayID
	}
	s.mu.Unlock()
	s.forget(deviceID)
	// The other replicas: the device itself, if they hold it as a
	// gateway or a child (Stale finds its gateway), and its gateway.
	s.changed(deviceID)
	if parentID != "" {
		s.changed(parentID)
	}
}

// forget drops a deleted device: as a gateway, or as a child.
func (s *Service) forget(deviceID string) {
	s.mu.Lock()
	delete(s.stale, deviceID)
	st := s.gws[deviceID]
	delete(s.gws, deviceID)
	r := s.children[deviceID]
	delete(s.children, deviceID)
	var parent *gwState
	if r != nil {
		parent = s.gws[r.gatewayID]
	}
	s.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		kids := make([]string, 0, len(st.byAddr))
		for _, dev := range st.byAddr {
			kids = append(kids, dev)
		}
		for dev := range st.online {
			s.goOffline(dev, st.sess, ReasonGatewayOffline)
		}
		clear(st.online)
		st.mu.Unlock()
		s.mu.Lock()
		for _, dev := range kids {
			delete(s.children, dev)
		}
		s.mu.Unlock()
	}
	if parent != nil {
		parent.mu.Lock()
		if parent.byAddr[r.address] == deviceID {
			delete(parent.byAddr, r.address)
		}
		delete(parent.online, deviceID)
		parent.mu.Unlock()
	}
}
