-- Recipients of canonical data and the versions of their token keys (docs/CONTRACT.md §8).
-- Keys are derived from RECIPIENT_TOKEN_SECRET per (recipient, version): these rows hold no key
-- material, only which versions exist and which still resolve.
CREATE TABLE recipients (
    recipient_id  text PRIMARY KEY
        CHECK (recipient_id ~ '^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$'),
    status        text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE recipient_keys (
    recipient_id  text        NOT NULL REFERENCES recipients (recipient_id),
    version       integer     NOT NULL CHECK (version BETWEEN 1 AND 999999999),
    -- active: tokens of this version resolve; the newest active version issues new tokens.
    status        text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    PRIMARY KEY (recipient_id, version)
);
