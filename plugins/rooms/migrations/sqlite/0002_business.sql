-- Rooms belong to a business (issue #15): the business of the agent that created the room. A
-- session keeps its room's business, so it stays readable (by that business's agents only)
-- after its room is deleted.
ALTER TABLE rooms ADD COLUMN business_id TEXT;
ALTER TABLE room_sessions ADD COLUMN business_id TEXT;

-- Rooms made before this migration: `created_by` held the creator's token claim (`agent_id`,
-- else `user_id`). When that names an agent (by id or user id) whose memberships are all in
-- one business, the room joins that business. Every other room keeps a NULL business: no
-- agent can list, read, change, join or delete it until an operator assigns one
-- (`UPDATE rooms SET business_id = '<business>' WHERE id = '<room>'`, see
-- docs/protocols/rooms.md).
UPDATE rooms SET business_id = (
    SELECT MIN(m.business_id) FROM agents a JOIN agent_memberships m ON m.agent_id = a.id
    WHERE a.id = rooms.created_by OR a.user_id = rooms.created_by
)
WHERE (
    SELECT COUNT(DISTINCT m.business_id) FROM agents a JOIN agent_memberships m ON m.agent_id = a.id
    WHERE a.id = rooms.created_by OR a.user_id = rooms.created_by
) = 1;

UPDATE room_sessions SET business_id = (SELECT r.business_id FROM rooms r WHERE r.id = room_sessions.room_id);

CREATE INDEX rooms_business_created ON rooms(business_id, created_at);
