package server

import (
	"context"
	"encoding/json"
	"path/filepath"
	"time"

	"github.com/outpost-iot/outpost/internal/artifact"
	"github.com/outpost-iot/outpost/internal/blob"
	"github.com/outpost-iot/outpost/internal/httpapi"
	"github.com/outpost-iot/outpost/internal/ota"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/internal/stream"
)

var (
	_ httpapi.ArtifactService = (*artifact.Repository)(nil)
	_ httpapi.OTAService      = (*ota.Service)(nil)
)

// openOTA opens the artifact repository (content under DATA/blobs, the
// signing key in DATA or Config.SigningKeyFile) and the file transfer and
// firmware service on st. With a store that keeps no artifacts and
// transfers (st nil), files and firmware are off: their API routes are
// absent and devices' messages for them are refused as not supported.
func (s *Server) openOTA(st outpost.OTAStore, pub ota.Publisher, hub *stream.Hub) (*artifact.Repository, *ota.Service, error) {
	if st == nil {
		s.log.Warn("files and firmware over the air are not available with this database engine yet")
		return nil, nil, nil
	}
	var signer *artifact.Signer
	var err error
	if s.cfg.SigningKeyFile != "" {
		signer, err = artifact.LoadKey(s.cfg.SigningKeyFile)
	} else {
		signer, _, err = artifact.LoadOrCreateKey(s.cfg.DataDir)
	}
	if err != nil {
		return nil, nil, err
	}
	blobs, err := blob.OpenFS(filepath.Join(s.cfg.DataDir, "blobs"))
	if err != nil {
		return nil, nil, err
	}
	arts := artifact.New(st, blobs, signer, artifact.Options{Logger: s.log.With("component", "artifacts")})
	svc := ota.New(ota.Options{
		Store:     st,
		Artifacts: arts,
		Publisher: pub,
		Queue:     otaQueue{s.queue},
		PublicURL: func() string {
			if s.cfg.PublicURL != "" {
				return s.cfg.PublicURL
			}
			return s.HTTPURL()
		},
		DeviceModel: func(ctx context.Context, deviceID string) (string, error) { return deviceModel(ctx, s.db, deviceID) },
		Online:      s.presence.Online,
		URLTTL:      s.cfg.DownloadTTL,
		Events:      hub.Publish,
		ChunkHook:   s.cfg.ChunkHook,
		Logger:      s.log.With("component", "ota"),
	})
	return arts, svc, nil
}

// deviceModel returns the device's "model" attribute, "" without one.
func deviceModel(ctx context.Context, db outpost.ModelStore, deviceID string) (string, error) {
	attrs, err := db.Attributes(ctx, deviceID)
	if err != nil {
		return "", err
	}
	for _, a := range attrs {
		var v string
		if a.Name == "model" && json.Unmarshal(a.Value, &v) == nil {
			return v, nil
		}
	}
	return "", nil
}

// otaQueue puts the OTA service's orders in the down queue.
type otaQueue struct{ q *queue.Queue }

func (o otaQueue) Enqueue(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (outpost.State, error) {
	m, err := o.q.EnqueueID(ctx, id, deviceID, kind, payload, ttl)
	if err != nil {
		return "", err
	}
	return m.State, nil
}
