-- name: recipient_client
-- What POST /auth/token needs of a recipient: its status and its JWKS (null when it has none);
-- no row when the recipient is unknown. $1 recipient_id
SELECT r.status, c.jwks
FROM recipients r LEFT JOIN recipient_clients c USING (recipient_id)
WHERE r.recipient_id = $1

-- name: recipient_client_jti_use
-- Record an accepted assertion's jti until its exp; returns nothing when it was seen before.
-- $1 recipient_id, $2 jti, $3 expires_at
INSERT INTO recipient_client_jtis (recipient_id, jti, expires_at)
VALUES ($1, $2, $3)
ON CONFLICT (recipient_id, jti) DO NOTHING
RETURNING true

-- name: recipient_client_jtis_purge
-- Forget jtis whose assertion has expired (it cannot be replayed any more), at most $1 rows.
DELETE FROM recipient_client_jtis
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM recipient_client_jtis WHERE expires_at < now() LIMIT $1
))

-- name: recipients_set_jwks
-- Register or replace a recipient's JWKS, and its audit row, in one statement.
-- $1 recipient_id, $2 jwks, $3 actor, $4 correlation_id, $5 audit details
WITH client AS (
    INSERT INTO recipient_clients (recipient_id, jwks) VALUES ($1, $2)
    ON CONFLICT (recipient_id) DO UPDATE SET jwks = EXCLUDED.jwks, updated_at = now()
    RETURNING recipient_id
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $4, $3, 'recipients.set_jwks', 'recipient', recipient_id, 'done', $5::jsonb
    FROM client
)
SELECT recipient_id FROM client
