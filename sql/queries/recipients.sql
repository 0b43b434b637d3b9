-- name: recipient_state
-- What the token service needs of one recipient: its status, its resolvable key versions and
-- its grants in force (read/grants.py).
SELECT r.status,
       coalesce(array_agg(k.version ORDER BY k.version) FILTER (WHERE k.status = 'active'),
                '{}') AS versions,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'grant_id', g.grant_id, 'sources', g.sources, 'kinds', g.kinds,
                    'from_date', g.from_date, 'until_date', g.until_date)), '[]'::jsonb)
        FROM recipient_grants g
        WHERE g.recipient_id = r.recipient_id AND g.revoked_at IS NULL) AS grants
FROM recipients r LEFT JOIN recipient_keys k USING (recipient_id)
WHERE r.recipient_id = $1
GROUP BY r.recipient_id, r.status

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

-- name: recipients_ensure_grant
-- The local development recipient's grant of everything, when it has no unrestricted grant in
-- force (each local worker's start; audited when created). $1 recipient_id
WITH granted AS (
    INSERT INTO recipient_grants (recipient_id, created_by)
    SELECT $1, 'worker'
    WHERE NOT EXISTS (
        SELECT 1 FROM recipient_grants
        WHERE recipient_id = $1 AND revoked_at IS NULL AND sources IS NULL AND kinds IS NULL
          AND from_date IS NULL AND until_date IS NULL)
    RETURNING grant_id
)
INSERT INTO audit_log (actor, action, entity_type, entity_id, status, details)
SELECT 'worker', 'recipients.grant', 'recipient', $1, 'done',
       jsonb_build_object('grant_id', grant_id, 'local', true)
FROM granted

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

-- name: recipients_grant
-- A new grant and its audit row, in one statement. $1 recipient_id, $2 sources or null,
-- $3 kinds or null, $4 from or null, $5 until or null, $6 actor, $7 correlation_id
WITH granted AS (
    INSERT INTO recipient_grants (recipient_id, sources, kinds, from_date, until_date, created_by)
    VALUES ($1, $2::text[], $3::text[], $4::date, $5::date, $6)
    RETURNING grant_id, sources, kinds, from_date, until_date, created_at
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $7, $6, 'recipients.grant', 'recipient', $1, 'done',
           jsonb_build_object('grant_id', grant_id, 'sources', sources, 'kinds', kinds,
                              'from', from_date, 'until', until_date)
    FROM granted
)
SELECT grant_id, sources, kinds, from_date, until_date, created_at FROM granted

-- name: recipients_grants
-- A recipient's grants, those revoked included. $1 recipient_id
SELECT grant_id, sources, kinds, from_date, until_date, created_by, created_at, revoked_at
FROM recipient_grants WHERE recipient_id = $1 ORDER BY grant_id

-- name: recipients_revoke_grant
-- Revoke one grant in force and write its audit row. $1 recipient_id, $2 grant_id, $3 actor,
-- $4 correlation_id. Returns nothing when the recipient has no such grant in force.
WITH revoked AS (
    UPDATE recipient_grants SET revoked_at = now()
    WHERE recipient_id = $1 AND grant_id = $2 AND revoked_at IS NULL
    RETURNING grant_id
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $4, $3, 'recipients.revoke_grant', 'recipient', $1, 'done',
           jsonb_build_object('grant_id', grant_id)
    FROM revoked
)
SELECT grant_id FROM revoked
