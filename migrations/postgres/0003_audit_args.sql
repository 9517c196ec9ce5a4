-- The whole request (command line) of an event; ACTION holds only its name.
ALTER TABLE audit_events ADD COLUMN args TEXT NOT NULL DEFAULT '';
