//! Session frames (being written).
