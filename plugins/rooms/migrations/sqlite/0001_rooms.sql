-- Rooms protocol (rooms.md): rooms, their participants and one session per participant stay.
-- Timestamps are RFC 3339 text (UTC, microsecond precision); JSON documents are text.
CREATE TABLE rooms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- created | waiting | active | closed
    status      TEXT NOT NULL,
    settings    TEXT NOT NULL DEFAULT '{}',
    created_by  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX rooms_status_created ON rooms(status, created_at);
CREATE INDEX rooms_created ON rooms(created_at);

CREATE TABLE room_participants (
    id            TEXT PRIMARY KEY,
    room_id       TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    -- connecting | connected | disconnected | left
    status        TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    muted         INTEGER NOT NULL DEFAULT 0,
    -- The daemon connection holding this participant; NULL when none does.
    connection_id BIGINT,
    session_id    TEXT NOT NULL,
    joined_at     TEXT NOT NULL,
    left_at       TEXT,
    left_reason   TEXT
);
CREATE INDEX room_participants_room ON room_participants(room_id, status);
CREATE INDEX room_participants_agent ON room_participants(room_id, agent_id);

CREATE TABLE room_sessions (
    id              TEXT PRIMARY KEY,
    room_id         TEXT NOT NULL,
    participant_id  TEXT NOT NULL,
    start_time      TEXT NOT NULL,
    end_time        TEXT,
    -- active | completed | timed_out | disconnected
    status          TEXT NOT NULL,
    -- Latest client-reported `room:stats` document (JSON), NULL until one arrives.
    stats           TEXT,
    stats_at        TEXT
);
CREATE INDEX room_sessions_participant ON room_sessions(participant_id);
