//! Connection tokens (being written).
