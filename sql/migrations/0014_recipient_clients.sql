-- Recipients as SMART Backend Services clients (docs/API.md "Credentials, roles and scopes").
-- recipient_clients: the public JWKS a recipient signs its client assertions with (never a
-- private key: the recipients commands refuse one). recipient_client_jtis: the jti of every
-- accepted assertion until its exp, so that none is accepted twice; expired rows are purged by
-- the token endpoint, a bounded batch at a time.
CREATE TABLE recipient_clients (
    recipient_id  text        PRIMARY KEY REFERENCES recipients (recipient_id),
    jwks          jsonb       NOT NULL CHECK (jsonb_typeof(jwks -> 'keys') = 'array'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- No foreign key: one insert per token request, checked against the recipient just before.
CREATE TABLE recipient_client_jtis (
    recipient_id  text        NOT NULL,
    jti           text        NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (recipient_id, jti)
);

CREATE INDEX recipient_client_jtis_expires_at ON recipient_client_jtis (expires_at);
