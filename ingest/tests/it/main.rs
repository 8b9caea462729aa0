//! Tests of the intake's edge: the event parser never panics and rejects with a field.

mod parse_events;
