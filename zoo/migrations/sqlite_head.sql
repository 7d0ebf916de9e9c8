CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL,
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
CREATE TABLE models (
	id INTEGER NOT NULL,
	name VARCHAR(255) NOT NULL,
	framework VARCHAR(32) NOT NULL,
	format VARCHAR(64),
	task VARCHAR(128),
	dataset VARCHAR(128),
	architecture VARCHAR(128),
	description TEXT,
	license VARCHAR(255),
	tags JSON,
	source VARCHAR(255),
	homepage TEXT,
	paper TEXT,
	input_spec JSON,
	parameters INTEGER,
	metrics JSON,
	meta JSON,
	created_at FLOAT,
	updated_at FLOAT, removed_upstream BOOLEAN DEFAULT 0 NOT NULL, keywords TEXT, signature_status VARCHAR(16), signature JSON, revision VARCHAR(128),
	PRIMARY KEY (id),
	UNIQUE (name)
);
CREATE TABLE artifacts (
	id INTEGER NOT NULL,
	model_id INTEGER,
	role VARCHAR(32) NOT NULL,
	filename VARCHAR(512) NOT NULL,
	urls JSON,
	size INTEGER,
	checksum VARCHAR(160),
	extract VARCHAR(16),
	path TEXT,
	sha256 VARCHAR(64),
	meta JSON,
	PRIMARY KEY (id),
	UNIQUE (model_id, role, filename),
	FOREIGN KEY(model_id) REFERENCES models (id) ON DELETE CASCADE
);
CREATE TABLE sources (
	id INTEGER NOT NULL,
	name VARCHAR(255) NOT NULL,
	url TEXT NOT NULL,
	etag VARCHAR(255),
	synced_at FLOAT,
	created_at FLOAT, require_signature BOOLEAN DEFAULT 0 NOT NULL, signer JSON,
	PRIMARY KEY (id),
	UNIQUE (name)
);
CREATE TABLE zoo_state (
	"key" VARCHAR(64) NOT NULL,
	value TEXT,
	PRIMARY KEY ("key")
);
CREATE TABLE revisions (
	id INTEGER NOT NULL,
	model_id INTEGER NOT NULL,
	revision VARCHAR(128) NOT NULL,
	tag VARCHAR(128),
	digest VARCHAR(64) NOT NULL,
	source VARCHAR(255),
	files JSON,
	meta JSON,
	created_at FLOAT,
	PRIMARY KEY (id),
	UNIQUE (model_id, revision),
	FOREIGN KEY(model_id) REFERENCES models (id) ON DELETE CASCADE
);
CREATE INDEX ix_artifacts_missing ON artifacts (model_id) WHERE path IS NULL AND role <> 'onnx';
CREATE INDEX ix_artifacts_model_id ON artifacts (model_id);
CREATE INDEX ix_artifacts_sha256 ON artifacts (sha256);
CREATE INDEX ix_models_dataset ON models (dataset);
CREATE INDEX ix_models_framework ON models (framework);
CREATE INDEX ix_models_signature_status ON models (signature_status);
CREATE INDEX ix_models_source ON models (source);
CREATE INDEX ix_models_task ON models (task);
CREATE INDEX ix_revisions_digest ON revisions (digest);
CREATE INDEX ix_revisions_model_id ON revisions (model_id);
INSERT INTO alembic_version (version_num) VALUES ('0006');
