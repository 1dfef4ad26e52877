-- The example IVR's own table: every menu choice a caller made (docs/writing-an-ivr-plugin.md,
-- "Keeping data"). session_id: the incoming_call's session_id; chosen_at_ms: ms since the Unix
-- epoch.
CREATE TABLE ivr_menu_choices (
    session_id   TEXT NOT NULL,
    digit        TEXT NOT NULL,
    chosen_at_ms BIGINT NOT NULL
);
CREATE INDEX ivr_menu_choices_session ON ivr_menu_choices(session_id);
