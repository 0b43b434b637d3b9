-- name: recipient_state
-- What the token service needs of one recipient: its status and its resolvable key versions.
SELECT r.status,
       coalesce(array_agg(k.version ORDER BY k.version) FILTER (WHERE k.status = 'active'),
                '{}') AS versions
FROM recipients r LEFT JOIN recipient_keys k USING (recipient_id)
WHERE r.recipient_id = $1
GROUP BY r.status

-- name: recipients_add
-- A new recipient with key version 1, and its audit row, in one statement. Returns nothing when
-- the id is taken. $1 recipient_id, $2 actor, $3 correlation_id
WITH recipient AS (
    INSERT INTO recipients (recipient_id) VALUES ($1)
    ON CONFLICT (recipient_id) DO NOTHING
    RETURNING recipient_id
), key AS (
    INSERT INTO recipient_keys (recipient_id, version) SELECT recipient_id, 1 FROM recipient
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $3, $2, 'recipients.add', 'recipient', recipient_id, 'done', '{"version": 1}'::jsonb
    FROM recipient
)
SELECT recipient_id FROM recipient

-- name: recipients_ensure
-- The local development recipient, registered at a local worker's start (idempotent, audited
-- only when created). $1 recipient_id
WITH recipient AS (
    INSERT INTO recipients (recipient_id) VALUES ($1)
    ON CONFLICT (recipient_id) DO NOTHING
    RETURNING recipient_id
), key AS (
    INSERT INTO recipient_keys (recipient_id, version) SELECT recipient_id, 1 FROM recipient
)
INSERT INTO audit_log (actor, action, entity_type, entity_id, status, details)
SELECT 'worker', 'recipients.add', 'recipient', recipient_id, 'done', '{"local": true}'::jsonb
FROM recipient

-- name: recipients_list
SELECT r.recipient_id, r.status, r.created_at, r.revoked_at,
       coalesce(jsonb_agg(jsonb_build_object('version', k.version, 'status', k.status,
                                             'created_at', k.created_at,
                                             'retired_at', k.retired_at)
                          ORDER BY k.version) FILTER (WHERE k.version IS NOT NULL),
                '[]'::jsonb) AS keys,
       (SELECT jsonb_array_length(c.jwks -> 'keys') FROM recipient_clients c
        WHERE c.recipient_id = r.recipient_id) AS jwks_keys
FROM recipients r LEFT JOIN recipient_keys k USING (recipient_id)
GROUP BY r.recipient_id
ORDER BY r.recipient_id

-- name: recipients_lock
-- The recipient row, locked for the rest of a key change; nothing when unknown.
SELECT status FROM recipients WHERE recipient_id = $1 FOR UPDATE

-- name: recipients_rotate_key
-- The next key version, active; new tokens use it, older active versions still resolve.
-- $1 recipient_id, $2 actor, $3 correlation_id
WITH next AS (
    INSERT INTO recipient_keys (recipient_id, version)
    SELECT $1, coalesce(max(version), 0) + 1 FROM recipient_keys WHERE recipient_id = $1
    RETURNING version
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $3, $2, 'recipients.rotate_key', 'recipient', $1, 'done',
           jsonb_build_object('version', version)
    FROM next
)
SELECT version FROM next

-- name: recipients_key_versions
SELECT version, status FROM recipient_keys WHERE recipient_id = $1 ORDER BY version

-- name: recipients_retire_key
-- $1 recipient_id, $2 version, $3 actor, $4 correlation_id
WITH retired AS (
    UPDATE recipient_keys SET status = 'retired', retired_at = now()
    WHERE recipient_id = $1 AND version = $2 AND status = 'active'
    RETURNING version
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $4, $3, 'recipients.retire_key', 'recipient', $1, 'done',
           jsonb_build_object('version', version)
    FROM retired
)
SELECT version FROM retired

-- name: recipients_revoke
-- $1 recipient_id, $2 actor, $3 correlation_id
WITH revoked AS (
    UPDATE recipients SET status = 'revoked', revoked_at = now()
    WHERE recipient_id = $1 AND status = 'active'
    RETURNING recipient_id
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $3, $2, 'recipients.revoke', 'recipient', recipient_id, 'done', '{}'::jsonb
    FROM revoked
)
SELECT recipient_id FROM revoked
