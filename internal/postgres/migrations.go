package postgres

// migrations are applied in order by internal/migrate; entry i brings the
// schema to version i+1. Never edit one that has shipped: append a new one.
//
// Times are Unix milliseconds (bigint, 0 for "not yet"), as in the SQLite
// engine: readings carry the device's millisecond timestamps, and the
// partition bounds are in the same unit. JSON values are text, kept exactly
// as the device or application sent them (jsonb would rewrite numbers such
// as 1.0 or 6.02E+23 and reorder keys).
var migrations = []string{
	// 1: registry, feeds as series keys, readings partitioned by day of
	// their timestamp, batch ids for dedup, the probe row of CheckWrite.
	`
CREATE TABLE devices (
	seq            bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id             text    NOT NULL UNIQUE,
	name           text    NOT NULL UNIQUE,
	secret_hash    bytea   NOT NULL,
	created_at     bigint  NOT NULL,
	online         boolean NOT NULL DEFAULT false,
	last_seen      bigint  NOT NULL DEFAULT 0,
	-- the replica whose session set online (see outpost.PresenceStore)
	presence_owner text    NOT NULL DEFAULT ''
);
CREATE TABLE feeds (
	seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	device_seq bigint NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	ref        text   NOT NULL,
	UNIQUE (device_seq, ref)
);
-- seq orders readings with the same timestamp by arrival: each append
-- takes one value of readings_seq per 2^20 readings and numbers its
-- readings from it (value << 20 | position), so seq grows in the order
-- appends take their block, which is the order they were made in, without
-- a sequence call per reading.
CREATE SEQUENCE readings_seq;
CREATE TABLE readings (
	series bigint NOT NULL,
	ts     bigint NOT NULL,
	seq    bigint NOT NULL,
	value  text   NOT NULL
) PARTITION BY RANGE (ts);
-- Each partition gets this index: it serves every query (a series' readings
-- in time order) and device deletion.
CREATE INDEX readings_series_ts ON readings (series, ts, seq);
-- Readings of days without a partition of their own (see partitions.go).
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
CREATE TABLE batches (
	device_seq  bigint NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	batch_id    text   NOT NULL,
	received_at bigint NOT NULL,
	PRIMARY KEY (device_seq, batch_id)
);
-- received_at grows with the table: a BRIN index serves retention's range
-- scans for a fraction of a B-tree's cost per insert.
CREATE INDEX batches_received ON batches USING brin (received_at);
CREATE TABLE counters (
	name  text   PRIMARY KEY,
	value bigint NOT NULL
);
`,
	// 2: the device model: feed definitions, attributes, parameters,
	// events and notifications. Every table goes with its device.
	`
CREATE TABLE feed_defs (
	device_seq bigint  NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	ref        text    NOT NULL,
	name       text    NOT NULL,
	type       text    NOT NULL,
	data_type  text    NOT NULL,
	unit       text    NOT NULL DEFAULT '',
	removed    boolean NOT NULL DEFAULT false,
	updated_at bigint  NOT NULL,
	PRIMARY KEY (device_seq, ref)
);
CREATE TABLE attributes (
	device_seq bigint NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	name       text   NOT NULL,
	data_type  text   NOT NULL,
	value      text   NOT NULL,
	updated_at bigint NOT NULL,
	PRIMARY KEY (device_seq, name)
);
-- source is 'desired' (owned by the platform) or 'reported' (by the device).
CREATE TABLE parameters (
	device_seq bigint NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	source     text   NOT NULL,
	key        text   NOT NULL,
	value      text   NOT NULL,
	PRIMARY KEY (device_seq, source, key)
);
CREATE TABLE parameter_versions (
	device_seq bigint PRIMARY KEY REFERENCES devices(seq) ON DELETE CASCADE,
	version    bigint NOT NULL
);
CREATE TABLE device_events (
	seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	device_seq  bigint NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	kind        text   NOT NULL,
	name        text   NOT NULL DEFAULT '',
	data        text,
	title       text   NOT NULL DEFAULT '',
	text        text   NOT NULL DEFAULT '',
	ts          bigint NOT NULL,
	received_at bigint NOT NULL,
	msg_id      text
);
CREATE INDEX device_events_device ON device_events (device_seq, seq);
CREATE UNIQUE INDEX device_events_msg ON device_events (device_seq, msg_id) WHERE msg_id IS NOT NULL;
`,
	// 3: the down queue: platform→device messages and queued calls (rows
	// with a method), in one table so a device's queue has one order.
	`
CREATE TABLE down_queue (
	seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id            text   NOT NULL UNIQUE,
	device_id     text   NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	kind          text   NOT NULL,
	payload       bytea  NOT NULL,
	state         text   NOT NULL,
	created_at    bigint NOT NULL,
	expires_at    bigint NOT NULL,
	sent_at       bigint NOT NULL DEFAULT 0,
	delivered_at  bigint NOT NULL DEFAULT 0,
	timeout_ms    bigint NOT NULL DEFAULT 0,
	deadline      bigint NOT NULL DEFAULT 0,
	reported      boolean NOT NULL DEFAULT false,
	method        text,
	args          text,
	finished_at   bigint NOT NULL DEFAULT 0,
	result        text,
	error_code    text,
	error_message text,
	late_at       bigint NOT NULL DEFAULT 0,
	late_response text
);
CREATE INDEX down_queue_device ON down_queue (device_id, state, seq);
CREATE INDEX down_queue_state ON down_queue (state, expires_at);
`,
	// 4: gateways, their children's bindings and their sinks. See
	// gateway.go.
	migrationGateways,
}
