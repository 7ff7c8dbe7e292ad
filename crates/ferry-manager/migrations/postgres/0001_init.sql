CREATE TABLE users (
  id BIGSERIAL PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE tokens (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  scopes TEXT NOT NULL,
  expires_at BIGINT NOT NULL,
  revoked BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE TABLE clusters (
  id BIGSERIAL PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  description TEXT NOT NULL DEFAULT '',
  is_default BIGINT NOT NULL DEFAULT 0,
  config TEXT NOT NULL,
  scopes TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE TABLE schedulers (
  id BIGSERIAL PRIMARY KEY,
  cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  hostname TEXT NOT NULL,
  ip TEXT NOT NULL,
  port BIGINT NOT NULL,
  last_seen BIGINT NOT NULL,
  UNIQUE (ip, port)
);
CREATE TABLE seeds (
  id BIGSERIAL PRIMARY KEY,
  cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  host_id TEXT NOT NULL UNIQUE,
  hostname TEXT NOT NULL,
  ip TEXT NOT NULL,
  port BIGINT NOT NULL,
  last_seen BIGINT NOT NULL
);
CREATE TABLE jobs (
  id BIGSERIAL PRIMARY KEY,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  args TEXT NOT NULL,
  cluster_ids TEXT NOT NULL,
  result TEXT NOT NULL DEFAULT '',
  user_id BIGINT,
  lease_owner TEXT NOT NULL DEFAULT '',
  lease_until BIGINT NOT NULL DEFAULT 0,
  attempts BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_runnable ON jobs (state, lease_until);
